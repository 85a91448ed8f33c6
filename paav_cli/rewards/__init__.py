"""Reward models (VideoScore, LAION aesthetic, MPS, CLIP score), presets, and the scoring engine.

`score_videos` is the entry point stages use: one reward model in memory at a time, every video
scored by it, then freed before the next loads; cached scores are never recomputed.
"""

from __future__ import annotations

import importlib

from paav_cli.errors import UserError
from paav_cli.registry import RewardEntry

# kind in models.toml -> the class that loads and runs it.
REWARD_CLASSES = {
    "videoscore": "paav_cli.rewards.videoscore:VideoScoreReward",
    "aesthetic-linear": "paav_cli.rewards.clip:AestheticReward",
    "aesthetic-mlp": "paav_cli.rewards.clip:AestheticReward",
    "clip-score": "paav_cli.rewards.clip:ClipScoreReward",
    "mps": "paav_cli.rewards.mps:MPSReward",
}


def check_scorable(entry: RewardEntry) -> None:
    if entry.kind not in REWARD_CLASSES:
        usable = ", ".join(sorted(REWARD_CLASSES))
        raise UserError(
            f"{entry.name!r} is a {entry.kind} model, not a reward paav can score with; "
            f"pick a reward of kind {usable} (see `paav models list --role rewards`)."
        )


def load_reward(entry: RewardEntry):
    check_scorable(entry)
    module, cls = REWARD_CLASSES[entry.kind].split(":")
    return getattr(importlib.import_module(module), cls)(entry)


def score_videos(*args, **kwargs):
    from paav_cli.rewards.scoring import score_videos as run

    return run(*args, **kwargs)

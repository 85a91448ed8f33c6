"""The scoring engine: each reward model loaded once, every video scored, freed before the next.

Peak memory is the largest reward model, not their sum. Scores are cached per (video content,
reward model, revision, prompt): the prompt is part of the key because VideoScore's alignment
and MPS compare the video with it, so the same video scored against another prompt is new work.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from paav_cli import paths, registry
from paav_cli.errors import UserError
from paav_cli.registry import RewardEntry
from paav_cli.rewards import check_scorable, load_reward
from paav_cli.rewards.presets import DEFAULT_PRESET, get_preset
from paav_cli.runs import atomic_write_json

CHUNK = 8  # videos per call into a reward model: progress updates without losing batching
_HEX64 = re.compile(r"[0-9a-f]{64}")


def video_key(path: Path) -> str:
    """A render's own cache key when it comes from the render cache, else the sha256 of its bytes."""
    path = Path(path)
    if _HEX64.fullmatch(path.stem) and path.with_suffix(".json").is_file():
        return path.stem
    return registry.sha256_file(path)


class ScoreCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else paths.scores_dir()

    @staticmethod
    def key(video: str, entry: RewardEntry, prompt: str) -> str:
        blob = json.dumps([video, entry.name, registry.revision_of(entry), prompt], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, float] | None:
        path = self.root / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["scores"]
        except (json.JSONDecodeError, KeyError):
            return None  # a damaged entry is scored again and overwritten

    def put(self, key: str, entry: RewardEntry, video: str, scores: dict[str, float]) -> None:
        atomic_write_json(self.root / f"{key}.json", {
            "reward": entry.name, "revision": registry.revision_of(entry), "video": video, "scores": scores,
        })


class ScoreProgressHook:
    def start_model(self, name: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...


@dataclass
class ScoreStats:
    loads: int = 0  # reward models loaded (tests assert cached work loads nothing)
    scored: int = 0  # (video, model) pairs computed
    cached: int = 0  # (video, model) pairs read from the cache


def check_videos(videos: Sequence[Path]) -> None:
    for video in videos:
        p = Path(video)
        if not p.is_file():
            raise UserError(f"video {p} does not exist; check the path.")
        if p.stat().st_size == 0:
            raise UserError(f"video {p} is empty; render it again.")


def score_videos(
    videos: Sequence[Path], prompts: Sequence[str], rewards: Sequence[str], *, preset: str = DEFAULT_PRESET,
    progress: ScoreProgressHook | None = None, cache: ScoreCache | None = None, stats: ScoreStats | None = None,
) -> list[dict]:
    """One record per video: every dimension of every reward, the combined score and the preset."""
    if len(videos) != len(prompts):
        raise UserError(f"{len(videos)} videos but {len(prompts)} prompts; give one prompt per video (or one for all).")
    reg = registry.Registry.load()
    entries = [reg.get(name, "rewards") for name in rewards]
    for entry in entries:
        check_scorable(entry)
    chosen = get_preset(preset)
    check_videos(videos)
    cache = cache or ScoreCache()
    stats = stats if stats is not None else ScoreStats()
    progress = progress or ScoreProgressHook()
    vkeys = [video_key(v) for v in videos]
    merged: list[dict[str, float]] = [{} for _ in videos]
    for entry in entries:
        keys = [ScoreCache.key(vk, entry, p) for vk, p in zip(vkeys, prompts)]
        found = [cache.get(k) for k in keys]
        pending = [i for i, f in enumerate(found) if f is None]
        stats.cached += len(videos) - len(pending)
        progress.start_model(entry.name, len(videos))
        progress.advance(len(videos) - len(pending))
        if pending:
            found = _score_pending(entry, videos, prompts, keys, vkeys, pending, found, cache, progress)
            stats.loads += 1
            stats.scored += len(pending)
        for i, scores in enumerate(found):
            merged[i].update(scores)
    return [
        {"video": str(v), "prompt": p, "scores": s, "combined": chosen.combined(s), "preset": chosen.name}
        for v, p, s in zip(videos, prompts, merged)
    ]


def _score_pending(entry, videos, prompts, keys, vkeys, pending, found, cache, progress):
    model = load_reward(entry)
    try:
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start : start + CHUNK]
            results = model.score([Path(videos[i]) for i in chunk], [prompts[i] for i in chunk])
            for i, scores in zip(chunk, results):
                cache.put(keys[i], entry, vkeys[i], scores)
                found[i] = scores
            progress.advance(len(chunk))
    finally:
        model.close()  # frees its memory (gc + CUDA cache) before the next model loads
    return found

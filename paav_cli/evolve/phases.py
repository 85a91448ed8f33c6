"""The two model phases every reward-driven stage shares (evolve, and rank for DPO data): render a
batch of prompts with the recipe's generator loaded once, then score the videos with each reward
model loaded once, against the original prompts. Both are cached, so repeating a phase is free."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from paav_cli.recipe import Recipe


class BudgetReached(Exception):
    pass


@dataclass
class PhaseStats:
    rendered: int = 0
    render_cached: int = 0
    scored: int = 0
    score_cached: int = 0
    loads: int = 0  # models loaded (generator + rewards)
    extra: dict = field(default_factory=dict)


def render_job(recipe: Recipe, prompt: str):
    from paav_cli.text.templates import NEGATIVE_PROMPT
    from paav_cli.video.jobs import RenderJob

    r = recipe.render
    return RenderJob(
        prompt=prompt, negative=NEGATIVE_PROMPT if r.paper_negative else r.negative, seed=r.seed,
        frames=r.frames, height=r.height, width=r.width, steps=r.steps, guidance=r.guidance,
    )


def render_phase(recipe: Recipe, prompts: list[str], stats: PhaseStats, *, max_new: int | None = None,
                 progress=None, memory: str | None = None) -> tuple[list[Path], list[str]]:
    """Paths and render keys of every prompt's video; at most `max_new` new renders (BudgetReached after).
    `memory` overrides the recipe's memory mode (it changes no pixel, so it is no part of the recipe)."""
    from paav_cli.registry import Registry
    from paav_cli.video.render import RenderOptions, VideoGenerator

    r = recipe.render
    entry = Registry.load().get(recipe.models.generator, "generators")
    gen = VideoGenerator(entry, RenderOptions(
        memory=memory or r.memory, vae_tiling=r.vae_tiling, dtype=None if r.dtype == "auto" else r.dtype,
    ))
    jobs = [render_job(recipe, p) for p in prompts]
    settings = gen.resolve(jobs)
    missing = [s for s in dict.fromkeys(settings) if gen.cache.lookup(s, entry.output) is None]
    try:
        if max_new is not None and len(missing) > max_new:
            if max_new > 0:
                gen.render([jobs[settings.index(s)] for s in missing[:max_new]], progress)
                stats.rendered += max_new
            raise BudgetReached(f"--max-videos reached ({max_new} more were allowed, {len(missing)} needed)")
        paths = gen.render(jobs, progress)
    finally:
        gen.free()
        stats.loads += gen.loads
    stats.rendered += len(missing)
    stats.render_cached += len(settings) - len(missing)
    return paths, [s.key() for s in settings]


def score_phase(recipe: Recipe, videos: list[Path], originals: list[str], stats: PhaseStats,
                preset: str | None = None, progress=None) -> list[dict]:
    from paav_cli.rewards.scoring import ScoreStats, score_videos

    score_stats = ScoreStats()
    records = score_videos(videos, originals, recipe.models.rewards, preset=preset or recipe.scores.preset,
                           stats=score_stats, progress=progress)
    stats.scored += score_stats.scored
    stats.score_cached += score_stats.cached
    stats.loads += score_stats.loads
    return records

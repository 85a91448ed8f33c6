"""`paav rank`: DPO data. Sample k rewrites per source prompt from the booster being trained, render
and score them (evolve's phases: generator loaded once, each reward model once, all cached), and
pair them into `{"prompt", "chosen", "rejected", "margin", "scores"}` triples.

Resumable like evolve: `samples.jsonl` holds every sampled rewrite (asked once per source),
`journal.jsonl` every scored one; a rerun does only what is missing.
"""

from __future__ import annotations

import builtins  # `round` is this stage's round number here
import json
from collections.abc import Callable
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.evolve.phases import PhaseStats, render_phase, score_phase
from paav_cli.prompt_files import read_prompts
from paav_cli.recipe import Rank, Recipe
from paav_cli.rewards.presets import get_preset
from paav_cli.runs import (
    Journal,
    StageResult,
    atomic_write_text,
    prepare_run_folder,
    read_journal,
    record_stage,
)


def rank_folder(run: Path, round: int) -> Path:
    return Path(run) / ("rank" if round == 1 else f"rank-{round}")


# ---------------------------------------------------------------------------------------------
# Pairing presets (pure functions of scored samples: [{"prompt", "scores"}])


def pair_best_worst(samples: list[dict], cfg: Rank) -> list[dict]:
    """Paper: normalise every dimension to 0-5, sum; the best sample is chosen, the worst rejected."""
    preset = get_preset("paper")
    ranked = sorted(samples, key=lambda s: -preset.combined(s["scores"]))
    if len(ranked) < 2:
        return []
    best, worst = ranked[0], ranked[-1]
    margin = preset.combined(best["scores"]) - preset.combined(worst["scores"])
    if margin <= 0:
        return []
    return [_triple(best, worst, margin, "paper")]


def pair_released(samples: list[dict], cfg: Rank) -> list[dict]:
    """The released filter: weighted raw score, per-dimension gates on the chosen one, margin above
    cfg.margin, ranks 1 and 2 each chosen against every lower rank (at most 7 pairs from 5 samples),
    chosen prompts over cfg.max_words words dropped."""
    preset = get_preset("released-dpo")
    ranked = sorted(samples, key=lambda s: -preset.combined(s["scores"]))
    triples = []
    for i, chosen in enumerate(ranked[:2]):
        if not preset.passes_gates(chosen["scores"]) or len(chosen["prompt"].split()) > cfg.max_words:
            continue
        for rejected in ranked[i + 1 :]:
            margin = preset.combined(chosen["scores"]) - preset.combined(rejected["scores"])
            if margin > cfg.margin:
                triples.append(_triple(chosen, rejected, margin, "released-dpo"))
    return triples


PAIRINGS = {"best-worst": pair_best_worst, "released": pair_released}


def _triple(chosen: dict, rejected: dict, margin: float, preset: str) -> dict:
    return {
        "chosen": chosen["prompt"], "rejected": rejected["prompt"], "margin": round(margin, 4),
        "scores": {"chosen": chosen["scores"], "rejected": rejected["scores"]}, "preset": preset,
    }


# ---------------------------------------------------------------------------------------------
# The stage


def _sample_all(sources: dict[str, str], folder: Path, cfg: Rank, sampler_factory: Callable) -> None:
    """Ask the booster for cfg.samples rewrites of every source not yet sampled (one journal line each)."""
    from paav_cli.train.chat import prompt_messages

    done = {r["source"] for r in read_journal(folder / "samples.jsonl")}
    todo = [sid for sid in sources if sid not in done]
    if not todo:
        return
    sampler = sampler_factory()
    try:
        with Journal(folder / "samples.jsonl") as journal:
            for n, sid in enumerate(todo):
                texts = sampler.generate(prompt_messages(sources[sid]), n=cfg.samples, temperature=cfg.temperature,
                                         max_tokens=cfg.max_tokens, seed=cfg.seed + 1000 * n)
                kept = [t.strip() for t in texts if t.strip()]
                for k, text in enumerate(kept):
                    journal.append({"source": sid, "k": k, "prompt": text})
                if not kept:
                    journal.append({"source": sid, "empty": True})
    finally:
        sampler.close()


def _score_all(sources: dict[str, str], folder: Path, recipe: Recipe, stats: PhaseStats) -> list[dict]:
    samples = [r for r in read_journal(folder / "samples.jsonl") if not r.get("empty") and r["source"] in sources]
    scored = {(r["source"], r["k"]) for r in read_journal(folder / "journal.jsonl")}
    pending = [s for s in samples if (s["source"], s["k"]) not in scored]
    if pending:
        paths, keys = render_phase(recipe, [s["prompt"] for s in pending], stats)
        records = score_phase(recipe, paths, [sources[s["source"]] for s in pending], stats)
        with Journal(folder / "journal.jsonl") as journal:
            for s, rec, key in zip(pending, records, keys):
                journal.append({**s, "scores": rec["scores"], "render_key": key})
    return read_journal(folder / "journal.jsonl")


def build_triples(sources: dict[str, str], scored: list[dict], cfg: Rank) -> list[dict]:
    by_source: dict[str, list[dict]] = {}
    for r in scored:
        by_source.setdefault(r["source"], []).append(r)
    triples = []
    for sid, original in sources.items():
        for t in PAIRINGS[cfg.pairing](by_source.get(sid, []), cfg):
            triples.append({"prompt": original, **t, "source_id": sid})
    return triples


def run_rank(prompts_path: str, recipe: Recipe, run: str | Path, *, round: int = 1,
             sampler_factory: Callable | None = None) -> StageResult:
    """Sample, render, score and pair; writes RUN/rank[-N]/triples.jsonl and records the stage."""
    records = read_prompts(prompts_path)
    if not records:
        raise UserError(f"{prompts_path} has no prompts; give a file with at least one prompt.")
    run = prepare_run_folder(Path(run))
    folder = rank_folder(run, round)
    folder.mkdir(exist_ok=True)
    from paav_cli.evolve import snapshot_sources

    snapshot_sources(folder, records)
    sources = {str(r.id): r.prompt for r in records}
    _sample_all(sources, folder, recipe.rank, sampler_factory or (lambda: booster_sampler(run, round, recipe)))
    stats = PhaseStats()
    scored = _score_all(sources, folder, recipe, stats)
    triples = build_triples(sources, scored, recipe.rank)
    atomic_write_text(folder / "triples.jsonl", "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in triples))
    margins = [t["margin"] for t in triples]
    mean_margin = builtins.round(sum(margins) / len(margins), 4) if margins else None
    result = StageResult(
        folder.name,
        figures={"samples": len(scored), "triples": len(triples), "mean_margin": mean_margin,
                 "pairing": recipe.rank.pairing},
        outputs={"triples": str(folder / "triples.jsonl")},
        # `prompts` is read back by DPO round 2, which re-ranks the same prompts.
        record={"round": round, "sources": len(sources), "prompts": str(Path(prompts_path).resolve()),
                "rendered": stats.rendered, "scored": stats.scored},
    )
    record_stage(run, result)
    return result


def booster_sampler(run: Path, round: int, recipe: Recipe):
    """The model being trained, for sampling: the merged SFT model (round 1) or the merged
    previous DPO round (round N), through transformers with the released sampling settings."""
    from paav_cli.llm.hf import HFChat
    from paav_cli.train.models import model_for_round

    return HFChat(model_for_round(run, round, recipe), top_p=recipe.rank.top_p, top_k=recipe.rank.top_k)

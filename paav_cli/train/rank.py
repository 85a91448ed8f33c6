"""`paav rank`: DPO data. Sample k rewrites per source prompt from the booster being trained, score
them, and pair them into `{"prompt", "chosen", "rejected", "margin", "scores"}` triples.

Two ways to score (`[rank] rewards`):

- video rewards (the paper): render every sample and score the videos, with evolve's phases
  (generator loaded once, each reward model once, all cached);
- text rewards (rewards/text.py: faithfulness, detail, budget): read from the text alone, in about a
  millisecond each; nothing is rendered, and no generator, GPU or torch is needed to score.

Two ways to sample (`[rank] sampler`): `hf`, transformers on the merged model (chat format), or
`gguf`, llama.cpp on the base's GGUF with the round's LoRA as a GGUF LoRA, exactly as `paav enhance
--lora` runs it (the draws of several prompts decoded together): on a 2-core CPU several times faster
than transformers' generate, and the very rewrites users get from the booster. A gguf draw keeps
what the model wrote (`raw`) and what `paav enhance` would make of it (`prompt`: cleaned, or the
original prompt when the draw is unusable, `fallback`). Pairs choose what enhance makes of the best
draw and reject what the model wrote for the worst, so DPO learns away from the model's failures too.

Resumable like evolve: `samples.jsonl` holds every sampled rewrite (asked once per source),
`journal.jsonl` every scored one; a rerun does only what is missing.
"""

from __future__ import annotations

import builtins  # `round` is this stage's round number here
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.prompt_files import read_prompts
from paav_cli.recipe import Rank, Recipe, check_models
from paav_cli.rewards.presets import Preset, get_preset
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


def pair_best_worst(samples: list[dict], cfg: Rank, preset: Preset | None = None) -> list[dict]:
    """Paper: normalise every dimension to 0-5, sum; the best sample is chosen, the worst rejected.
    With text rewards `preset` is their weighting. The chosen sample is never an unusable draw
    (`fallback`); the pair needs a margin above [rank] margin (default 0)."""
    preset = preset or get_preset("paper")
    ranked = sorted(samples, key=lambda s: -preset.combined(s["scores"]))
    usable = [s for s in ranked if not s.get("fallback")]
    if len(ranked) < 2 or not usable:
        return []
    best, worst = usable[0], ranked[-1]
    margin = preset.combined(best["scores"]) - preset.combined(worst["scores"])
    if best is worst or margin <= cfg.min_margin("best-worst"):
        return []
    return [_triple(best, worst, margin, preset.name)]


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
            if margin > cfg.min_margin("released"):
                triples.append(_triple(chosen, rejected, margin, "released-dpo"))
    return triples


PAIRINGS = {"best-worst": pair_best_worst, "released": pair_released}


def _triple(chosen: dict, rejected: dict, margin: float, preset: str) -> dict:
    """What enhance makes of the chosen draw, against what the model wrote for the rejected one."""
    triple = {
        "chosen": chosen["prompt"], "rejected": rejected.get("raw") or rejected["prompt"], "margin": round(margin, 4),
        "scores": {"chosen": chosen["scores"], "rejected": rejected["scores"]}, "preset": preset,
    }
    if rejected.get("fallback"):
        triple["rejected_fallback"] = rejected.get("problem") or True
    return triple


# ---------------------------------------------------------------------------------------------
# Sampling


class GgufSampler:
    """Rewrites drawn by llama.cpp from the base's GGUF with the round's GGUF LoRA, as `paav enhance
    --lora` decodes them: the booster's prompt format, several prompts' draws in one batch, each draw
    with its own seed. Each draw is read as enhance reads it (cleaned and checked), without the retry:
    an unusable draw is kept as one (`fallback`), with what the model wrote."""

    def __init__(self, entry, cfg: Rank, *, threads: int | None = None, parallel: int = 32):
        from paav_cli.enhance import Booster

        self.cfg = cfg
        self.booster = Booster(entry, threads=threads, parallel=parallel)
        self.sources_per_batch = max(1, parallel // cfg.samples)

    def draws(self, prompts: list[str], seeds: list[int]) -> list[list[dict]]:
        """cfg.samples draws of every prompt (draw k of prompt i seeded seeds[i] + k)."""
        from paav_cli.llm.llamacpp import Sampling
        from paav_cli.text.clean import clean, drop_copied_sentences, problem

        cfg = self.cfg
        prepared = [self.booster.request(p) for p in prompts]
        for prompt, (_, tokens) in zip(prompts, prepared):
            if len(tokens) + cfg.max_tokens + 1 > self.booster.model.max_context:
                raise UserError(f"a source prompt is {len(tokens)} tokens with the booster's template, too long for "
                                f"its context with [rank] max_tokens {cfg.max_tokens}; shorten it: {prompt[:60]!r}.")
        jobs = [(i, k) for i in range(len(prompts)) for k in range(cfg.samples)]
        sampling = Sampling(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
        done = self.booster.model.complete(
            [prepared[i][1] for i, _ in jobs], seeds=[seeds[i] + k for i, k in jobs], sampling=sampling,
            stop=prepared[0][0].stop, stable_prefix=self.booster.stable_prefix,
        )
        out: list[list[dict]] = [[] for _ in prompts]
        for (i, k), completion in zip(jobs, done):
            req = prepared[i][0]
            raw = " ".join(f"{req.prefix}{completion.text}".split())
            text = drop_copied_sentences(clean(req.prefix, completion.text))
            issue = problem(prompts[i], text)
            draw = {"prompt": prompts[i] if issue else text, "raw": raw, "tokens": completion.tokens,
                    "finish": completion.finish}
            if issue:
                draw.update(fallback=True, problem=issue)
            out[i].append(draw)
        return out

    def close(self) -> None:
        self.booster.close()


class ChatSampler:
    """A TextGenerator (`generate(messages, n=...)`: HFChat, a test's scripted one) as a rank sampler,
    one source at a time; its texts are taken as they come."""

    sources_per_batch = 1

    def __init__(self, generator, cfg: Rank):
        self.generator, self.cfg = generator, cfg

    def draws(self, prompts: list[str], seeds: list[int]) -> list[list[dict]]:
        from paav_cli.train.chat import prompt_messages

        cfg = self.cfg
        out = []
        for prompt, seed in zip(prompts, seeds):
            texts = self.generator.generate(prompt_messages(prompt), n=cfg.samples, temperature=cfg.temperature,
                                            max_tokens=cfg.max_tokens, seed=seed)
            out.append([{"prompt": t.strip()} for t in texts if t.strip()])
        return out

    def close(self) -> None:
        self.generator.close()


def as_sampler(made, cfg: Rank):
    return made if hasattr(made, "draws") else ChatSampler(made, cfg)


def _sample_all(sources: dict[str, str], folder: Path, cfg: Rank, sampler_factory: Callable,
                log: Callable[[str, bool], None] | None = None) -> dict:
    """Draw cfg.samples rewrites of every source not yet sampled; each source's draws are journaled
    together once they are all there. Source i (in file order) is seeded cfg.seed + 1000 * i, so a
    resumed run draws what an uninterrupted one would."""
    done = {r["source"] for r in read_journal(folder / "samples.jsonl")}
    order = {sid: i for i, sid in enumerate(sources)}
    todo = [sid for sid in sources if sid not in done]
    timing = {"sources": len(todo), "seconds": 0.0}
    if not todo:
        return timing
    started = time.monotonic()
    sampler = as_sampler(sampler_factory(), cfg)
    try:
        with Journal(folder / "samples.jsonl") as journal:
            step = sampler.sources_per_batch
            for start in range(0, len(todo), step):
                part = todo[start:start + step]
                draws = sampler.draws([sources[sid] for sid in part], [cfg.seed + 1000 * order[sid] for sid in part])
                for sid, kept in zip(part, draws):
                    for k, draw in enumerate(kept):
                        journal.append({"source": sid, "k": k, **draw})
                    if not kept:
                        journal.append({"source": sid, "empty": True})
                if log:
                    n = start + len(part)
                    spent = time.monotonic() - started
                    log(f"rank: sampled {n}/{len(todo)} prompts, {spent / n:.1f} s a prompt, "
                        f"about {(len(todo) - n) * spent / n / 60:.0f} min left", n == len(todo))
    finally:
        sampler.close()
    timing["seconds"] = builtins.round(time.monotonic() - started, 1)
    return timing


def _every_minute(every_s: float = 60.0) -> Callable[[str, bool], None]:
    """A progress line on stderr at most once a minute, and the last one, so that `tail -f` on a
    background run's log follows it."""
    shown = [time.monotonic() - every_s]

    def log(line: str, last: bool = False) -> None:
        if last or time.monotonic() - shown[0] >= every_s:
            shown[0] = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    return log


def booster_sampler(run: Path, round: int, recipe: Recipe):
    """The model being trained, for sampling: with [rank] sampler = "hf" the merged model of the round
    (the SFT model, or the previous DPO round's) through transformers with the released sampling
    settings; with "gguf" the base's GGUF and the round's GGUF LoRA through llama.cpp."""
    if recipe.rank.sampler == "gguf":
        return gguf_sampler(run, round, recipe)
    from paav_cli.llm.hf import HFChat
    from paav_cli.train.models import model_for_round

    return HFChat(model_for_round(run, round, recipe), top_p=recipe.rank.top_p, top_k=recipe.rank.top_k)


def gguf_sampler(run: Path, round: int, recipe: Recipe) -> GgufSampler:
    from paav_cli import registry
    from paav_cli.recipe import sampler_booster, start_booster
    from paav_cli.train.models import lora_gguf_for_round

    reg = registry.Registry.load()
    entry = sampler_booster(recipe, reg)
    if round == 1 and recipe.dpo.start != "sft":
        start = start_booster(recipe, reg)
        if start.name != entry.name and not _same_gguf(start, entry):
            raise UserError(f"booster {start.name!r} ([dpo] start) and {entry.name!r} ([rank] booster) are not one "
                            "GGUF, so its adapter would run on another model; name the same booster in both.")
    lora = lora_gguf_for_round(run, round, recipe)
    return GgufSampler(entry.model_copy(update={"prompt_format": recipe.sft.prompt_format, "lora": str(lora)}),
                       recipe.rank)


def _gguf_file(entry) -> Path:
    from paav_cli import registry

    if registry.is_hf_booster(entry):
        from paav_cli.export.hf_booster import booster_gguf

        return booster_gguf(entry).resolve()
    return registry.require_path(entry).resolve()


def _same_gguf(a, b) -> bool:
    from paav_cli.registry import sha256_file

    first, second = _gguf_file(a), _gguf_file(b)
    return first == second or sha256_file(first) == sha256_file(second)


# ---------------------------------------------------------------------------------------------
# Scoring


def _score_all(sources: dict[str, str], folder: Path, recipe: Recipe, stats) -> list[dict]:
    """Video rewards: render every sample not yet scored and score the videos (evolve's phases)."""
    from paav_cli.evolve.phases import render_phase, score_phase

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


def text_scorer_for(recipe: Recipe):
    from paav_cli.rewards.text import text_scorer

    cfg = recipe.rank
    return text_scorer(cfg.rewards, target=cfg.target or recipe.models.generator, weights=cfg.weights,
                       detail_words=cfg.detail_words)


def _score_text(sources: dict[str, str], folder: Path, scorer, stats) -> list[dict]:
    """Text rewards: score every sample not yet scored against its original prompt; renders nothing."""
    samples = [r for r in read_journal(folder / "samples.jsonl") if not r.get("empty") and r["source"] in sources]
    scored = {(r["source"], r["k"]) for r in read_journal(folder / "journal.jsonl")}
    pending = [s for s in samples if (s["source"], s["k"]) not in scored]
    if pending:
        with Journal(folder / "journal.jsonl") as journal:
            for s in pending:
                scores = scorer.score(sources[s["source"]], s["prompt"], fallback=bool(s.get("fallback")))
                journal.append({**s, "scores": scores})
        stats.scored += len(pending)
    return read_journal(folder / "journal.jsonl")


def build_triples(sources: dict[str, str], scored: list[dict], cfg: Rank, preset: Preset | None = None) -> list[dict]:
    by_source: dict[str, list[dict]] = {}
    for r in scored:
        by_source.setdefault(r["source"], []).append(r)
    triples = []
    for sid, original in sources.items():
        found = by_source.get(sid, [])
        pairs = pair_best_worst(found, cfg, preset) if preset is not None else PAIRINGS[cfg.pairing](found, cfg)
        for t in pairs:
            triples.append({"prompt": original, **t, "source_id": sid})
    return triples


# ---------------------------------------------------------------------------------------------
# The stage


def run_rank(prompts_path: str, recipe: Recipe, run: str | Path, *, round: int = 1,
             sampler_factory: Callable | None = None, log: Callable[[str, bool], None] | None = None) -> StageResult:
    """Sample, score (render first with video rewards) and pair; writes RUN/rank[-N]/triples.jsonl
    and records the stage. `sampler_factory` makes the sampler (default: `booster_sampler`); `log(line,
    last)` gets a line of progress after each batch of prompts (default: stderr, once a minute)."""
    from paav_cli.evolve.phases import PhaseStats

    check_models(recipe, stages=["rank"])
    cfg = recipe.rank
    if round > 1 and cfg.sampler == "gguf" and recipe.dpo.adapter != "continue":
        raise UserError('[rank] sampler = "gguf" samples round 2 on from one LoRA of the base, which [dpo] adapter = '
                        '"new" does not make; set adapter = "continue", or sampler = "hf".')
    if cfg.sampler == "hf" and recipe.sft.prompt_format != "chat" and sampler_factory is None:
        raise UserError('[rank] sampler = "hf" prompts in the chat format, and this booster is trained in the '
                        f'{recipe.sft.prompt_format} format; use sampler = "gguf" (llama.cpp, its own format).')
    records = read_prompts(prompts_path)
    if not records:
        raise UserError(f"{prompts_path} has no prompts; give a file with at least one prompt.")
    run = prepare_run_folder(Path(run))
    folder = rank_folder(run, round)
    folder.mkdir(exist_ok=True)
    from paav_cli.evolve import snapshot_sources

    snapshot_sources(folder, records)
    sources = {str(r.id): r.prompt for r in records}
    scorer = text_scorer_for(recipe) if cfg.text else None  # before sampling: a bad target stops it now
    log = log or _every_minute()
    sampling = _sample_all(sources, folder, cfg, sampler_factory or (lambda: booster_sampler(run, round, recipe)), log)
    stats = PhaseStats()
    started = time.monotonic()
    if scorer is not None:
        scored = _score_text(sources, folder, scorer, stats)
        preset = scorer.preset()
    else:
        scored = _score_all(sources, folder, recipe, stats)
        preset = None
    scoring_s = builtins.round(time.monotonic() - started, 2)
    triples = build_triples(sources, scored, cfg, preset)
    atomic_write_text(folder / "triples.jsonl", "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in triples))
    margins = [t["margin"] for t in triples]
    mean_margin = builtins.round(sum(margins) / len(margins), 4) if margins else None
    figures = {"samples": len(scored), "triples": len(triples), "mean_margin": mean_margin, "pairing": cfg.pairing}
    record = {"round": round, "sources": len(sources), "prompts": str(Path(prompts_path).resolve()),
              "rendered": stats.rendered, "scored": stats.scored, "sampler": cfg.sampler,
              "sampled": sampling, "scoring_seconds": scoring_s}
    if scorer is not None:
        figures.update(rewards="text", fallbacks=sum(bool(r.get("fallback")) for r in scored))
        record.update(scorer=scorer.record(), preset=preset.record())
    result = StageResult(
        folder.name, figures=figures, outputs={"triples": str(folder / "triples.jsonl")},
        # `prompts` is read back by DPO round 2, which re-ranks the same prompts.
        record=record,
    )
    record_stage(run, result)
    return result

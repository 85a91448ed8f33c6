"""`paav eval`: compare rewriting methods on a prompt set.

Every method rewrites every prompt (journaled in REPORT/prompts.jsonl as each finishes, so a rerun
redoes nothing). Full mode renders each unique rewrite with the recipe's generator and scores it
against the ORIGINAL prompt with the recipe's reward models (both cached); text-only mode needs no
generator and measures intent preservation, the target generator's token budget, length, fallbacks
and speed. Both write table.md, table.csv, winrate.png and dims.png.
"""

from __future__ import annotations

from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.evaluate.methods import Method, resolve_methods, rewrite
from paav_cli.evaluate.metrics import FULL_TAIL, TEXT_COLUMNS, averaged_dims
from paav_cli.prompt_files import PromptRecord, read_prompts
from paav_cli.recipe import Recipe, check_models
from paav_cli.runs import (
    Journal,
    StageResult,
    atomic_write_text,
    mark_running,
    prepare_run_folder,
    read_journal,
    read_manifest,
    record_stage,
)

DEFAULT_TARGET = "cogvideox-5b"
JOURNAL = "prompts.jsonl"
REWRITE_FIELDS = ("method", "id", "original", "rewritten", "fallback", "seconds", "fallback_reason")
REPORT_FILES = {"table": "table.md", "csv": "table.csv", "winrate": "winrate.png", "dims": "dims.png",
                "journal": JOURNAL}


def run_eval(prompts_path: str, methods: list[str], out_dir: str | Path, *, recipe: Recipe | None = None,
             text_only: bool = False, target: str | None = None, progress=None,
             threads: int | None = None, run: str | Path | None = None) -> StageResult:
    """Rewrite `prompts_path` with every method, evaluate, write the report into `out_dir`.

    `progress(total, description)` may return a bar with advance() and close() (rewriting only).
    With `run`, the eval is recorded as that run folder's "eval" stage (`paav run` gives its own).
    The result's record holds "rows" (one per method, as in table.csv) and "columns".
    """
    if not text_only and recipe is None:
        raise UserError("a full eval renders and scores videos with a recipe's models; give --recipe or --text-only.")
    if run is not None and not read_manifest(Path(run)):
        raise UserError(f"{run} is not a paav run folder (no manifest.json); check the path, or leave out --run.")
    records = read_prompts(str(prompts_path))
    budget = None
    if text_only:
        from paav_cli.enhance import resolve_budget

        target = target or (recipe.models.generator if recipe else DEFAULT_TARGET)
        budget = resolve_budget(target)
    else:
        check_models(recipe, stages=["eval"])
    resolved = resolve_methods(methods)
    folder = prepare_run_folder(Path(out_dir))
    if run is not None:
        mark_running(Path(run), "eval")
    done, new = _rewrite_all(folder / JOURNAL, resolved, records, progress, threads)
    ordered = [done[(m.name, str(r.id))] for m in resolved for r in records]
    if text_only:
        summary = _text_report(folder, resolved, ordered, budget)
    else:
        summary = _full_report(folder, resolved, ordered, recipe)
    _write_journal(folder / JOURNAL, ordered)
    result = _result(summary, folder, len(records), new, len(ordered) - new)
    if run is not None:
        record_stage(Path(run), result)
    return result


def _result(summary: dict, folder: Path, prompts: int, rewritten: int, reused: int) -> StageResult:
    """The few figures a person reads (each method's headline score), the report's files, the rest kept."""
    headline = "intent" if summary["mode"] == "text-only" else "combined"
    figures = {"mode": summary["mode"], "prompts": prompts, "rewritten": rewritten, "reused": reused,
               headline: {row["method"]: row.get(headline) for row in summary["rows"]}}
    outputs = {role: str(folder / name) for role, name in REPORT_FILES.items()}
    return StageResult("eval", figures=figures, outputs=outputs, record=summary)


# ---------------------------------------------------------------------------------------------
# Rewriting, journaled


def _rewrite_all(path: Path, methods: list[Method], records: list[PromptRecord], progress, threads):
    """{(method, id): record} for every method x prompt, rewriting only what the journal lacks."""
    current = {str(r.id): r.prompt for r in records}
    done: dict[tuple[str, str], dict] = {}
    for old in read_journal(path):
        key = (str(old.get("method")), str(old.get("id")))
        if current.get(key[1]) == old.get("original") and "rewritten" in old:
            done[key] = {k: old[k] for k in REWRITE_FIELDS if k in old}
    new = 0
    with Journal(path) as journal:
        for method in methods:
            pending = [r for r in records if (method.name, str(r.id)) not in done]
            bar = progress(len(pending), f"rewriting: {method.name}") if progress and pending else None

            def on_rewrite(record, text, fallback, seconds, reason, method=method) -> None:
                line = {"method": method.name, "id": record.id, "original": record.prompt, "rewritten": text,
                        "fallback": fallback, "seconds": round(seconds, 3)}
                if reason:
                    line["fallback_reason"] = reason
                journal.append(line)
                done[(method.name, str(record.id))] = line

            try:
                rewrite(method, pending, on_rewrite, threads=threads, progress=bar)
            finally:
                if bar:
                    bar.close()
            new += len(pending)
    return done, new


def _write_journal(path: Path, ordered: list[dict]) -> None:
    """The journal again, in method x prompt order, each line completed with its scores or metrics."""
    import json

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))


# ---------------------------------------------------------------------------------------------
# Text-only mode


def _text_report(folder: Path, methods: list[Method], ordered: list[dict], budget) -> dict:
    from paav_cli.evaluate.metrics import Embedder, intent_similarities, text_metrics, text_row
    from paav_cli.evaluate.report import plot_bars, plot_similarity, write_tables

    from paav_cli.text.faithfulness import read_faithfulness

    sims = intent_similarities(Embedder(), [r["original"] for r in ordered], [r["rewritten"] for r in ordered])
    for record, sim in zip(ordered, sims):
        reading = read_faithfulness(record["original"], record["rewritten"])
        record.update(intent=round(sim, 4), faithful=reading.faithful, faithfulness=reading.score,
                      unfaithful=list(reading.problems), **text_metrics(record["rewritten"], budget),
                      target=budget.target)
    by_method = {m.name: [r for r in ordered if r["method"] == m.name] for m in methods}
    rows = [text_row(name, recs) for name, recs in by_method.items()]
    notes = [
        (f"Text only (no videos): {rows[0]['n']} prompts. Intent sim. = mean cosine similarity of original and "
        "rewrite (all-MiniLM-L6-v2). Faithful = share of rewrites in which paav's faithfulness scorer finds "
        "nothing added that contradicts the prompt (an invented person or animal, another time of day or "
        "weather, a dropped or replaced action; each record's `unfaithful` says what); it agrees with strict "
        "human readings on about 4 rewrites in 5 (bench/faithfulness_agreement.py). Budget ok = share of rewrites within the text-encoder budget of "
        f"`{budget.target}` ({budget.limit} tokens, counted with {budget.counter.name}). Fallback = share of "
        "prompts kept as written because the output was unusable. s/prompt = wall time per prompt."),
        "Bold: best in its column (Words and Sentences describe, they have no best).",
    ]
    write_tables(folder, rows, TEXT_COLUMNS, notes)
    plot_similarity(folder / "winrate.png", {n: [r["intent"] for r in recs] for n, recs in by_method.items()})
    plot_bars(folder / "dims.png", rows, TEXT_COLUMNS, "Text metrics per method")
    return {"mode": "text-only", "target": budget.target, "rows": rows,
            "columns": ["method", "n", *[k for k, _, _ in TEXT_COLUMNS]],
            "winrate": "winrate.png shows the distribution of intent similarity per method"}


# ---------------------------------------------------------------------------------------------
# Full mode


def _full_report(folder: Path, methods: list[Method], ordered: list[dict], recipe: Recipe) -> dict:
    from paav_cli.evaluate.metrics import full_row, win_draw_loss
    from paav_cli.evaluate.report import plot_bars, plot_winrate, write_tables
    from paav_cli.evolve.phases import PhaseStats, render_phase, score_phase

    stats = PhaseStats()
    pairs = list(dict.fromkeys((r["rewritten"], r["original"]) for r in ordered))
    texts = list(dict.fromkeys(p[0] for p in pairs))
    videos, _ = render_phase(recipe, texts, stats)
    video_of = dict(zip(texts, videos))
    scored = score_phase(recipe, [video_of[t] for t, _ in pairs], [o for _, o in pairs], stats)
    result = dict(zip(pairs, scored))
    dims: list[str] = []
    for record in ordered:
        found = result[(record["rewritten"], record["original"])]
        record.update(video=found["video"], scores=found["scores"], combined=found["combined"], preset=found["preset"])
        dims += [d for d in found["scores"] if d not in dims]
    by_method = {m.name: [r for r in ordered if r["method"] == m.name] for m in methods}
    rows = [full_row(name, recs, dims) for name, recs in by_method.items()]
    columns = [(d, d, True) for d in dims] + FULL_TAIL
    baseline = {str(r["id"]): r["combined"] for r in ordered if r["method"] == "original"}
    outcomes = {n: win_draw_loss(recs, baseline) for n, recs in by_method.items() if n != "original" and baseline}
    for row in rows:
        if row["method"] in outcomes:
            row["win"], row["draw"], row["loss"] = outcomes[row["method"]]
    write_tables(folder, rows, columns, _full_notes(recipe, rows, dims, outcomes))
    if outcomes:
        plot_winrate(folder / "winrate.png", outcomes)
    else:
        _no_baseline_plot(folder / "winrate.png")
    plot_bars(folder / "dims.png", rows, columns[: len(dims) + 2], f"Reward dimensions per method ({recipe.name})")
    return {"mode": "full", "rows": rows, "columns": ["method", "n", *[k for k, _, _ in columns]],
            "rendered": stats.rendered, "render_cached": stats.render_cached, "scored": stats.scored,
            "score_cached": stats.score_cached}


def _full_notes(recipe: Recipe, rows: list[dict], dims: list[str], outcomes: dict) -> list[str]:
    notes = [
        (f"Rendered with `{recipe.models.generator}` (recipe `{recipe.name}`), {rows[0]['n']} prompts; every video "
        f"scored against the ORIGINAL prompt by {', '.join(f'`{r}`' for r in recipe.models.rewards)}."),
        (f"Avg = mean of {', '.join(averaged_dims(dims))} (paper Table 1 averages the VideoScore dimensions, "
        f"which share one scale). Combined = the `{recipe.scores.preset}` preset."),
        "Fallback = share of prompts kept as written because the output was unusable; s/prompt = rewrite wall time.",
        "Bold: best in its column.",
    ]
    if outcomes:
        notes.append("")
        notes.append("Win / draw / loss vs. `original` by combined score, judged by the reward models, not people "
                     "(paper Fig. 3 used people):")
        notes += [f"- `{name}`: {w} / {d} / {lo}" for name, (w, d, lo) in outcomes.items()]
    return notes


def _no_baseline_plot(path: Path) -> None:
    from paav_cli.evaluate.report import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, "No win rate: add `original` to --methods to compare against it.", ha="center")
    _save(fig, path)
    plt.close(fig)

"""`paav evolve`: reward-guided prompt evolution, the data engine that makes SFT pairs.

`evolve_run` sets up the run folder (sources snapshot, manifest) and runs the engine; `merge_runs`
joins the folders of sharded runs. The engine itself is in engine.py, its state in state.py, and
the mutator it asks is rewriter.py's `load_evolution_mutator`.
"""

from __future__ import annotations

import json
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.evolve.engine import (
    Evolution,
    EvolveOptions,
    EvolveView,
    check_sources,
    select_sources,
    write_pairs,
)
from paav_cli.evolve.report import draw_curves
from paav_cli.evolve.state import EvolveState
from paav_cli.prompt_files import PromptRecord, read_prompts
from paav_cli.recipe import Recipe, check_models, check_same_recipe, recipe_hash
from paav_cli.runs import (
    StageResult,
    atomic_write_text,
    locked_run_folder,
    mark_running,
    prepare_run_folder,
    read_journal,
    read_manifest,
    record_stage,
    update_manifest,
)


def snapshot_sources(folder: Path, sources: list[PromptRecord]) -> None:
    """The first run records its sources; a resumed run must bring the same ones."""
    path = folder / "sources.jsonl"
    lines = [{"id": str(r.id), "prompt": r.prompt} for r in sources]
    if path.exists():
        if read_journal(path) != lines:
            raise UserError(
                f"{folder} holds work on other source prompts (or another --shard); "
                "resume it with the same file, or start a new --run folder."
            )
        return
    atomic_write_text(path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))


def evolve_run(prompts_path: str, recipe: Recipe, run: str, *, mutator: str | None = None,
               max_digits: int | None = None, options: EvolveOptions | None = None,
               view: EvolveView | None = None) -> StageResult:
    """Evolve every prompt of `prompts_path` into RUN/evolve (the paper's data engine): render, score,
    mutate for the recipe's iterations, then write the best rewrites as training pairs.

    Resumable: a rerun on the same run folder redoes no render, score or mutator call the journal
    holds. `mutator` overrides the recipe's; `options` sets budgets and concurrency. Returns the
    "evolve" StageResult (status "stopped" when a budget ended it early), also recorded in the run.
    """
    from paav_cli.evolve.rewriter import load_evolution_mutator

    options = options or EvolveOptions()
    updates = {"models": recipe.models.model_copy(update={"mutator": mutator})} if mutator else {}
    if max_digits is not None:
        updates["evolve"] = recipe.evolve.model_copy(update={"max_digits": max_digits})
    recipe = recipe.model_copy(update=updates)
    check_models(recipe, stages=["evolve"])
    records = read_prompts(prompts_path)
    check_sources(records, prompts_path)
    sources = select_sources(records, recipe.evolve.max_digits, options.shard)
    if not sources:
        raise UserError(f"no prompt of {prompts_path} is left after --max-digits and --shard; loosen them.")
    run_dir = prepare_run_folder(Path(run))
    with locked_run_folder(run_dir):  # a second evolve on this folder would journal everything twice
        check_same_recipe(run_dir, recipe)
        folder = run_dir / "evolve"
        folder.mkdir(exist_ok=True)
        snapshot_sources(folder, sources)
        used = read_manifest(run_dir).get("mutators_used", [])
        update_manifest(run_dir, recipe=recipe.model_dump(), recipe_hash=recipe_hash(recipe),
                        mutators_used=list(dict.fromkeys([*used, recipe.models.mutator])))
        mark_running(run_dir, "evolve")
        engine = Evolution(recipe, run_dir, sources, lambda: load_evolution_mutator(recipe.models.mutator), options, view)
        stats = engine.run().record()
        return finish(engine, run_dir, stats, stopped=stats.pop("stopped") or None)


def finish(engine: Evolution, run_dir: Path, record: dict, stopped: str | None) -> StageResult:
    """Pairs and curves from everything scored so far, recorded as the evolve stage."""
    pairs, without = engine.pairs()
    folder = run_dir / "evolve"
    write_pairs(folder / "pairs.jsonl", pairs)
    outputs = {"pairs": str(folder / "pairs.jsonl"), "journal": str(folder / "journal.jsonl")}
    scored = list(engine.state.scored.values())
    if scored:
        draw_curves(scored, folder / "curves.png", title=f"{engine.recipe.name}: mean score per iteration")
        outputs["curves"] = str(folder / "curves.png")
    figures = {"pairs": len(pairs), "sources": len(engine.sources), "sources_without_target": without,
               "candidates_scored": len(scored), "best_gain": engine.best_gain()}
    result = StageResult("evolve", "stopped" if stopped else "done", figures, outputs, stopped, record)
    record_stage(run_dir, result)
    return result


def merge_runs(runs: list[str], out: str) -> StageResult:
    """Join sharded runs: journals and candidates concatenated, pairs and curves recomputed."""
    manifests = [read_manifest(Path(r)) for r in runs]
    for r, m in zip(runs, manifests):
        if not m.get("recipe"):
            raise UserError(f"{r} is not an evolve run folder (no manifest.json); check the path.")
    if len({m["recipe_hash"] for m in manifests}) != 1:
        raise UserError("these runs used different recipe settings; merge only shards of one recipe.")
    out_dir = prepare_run_folder(Path(out))
    folder = out_dir / "evolve"
    folder.mkdir(exist_ok=True)
    sources = _disjoint_sources(runs)
    for name in ("sources.jsonl", "candidates.jsonl", "journal.jsonl"):
        lines = []
        for r in runs:
            lines += [json.dumps(x, ensure_ascii=False) + "\n" for x in read_journal(Path(r) / "evolve" / name)]
        atomic_write_text(folder / name, "".join(lines))
    recipe = Recipe.model_validate(manifests[0]["recipe"])
    update_manifest(out_dir, recipe=manifests[0]["recipe"], recipe_hash=manifests[0]["recipe_hash"],
                    merged_from=[str(r) for r in runs])
    engine = Evolution(recipe, out_dir, sources, lambda: None)
    unfinished = [r for r, m in zip(runs, manifests) if m.get("stages", {}).get("evolve", {}).get("status") != "done"]
    stopped = f"{', '.join(unfinished)} had not finished; finish them and merge again" if unfinished else None
    return finish(engine, out_dir, {"merged": len(runs)}, stopped)


def _disjoint_sources(runs: list[str]) -> list[PromptRecord]:
    sources, seen = [], set()
    for r in runs:
        for rec in read_journal(Path(r) / "evolve" / "sources.jsonl"):
            if rec["id"] in seen:
                raise UserError(f"source {rec['id']} is in more than one run; merge disjoint shards only.")
            seen.add(rec["id"])
            sources.append(PromptRecord(id=rec["id"], prompt=rec["prompt"]))
    return sources


__all__ = ["EvolveOptions", "EvolveState", "evolve_run", "merge_runs", "recipe_hash"]

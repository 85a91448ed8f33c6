"""`paav run RECIPE --run RUN`: evolve -> sft -> rank -> dpo (rounds) -> export -> eval.

Each stage returns a StageResult and records itself in RUN/manifest.json (runs.record_stage), by
hand or here alike; this module only chooses what runs. A rerun starts at the first stage not
marked done (and each stage resumes its own partial work). `--from` redoes from a stage, `--until`
stops after one. `runs_show` reads what a run folder holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.recipe import Recipe, check_models, check_same_recipe
from paav_cli.runs import StageResult, prepare_run_folder, read_manifest

PACKAGE_DIR = Path(__file__).resolve().parent


def stage_names(recipe: Recipe) -> list[str]:
    return ["evolve", "sft", "rank", *(f"dpo-{r}" for r in range(1, recipe.dpo.rounds + 1)), "export", "eval"]


def data_file(path: str, what: str) -> str:
    """A recipe's data path: relative to the working folder, else to paav's shipped data."""
    for candidate in (Path(path), PACKAGE_DIR / path):
        if candidate.is_file():
            return str(candidate)
    raise UserError(f"the recipe's {what} file {path} does not exist; fix [pipeline] {what} in the recipe.")


def export_path(run: Path, recipe: Recipe) -> Path:
    return run / "export" / f"booster-{recipe.pipeline.export_quant}.gguf"


def _stage_runner(name: str, recipe: Recipe, run: Path, prompts: str | None, force: bool,
                  memory: str | None = None) -> Callable[[], StageResult]:
    p = recipe.pipeline
    if name == "evolve":
        from paav_cli.evolve import EvolveOptions, evolve_run

        return lambda: evolve_run(prompts or data_file(p.prompts, "prompts"), recipe, str(run),
                                  options=EvolveOptions(memory=memory))
    if memory:
        # Only evolve records (and compares) its recipe; the later stages just render with it.
        recipe = recipe.model_copy(update={"render": recipe.render.model_copy(update={"memory": memory})})
    if name == "sft":
        return lambda: _sft(recipe, run, force)
    if name == "rank":
        from paav_cli.train.rank import run_rank

        return lambda: run_rank(data_file(p.held_out, "held_out"), recipe, run)
    if name.startswith("dpo-"):
        from paav_cli.train.rounds import dpo_round

        return lambda: dpo_round(recipe, run, int(name.split("-")[1]), force=True)
    if name == "export":
        return lambda: _export(recipe, run)
    if name == "eval":
        return lambda: _eval(recipe, run)
    raise AssertionError(name)


def _sft(recipe: Recipe, run: Path, force: bool) -> StageResult:
    from paav_cli.train.sft import run_sft

    pairs = run / "evolve" / "pairs.jsonl"
    checkpoints = run / "sft" / "checkpoints"
    resume = not force and checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    return run_sft(pairs, recipe, run, resume=resume, force=not resume)


def _export(recipe: Recipe, run: Path) -> StageResult:
    from paav_cli.export.booster import ExportOptions, export

    out = export_path(run, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    return export(str(run), str(out), ExportOptions(quant=recipe.pipeline.export_quant))


def _eval(recipe: Recipe, run: Path) -> StageResult:
    from paav_cli.evaluate import run_eval

    p = recipe.pipeline
    methods = [str(export_path(run, recipe)) if m == "booster" else m for m in p.eval_methods]
    return run_eval(data_file(p.eval_prompts, "eval_prompts"), methods, run / "eval", recipe=recipe,
                    text_only=p.eval_text_only, target=None, run=run)


def run_recipe(recipe: Recipe, run: str, *, prompts: str | None = None, from_stage: str | None = None,
               until: str | None = None, memory: str | None = None,
               echo: Callable[[str], None] = print,
               on_result: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """The stages from where the run folder stands (or `from_stage`) to `until`; returns what ran.
    `echo` gets the progress lines, `on_result` each stage's result as it finishes (default: its
    lines, echoed). `memory` overrides the recipe's [render] memory mode for every stage; like the
    recipe's own mode it is checked against this machine before the run folder records anything."""
    names = stage_names(recipe)
    todo = _plan(recipe, run, names, prompts, from_stage, until, memory)
    run_dir = prepare_run_folder(Path(run))
    results = []
    for name in names[: names.index(until) + 1 if until else None]:
        if name not in todo:
            if from_stage is None:
                echo(f"{name}: done already")
            continue
        echo(f"{name}: running")
        result = _stage_runner(name, recipe, run_dir, prompts, force=from_stage is not None, memory=memory)()
        results.append(result)
        if on_result:
            on_result(result)
        else:
            for line in result.lines():
                echo(line)
        if not result.done:
            break  # the next stages need this one's work whole
    return results


def _plan(recipe: Recipe, run: str, names: list[str], prompts: str | None, from_stage: str | None,
          until: str | None, memory: str | None) -> list[str]:
    """The stages to run, after every check that can fail before the run folder is touched."""
    for given, flag in ((from_stage, "--from"), (until, "--until")):
        if given is not None and given not in names:
            raise UserError(f"{flag} {given!r} is not a stage of this recipe; the stages are {', '.join(names)}.")
    check_models(recipe, stages=names)
    _check_data(recipe, prompts)
    check_same_recipe(run, recipe)
    from paav_cli.provision import provide_recipe_models

    provide_recipe_models(recipe)  # the tiny test models it names: no stage builds them
    done = {k for k, v in read_manifest(Path(run)).get("stages", {}).items() if v.get("status") == "done"}
    todo = _stages_to_run(names, done, from_stage, until)
    if any(_renders(name, recipe) for name in todo):
        from paav_cli.video.render import check_memory

        check_memory(memory or recipe.render.memory)
    return todo


def _stages_to_run(names: list[str], done: set[str], from_stage: str | None, until: str | None) -> list[str]:
    """Without --from, the stages not done yet; with it, every stage from there on, and any earlier
    one not done yet. Either way up to --until."""
    start = names.index(from_stage) if from_stage else None
    last = names.index(until) if until else len(names) - 1
    return [name for index, name in enumerate(names[: last + 1])
            if name not in done or (start is not None and index >= start)]


def _renders(stage: str, recipe: Recipe) -> bool:
    """Whether a stage loads the generator (sft and export never do; eval not in text-only mode)."""
    if stage in ("sft", "export"):
        return False
    return not (stage == "eval" and recipe.pipeline.eval_text_only)


def _check_data(recipe: Recipe, prompts: str | None) -> None:
    """Every prompt file the stages will read, read now: a bad one stops the run before any work."""
    from paav_cli.prompt_files import read_prompts

    p = recipe.pipeline
    read_prompts(prompts or data_file(p.prompts, "prompts"))
    read_prompts(data_file(p.held_out, "held_out"))
    read_prompts(data_file(p.eval_prompts, "eval_prompts"))


# ---------------------------------------------------------------------------------------------
# paav runs show

# Manifests written before the stage contract kept a stage's figures as flat keys of its entry,
# and no outputs: read through these tables.
OLD_FIGURES = {
    "evolve": ("pairs", "sources", "sources_without_target", "candidates_scored", "best_gain"),
    "sft": ("pairs", "final_loss", "final_eval_loss", "quant"),
    "rank": ("samples", "triples", "mean_margin", "pairing"),
    "dpo": ("triples", "final_loss", "steps"),
    "export": ("bytes", "quant"),
    "eval": (),
}
OLD_OUTPUTS = {"evolve": ("pairs", "evolve/pairs.jsonl"), "sft": ("adapter", "sft"), "rank": ("triples", "triples.jsonl"),
               "dpo": ("adapter", ""), "export": ("gguf", "export"), "eval": ("table", "eval/table.md")}


def runs_show(run: str) -> list[StageResult]:
    """Every stage RUN/manifest.json records, as the stage returned it."""
    manifest = read_manifest(Path(run))
    if not manifest:
        raise UserError(f"{run} is not a paav run folder (no manifest.json); check the path.")
    return [StageResult.from_entry(name, entry, Path(run)) if isinstance(entry.get("figures"), dict)
            else _old_entry(name, entry, Path(run)) for name, entry in manifest.get("stages", {}).items()]


def _old_entry(name: str, entry: dict, run: Path) -> StageResult:
    kind = name.split("-")[0]
    figures = {k: entry[k] for k in OLD_FIGURES.get(kind, ()) if entry.get(k) is not None}
    role, path = OLD_OUTPUTS.get(kind, ("output", name))
    if kind in ("rank", "dpo"):
        path = str(Path(name) / path)  # rank-2/triples.jsonl, dpo-1/
    record = {k: v for k, v in entry.items() if k not in ("status", "stopped") and k not in figures}
    return StageResult(name, entry.get("status", "?"), figures, {role: str(run / path)},
                       entry.get("stopped") or None, record)

"""`paav run RECIPE --run RUN`: evolve -> sft -> rank -> dpo (rounds) -> export -> eval.

Each stage records itself in RUN/manifest.json when it finishes; a rerun starts at the first
stage not marked done (and each stage resumes its own partial work). `--from` redoes from a
stage, `--until` stops after one. `runs_show` prints what a run folder holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.recipe import Recipe
from paav_cli.runs import prepare_run_folder, read_manifest, update_manifest

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
                  memory: str | None = None) -> Callable[[], dict]:
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


def _sft(recipe: Recipe, run: Path, force: bool) -> dict:
    from paav_cli.train.sft import run_sft

    pairs = run / "evolve" / "pairs.jsonl"
    checkpoints = run / "sft" / "checkpoints"
    resume = not force and checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    return run_sft(pairs, recipe, run, resume=resume, force=not resume)


def _export(recipe: Recipe, run: Path) -> dict:
    from paav_cli.export.booster import ExportOptions, export

    out = export_path(run, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = export(str(run), str(out), ExportOptions(quant=recipe.pipeline.export_quant))
    summary = {"status": "done", "gguf": str(out), "bytes": result["bytes"], "quant": result["quant"]}
    update_manifest(run, stages={"export": summary})
    return summary


def _eval(recipe: Recipe, run: Path) -> dict:
    from paav_cli.evaluate import run_eval

    p = recipe.pipeline
    methods = [str(export_path(run, recipe)) if m == "booster" else m for m in p.eval_methods]
    result = run_eval(data_file(p.eval_prompts, "eval_prompts"), methods, run / "eval", recipe=recipe,
                      text_only=p.eval_text_only, target=None)
    summary = {"status": "done", "report": str(run / "eval"), "rows": result["rows"]}
    update_manifest(run, stages={"eval": summary})
    return summary


def run_recipe(recipe: Recipe, run: str, *, prompts: str | None = None, from_stage: str | None = None,
               until: str | None = None, memory: str | None = None,
               echo: Callable[[str], None] = print) -> dict:
    """`memory` overrides the recipe's [render] memory mode for every stage; like the recipe's own
    mode it is checked against this machine before the run folder records anything."""
    names = stage_names(recipe)
    for given, flag in ((from_stage, "--from"), (until, "--until")):
        if given is not None and given not in names:
            raise UserError(f"{flag} {given!r} is not a stage of this recipe; the stages are {', '.join(names)}.")
    _check_models(recipe)
    _check_data(recipe, prompts)
    before = read_manifest(Path(run))
    done = {k for k, v in before.get("stages", {}).items() if v.get("status") == "done"}
    todo = _stages_to_run(names, done, from_stage, until)
    if any(_renders(name, recipe) for name in todo):
        from paav_cli.video.render import check_memory

        check_memory(memory or recipe.render.memory)
    run_dir = prepare_run_folder(Path(run))
    from paav_cli.evolve import recipe_hash

    if before.get("recipe_hash") and before["recipe_hash"] != recipe_hash(recipe):
        raise UserError(f"{run} was made with different recipe settings; resume it with the same recipe, "
                        "or start a new --run folder.")
    for name in names[: names.index(until) + 1 if until else None]:
        if name not in todo:
            if from_stage is None:
                echo(f"{name}: done already")
            continue
        echo(f"{name}: running")
        summary = _stage_runner(name, recipe, run_dir, prompts, force=from_stage is not None, memory=memory)()
        if summary.get("status") not in (None, "done"):
            echo(f"{name}: stopped ({summary.get('stopped') or summary.get('status')}); run again to go on.")
            return read_manifest(run_dir)
        echo(f"{name}: done")
    return read_manifest(run_dir)


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


def _check_models(recipe: Recipe) -> None:
    from paav_cli.registry import Registry

    reg = Registry.load()
    reg.get(recipe.models.generator, "generators")
    for name in recipe.models.rewards:
        reg.get(name, "rewards")
    reg.get(recipe.models.mutator, "mutators")
    reg.get(recipe.sft.base, "base_llms")


# ---------------------------------------------------------------------------------------------
# paav runs show

FIGURES = {
    "evolve": ("pairs", "sources", "sources_without_target", "candidates_scored", "best_gain"),
    "sft": ("pairs", "final_loss", "final_eval_loss", "quant"),
    "rank": ("samples", "triples", "mean_margin", "pairing"),
    "export": ("gguf", "bytes", "quant"),
    "eval": ("report",),
}
OUTPUTS = {"evolve": "evolve/pairs.jsonl", "sft": "sft/", "rank": "rank/triples.jsonl", "export": "export/",
           "eval": "eval/table.md"}


def runs_show(run: str) -> list[dict]:
    manifest = read_manifest(Path(run))
    if not manifest:
        raise UserError(f"{run} is not a paav run folder (no manifest.json); check the path.")
    rows = []
    for name, stage in manifest.get("stages", {}).items():
        kind = "dpo" if name.startswith("dpo-") else "rank" if name.startswith("rank") else name
        keys = FIGURES.get(kind, ("triples", "final_loss", "steps"))
        figures = {k: stage[k] for k in keys if k in stage and stage[k] is not None}
        output = OUTPUTS.get(kind, f"{name}/")
        rows.append({"stage": name, "status": stage.get("status", "?"), "figures": figures,
                     "output": str(Path(run) / (output if kind != "rank" else f"{name}/triples.jsonl"))})
    return rows

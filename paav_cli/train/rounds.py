"""`paav dpo --round N`: round 1 trains on `paav rank`'s triples; round N re-ranks the same prompts
with round N-1's model (the paper's DPO-2) and trains again, each time on top of the previous model:
a fresh LoRA on the merged previous model (`[dpo] adapter = "new"`), or the previous round's own LoRA
trained further on the base (`"continue"`, round 1 starting from RUN/sft or the `[dpo] start` booster's
adapter)."""

from __future__ import annotations

from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.recipe import Recipe, check_models
from paav_cli.runs import StageResult, read_manifest
from paav_cli.train.models import adapter_for_round, base_folder, model_for_round
from paav_cli.train.rank import rank_folder, run_rank


def dpo_round(recipe: Recipe, run: str | Path, round: int = 1, *, force: bool = False, progress=None) -> StageResult:
    """DPO round `round` from the run folder's own files; run_dpo records it (and run_rank a re-ranking)."""
    from paav_cli.train.dpo import run_dpo

    run = Path(run)
    if round < 1:
        raise UserError(f"--round must be 1 or more (got {round}).")
    if round > recipe.dpo.rounds:
        raise UserError(f"the recipe trains {recipe.dpo.rounds} DPO rounds; --round {round} is beyond them.")
    triples = rank_folder(run, round) / "triples.jsonl"
    if round == 1 and not triples.is_file():
        raise UserError(f"{triples} does not exist; run `paav rank PROMPTS --recipe R --run {run}` first.")
    check_models(recipe, stages=[f"dpo-{round}"])
    if recipe.dpo.adapter == "continue":
        adapter, start = adapter_for_round(run, round, recipe), base_folder(recipe)
    else:
        adapter, start = None, model_for_round(run, round, recipe)
    if round > 1 and not triples.is_file():
        first = read_manifest(run).get("stages", {}).get("rank", {})
        if not first.get("prompts"):
            raise UserError(f"{run} has no round-1 ranking to re-rank; run `paav rank` and `paav dpo` first.")
        run_rank(first["prompts"], recipe, run, round=round)
    return run_dpo(triples, recipe, run, round=round, sft_model=start, progress=progress, force=force,
                   start_adapter=adapter)

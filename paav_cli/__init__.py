"""paav: Prompt-A-Video as a tool. Short text-to-video prompts in, model-preferred prompts out.

The Python API (the `paav` command line is a client of it):

    from paav_cli import load_booster
    with load_booster("default") as booster:
        print(booster.enhance("a cat playing piano")[0].text)

and one entry function per stage, each returning a `StageResult` (status, figures, outputs): `evolve_run`,
`run_sft`, `run_rank`, `dpo_round`, `export_booster`, `run_eval`; `run_recipe` runs a whole recipe
(a list of them); `render_records` and `score_videos` work on videos; `load_recipe` reads a recipe.
(The names are the functions' own: `export`, `evolve` and `evaluate` are subpackages here.)

`import paav_cli` is light: every name loads its module on first use, so a script that only
enhances never imports torch, diffusers or transformers.
"""

from __future__ import annotations

__version__ = "0.1.0"

# name -> (module, attribute): loaded on first use (PEP 562).
_API = {
    "load_booster": ("paav_cli.enhance", "load_booster"),
    "Booster": ("paav_cli.enhance", "Booster"),
    "Enhancement": ("paav_cli.enhance", "Enhancement"),
    "render_records": ("paav_cli.video.batch", "render_records"),
    "score_videos": ("paav_cli.rewards.scoring", "score_videos"),
    "evolve_run": ("paav_cli.evolve", "evolve_run"),
    "run_sft": ("paav_cli.train.sft", "run_sft"),
    "run_rank": ("paav_cli.train.rank", "run_rank"),
    "dpo_round": ("paav_cli.train.rounds", "dpo_round"),
    "export_booster": ("paav_cli.export.booster", "export"),
    "run_eval": ("paav_cli.evaluate", "run_eval"),
    "run_recipe": ("paav_cli.pipeline", "run_recipe"),
    "load_recipe": ("paav_cli.recipe", "load_recipe"),
    "StageResult": ("paav_cli.runs", "StageResult"),
    "UserError": ("paav_cli.errors", "UserError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'paav_cli' has no attribute {name!r}")
    from importlib import import_module

    module, attribute = _API[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

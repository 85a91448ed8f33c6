"""Which model each training step starts from, merged on first use into the run folder.

Round 1 of rank and DPO start from the SFT model (base + RUN/sft adapter, merged into
RUN/sft/merged); round N starts from round N-1's DPO model (RUN/dpo-{N-1}/merged).
"""

from __future__ import annotations

from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.recipe import Recipe
from paav_cli.train.base import base_model_folder


def base_folder(recipe: Recipe) -> Path:
    """The recipe's base LLM as a local folder (dequantised from its GGUF on first use)."""
    reg = registry.Registry.load()
    return base_model_folder(reg.get(recipe.sft.base, "base_llms"), reg)


def model_for_round(run: Path, round: int, recipe: Recipe) -> Path:
    from paav_cli.train.merge import merge_adapter

    run = Path(run)
    if round < 1:
        raise UserError(f"--round must be 1 or more (got {round}).")
    if round == 1:
        adapter, start, out = run / "sft", base_folder(recipe), run / "sft" / "merged"
        missing = "run `paav sft` first"
    else:
        adapter = run / f"dpo-{round - 1}"
        start, out = model_for_round(run, round - 1, recipe), adapter / "merged"
        missing = f"run `paav dpo --round {round - 1}` first"
    if (out / "config.json").is_file():
        return out
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} holds no trained adapter; {missing}.")
    return merge_adapter(start, adapter, out)


def resolve_base(adapter: Path, base: str | None) -> Path:
    """The model an adapter was trained on: `--base` (a folder or a registered base LLM), else the
    folder its adapter_config.json names."""
    import json

    if base:
        if Path(base).is_dir():
            return Path(base)
        reg = registry.Registry.load()
        return base_model_folder(reg.get(base, "base_llms"), reg)
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json); check the path.")
    named = json.loads(config.read_text()).get("base_model_name_or_path") or ""
    if not Path(named).is_dir():
        raise UserError(f"the base model of {adapter} ({named or 'not recorded'}) is not here; pass --base.")
    return Path(named)

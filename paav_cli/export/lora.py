"""A PEFT LoRA adapter as a GGUF LoRA adapter (a few MB) that llama.cpp applies on a base GGUF.

The layout is llama.cpp's: `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`,
and for every adapted weight two tensors `<gguf weight name>.lora_a` (rank x in) and `.lora_b`
(out x rank). The base's tensor transforms apply to B (its rows are the weight's output rows:
llama's Q/K rotary permutation); A is untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from paav_cli.errors import UserError

PEFT_PREFIX = "base_model.model."


def _base_name(peft_name: str) -> tuple[str, str] | None:
    """("model.layers.0.self_attn.q_proj.weight", "A") from a PEFT tensor name, else None."""
    name = peft_name.removeprefix(PEFT_PREFIX)
    for part in ("A", "B"):
        marker = f".lora_{part}.weight"
        if name.endswith(marker):
            return name[: -len(marker)] + ".weight", part
    return None


def read_adapter(adapter_dir: Path) -> tuple[dict, dict[str, dict[str, object]]]:
    """(adapter_config, {base weight name: {"A": tensor, "B": tensor}})."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise UserError(f"{adapter_dir} is not a PEFT LoRA adapter (adapter_config.json and "
                        "adapter_model.safetensors); give the folder `paav sft` or `paav dpo` wrote.")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{adapter_dir} holds a {config.get('peft_type')} adapter; only LoRA adapters export to GGUF.")
    pairs: dict[str, dict[str, object]] = {}
    for name, tensor in load_file(str(weights)).items():
        found = _base_name(name)
        if found is None:
            raise UserError(f"{adapter_dir} has tensor {name!r}, which is not a LoRA factor; "
                            "adapters that train embeddings or norms cannot be exported.")
        base, part = found
        pairs.setdefault(base, {})[part] = tensor
    return config, pairs


def export_lora(adapter_dir: Path, base_dir: Path, out: Path, dtype: str = "F16") -> Path:
    """Write the adapter as GGUF for the base model in `base_dir` (its config.json decides names).

    dtype: F16 (half the file; logits within a few 1e-3 of F32) or F32 (exact)."""
    import gguf
    import torch

    from paav_cli.export.names import ARCHITECTURES, SUPPORTED, gguf_name, transform
    from paav_cli.runs import default_file_mode

    config, pairs = read_adapter(adapter_dir)
    base_config = _base_config(base_dir)
    arch = next((ARCHITECTURES[a] for a in base_config.get("architectures") or [] if a in ARCHITECTURES), None)
    if arch is None:
        raise UserError(f"{base_dir} is a {', '.join(base_config.get('architectures') or ['?'])} model; "
                        f"paav exports {', '.join(SUPPORTED)}.")
    base_config = base_config.get("text_config", base_config)
    n_layers = int(base_config["num_hidden_layers"])
    shapes = _base_shapes(base_dir)
    tensors = []
    for hf_name, factors in sorted(pairs.items()):
        try:
            target = gguf_name(arch, hf_name, n_layers)
        except ValueError:
            target = None
        if target is None or set(factors) != {"A", "B"}:
            raise UserError(f"the adapter's {hf_name} does not fit the base model in {base_dir}; "
                            "export it with the base it was trained on.")
        a, b = factors["A"].to(torch.float32), factors["B"].to(torch.float32)
        weight = shapes.get(hf_name) or shapes.get(f"model.language_model.{hf_name.removeprefix('model.')}")
        if weight is None or (b.shape[0], a.shape[1]) != tuple(weight) or a.shape[0] != b.shape[1]:
            raise UserError(f"the adapter's {hf_name} ({b.shape[0]}x{a.shape[1]}) does not fit the base model in "
                            f"{base_dir}; export it with the base it was trained on.")
        b = transform(arch, hf_name, b, base_config)
        stored = torch.float16 if dtype == "F16" else torch.float32
        tensors += [(f"{target}.lora_a", a.to(stored)), (f"{target}.lora_b", b.to(stored))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.get("lora_alpha", config.get("r", 8))))
        for name, tensor in tensors:
            writer.add_tensor(name, tensor.contiguous().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _base_shapes(base_dir: Path) -> dict[str, list[int]]:
    """Every base tensor's shape, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[name] = f.get_slice(name).get_shape()
    return shapes


def _base_config(base_dir: Path) -> dict:
    path = Path(base_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{base_dir} has no config.json; give the base model folder the adapter was trained on.")
    return json.loads(path.read_text())

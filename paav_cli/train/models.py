"""Which model each training step starts from, made on first use inside the run folder.

Two ways a DPO round sits on what came before (`[dpo] adapter`):

- `new` (the released recipe): round 1 of rank and DPO start from the SFT model (base + RUN/sft
  adapter, merged into RUN/sft/merged) and train a fresh LoRA on it; round N starts from round N-1's
  DPO model (RUN/dpo-{N-1}/merged, that round's LoRA merged on top of round N-1's model).
- `continue`: every round trains one and the same LoRA on the base, starting from the previous
  round's (round 1: RUN/sft, or with `[dpo] start = "BOOSTER"` that booster's GGUF LoRA converted into
  RUN/start once). Each round is then a LoRA of the base alone: `paav export --lora` ships it, and
  llama.cpp samples the next round from the base's GGUF with it (`lora_gguf_for_round`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.recipe import Recipe
from paav_cli.train.base import base_model_folder

START = "start"  # RUN/start: a booster's GGUF LoRA as a PEFT adapter ([dpo] start = "BOOSTER")
LORA_GGUF = "adapter.gguf"  # an adapter folder's GGUF LoRA, written for the gguf sampler


def base_folder(recipe: Recipe) -> Path:
    """The recipe's base LLM as a local folder (dequantised from its GGUF on first use)."""
    reg = registry.Registry.load()
    return base_model_folder(reg.get(recipe.sft.base, "base_llms"), reg)


def model_for_round(run: Path, round: int, recipe: Recipe) -> Path:
    """The merged model `round` samples from (rank's hf sampler) and, with adapter = "new", trains on."""
    from paav_cli.train.merge import merge_adapter

    run = Path(run)
    if round < 1:
        raise UserError(f"--round must be 1 or more (got {round}).")
    if recipe.dpo.adapter == "continue":
        adapter = adapter_for_round(run, round, recipe)
        out = adapter / "merged"
        if (out / "config.json").is_file():
            return out
        return merge_adapter(base_folder(recipe), adapter, out)
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


def adapter_for_round(run: Path, round: int, recipe: Recipe) -> Path:
    """With adapter = "continue": the PEFT adapter (on the base) that `round` starts from."""
    run = Path(run)
    if round > 1:
        adapter = run / f"dpo-{round - 1}"
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{adapter} holds no trained adapter; run `paav dpo --round {round - 1}` first.")
        made = json.loads((adapter / "manifest.json").read_text()).get("adapter") if (adapter / "manifest.json").is_file() else None
        if made != "continue":
            raise UserError(f'{adapter} is a LoRA on the merged round {round - 1} model, not on the base; '
                            'continue that run with [dpo] adapter = "new", or start a new --run folder.')
        return adapter
    if recipe.dpo.start == "sft":
        adapter = run / "sft"
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{adapter} holds no trained adapter; run `paav sft` first, or set [dpo] start "
                            "to a booster whose adapter to begin from.")
        return adapter
    return start_adapter(run, recipe)


def start_adapter(run: Path, recipe: Recipe) -> Path:
    """RUN/start: the [dpo] start booster's GGUF LoRA as a PEFT adapter on the [sft] base (made once)."""
    from paav_cli.recipe import start_booster

    out = Path(run) / START
    reg = registry.Registry.load()
    entry = start_booster(recipe, reg)
    lora = registry.expand_path(entry.lora)
    if not lora.is_file():
        raise UserError(f"the adapter of booster {entry.name!r} ({lora}) is not there; reinstall paav or fix its `lora`.")
    stamp = {"booster": entry.name, "lora": str(lora), "lora_sha256": registry.sha256_file(lora)}
    check_start_sha(recipe, entry, stamp["lora_sha256"])
    made = out / "manifest.json"
    if (out / "adapter_config.json").is_file() and made.is_file() and json.loads(made.read_text()) == stamp:
        return out
    peft_from_gguf_lora(lora, base_folder(recipe), out)
    from paav_cli.runs import atomic_write_json

    atomic_write_json(made, stamp)
    return out


def check_start_sha(recipe: Recipe, entry, digest: str) -> None:
    pinned = recipe.dpo.start_sha256
    if pinned and digest != pinned:
        raise UserError(f"the adapter of booster {entry.name!r} is not the one [dpo] start_sha256 pins (it has "
                        f"sha256 {digest[:12]}…, not {pinned[:12]}…); train the start with `paav sft` and set "
                        'start = "sft", or pin this adapter.')


def lora_gguf_for_round(run: Path, round: int, recipe: Recipe) -> Path:
    """The GGUF LoRA (on the base's GGUF) that `round` samples with: the start booster's own file, or the
    starting adapter exported beside it (ADAPTER/adapter.gguf, redone when the adapter is newer)."""
    from paav_cli.recipe import start_booster

    if round == 1 and recipe.dpo.start != "sft":
        entry = start_booster(recipe, registry.Registry.load())
        lora = registry.expand_path(entry.lora)
        if not lora.is_file():
            raise UserError(f"the adapter of booster {entry.name!r} ({lora}) is not there; reinstall paav or fix its `lora`.")
        if recipe.dpo.start_sha256:
            check_start_sha(recipe, entry, registry.sha256_file(lora))
        return lora
    adapter = adapter_for_round(run, round, recipe)
    out = adapter / LORA_GGUF
    weights = adapter / "adapter_model.safetensors"
    if out.is_file() and out.stat().st_mtime >= weights.stat().st_mtime:
        return out
    from paav_cli.export.lora import export_lora

    return export_lora(adapter, base_folder(recipe), out)


def peft_from_gguf_lora(gguf_path: Path, base_dir: Path, out: Path) -> Path:
    """A GGUF LoRA (`paav export --lora`, llama.cpp's layout) back as a PEFT LoRA adapter folder on the
    Hugging Face base in `base_dir`: the inverse of export/lora.py, factor for factor (F16 factors come
    back as the F16 values they are; llama's Q/K rows are permuted back to transformers' layout)."""
    import gguf
    import numpy as np

    from paav_cli.export.lora import _base_config, _base_shapes
    from paav_cli.export.names import ARCHITECTURES, gguf_name

    reader = _read_gguf(gguf_path)
    fields = {name: field for name, field in reader.fields.items()}
    if _field(fields, "general.type") != "adapter" or _field(fields, "adapter.type") != "lora":
        raise UserError(f"{gguf_path} is not a GGUF LoRA adapter; give the file `paav export --lora` wrote.")
    alpha = float(_field(fields, "adapter.lora.alpha"))
    config = _base_config(base_dir)
    arch = next((ARCHITECTURES[a] for a in config.get("architectures") or [] if a in ARCHITECTURES), None)
    text = config.get("text_config", config)
    if arch is None or _field(fields, "general.architecture") != gguf.MODEL_ARCH_NAMES[arch]:
        raise UserError(f"{gguf_path} is a LoRA for a {_field(fields, 'general.architecture')} model, and {base_dir} "
                        "is not one; give the base it was made for.")
    n_layers = int(text["num_hidden_layers"])
    shapes = _base_shapes(base_dir)
    by_gguf = {}
    for hf_name in shapes:
        try:
            target = gguf_name(arch, hf_name, n_layers)
        except ValueError:
            continue
        if target:
            by_gguf[target] = hf_name
    factors: dict[str, dict[str, np.ndarray]] = {}
    for tensor in reader.tensors:
        stem, _, part = tensor.name.rpartition(".lora_")
        if part not in ("a", "b") or stem not in by_gguf:
            raise UserError(f"{gguf_path} has tensor {tensor.name!r}, which no weight of {base_dir} takes; "
                            "give the base it was made for.")
        factors.setdefault(by_gguf[stem], {})[part] = np.array(tensor.data, dtype=np.float32)
    tensors, modules, rank = {}, set(), None
    for hf_name, pair in sorted(factors.items()):
        a, b = pair["a"], _untransform(arch, hf_name, pair["b"], text)
        rows, cols = shapes[hf_name]
        if a.shape[1] != cols or b.shape[0] != rows or a.shape[0] != b.shape[1]:
            raise UserError(f"{gguf_path}'s factors for {hf_name} do not fit {base_dir}; give the base it was made for.")
        rank = rank or a.shape[0]
        module = hf_name.removesuffix(".weight")
        modules.add(module.rsplit(".", 1)[-1])
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    return _write_peft(out, tensors, base_dir, rank or 1, alpha, sorted(modules))


def _read_gguf(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception:  # noqa: BLE001 - a truncated or foreign file fails in several ways
        raise UserError(f"{path} is not a GGUF file; give the adapter `paav export --lora` wrote.") from None


def _field(fields: dict, key: str):
    field = fields.get(key)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8")
    return value[0]


def _untransform(arch, hf_name: str, b, config: dict):
    """lora_B as transformers holds it: export/names.transform undone (only llama's Q/K permutation
    touches a LoRA factor)."""
    import gguf

    if arch != gguf.MODEL_ARCH.LLAMA:
        return b
    n_head = config["num_attention_heads"]
    if hf_name.endswith("self_attn.k_proj.weight"):
        n_head = config.get("num_key_value_heads") or n_head
    elif not hf_name.endswith("self_attn.q_proj.weight"):
        return b
    rows = b.shape[0]
    return b.reshape(n_head, rows // n_head // 2, 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def _write_peft(out: Path, tensors: dict, base_dir: Path, rank: int, alpha: float, modules: list[str]) -> Path:
    import shutil
    import tempfile

    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0, bias="none",
                            task_type="CAUSAL_LM", base_model_name_or_path=str(Path(base_dir).resolve()))
        config.save_pretrained(str(tmp))
        save_file({k: torch.from_numpy(v).contiguous() for k, v in tensors.items()}, str(tmp / "adapter_model.safetensors"))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_base(adapter: Path, base: str | None) -> Path:
    """The model an adapter was trained on: `--base` (a folder or a registered base LLM), else the
    folder its adapter_config.json names."""
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

"""Hugging Face tensor names -> GGUF names, and the per-architecture weight transforms llama.cpp expects.

Shared by the model exporter (`convert.py`) and any adapter exporter: a LoRA's `lora_B` for
`q_proj`/`k_proj` needs the same row permutation as the base weight (`permute_qk`), its `lora_A`
none; a Gemma 3 norm has no LoRA.

Transforms work on numpy arrays and on torch tensors alike (only `reshape`, `swapaxes` and `+`).
"""

from __future__ import annotations

import re
from typing import Any

import gguf

# transformers class -> llama.cpp architecture
ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
    "Gemma3ForCausalLM": gguf.MODEL_ARCH.GEMMA3,
    "Gemma3ForConditionalGeneration": gguf.MODEL_ARCH.GEMMA3,  # its language model only
}
SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM")

# Tensors llama.cpp computes itself or never reads.
_SKIP = re.compile(r"(rotary_emb\.inv_freq|\.rotary_emb\.|masked_bias|attn\.bias$)")
# Multimodal checkpoints keep the language model under a prefix; the vision side is not exported.
_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_NOT_TEXT = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.", "model.multi_modal_projector.",
             "vision_model.")

_maps: dict[tuple[gguf.MODEL_ARCH, int], gguf.TensorNameMap] = {}


def arch_of(arch: str | gguf.MODEL_ARCH) -> gguf.MODEL_ARCH:
    """`"llama"`, `"qwen2"`, `"gemma3"` (or a MODEL_ARCH) -> MODEL_ARCH."""
    if isinstance(arch, gguf.MODEL_ARCH):
        return arch
    for value, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return value
    raise ValueError(f"unknown architecture {arch!r}")


def text_name(hf_name: str) -> str | None:
    """The name inside the language model (multimodal prefixes removed); None for vision tensors."""
    if hf_name.startswith(_NOT_TEXT):
        return None
    for old, new in _PREFIXES:
        if hf_name.startswith(old):
            return new + hf_name[len(old):]
    return hf_name


def gguf_name(arch: str | gguf.MODEL_ARCH, hf_name: str, n_layers: int) -> str | None:
    """The GGUF name of a Hugging Face tensor, or None when llama.cpp does not use it.

    Raises ValueError for a tensor the architecture should not have (a sign of a wrong mapping).
    """
    name = text_name(hf_name)
    if name is None or _SKIP.search(name):
        return None
    key = (arch_of(arch), n_layers)
    if key not in _maps:
        _maps[key] = gguf.get_tensor_name_map(key[0], n_layers)
    mapped = _maps[key].get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ValueError(f"no GGUF name for tensor {hf_name!r} in a {gguf.MODEL_ARCH_NAMES[key[0]]} model")
    return mapped


def permute_qk(weight: Any, n_head: int) -> Any:
    """Reorder a Q or K projection's output rows from Hugging Face's rotate-half rotary layout to
    llama.cpp's interleaved one (`n_head`: the heads of that projection, i.e. the KV heads for K)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def transform(arch: str | gguf.MODEL_ARCH, hf_name: str, tensor: Any, config: dict) -> Any:
    """`tensor` as llama.cpp expects it under `gguf_name(arch, hf_name, ...)`.

    `config`: the text model's config.json dict (for Gemma3ForConditionalGeneration its text_config).
    - llama: q_proj/k_proj rows permuted for llama.cpp's rotary layout (qwen2 and gemma3 use the
      NeoX layout, as transformers does, and need none).
    - gemma3: every RMSNorm weight + 1 (transformers' Gemma3RMSNorm computes x * (1 + w)).
    """
    arch = arch_of(arch)
    name = text_name(hf_name) or hf_name
    if arch == gguf.MODEL_ARCH.LLAMA:
        n_head = config["num_attention_heads"]
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            return permute_qk(tensor, n_head)
        if name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            return permute_qk(tensor, config.get("num_key_value_heads") or n_head)
    if arch == gguf.MODEL_ARCH.GEMMA3 and name.endswith("norm.weight"):
        return tensor + 1
    return tensor

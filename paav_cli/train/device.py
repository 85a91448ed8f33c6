"""Which device and number format training runs in: shared by sft and dpo so that they cannot differ."""

from __future__ import annotations


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX).

    Without those instructions torch computes bf16 gemms in a scalar fallback on one core: the first
    backward() of Gemma 3 270M ran past 14 minutes on an AVX2-only machine, where fp32 takes seconds.
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so probed, not assumed
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def describe_device() -> dict:
    """The device training will use, and whether it computes bf16 natively."""
    import torch

    if torch.cuda.is_available():
        return {"kind": "cuda", "name": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported()}
    return {"kind": "cpu", "name": "cpu", "bf16": cpu_has_bf16()}


def use_bf16(requested: str, device: dict) -> tuple[bool, str | None]:
    """Whether to train in bf16 for a recipe's `dtype`, and a note when the request cannot be honoured.

    `auto` is bf16 on GPUs that have it and fp32 on every CPU (LoRA's small updates want fp32 unless
    bf16 is asked for). `bf16` on a device without bf16 arithmetic falls back to fp32 with a note:
    the result is the same training, only slower or faster, and a recipe must run on any machine.
    """
    if requested == "auto":
        return (device["kind"] == "cuda" and device["bf16"]), None
    if requested != "bf16":
        return False, None
    if device["bf16"]:
        return True, None
    what = "this CPU lacks AVX-512 BF16 and AMX" if device["kind"] == "cpu" else f"{device['name']} lacks bf16"
    return False, f"dtype bf16 was asked for, but {what}: training in fp32 instead"

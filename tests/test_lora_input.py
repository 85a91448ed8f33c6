"""`--lora` with a file that is no adapter for the booster: one sentence with llama.cpp's reason, never a
crash. Run as a process: before the fix, llama.cpp's NULL adapter crashed it with a segfault (exit 139)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, paav

REPO = Path(__file__).resolve().parents[1]


def adapter_file(path: Path, *, arch: str = "llama", n_in: int = 64, rank: int = 4) -> Path:
    """A GGUF LoRA adapter for blk.0.attn_q; n_in other than the tiny booster's 64 is the wrong shape."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    # numpy shapes are the reverse of GGUF's: lora_a is ne (n_in, rank), lora_b ne (rank, n_out).
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((rank, n_in), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((64, rank), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: Path(paav("models", "path", "tiny").stdout.strip()), "general.type"),  # a whole model
        (lambda tmp: (tmp / "noise.gguf").write_bytes(bytes(range(256)) * 64) and tmp / "noise.gguf",
         "failed to load"),
        (lambda tmp: adapter_file(tmp / "gemma.gguf", arch="gemma3"), "arch"),
        (lambda tmp: adapter_file(tmp / "shape.gguf", n_in=48), "shape"),
    ],
    ids=["a-model", "not-gguf", "other-architecture", "wrong-shape"],
)
def test_a_file_that_is_no_adapter_for_the_booster_is_one_sentence(tmp_path, make, reason):
    lora = make(tmp_path)
    proc = paav("-m", "tiny", "--lora", str(lora), "a cat playing piano")
    assert_user_error(proc, "is not a LoRA adapter that fits", reason)


def test_a_fitting_adapter_still_loads(tmp_path):
    lora = adapter_file(tmp_path / "fits.gguf")  # zero factors: loads, and changes nothing
    with_lora = paav("-m", "tiny", "--lora", str(lora), "--seed", "3", "--max-tokens", "12", "a cat")
    without = paav("-m", "tiny", "--seed", "3", "--max-tokens", "12", "a cat")
    assert with_lora.returncode == 0, with_lora.stderr
    assert with_lora.stdout == without.stdout

"""`--lora` with a file that is no adapter for the booster: one sentence with llama.cpp's reason, never a
crash. Run as a process: before the fix, llama.cpp's NULL adapter crashed it with a segfault (exit 139)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, paav, paav_process

REPO = Path(__file__).resolve().parents[1]


def adapter_file(path: Path, *, arch: str = "llama", n_in: int = 64, rank: int = 4, scale: float = 0.0,
                 target: str = "blk.0.attn_q", n_out: int = 64) -> Path:
    """A GGUF LoRA adapter for one of the tiny booster's matrices (blk.0.attn_q: 64 x 64); n_in other
    than 64 is the wrong shape; factors of `scale` times random normals (0: an adapter that changes nothing)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    # numpy shapes are the reverse of GGUF's: lora_a is ne (n_in, rank), lora_b ne (rank, n_out).
    rng = np.random.default_rng(0)
    writer.add_tensor(f"{target}.weight.lora_a", (scale * rng.standard_normal((rank, n_in))).astype(np.float32))
    writer.add_tensor(f"{target}.weight.lora_b", (scale * rng.standard_normal((n_out, rank))).astype(np.float32))
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
    proc = paav_process("-m", "tiny", "--lora", str(lora), "a cat playing piano")  # a segfault ends only it
    assert_user_error(proc, "is not a LoRA adapter that fits", reason)


def test_a_fitting_adapter_still_loads(tmp_path):
    lora = adapter_file(tmp_path / "fits.gguf")  # zero factors: loads, and changes nothing
    with_lora = paav("-m", "tiny", "--lora", str(lora), "--seed", "3", "--max-tokens", "12", "a cat")
    without = paav("-m", "tiny", "--seed", "3", "--max-tokens", "12", "a cat")
    assert with_lora.returncode == 0, with_lora.stderr
    assert with_lora.stdout == without.stdout


def test_all_logits_apply_the_adapter(tmp_path):
    from paav_cli.llm.llamacpp import LlamaCppModel

    base = Path(paav("models", "path", "tiny").stdout.strip())
    logits = []
    # On the output matrix (64 x 344 vocabulary): the tiny booster's attention output is zero, so a
    # change to attn_q would not reach the logits.
    output = {"target": "output", "n_out": 344}
    for lora in (None, adapter_file(tmp_path / "zero.gguf", **output),
                 adapter_file(tmp_path / "big.gguf", scale=0.5, **output)):
        lm = LlamaCppModel(base, n_threads=1, max_parallel=1, lora_path=lora)
        try:
            ids = lm.tokenize("a cat playing piano", add_bos=lm.adds_bos)
            logits.append(lm.all_logits(ids))
        finally:
            lm.close()
    plain, zero, big = logits
    assert plain.shape == (len(ids), 344)
    assert np.array_equal(plain, zero)  # zero factors change nothing
    assert np.abs(plain - big).max() > 1e-3  # and real ones are applied

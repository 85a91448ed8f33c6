"""paav's GGUF export at parity with llama.cpp's own convert_hf_to_gguf.py.

Always: against what the reference wrote for the same tiny models (tests/fixtures/llamacpp_parity,
made by bench/llamacpp_parity.py): same tensors (names, shapes, types, values), same metadata but
for the differences `parity.explain` gives a reason for, same token ids on 50 tricky strings.
Live, when $PAAV_LLAMA_CPP_CONVERTER names an sdist's vendor/llama.cpp: the reference runs here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paav_cli.export import parity

FIXTURES = Path(__file__).parent / "fixtures" / "llamacpp_parity"
TINY = sorted(parity.builders())


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def _assert_parity(ours_path: Path, folder: Path, ref: dict) -> None:
    ours = parity.record(ours_path, folder)
    same_source = ours["source_sha256"] == ref["source_sha256"]
    shapes = {n: (t["shape"], t["type"]) for n, t in ours["tensors"].items()}
    assert shapes == {n: (t["shape"], t["type"]) for n, t in ref["tensors"].items()}
    if not same_source:
        # Built otherwise by this torch / tokenizers: values and token lists cannot be compared.
        pytest.skip("the tiny model was built differently here; run bench/llamacpp_parity.py --write-fixtures")
    unexplained = parity.unexpected_metadata(parity.fields(ours_path), ref["metadata"])
    assert not unexplained, unexplained
    assert not parity.tensor_diff(ours["tensors"], ref["tensors"])
    assert not parity.token_diff(ours["tokens"], ref["tokens"], parity.TRICKY)


def test_every_tiny_model_has_a_fixture():
    assert sorted(p.stem for p in FIXTURES.glob("tiny-*.json")) == TINY


@pytest.mark.parametrize("name", TINY)
def test_export_matches_llama_cpps_converter_output(name, tmp_path):
    from paav_cli.export.convert import convert

    ref = _fixture(name)
    folder = parity.builders()[name](tmp_path / name)
    ours = convert(folder, tmp_path / "paav.gguf")
    if ref.get("forced_pre"):
        assert parity.fields(ours)["tokenizer.ggml.pre"] == ref["forced_pre"]
    _assert_parity(ours, folder, ref)


def test_the_comparison_notices_a_difference(tmp_path, monkeypatch):
    """Negative control: a converter that swaps two tokens' types fails the parity check."""
    import gguf

    from paav_cli.export import convert as convert_module

    real = convert_module._added_type
    monkeypatch.setattr(convert_module, "_added_type",
                        lambda text, special: (text, gguf.TokenType.USER_DEFINED) if text == "<|im_start|>"
                        else real(text, special))
    name = "tiny-qwen25-instruct"
    folder = parity.builders()[name](tmp_path / name)
    ours = convert_module.convert(folder, tmp_path / "paav.gguf")
    with pytest.raises(AssertionError, match="token_type"):
        _assert_parity(ours, folder, _fixture(name))


def test_explained_differences_are_narrow():
    ours = {"general.architecture": "llama", "llama.attention.head_count": 4, "llama.embedding_length": 32,
            "tokenizer.ggml.tokens": ["a", "<|eot_id|>", "<|end_of_text|>"], "tokenizer.ggml.eot_token_id": 1}
    assert parity.explain("tokenizer.ggml.eot_token_id", ours, {}) is not None
    assert parity.explain("tokenizer.ggml.eot_token_id", {**ours, "tokenizer.ggml.eot_token_id": 2}, {}) is None
    assert parity.explain("llama.attention.key_length", ours, {"llama.attention.key_length": 8}) is not None
    assert parity.explain("llama.attention.key_length", ours, {"llama.attention.key_length": 16}) is None
    assert parity.explain("tokenizer.ggml.pre", {"tokenizer.ggml.pre": "gemma4"},
                          {"tokenizer.ggml.pre": "llama-bpe"}) is None


REAL = FIXTURES / "real_gemma-3-270m-gguf.json"


def _real_gemma() -> Path | None:
    """The dequantised default base if the user's cache has it (looked up before the tests isolate theirs)."""
    import os

    from paav_cli import registry

    if os.environ.get("PAAV_TEST_GEMMA_270M"):
        return Path(os.environ["PAAV_TEST_GEMMA_270M"])
    folder = registry.model_cache_dir(registry.Registry.load().get("gemma-3-270m-gguf", "base_llms"))
    return folder if (folder / "config.json").is_file() else None


REAL_GEMMA_270M = _real_gemma()


@pytest.mark.timeout(600)
def test_real_gemma_270m_matches_llama_cpps_converter_output(tmp_path):
    """The default base (dequantised from the default GGUF, tokenizer.json only): 236 tensors identical."""
    from paav_cli.export.convert import convert

    folder = REAL_GEMMA_270M
    if folder is None:
        pytest.skip("the dequantised Gemma 3 270M is not in the cache (`paav models path gemma-3-270m-gguf`)")
    ours = convert(folder, tmp_path / "g.gguf")
    _assert_parity(ours, folder, json.loads(REAL.read_text(encoding="utf-8")))


LIVE = parity.find_reference()


@pytest.mark.skipif(LIVE is None, reason="set PAAV_LLAMA_CPP_CONVERTER to an sdist's vendor/llama.cpp to run it")
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", TINY)
def test_live_reference_converter(name, tmp_path):
    from paav_cli.export.convert import convert

    folder = parity.builders()[name](tmp_path / name)
    ours = convert(folder, tmp_path / "paav.gguf")
    pre = parity.fields(ours).get("tokenizer.ggml.pre")
    ref_path = parity.run_reference(LIVE, folder, tmp_path / "ref.gguf", force_pre=pre)
    ref = parity.record(ref_path, folder)
    _assert_parity(ours, folder, ref)
    probes = parity.TRICKY[:10]
    for a, b in zip(parity.logits(ours, probes), parity.logits(ref_path, probes)):
        assert (a == b).all()

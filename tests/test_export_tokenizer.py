"""GGUF export of real checkpoints' tokenizer layouts: Gemma's SentencePiece user-defined pieces and
tokenizer.json-only folders, Llama-3 / Qwen2.5 end-of-turn tokens, Qwen's FIM tokens, no duplicate keys."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from paav_cli.testing import tiny_export


def _fields(path: Path) -> dict:
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}


def _llama_ids(path: Path, texts: list[str]) -> list[list[int]]:
    from paav_cli.export import parity

    return parity.tokenize(path, texts)


WHITESPACE = ["a  cat", "a   cat", "a    cat", "a     cat", "x\n\ny", "x\n\n\ny", "\t\tz", "  lead", "end  ",
              "mixed \t\t  \n\n x", "  ", "a \n\n  b"]


@pytest.fixture(scope="module")
def gemma_spm(tmp_path_factory) -> Path:
    return tiny_export.build_tiny_gemma3_spm(tmp_path_factory.mktemp("spm") / "gemma")


def test_sentencepiece_user_defined_whitespace_tokens_tokenize_as_sentencepiece(gemma_spm, tmp_path):
    """llama.cpp matches user-defined tokens against the raw text: '▁▁' must be written as two spaces."""
    import gguf
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from paav_cli.export.convert import convert

    path = convert(gemma_spm, tmp_path / "g.gguf")
    fields = _fields(path)
    sp = spm.SentencePieceProcessor(model_file=str(gemma_spm / "tokenizer.model"))
    two = sp.piece_to_id("▁▁")
    assert fields["tokenizer.ggml.tokens"][two] == "  "
    assert fields["tokenizer.ggml.token_type"][two] == gguf.TokenType.USER_DEFINED

    tok = AutoTokenizer.from_pretrained(gemma_spm)
    got = _llama_ids(path, WHITESPACE)
    for text, ids in zip(WHITESPACE, got):
        assert ids == [sp.bos_id(), *sp.encode(text)], (text, ids, sp.encode(text, out_type=str))
        assert ids == tok(text).input_ids, text


def test_gemma_folder_with_only_tokenizer_json_exports_and_verifies(tmp_path):
    """paav's own gemma-3-270m-gguf base has no tokenizer.model; llama.cpp reads Gemma's tokenizer.json
    as BPE with its "gemma4" pre-tokenizer (spaces as '▁', merges over the whole text)."""
    from transformers import AutoTokenizer

    from paav_cli.export import parity
    from paav_cli.export.convert import convert
    from paav_cli.export.verify import verify

    folder = tiny_export.build_tiny_gemma3_tokenizer_json(tmp_path / "gemma")
    assert not (folder / "tokenizer.model").exists()
    path = convert(folder, tmp_path / "g.gguf")
    fields = _fields(path)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gemma4"
    assert len(fields["tokenizer.ggml.merges"]) > 0
    report = verify(folder, path)
    assert report["ok"], report
    tok = AutoTokenizer.from_pretrained(folder)
    texts = WHITESPACE + parity.TRICKY
    got = _llama_ids(path, texts)
    mismatches = [(t, g, tok(t).input_ids) for t, g in zip(texts, got) if g != tok(t).input_ids]
    assert not mismatches, mismatches


def test_a_tokenizer_json_paav_cannot_reproduce_is_still_refused(tmp_path):
    import json

    from paav_cli.errors import UserError
    from paav_cli.export.convert import convert

    folder = tiny_export.build_tiny_gemma3_tokenizer_json(tmp_path / "gemma")
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tj["normalizer"] = {"type": "Lowercase"}
    (folder / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    with pytest.raises(UserError, match="tokenizer"):
        convert(folder, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists()


@pytest.mark.parametrize(("builder", "eot"), [
    (tiny_export.build_tiny_llama3_instruct, "<|eot_id|>"),
    (tiny_export.build_tiny_qwen25_instruct, "<|im_end|>"),
])
def test_end_of_turn_token_is_the_templates_not_the_first_extra_stop_id(builder, eot, tmp_path):
    from transformers import AutoTokenizer

    from paav_cli.export.convert import convert

    folder = builder(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(folder)
    fields = _fields(convert(folder, tmp_path / "m.gguf"))
    assert fields["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids(eot)
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id


def test_gemma_end_of_turn_is_kept(tmp_path):
    from transformers import AutoTokenizer

    from paav_cli.export.convert import convert
    from paav_cli.testing import tiny_llm

    folder = tiny_llm.build_tiny_gemma3(tmp_path / "gemma")
    fields = _fields(convert(folder, tmp_path / "g.gguf"))
    end_of_turn = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<end_of_turn>")
    assert fields["tokenizer.ggml.eot_token_id"] == end_of_turn


def test_qwen_fim_tokens_are_control(tmp_path):
    """Qwen2.5 marks them special=False; llama.cpp's converter (and its loader) treat <|...|> as control."""
    import gguf
    from transformers import AutoTokenizer

    from paav_cli.export.convert import convert

    folder = tiny_export.build_tiny_qwen25_instruct(tmp_path / "qwen")
    tok = AutoTokenizer.from_pretrained(folder)
    fields = _fields(convert(folder, tmp_path / "q.gguf"))
    types = fields["tokenizer.ggml.token_type"]
    for text in tiny_export.QWEN25_NOT_SPECIAL:
        assert types[tok.convert_tokens_to_ids(text)] == gguf.TokenType.CONTROL, text
    assert fields["tokenizer.ggml.add_bos_token"] is False


def test_add_bos_token_is_written_once(gemma_spm, tmp_path, caplog):
    from paav_cli.export.convert import convert

    with caplog.at_level(logging.WARNING):
        fields = _fields(convert(gemma_spm, tmp_path / "g.gguf"))
    assert not [r for r in caplog.records if "Duplicated key" in r.getMessage()], caplog.text
    assert fields["tokenizer.ggml.add_bos_token"] is True  # Gemma's tokenizer adds <bos>

"""GGUF export: logits, tokenizer and chat-template parity with transformers; quantisation; failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paav_cli.errors import UserError
from paav_cli.testing import tiny_llm

BUILDERS = {
    "tiny-llama": tiny_llm.build_tiny_llama,
    "tiny-qwen2": tiny_llm.build_tiny_qwen2,
    "tiny-gemma3": tiny_llm.build_tiny_gemma3,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-llms")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def f32(models, tmp_path_factory) -> dict[str, Path]:
    from paav_cli.export.convert import convert

    root = tmp_path_factory.mktemp("gguf")
    return {name: convert(folder, root / f"{name}.gguf") for name, folder in models.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_f32_export_matches_transformers(models, f32, name):
    from paav_cli.export.verify import verify

    report = verify(models[name], f32[name])
    assert report["tokens_match"], report["token_mismatches"]
    assert report["chat_template_match"], report["chat_mismatches"]
    assert report["chat_tokens_match"]
    assert report["argmax_agreement"] == 1.0
    if name == "tiny-gemma3":
        # llama.cpp's CPU GELU goes through a float16 table: ~1e-4 on its own, whatever the converter.
        assert report["max_abs_logit_diff_ggml_gelu"] <= 1e-4, report
        assert report["max_abs_logit_diff"] <= 1e-3, report
    else:
        assert report["max_abs_logit_diff"] <= 1e-4, report
    assert report["ok"], report


def test_metadata_and_special_tokens(f32):
    import gguf

    def fields(path):
        reader = gguf.GGUFReader(path)
        return {k: f.contents() for k, f in reader.fields.items()}, [t.name for t in reader.tensors]

    qwen, qwen_tensors = fields(f32["tiny-qwen2"])
    assert qwen["general.architecture"] == "qwen2"
    assert qwen["tokenizer.ggml.model"] == "gpt2" and qwen["tokenizer.ggml.pre"] == "gpt-2"
    assert "tokenizer.ggml.bos_token_id" not in qwen  # Qwen has none: never invented
    assert qwen["tokenizer.ggml.add_bos_token"] is False
    assert "output.weight" not in qwen_tensors  # tied embeddings
    assert "<|im_start|>" in qwen["tokenizer.chat_template"]
    gemma, _ = fields(f32["tiny-gemma3"])
    assert gemma["gemma3.attention.sliding_window"] == 64
    assert gemma["tokenizer.ggml.eot_token_id"] == 4  # <end_of_turn>, from generation_config
    llama, llama_tensors = fields(f32["tiny-llama"])
    assert "output.weight" in llama_tensors and "rope_freqs.weight" not in llama_tensors
    assert llama["tokenizer.ggml.padding_token_id"] == 4


def test_without_qk_permutation_logits_differ(models, tmp_path, monkeypatch):
    """Negative control: the check notices a llama export whose Q/K rows keep HF's rotary layout."""
    from paav_cli.export import names
    from paav_cli.export.convert import convert
    from paav_cli.export.verify import verify

    monkeypatch.setattr(names, "permute_qk", lambda weight, n_head: weight)
    path = convert(models["tiny-llama"], tmp_path / "unpermuted.gguf")
    report = verify(models["tiny-llama"], path)
    assert not report["ok"]
    assert report["max_abs_logit_diff"] > 1e-3, report
    assert report["tokens_match"]  # only the weights are wrong


def test_llama3_rope_scaling_and_gemma3_sliding_pattern(tmp_path):
    """Llama 3.1's rope scaling (rope_freqs tensor) and a Gemma 3 mixing sliding and full layers,
    probed past the sliding window."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    from paav_cli.export.convert import convert
    from paav_cli.export.verify import verify

    tokenizer = tiny_llm.build_byte_bpe_tokenizer()
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=4096, rope_theta=5000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
    )
    llama = tiny_llm._save_tiny(tmp_path / "llama3", LlamaForCausalLM(config), tokenizer, tokenizer.eos_token_id)
    report = verify(llama, convert(llama, tmp_path / "llama3.gguf"))
    assert report["ok"] and report["max_abs_logit_diff"] <= 1e-4, report

    tokenizer = tiny_llm.build_byte_bpe_tokenizer(
        specials=tiny_llm.GEMMA3_SPECIALS, chat_template=tiny_llm.GEMMA3_CHAT_TEMPLATE,
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
    )
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    gemma = tiny_llm._save_tiny(tmp_path / "gemma", Gemma3ForCausalLM(config), tokenizer, tokenizer.eos_token_id)
    report = verify(gemma, convert(gemma, tmp_path / "gemma.gguf"))
    assert report["n_positions"] > 3 * 8
    assert report["ok"] and report["max_abs_logit_diff_ggml_gelu"] <= 1e-4, report


def test_f16_and_bf16_exports(models, tmp_path):
    from paav_cli.export.convert import convert
    from paav_cli.export.verify import verify

    for outtype in ("F16", "BF16"):
        path = convert(models["tiny-qwen2"], tmp_path / f"q.{outtype}.gguf", outtype=outtype)
        report = verify(models["tiny-qwen2"], path, tolerance=5e-2)
        assert report["ok"], (outtype, report)


def _generate(path: Path) -> list[str]:
    from paav_cli.llm.llamacpp import LlamaCppModel, Sampling

    model = LlamaCppModel(path, n_threads=2, max_parallel=1)
    try:
        tokens = model.encode_prompt(model.chat_prompt([{"role": "user", "content": "a dog"}]))
        out = model.complete([tokens], seeds=[0], sampling=Sampling(temperature=0, max_tokens=4))
        return out
    finally:
        model.close()


def test_quantised_exports_load_and_generate(models, f32, tmp_path):
    """Q8_0 and Q4_K_M from a model whose rows fit k-quant blocks (256), and from the 32-wide tiny
    model, where llama.cpp stores the misfit tensors in a fallback type."""
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from paav_cli.export.convert import convert
    from paav_cli.export.quantize import quantize

    tokenizer = tiny_llm.build_byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    wide = tiny_llm._save_tiny(tmp_path / "wide", LlamaForCausalLM(config), tokenizer, tokenizer.eos_token_id)
    source = convert(wide, tmp_path / "wide.f32.gguf")
    sizes = {"F32": source.stat().st_size}
    for qtype, expect in (("Q8_0", gguf.GGMLQuantizationType.Q8_0), ("Q4_K_M", gguf.GGMLQuantizationType.Q4_K)):
        path = quantize(source, tmp_path / f"wide.{qtype}.gguf", qtype)
        sizes[qtype] = path.stat().st_size
        types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
        assert types["blk.0.attn_q.weight"] == expect, types
        out = _generate(path)
        assert out[0].tokens >= 1
    assert sizes["F32"] > 3 * sizes["Q8_0"] and sizes["Q8_0"] > sizes["Q4_K_M"], sizes

    small = quantize(f32["tiny-llama"], tmp_path / "tiny.Q4_K_M.gguf", "Q4_K_M")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(small).tensors}
    assert types["blk.0.attn_q.weight"] != gguf.GGMLQuantizationType.Q4_K  # 32 columns: a fallback type
    assert _generate(small)[0].tokens >= 1


def test_quantize_bad_input(f32, tmp_path):
    from paav_cli.export.quantize import quantize

    with pytest.raises(UserError, match="Q4_K_M"):
        quantize(f32["tiny-llama"], tmp_path / "x.gguf", "Q3_XYZ")
    with pytest.raises(UserError, match="export the model"):
        quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf", "Q8_0")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(UserError, match="could not quantise"):
        quantize(tmp_path / "junk.gguf", tmp_path / "y.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.gguf"]


def test_bad_input_folders(tmp_path):
    from paav_cli.export.convert import convert

    with pytest.raises(UserError, match="config.json"):
        convert(tmp_path, tmp_path / "out.gguf")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(UserError) as err:
        convert(gpt2, tmp_path / "out.gguf")
    message = str(err.value)
    assert "GPT2LMHeadModel" in message
    assert all(a in message for a in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM"))
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UserError, match="safetensors"):
        convert(llama, tmp_path / "out.gguf")
    with pytest.raises(UserError, match="F32"):
        convert(llama, tmp_path / "out.gguf", outtype="Q4_K_M")
    assert not (tmp_path / "out.gguf").exists()


def test_failing_write_leaves_nothing(models, tmp_path, monkeypatch):
    import gguf

    from paav_cli.export.convert import convert

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "model.gguf").write_bytes(b"previous")
    calls = []
    original = gguf.GGUFWriter.write_tensor_data

    def failing(self, tensor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", failing)
    with pytest.raises(OSError, match="No space"):
        convert(models["tiny-llama"], out_dir / "model.gguf")
    assert [p.name for p in out_dir.iterdir()] == ["model.gguf"]
    assert (out_dir / "model.gguf").read_bytes() == b"previous"  # the old file is untouched


def test_names_api():
    import numpy as np

    from paav_cli import export

    assert export.gguf_name("llama", "model.layers.3.self_attn.q_proj.weight", 4) == "blk.3.attn_q.weight"
    assert export.gguf_name("qwen2", "model.layers.0.self_attn.k_proj.bias", 2) == "blk.0.attn_k.bias"
    assert export.gguf_name("llama", "model.layers.0.self_attn.rotary_emb.inv_freq", 2) is None
    assert export.gguf_name("gemma3", "model.language_model.norm.weight", 2) == "output_norm.weight"
    assert export.gguf_name("gemma3", "model.vision_tower.x.weight", 2) is None
    norm = np.zeros(4, dtype=np.float32)
    assert (export.transform("gemma3", "model.layers.0.input_layernorm.weight", norm, {}) == 1).all()
    q = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    permuted = export.transform("llama", "model.layers.0.self_attn.q_proj.weight", q, {"num_attention_heads": 2})
    assert permuted[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]
    assert export.transform("qwen2", "model.layers.0.self_attn.q_proj.weight", q, {"num_attention_heads": 2}) is q

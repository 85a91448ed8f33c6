"""`paav export` around the converter: LoRA adapters as GGUF, run folders, registration, Ollama,
released-style HF boosters converted on pull, and `paav enhance --lora`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, paav

from paav_cli import registry
from paav_cli.errors import UserError


def tiny_base() -> Path:
    return registry.require_path(registry.Registry.load().get("tiny-llama", "base_llms"))


def make_adapter(base: Path, folder: Path, seed: int = 0) -> Path:
    """A LoRA adapter with non-zero B (a freshly initialised one is a no-op and would prove nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


def llama_logits(gguf_path: Path, tokens: list[int], lora: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), lora_path=str(lora) if lora else None, n_ctx=256, logits_all=True,
                verbose=False, type_k=0, type_v=0, n_threads=2)  # type 0: F32 KV cache
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    return out


def test_lora_gguf_applied_by_llama_cpp_equals_the_merged_model(tmp_path):
    from transformers import AutoTokenizer

    from paav_cli.export.convert import convert
    from paav_cli.export.lora import export_lora
    from paav_cli.train.merge import merge_adapter

    base = tiny_base()
    adapter = make_adapter(base, tmp_path / "adapter")
    merged = merge_adapter(base, adapter, tmp_path / "merged", dtype="fp32")
    convert(merged, tmp_path / "merged.gguf", outtype="F32")
    convert(base, tmp_path / "base.gguf", outtype="F32")
    lora = export_lora(adapter, base, tmp_path / "adapter.gguf", dtype="F32")
    half = export_lora(adapter, base, tmp_path / "adapter-f16.gguf")  # the default: half the size
    assert lora.stat().st_size < (tmp_path / "base.gguf").stat().st_size
    assert half.stat().st_size < 0.6 * lora.stat().st_size
    tokens = AutoTokenizer.from_pretrained(base)("a cat playing piano in warm light")["input_ids"]
    want = llama_logits(tmp_path / "merged.gguf", tokens)
    got = llama_logits(tmp_path / "base.gguf", tokens, lora=lora)
    plain = llama_logits(tmp_path / "base.gguf", tokens)
    assert np.abs(got - want).max() <= 1e-3
    assert np.abs(llama_logits(tmp_path / "base.gguf", tokens, lora=half) - want).max() <= 1e-2
    assert np.abs(plain - want).max() > 1e-2  # the adapter matters: the check could fail


def test_lora_for_another_base_is_refused(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from paav_cli.export.lora import export_lora

    base = tiny_base()
    adapter = make_adapter(base, tmp_path / "adapter")
    config = AutoConfig.from_pretrained(base)
    config.hidden_size, config.intermediate_size = 48, 96  # same architecture, other sizes
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "wider")
    with pytest.raises(UserError, match="does not fit the base model"):
        export_lora(adapter, tmp_path / "wider", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".x.gguf*"))


def test_cli_export_registers_writes_modelfile_and_enhances(tmp_path):
    out = tmp_path / "booster.gguf"
    proc = paav("export", str(tiny_base()), "-o", str(out), "--quant", "F16", "--name", "my-booster", "--ollama",
                "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "done" and result["figures"]["verified"] is True and out.is_file()
    assert result["outputs"] == {"gguf": str(out), "modelfile": str(tmp_path / "Modelfile"),
                                 "registered": str(tmp_path / "config" / "paav" / "models.toml")}
    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./booster.gguf") and 'PARAMETER stop "<|eot_id|>"' in modelfile
    assert "{{ .Prompt }}" in modelfile and "Original prompt:" in modelfile
    listed = paav("models", "path", "my-booster")
    assert listed.stdout.strip() == str(out.resolve())
    enhanced = paav("enhance", "-m", "my-booster", "a cat playing piano", "--json", "--max-tokens", "16")
    assert enhanced.returncode == 0, enhanced.stderr
    assert json.loads(enhanced.stdout)["model"] == "my-booster"
    assert_user_error(paav("export", str(tiny_base()), "-o", str(tmp_path / "b.gguf"), "--name", "my-booster"),
                      "already registered")


def trained_run(tmp_path: Path) -> Path:
    """A run folder as `paav sft` leaves it, without the training: the tiny base stands in for the
    merged SFT model."""
    import shutil

    from paav_cli.recipe import load_recipe, recipe_hash
    from paav_cli.runs import update_manifest

    recipe = load_recipe("tiny-cpu")
    run = tmp_path / "run"
    shutil.copytree(tiny_base(), run / "sft" / "merged")
    update_manifest(run, recipe=recipe.model_dump(), recipe_hash=recipe_hash(recipe))
    return run


def test_a_hand_run_export_of_a_run_folder_is_its_export_stage(tmp_path):
    run = trained_run(tmp_path)
    out = tmp_path / "elsewhere" / "booster.gguf"
    proc = paav("export", str(run), "-o", str(out), "--quant", "F16")
    assert proc.returncode == 0, proc.stderr
    size = out.stat().st_size
    assert proc.stdout.splitlines() == [f"export: done; quant F16, bytes {size}, verified True", f"  gguf: {out}"]
    shown = [json.loads(line) for line in paav("runs", "show", str(run), "--json").stdout.splitlines()]
    assert shown == [{"stage": "export", "status": "done", "stopped": None,
                      "figures": {"quant": "F16", "bytes": size, "verified": True},
                      "outputs": {"gguf": str(out)}}]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["export"]["verify"]["ok"]  # the detail is kept, not printed


def test_cli_enhance_with_a_lora_adapter(tmp_path):
    base = tiny_base()
    adapter = make_adapter(base, tmp_path / "adapter")
    assert paav("export", str(base), "-o", str(tmp_path / "base.gguf"), "--quant", "F32", "--name", "tiny-base-gguf",
                "--no-verify").returncode == 0
    proc = paav("export", str(adapter), "--lora", "-o", str(tmp_path / "lora.gguf"), "--base", str(base))
    assert proc.returncode == 0, proc.stderr
    with_lora = paav("enhance", "-m", "tiny-base-gguf", "--lora", str(tmp_path / "lora.gguf"), "a red car",
                     "--json", "--max-tokens", "8")
    assert with_lora.returncode == 0, with_lora.stderr
    assert_user_error(paav("enhance", "-m", "tiny-base-gguf", "--lora", str(tmp_path / "missing.gguf"), "a red car"),
                      "does not exist")


def test_released_style_hf_booster_is_converted_on_first_use():
    proc = paav("models", "pull", "tiny-hf-booster")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.name == "tiny-hf-booster-Q4_K_M.gguf" and path.is_file()
    enhanced = paav("enhance", "-m", "tiny-hf-booster", "a fox in the snow", "--json", "--max-tokens", "8")
    assert enhanced.returncode == 0, enhanced.stderr


def test_export_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(paav("export", str(empty), "-o", str(tmp_path / "x.gguf")), "run folder")
    assert_user_error(paav("export", str(tiny_base()), "-o", str(tmp_path / "x.bin")), ".gguf")
    assert_user_error(paav("export", str(tiny_base()), "-o", str(tmp_path / "x.gguf"), "--quant", "Q3_XS"), "--quant")
    assert not list(tmp_path.glob("*.gguf"))

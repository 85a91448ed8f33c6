"""The shipped default-booster adapter: its manifest matches its files, it changes the base model's
output, and its training recipe still trains (a few steps on a slice of its data, then exports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paav_cli import registry
from paav_cli.export.adapter_manifest import MANIFEST, check_manifest

REPO = Path(__file__).resolve().parents[1]
ADAPTER = REPO / "adapters" / "default-booster"


def manifest() -> dict:
    return json.loads((ADAPTER / MANIFEST).read_text())


def test_manifest_matches_the_shipped_files_data_recipe_and_base():
    assert check_manifest(ADAPTER) == []
    found = manifest()
    assert "adapter.gguf" in found["files"]
    assert found["data"]["sha256"] == registry.sha256_file(REPO / found["data"]["path"])
    assert found["recipe"]["sha256"] == registry.sha256_file(REPO / found["recipe"]["path"])
    from paav_cli.recipe import load_recipe

    # the recipe may grow stages (rank, dpo); the SFT the adapter was trained with must not change
    assert found["recipe"]["sft"] == load_recipe(str(REPO / found["recipe"]["path"])).sft.model_dump()
    base_gguf = registry.Registry.load().get("default-fewshot", "boosters")
    assert found["base"]["sha256"] == base_gguf.sha256  # trained on the GGUF every install has
    assert found["eval"], "the manifest records the eval figures the adapter shipped with"


def test_manifest_check_finds_a_changed_or_extra_file(tmp_path):
    import shutil

    copy = tmp_path / "adapter"
    shutil.copytree(ADAPTER, copy)
    assert check_manifest(copy) == []
    with open(copy / "adapter.gguf", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    (copy / "notes.txt").write_text("x")
    assert sorted(check_manifest(copy)) == ["adapter.gguf has changed", "notes.txt is not listed"]


def test_registered_booster_points_at_the_shipped_adapter():
    entry = registry.Registry.load().get("default", "boosters")
    assert registry.expand_path(entry.lora).resolve() == (ADAPTER / "adapter.gguf").resolve()
    assert entry.prompt_format == "completion"


@pytest.mark.real_model
def test_adapter_loads_on_the_default_gguf_and_changes_its_output():
    from paav_cli.llm.llamacpp import LlamaCppModel, Sampling
    from paav_cli.text.formats import completion_request

    entry = registry.Registry.load().get("default", "boosters")
    path = registry.require_path(entry)
    request = completion_request("A person is ice skating")
    greedy = Sampling(max_tokens=24, temperature=0.0)
    texts = []
    for lora in (None, registry.expand_path(entry.lora)):
        model = LlamaCppModel(path, n_threads=2, lora_path=lora)
        try:
            tokens = model.encode_prompt(request.text)
            texts.append(model.complete([tokens], seeds=[0], sampling=greedy, stop=request.stop)[0].text)
        finally:
            model.close()
    base, adapted = texts
    assert adapted.strip() and adapted != base


@pytest.mark.real_model
def test_the_recipe_trains_a_step_on_a_slice_and_exports(tmp_path):
    """The real recipe on the real base (dequantised from the default GGUF): one step on 2 short pairs,
    then `--lora` export. The recipe asks for bf16; a CPU without bf16 arithmetic trains in fp32, which
    keeps this a matter of seconds everywhere (in bf16 the first backward() took 14 minutes there)."""
    from paav_cli.export.lora import export_lora
    from paav_cli.recipe import load_recipe
    from paav_cli.train.setup import cpu_has_bf16
    from paav_cli.train.sft import run_sft

    lines = (REPO / "data" / "default_booster_pairs.jsonl").read_text(encoding="utf-8").split("\n")[:2]
    pairs = tmp_path / "slice.jsonl"
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = load_recipe("default-booster")
    assert recipe.sft.dtype == "bf16"
    # Same recipe, one optimizer step: 2 pairs in one batch, cut to 64 tokens, nothing held out.
    sft = recipe.sft.model_copy(
        update={"epochs": 1, "batch_size": 2, "per_device_batch": 2, "eval_fraction": 0.0, "max_length": 64}
    )
    result = run_sft(pairs, recipe.model_copy(update={"sft": sft}), tmp_path / "run", progress=False)
    assert result.done and result.figures["pairs"]["train"] == 2
    assert result.figures["final_loss"] is not None and result.figures["final_loss"] < 10
    manifest = json.loads((tmp_path / "run" / "sft" / "manifest.json").read_text())
    assert manifest["dtype"] == ("bf16" if cpu_has_bf16() else "fp32")
    base = registry.require_path(registry.Registry.load().get(recipe.sft.base, "base_llms"))
    out = export_lora(tmp_path / "run" / "sft", base, tmp_path / "slice.gguf")
    assert out.stat().st_size > 100_000


def test_a_missing_shipped_adapter_is_one_clear_sentence(tmp_path):
    from conftest import assert_user_error, paav, user_models

    user_models(tmp_path, """
[boosters.broken]
path = "{cache}/models/tiny/tiny-booster.gguf"
lora = "{paav}/adapters/nope/adapter.gguf"
prompt_format = "completion"
""")
    proc = paav("-m", "broken", "a cat playing piano")
    assert_user_error(proc, "missing from this install", "reinstall paav")
    assert "{paav}" not in proc.stderr  # the real path, where the user can look

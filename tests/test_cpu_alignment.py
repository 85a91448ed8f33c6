"""Preference alignment on the CPU with text rewards (recipes/tiny-cpu-text.toml, the default booster's
layout on tiny models): sft -> rank (llama.cpp draws of the GGUF LoRA, text rewards, nothing rendered)
-> DPO that continues the adapter -> round 2 re-ranked with round 1's LoRA -> GGUF LoRA export; a DPO
round resumed from its checkpoint; a booster's shipped GGUF LoRA as the start (converted back to PEFT,
rank without torch); and a stage that needs a generator the recipe lacks is one sentence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paav_cli.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a dog running in a park", "a cat sleeping on a sofa", "a red car driving on a road",
           "waves on a beach at sunset", "a bird flying over a lake", "a man riding a bicycle"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def aligned(shared_cache, tmp_path_factory):
    """The tiny recipe's whole chain once: sft, rank, DPO round 1, DPO round 2 (re-ranks), export."""
    from paav_cli.export.lora import export_lora
    from paav_cli.recipe import load_recipe
    from paav_cli.train.models import base_folder
    from paav_cli.train.rank import run_rank
    from paav_cli.train.rounds import dpo_round
    from paav_cli.train.sft import run_sft

    folder = tmp_path_factory.mktemp("cpu-alignment")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAAV_CACHE", str(shared_cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(folder / "hf"))
        recipe = load_recipe("tiny-cpu-text")
        pairs = folder / "pairs.jsonl"
        pairs.write_text("".join((REPO / "data" / "default_booster_pairs.jsonl").read_text().splitlines(True)[:8]))
        run = folder / "run"
        run_sft(pairs, recipe, run, progress=False)
        prompts = write_lines(folder / "prompts.txt", PROMPTS)
        rank = run_rank(str(prompts), recipe, run)
        first = dpo_round(recipe, run, 1, progress=False)
        second = dpo_round(recipe, run, 2, progress=False)
        gguf = export_lora(run / "dpo-2", base_folder(recipe), folder / "tiny-dpo.gguf")
    yield {"recipe": recipe, "run": run, "rank": rank, "first": first, "second": second, "gguf": gguf,
           "folder": folder, "prompts": prompts}


def test_rank_with_text_rewards_then_dpo_continues_the_adapter(aligned):
    from safetensors.torch import load_file

    from paav_cli.runs import read_journal
    from paav_cli.train.rank import text_scorer_for

    run, rank = aligned["run"], aligned["rank"]
    assert rank.record["rendered"] == 0 and rank.record["sampler"] == "gguf"
    assert rank.figures["samples"] == 4 * len(PROMPTS) and rank.figures["triples"] >= 1
    preset = text_scorer_for(aligned["recipe"]).preset()
    for t in read_journal(run / "rank" / "triples.jsonl"):
        assert preset.combined(t["scores"]["chosen"]) > preset.combined(t["scores"]["rejected"])
    samples = read_journal(run / "rank" / "samples.jsonl")
    assert all("raw" in s and s["raw"].startswith(s["prompt"][:1].upper()) for s in samples)  # what the model wrote
    assert (run / "sft" / "adapter.gguf").is_file()  # the SFT adapter as the GGUF LoRA llama.cpp drew with

    manifest = json.loads((run / "dpo-1" / "manifest.json").read_text())
    assert manifest["adapter"] == "continue" and manifest["prompt_format"] == "completion"
    assert manifest["start_adapter"] == str((run / "sft").resolve())
    assert manifest["hyperparameters"]["lora"]["r"] == 8  # the continued adapter's own shape
    assert manifest["epochs"] and "rewards/margins" in manifest["epochs"][0]
    sft, dpo = load_file(run / "sft" / "adapter_model.safetensors"), load_file(run / "dpo-1" / "adapter_model.safetensors")
    assert set(sft) == set(dpo) and not [k for k in dpo if ".ref." in k]  # one adapter, no reference copy
    assert max(float((sft[k] - dpo[k]).abs().max()) for k in sft) > 0  # trained further
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no work folder left behind


def test_round_two_re_ranks_with_round_ones_lora_and_exports(aligned):
    from paav_cli import registry
    from paav_cli.enhance import Booster
    from paav_cli.runs import read_manifest

    run = aligned["run"]
    stages = read_manifest(run)["stages"]
    assert stages["rank-2"]["status"] == "done" and stages["rank-2"]["rendered"] == 0
    assert stages["dpo-2"]["status"] == "done"
    assert (run / "dpo-1" / "adapter.gguf").is_file()  # round 1's LoRA, drawn from for round 2
    second = json.loads((run / "dpo-2" / "manifest.json").read_text())
    assert second["start_adapter"] == str((run / "dpo-1").resolve())
    # the exported round runs on the base's GGUF, as the shipped adapter does
    entry = registry.Registry.load().get("tiny-hf-booster", "boosters")
    with Booster(entry.model_copy(update={"prompt_format": "completion"}), lora=str(aligned["gguf"])) as booster:
        [out] = booster.enhance("a dog running in a park", max_tokens=16)
    assert out.text


def test_a_dpo_round_resumes_from_its_last_checkpoint(aligned, tmp_path):
    from paav_cli.train import dpo as dpo_module
    from paav_cli.train.models import base_folder

    recipe, run = aligned["recipe"], tmp_path / "run"
    shutil.copytree(aligned["run"] / "sft", run / "sft")
    triples = tmp_path / "triples.jsonl"
    rows = [{"prompt": p, "chosen": f"{p.capitalize()}. Warm light falls across the scene.", "rejected": p}
            for p in PROMPTS[:4]]
    triples.write_text("".join(json.dumps(r) + "\n" for r in rows))

    class StopAtStep2:  # a progress object: stopping at step 2, after checkpoint-1 was saved
        def start(self, total, done):
            pass

        def update(self, done, loss):
            if done == 2:
                raise KeyboardInterrupt

        def close(self):
            pass

    kwargs = {"sft_model": base_folder(recipe), "start_adapter": run / "sft"}
    with pytest.raises(KeyboardInterrupt):
        dpo_module.run_dpo(triples, recipe, run, progress=StopAtStep2(), **kwargs)
    work = run / ".dpo-1.work"
    assert (work / "checkpoints" / "checkpoint-1").is_dir() and not (run / "dpo-1").exists()
    result = dpo_module.run_dpo(triples, recipe, run, progress=False, **kwargs)
    manifest = json.loads((run / "dpo-1" / "manifest.json").read_text())
    assert manifest["resumed_from"] == "checkpoint-1" and result.figures["steps"] == 2
    assert [round(e["epoch"]) for e in manifest["epochs"]] == [1]
    assert not work.exists()


@pytest.mark.parametrize("base", ["tiny-llama", "tiny-gemma3"])
def test_a_gguf_lora_converts_back_to_the_peft_adapter(base, tmp_path):
    """export/lora.py and back (llama permutes Q/K rows, Gemma 3 does not): every factor comes back."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from paav_cli import registry
    from paav_cli.export.lora import export_lora
    from paav_cli.recipe import ALL_PROJECTIONS
    from paav_cli.train.models import peft_from_gguf_lora

    folder = registry.require_path(registry.Registry.load().get(base, "base_llms"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=ALL_PROJECTIONS, init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    for dtype, tolerance in (("F32", 0.0), ("F16", 2e-3)):
        gguf = export_lora(tmp_path / "adapter", folder, tmp_path / f"lora-{dtype}.gguf", dtype=dtype)
        back = peft_from_gguf_lora(gguf, folder, tmp_path / f"back-{dtype}")
        original, converted = load_file(tmp_path / "adapter" / "adapter_model.safetensors"), load_file(
            back / "adapter_model.safetensors")
        assert set(original) == set(converted)
        for name in original:
            assert torch.allclose(original[name], converted[name], rtol=tolerance, atol=tolerance * 1e-2), name
        config = json.loads((back / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["lora_alpha"] == 8 and set(config["target_modules"]) == set(ALL_PROJECTIONS)
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        expected = peft.eval()(ids).logits
        fresh = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        got = PeftModel.from_pretrained(fresh, tmp_path / "back-F32").eval()(ids).logits
    assert torch.allclose(expected, got, atol=1e-5)


def test_a_boosters_gguf_lora_is_the_start_and_rank_loads_no_torch(aligned, tmp_path, shared_cache):
    """[dpo] start = a booster with a GGUF LoRA (the default booster's case): rank draws with that file in a
    fresh interpreter that never imports torch; DPO converts it into RUN/start once and trains it."""
    from conftest import user_models

    from paav_cli import registry
    from paav_cli.export.hf_booster import booster_gguf
    from paav_cli.recipe import load_recipe
    from paav_cli.registry import sha256_file
    from paav_cli.train.rounds import dpo_round

    gguf = booster_gguf(registry.Registry.load().get("tiny-hf-booster", "boosters"))
    lora = aligned["run"] / "sft" / "adapter.gguf"
    user_models(tmp_path, f'[boosters.tiny-lora]\npath = "{gguf}"\nlora = "{lora}"\nprompt_format = "completion"\n')
    text = (REPO / "recipes" / "tiny-cpu-text.toml").read_text()
    recipe_path = tmp_path / "start.toml"
    recipe_path.write_text(text.replace('adapter = "continue"\n', 'adapter = "continue"\nstart = "tiny-lora"\n'))
    prompts, run = aligned["prompts"], tmp_path / "run"
    script = (
        "import sys\n"
        "from paav_cli.recipe import load_recipe\n"
        "from paav_cli.train.rank import run_rank\n"
        f"result = run_rank({str(prompts)!r}, load_recipe({str(recipe_path)!r}), {str(run)!r})\n"
        "print(result.figures['samples'], sorted(m for m in ('torch', 'transformers', 'diffusers', 'peft') if m in sys.modules))\n"
    )
    env = {**os.environ, "PAAV_CACHE": str(shared_cache), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == f"{4 * len(PROMPTS)} []", proc.stdout  # no torch, no video stack
    # the same draws as from RUN/sft's own export in the chain above: the same LoRA on the same GGUF
    assert (run / "rank" / "samples.jsonl").read_text() == (aligned["run"] / "rank" / "samples.jsonl").read_text()

    recipe = load_recipe(str(recipe_path))
    result = dpo_round(recipe, run, 1, progress=False)
    stamp = json.loads((run / "start" / "manifest.json").read_text())
    assert stamp == {"booster": "tiny-lora", "lora": str(lora), "lora_sha256": sha256_file(lora)}
    assert result.record["start_adapter"] == str((run / "start").resolve())

    pinned = recipe.model_copy(update={"dpo": recipe.dpo.model_copy(update={"start_sha256": "0" * 64})})
    shutil.rmtree(run / "start")
    with pytest.raises(UserError, match="not the one \\[dpo\\] start_sha256 pins"):
        dpo_round(pinned, run, 1, progress=False, force=True)


def test_stages_that_need_a_generator_the_recipe_lacks_are_one_sentence(tmp_path):
    from conftest import assert_user_error, paav

    prompts = write_lines(tmp_path / "prompts.txt", PROMPTS[:1])
    (tmp_path / "text.toml").write_text('[rank]\nrewards = ["detail"]\n')
    proc = paav("evolve", str(prompts), "-r", str(tmp_path / "text.toml"), "--run", str(tmp_path / "run"))
    assert_user_error(proc, "names no generator in [models], and evolve renders every candidate",
                      "paav models list --role generators")
    (tmp_path / "video.toml").write_text('[sft]\nbase = "tiny-llama"\n')  # rank with video rewards, no generator
    proc = paav("rank", str(prompts), "-r", str(tmp_path / "video.toml"), "--run", str(tmp_path / "run"))
    assert_user_error(proc, "and rank renders its samples to score them with video rewards",
                      '[rank] rewards = ["faithfulness", "detail", "budget"]')
    assert not (tmp_path / "run").exists()

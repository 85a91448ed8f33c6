"""`run_dpo` and `merge_adapter` on the tiny random Llama: one real DPO run shared by the tests that need one."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from paav_cli.errors import UserError
from paav_cli.recipe import ALL_PROJECTIONS, Dpo, Lora, Models, Recipe

TRIPLES = [
    {"prompt": "a cat on a sofa", "chosen": "A fluffy orange cat sleeps on a velvet sofa in warm light.",
     "rejected": "cat"},
    {"prompt": "a dog in a park", "chosen": "A golden dog runs across a green park at sunset, cinematic.",
     "rejected": "dog dog"},
    {"prompt": "a city at night", "chosen": "Neon lights glow over a rainy city street at night, slow camera.",
     "rejected": "city"},
    {"prompt": "waves on a beach", "chosen": "Gentle waves roll onto a white sand beach under a blue sky.",
     "rejected": "water"},
]


def make_recipe(**dpo) -> Recipe:
    settings = {
        "epochs": 2, "batch_size": 2, "per_device_batch": 2, "learning_rate": 1e-2,
        "lora": Lora(r=8, alpha=16, dropout=0.0, targets=ALL_PROJECTIONS),
    }
    return Recipe(models=Models(generator="tiny-wan", rewards=["tiny-aesthetic"]), dpo=Dpo(**{**settings, **dpo}))


def write_triples(path: Path, triples: list[dict], repeat: int = 1) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in triples * repeat), encoding="utf-8")
    return path


def tiny_llama() -> Path:
    from paav_cli import registry

    return registry.require_path(registry.Registry.load().get("tiny-llama", "base_llms"))


def completion_logp(model, tokenizer, prompt: str, completion: str) -> float:
    """sum log p(completion | prompt) under the chat template, as DPO scores it (answer + end of turn)."""
    import torch

    from paav_cli.train.chat import conversation, prompt_messages

    def ids(messages, generation):
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation, tokenize=True, return_dict=True
        )["input_ids"]

    head, full = ids(prompt_messages(prompt), True), ids(conversation(prompt, completion), False)
    assert full[: len(head)] == head
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(1, torch.tensor(full[1:])[:, None])[:, 0]
    return float(logps[len(head) - 1:].sum())


def mean_margin(model, tokenizer) -> float:
    margins = [
        completion_logp(model, tokenizer, t["prompt"], t["chosen"])
        - completion_logp(model, tokenizer, t["prompt"], t["rejected"])
        for t in TRIPLES
    ]
    return sum(margins) / len(margins)


@pytest.fixture(scope="module")
def trained(shared_cache, tmp_path_factory):
    """One DPO round over a stale RUN/dpo-1 (another recipe) with force=True; the trainer is kept for checks."""
    import trl

    from paav_cli.train import dpo as dpo_module

    folder = tmp_path_factory.mktemp("dpo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAAV_CACHE", str(shared_cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(folder / "hf"))
        base = tiny_llama()
        triples = write_triples(folder / "triples.jsonl", TRIPLES, repeat=2)
        run = folder / "run"
        stale = run / "dpo-1"
        stale.mkdir(parents=True)
        (stale / "manifest.json").write_text(json.dumps({"recipe": {"beta": 9}, "triples_sha256": "x"}))
        (stale / "stale.txt").write_text("old")

        seen = []

        class Capturing(trl.DPOTrainer):
            def __init__(self, *args, **kwargs):
                seen.append(kwargs.get("ref_model", "missing"))
                super().__init__(*args, **kwargs)
                seen.append(self)

        mp.setattr(trl, "DPOTrainer", Capturing)
        result = dpo_module.run_dpo(triples, make_recipe(), run, sft_model=base, progress=False, force=True)
    yield {"base": base, "run": run, "result": result, "triples": triples, "ref_arg": seen[0],
           "trainer": seen[1]}


def test_dpo_raises_chosen_minus_rejected_margin(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = trained["base"], trained["run"] / "dpo-1"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    before = mean_margin(model, tokenizer)
    tuned = PeftModel.from_pretrained(model, adapter).eval()
    after = mean_margin(tuned, tokenizer)
    print(f"margin before {before:.3f} after {after:.3f}")
    assert after - before > 1.0, (before, after)

    result = trained["result"]
    assert result.done and result.figures["steps"] == 8 and result.figures["triples"] == 8
    assert result.record["quant"] == "none" and result.record["dtype"] == "fp32"
    epochs = result.record["epochs"]
    assert [e["epoch"] for e in epochs] == [1.0, 2.0]
    assert epochs[-1]["rewards/margins"] > epochs[0]["rewards/margins"]
    assert epochs[-1]["rewards/accuracies"] >= 0.75
    assert result.figures["final_loss"] < 0.69


def test_dpo_outputs_and_manifests(trained):
    from paav_cli.registry import sha256_file
    from paav_cli.runs import default_file_mode

    run, out = trained["run"], trained["run"] / "dpo-1"
    assert not (out / "stale.txt").exists()  # force replaced the other recipe's round
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    assert all(stat.S_IMODE(p.stat().st_mode) == default_file_mode() for p in out.iterdir())  # not private
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["triples_sha256"] == sha256_file(trained["triples"])
    assert manifest["sft_model"] == str(trained["base"].resolve())
    assert manifest["recipe"]["beta"] == 0.1 and manifest["recipe"]["lora"]["r"] == 8
    assert manifest["versions"]["trl"]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(ALL_PROJECTIONS)
    stage = json.loads((run / "manifest.json").read_text())["stages"]["dpo-1"]
    assert stage["status"] == "done" and stage["figures"]["final_loss"] == manifest["final_loss"]
    assert trained["result"].outputs == {"adapter": str(out)}
    assert stage["recipe"] == manifest["recipe"] and stage["versions"] == manifest["versions"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (trained["base"] / name).read_bytes()


def test_reference_is_the_adapter_disabled_model(trained):
    from peft import PeftModel

    trainer = trained["trainer"]
    assert trained["ref_arg"] is None
    assert trainer.ref_model is None  # no second copy of the weights
    assert isinstance(trainer.model, PeftModel)
    assert list(trainer.model.peft_config) == ["default"]  # no "ref" adapter copy either


def test_merge_matches_the_adapter_and_keeps_the_tokenizer(trained, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from paav_cli.train.merge import merge_adapter

    base, adapter = trained["base"], trained["run"] / "dpo-1"
    out = merge_adapter(base, adapter, tmp_path / "merged", dtype="fp32")
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "fp32"
    assert not (out / "adapter_config.json").exists()

    ids = torch.tensor([list(range(3, 60))])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        expected, got = peft_model.eval()(ids).logits, merged.eval()(ids).logits
    assert torch.allclose(expected, got, atol=1e-4)

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    original, saved = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(out)
    assert len(saved) == len(original) and saved.get_vocab() == original.get_vocab()
    rows = AutoModelForCausalLM.from_pretrained(base).get_input_embeddings().weight.shape[0]
    assert merged.get_input_embeddings().weight.shape[0] == rows


def test_merge_leaves_a_tokenizer_without_pad_token_alone(trained, tmp_path):
    from transformers import AutoTokenizer

    from paav_cli.train.merge import merge_adapter

    base = tmp_path / "base"
    shutil.copytree(trained["base"], base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(base)
    assert AutoTokenizer.from_pretrained(base).pad_token is None
    adapter = tmp_path / "adapter"  # the adapter alone: the tokenizer comes from the base
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(trained["run"] / "dpo-1" / name, adapter / name)
    out = merge_adapter(base, adapter, tmp_path / "merged", dtype="fp32")
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.pad_token is None and len(saved) == len(tokenizer)
    assert (out / "tokenizer_config.json").read_bytes() == (base / "tokenizer_config.json").read_bytes()


def test_long_prompts_are_shortened_to_max_prompt_length():
    from transformers import AutoTokenizer

    from paav_cli.train.chat import prompt_messages
    from paav_cli.train.dpo import fit_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama())

    def length(source):
        return len(tokenizer.apply_chat_template(
            prompt_messages(source), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])

    limit = length("") + 12
    long = "a red fox jumps over a lazy dog in the snowy forest while the camera pans slowly " * 5
    fitted, shortened = fit_prompts(tokenizer, ["a cat", long], limit)
    assert shortened == 1 and fitted[0] == "a cat"
    assert length(fitted[1]) <= limit and long.startswith(fitted[1]) and len(fitted[1]) > 10
    with pytest.raises(UserError, match="raise max_prompt_length"):
        fit_prompts(tokenizer, ["a cat"], length("") - 1)


def test_merge_errors(trained, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from paav_cli.train.merge import merge_adapter

    base, adapter = trained["base"], trained["run"] / "dpo-1"
    with pytest.raises(UserError, match="no config.json"):
        merge_adapter(tmp_path / "nowhere", adapter, tmp_path / "out")
    with pytest.raises(UserError, match="no adapter_config.json"):
        merge_adapter(base, tmp_path / "nowhere", tmp_path / "out")
    other = tmp_path / "other"
    config = LlamaConfig(
        vocab_size=600, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(other)
    with pytest.raises(UserError, match="does not fit base model") as err:
        merge_adapter(other, adapter, tmp_path / "out", dtype="fp32")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Refusals before any model loads


def fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_empty_triples_file(tmp_path):
    path = tmp_path / "triples.jsonl"
    path.write_text("\n")
    from paav_cli.train.dpo import run_dpo

    with pytest.raises(UserError, match="has no triples"):
        run_dpo(path, make_recipe(), tmp_path / "run", sft_model=fake_model(tmp_path / "sft"))


def test_malformed_line_is_named(tmp_path):
    from paav_cli.train.dpo import run_dpo

    path = tmp_path / "triples.jsonl"
    path.write_text(json.dumps(TRIPLES[0]) + "\n" + "{not json\n")
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        run_dpo(path, make_recipe(), tmp_path / "run", sft_model=fake_model(tmp_path / "sft"))


def test_line_missing_rejected(tmp_path):
    from paav_cli.train.dpo import run_dpo

    path = write_triples(tmp_path / "triples.jsonl", [TRIPLES[0], {"prompt": "p", "chosen": "c"}])
    with pytest.raises(UserError, match="line 2 has no text in 'rejected'"):
        run_dpo(path, make_recipe(), tmp_path / "run", sft_model=fake_model(tmp_path / "sft"))


def test_bad_round_and_missing_model(tmp_path):
    from paav_cli.train.dpo import run_dpo

    path = write_triples(tmp_path / "triples.jsonl", TRIPLES)
    with pytest.raises(UserError, match="round 0"):
        run_dpo(path, make_recipe(), tmp_path / "run", round=0, sft_model=fake_model(tmp_path / "sft"))
    with pytest.raises(UserError, match="has no config.json"):
        run_dpo(path, make_recipe(), tmp_path / "run", sft_model=tmp_path / "nowhere")
    assert not (tmp_path / "run").exists()


def test_unknown_loss_and_prompt_limit(tmp_path):
    from paav_cli.train.dpo import run_dpo

    path = write_triples(tmp_path / "triples.jsonl", TRIPLES)
    with pytest.raises(UserError, match="not a trl DPO loss"):
        run_dpo(path, make_recipe(loss="sigmod"), tmp_path / "run", sft_model=fake_model(tmp_path / "sft"))
    with pytest.raises(UserError, match="max_prompt_length 600 leaves no room"):
        run_dpo(path, make_recipe(max_prompt_length=600, max_length=512), tmp_path / "run",
                sft_model=fake_model(tmp_path / "sft"))


def test_4bit_needs_cuda(tmp_path, monkeypatch):
    import torch

    from paav_cli.train.dpo import run_dpo

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_triples(tmp_path / "triples.jsonl", TRIPLES)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        run_dpo(path, make_recipe(quant="4bit"), tmp_path / "run", sft_model=fake_model(tmp_path / "sft"))


def test_existing_round_from_another_recipe_is_refused(tmp_path):
    from paav_cli.registry import sha256_file
    from paav_cli.train.dpo import run_dpo

    path = write_triples(tmp_path / "triples.jsonl", TRIPLES)
    recipe = make_recipe()
    out = tmp_path / "run" / "dpo-1"
    out.mkdir(parents=True)
    other = make_recipe(beta=0.5).dpo.model_dump(mode="json")
    (out / "manifest.json").write_text(json.dumps({"recipe": other, "triples_sha256": sha256_file(path)}))
    with pytest.raises(UserError, match="other data or \\[dpo\\] settings; use another --run folder, or add --force"):
        run_dpo(path, recipe, tmp_path / "run", sft_model=fake_model(tmp_path / "sft"))
    # the same recipe on other triples is refused too
    same = recipe.dpo.model_dump(mode="json")
    (out / "manifest.json").write_text(json.dumps({"recipe": same, "triples_sha256": "0" * 64}))
    with pytest.raises(UserError, match="add --force"):
        run_dpo(path, recipe, tmp_path / "run", sft_model=fake_model(tmp_path / "sft"))


def test_completion_rows_are_the_token_sequence_sft_trained_on():
    """The completion format (the default booster's): trl's plain-text rows tokenize to exactly what
    train/chat.py built for SFT (prompt up to "Description:", the answer, EOS), and long prompts are cut."""
    from transformers import AutoTokenizer
    from trl.data_utils import _tokenize

    from paav_cli.train.chat import _completion_ids
    from paav_cli.train.dpo import build_dataset, fit_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama())
    triples = [{"prompt": "a cat on a sofa", "chosen": "A cat on a sofa. Warm  light falls on it.", "rejected": "cat"}]
    [row] = build_dataset(triples, ["a cat on a sofa"], "completion").to_list()
    prompt, full = _completion_ids(tokenizer, "a cat on a sofa", triples[0]["chosen"])
    assert _tokenize(tokenizer, row["prompt"])["input_ids"] == prompt
    assert _tokenize(tokenizer, row["prompt"] + row["chosen"] + tokenizer.eos_token)["input_ids"] == full
    long = "a red fox jumps over a lazy dog in the snowy forest " * 20
    limit = len(tokenizer(build_dataset(triples, [""], "completion")[0]["prompt"])["input_ids"]) + 10
    fitted, shortened = fit_prompts(tokenizer, ["a cat", long], limit, "completion")
    assert shortened == 1 and fitted[0] == "a cat" and long.startswith(fitted[1])


def test_the_cpu_lm_head_keeps_trls_fused_head_contract():
    """dpo.cpu_lm_head against trl's own fused head on the same batch: the same per-token log-probs,
    entropy, mean logits and top-1 flags (zero off the answer), and the same gradients."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from paav_cli.train import setup
    from paav_cli.train.dpo import build_dataset, build_trainer, cpu_lm_head

    base = tiny_llama()
    tokenizer = setup.load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    hw = setup.Hardware(device={"kind": "cuda", "name": "test", "bf16": False}, quant="none", bf16=False,
                        gradient_checkpointing=False)  # "cuda": build_trainer leaves trl's head in place
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(model, tokenizer, build_dataset(TRIPLES, [t["prompt"] for t in TRIPLES]),
                                make_recipe().dpo, hw, Path(out))
        batch = next(iter(trainer.get_train_dataloader()))
        kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        lora = [p for p in trainer.model.parameters() if p.requires_grad]
        with torch.no_grad():  # a LoRA that does something, so that its gradients are not trivially equal
            for p in lora:
                p.add_(torch.randn_like(p) * 0.05)
        results = []
        for patch in (False, True):
            if patch:
                cpu_lm_head(trainer.model)
            trainer.model.zero_grad()
            out = trainer.model(**kwargs, labels=labels, fused_lm_head=True)
            out.log_probs.sum().backward()
            results.append((out, [p.grad.clone() for p in lora]))
    (want, want_grads), (got, got_grads) = results
    mask = labels[:, 1:] != -100
    assert torch.equal(got.label_mask, want.label_mask) and torch.equal(got.label_mask, mask)
    for name in ("log_probs", "entropy", "mean_logits"):
        assert torch.allclose(getattr(got, name), getattr(want, name), atol=1e-4), name
        assert not getattr(got, name)[~mask].any(), name
    assert torch.equal(got.is_top1.bool(), want.is_top1.bool())
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got_grads, want_grads))
    assert torch.allclose(got.loss, want.loss, atol=1e-5)

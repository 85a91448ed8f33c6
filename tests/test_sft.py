"""`run_sft`: the completion mask, LoRA fine-tuning of the tiny chat models, checks before loading, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from paav_cli.errors import UserError
from paav_cli.recipe import ALL_PROJECTIONS, Lora, Models, Recipe, Sft

PAIRS = [
    {"source": f"a cat number {i}", "target": f"A fluffy cat {i} runs across a sunny field at golden hour."}
    for i in range(8)
]
END_OF_TURN = {"tiny-llama": "<|eot_id|>", "tiny-qwen2": "<|im_end|>\n", "tiny-gemma3": "<end_of_turn>\n"}


@pytest.fixture(autouse=True)
def one_thread():
    # On a small shared CPU, torch's thread pool costs tiny models far more than it gives (3-10x slower).
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe(base: str = "tiny-llama", **sft) -> Recipe:
    settings = {"epochs": 1, "batch_size": 2, "learning_rate": 5e-3, "eval_fraction": 0.25,
                "lora": Lora(targets=ALL_PROJECTIONS), **sft}
    return Recipe(models=Models(generator="tiny-wan", rewards=["tiny-aesthetic"]), sft=Sft(base=base, **settings))


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return path


def base_folder(name: str) -> Path:
    from paav_cli.registry import Registry, require_path

    return require_path(Registry.load().get(name, "base_llms"))


def tokenizer_of(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_folder(name))


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".")


# ---------------------------------------------------------------------------------------------
# The completion mask


@pytest.mark.parametrize("base", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_completion_mask_is_exactly_the_answer_and_its_end_of_turn(base):
    from paav_cli.train.chat import tokenize_with_mask

    tokenizer = tokenizer_of(base)
    pair = PAIRS[3]
    row = tokenize_with_mask(tokenizer, pair["source"], pair["target"], max_length=1024)
    ids, mask = row["input_ids"], row["completion_mask"]
    first = mask.index(1)
    assert set(mask[:first]) == {0} and set(mask[first:]) == {1}  # one contiguous answer span, at the end
    assert tokenizer.decode(ids[first:]) == pair["target"] + END_OF_TURN[base]
    assert pair["source"] in tokenizer.decode(ids[:first])


def test_training_prompt_is_what_enhance_sends_even_with_stray_whitespace():
    from paav_cli.text.formats import build_request
    from paav_cli.train.chat import tokenize_with_mask

    tokenizer = tokenizer_of("tiny-llama")
    source = "  a cat playing piano \n"
    row = tokenize_with_mask(tokenizer, source, "A cat plays a grand piano.", 1024)
    trained = row["input_ids"][: row["completion_mask"].index(1)]
    sent = tokenizer.apply_chat_template(build_request("chat", source).messages, add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]
    assert trained == list(sent)


def test_tiny_models_pad_with_a_token_they_already_have():
    from transformers import AutoConfig

    for base in END_OF_TURN:
        tokenizer, config = tokenizer_of(base), AutoConfig.from_pretrained(base_folder(base))
        assert len(tokenizer) == config.vocab_size  # no token beyond the embedding matrix
        assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id < config.vocab_size
        assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_trl_builds_labels_from_our_mask(tmp_path):
    from paav_cli.train.chat import tokenize_with_mask
    from paav_cli.train.setup import resolve_hardware
    from paav_cli.train.sft import build_trainer

    tokenizer = tokenizer_of("tiny-llama")
    rows = [tokenize_with_mask(tokenizer, p["source"], p["target"], 1024) for p in (PAIRS[0], PAIRS[5])]
    rows[1]["input_ids"] = rows[1]["input_ids"][:-3]  # a shorter example, so the batch needs padding
    rows[1]["completion_mask"] = rows[1]["completion_mask"][:-3]
    cfg = recipe().sft
    hw = resolve_hardware("none", "auto", section="sft")
    trainer = build_trainer(base_folder("tiny-llama"), tokenizer, rows, [], cfg, hw, tmp_path / "sft")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]  # no second template, no extra EOS
        expected = [t if m else -100 for t, m in zip(row["input_ids"], row["completion_mask"])]
        assert batch["labels"][i, :n].tolist() == expected
        assert set(batch["labels"][i, n:].tolist()) <= {-100}
        assert batch["attention_mask"][i].sum().item() == n


# ---------------------------------------------------------------------------------------------
# Training


def test_sft_lowers_eval_loss_and_writes_adapter_and_manifest(tmp_path):
    from paav_cli.runs import read_manifest
    from paav_cli.train.sft import run_sft

    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    result = run_sft(pairs, recipe(epochs=3), tmp_path / "run")
    sft = tmp_path / "run" / "sft"
    assert (sft / "adapter_model.safetensors").is_file() and (sft / "adapter_config.json").is_file()
    assert (sft / "tokenizer.json").is_file()
    manifest = json.loads((sft / "manifest.json").read_text())
    epochs = manifest["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["eval_loss"] < epochs[0]["eval_loss"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert manifest["status"] == "done" and manifest["quant"] == "none" and manifest["device"]["kind"] == "cpu"
    assert manifest["pairs"] == {"train": 6, "eval": 2}
    assert len(manifest["data_sha256"]) == 64 and manifest["base"] == "tiny-llama"
    assert manifest["hyperparameters"]["gradient_accumulation_steps"] == 2
    assert manifest["hyperparameters"]["bf16"] is False
    assert manifest["hyperparameters"]["gradient_checkpointing"] is False
    assert set(manifest["versions"]) >= {"torch", "transformers", "trl", "peft"}
    assert result.done and result.figures["final_eval_loss"] == epochs[-1]["eval_loss"]
    assert result.figures["pairs"] == {"train": 6, "eval": 2} and result.figures["epochs"] == 3
    assert result.outputs == {"adapter": str(sft)}
    stage = read_manifest(tmp_path / "run")["stages"]["sft"]
    assert stage["status"] == "done" and stage["figures"]["final_loss"] == epochs[-1]["train_loss"]
    # The run's manifest keeps the settings and versions too; the per-epoch losses stay in RUN/sft.
    assert stage["hyperparameters"] == manifest["hyperparameters"] and stage["versions"] == manifest["versions"]
    assert stage["data_sha256"] == manifest["data_sha256"] and "epochs" not in stage


@pytest.mark.parametrize(
    ("requested", "device", "expected", "noted"),
    [
        ("bf16", {"kind": "cpu", "name": "cpu", "bf16": False}, False, True),  # AVX2 only: fp32, said so
        ("bf16", {"kind": "cpu", "name": "cpu", "bf16": True}, True, False),
        ("auto", {"kind": "cpu", "name": "cpu", "bf16": True}, False, False),  # auto is fp32 on every CPU
        ("auto", {"kind": "cuda", "name": "H100", "bf16": True}, True, False),
        ("bf16", {"kind": "cuda", "name": "T4", "bf16": False}, False, True),
        ("fp32", {"kind": "cuda", "name": "H100", "bf16": True}, False, False),
    ],
)
def test_training_dtype_follows_what_the_device_computes(requested, device, expected, noted):
    from paav_cli.train.setup import use_bf16

    bf16, note = use_bf16(requested, device)
    assert bf16 is expected and (note is not None) is noted


def test_cpu_bf16_probe_agrees_with_the_cpu_flags():
    from paav_cli.train.setup import cpu_has_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = set(cpuinfo.read_text().split())
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_tile"})


def test_bf16_recipe_on_a_cpu_without_bf16_trains_in_fp32_and_says_so(tmp_path, monkeypatch, capsys):
    from paav_cli.train import setup
    from paav_cli.train.sft import run_sft

    monkeypatch.setattr(setup, "cpu_has_bf16", lambda: False)
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:2])
    run_sft(pairs, recipe(dtype="bf16", eval_fraction=0.0), tmp_path / "run", progress=False)
    manifest = json.loads((tmp_path / "run" / "sft" / "manifest.json").read_text())
    assert manifest["dtype"] == "fp32" and "AVX-512 BF16" in manifest["dtype_note"]
    assert manifest["hyperparameters"]["bf16"] is False
    assert "training in fp32" in capsys.readouterr().err


def test_sft_memorises_one_pair(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from paav_cli.train.chat import prompt_messages
    from paav_cli.train.sft import run_sft

    pair = {"source": "a fox in snow", "target": "A red fox leaps through deep snow."}
    pairs = write_pairs(tmp_path / "one.jsonl", [pair] * 8)
    cfg = recipe(epochs=10, batch_size=1, per_device_batch=1, learning_rate=1e-2, eval_fraction=0,
                 lora=Lora(r=8, alpha=16, dropout=0, targets=ALL_PROJECTIONS))
    run_sft(pairs, cfg, tmp_path / "run")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder("tiny-llama")),
                                      tmp_path / "run" / "sft").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "sft")
    inputs = tokenizer.apply_chat_template(prompt_messages(pair["source"]), add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer == pair["target"]


@pytest.mark.parametrize("base", ["tiny-qwen2", "tiny-gemma3"])
def test_sft_smoke_on_other_templates(tmp_path, base):
    from paav_cli.train.sft import run_sft

    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:4])
    result = run_sft(pairs, recipe(base, eval_fraction=0.5), tmp_path / "run")
    assert math.isfinite(result.figures["final_loss"]) and math.isfinite(result.figures["final_eval_loss"])
    assert (tmp_path / "run" / "sft" / "adapter_model.safetensors").is_file()
    config = json.loads((tmp_path / "run" / "sft" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == set(ALL_PROJECTIONS)


class StopInEpochTwo:
    """A progress object that interrupts training at the first step of epoch 2 (epoch 1 is checkpointed)."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch

    def start(self, total, done):
        pass

    def update(self, done, loss):
        if done > self.steps_per_epoch:
            raise KeyboardInterrupt

    def close(self):
        pass


def test_interrupted_sft_resumes_and_records_every_epoch(tmp_path):
    from paav_cli.runs import read_manifest
    from paav_cli.train.sft import run_sft

    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:5])  # 4 train pairs, batch 2: 2 steps per epoch
    cfg, run = recipe(epochs=2, batch_size=2, per_device_batch=2), tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_sft(pairs, cfg, run, progress=StopInEpochTwo(steps_per_epoch=2))
    assert json.loads((run / "sft" / "manifest.json").read_text())["status"] == "running"
    assert read_manifest(run)["stages"]["sft"]["status"] == "running"  # `paav run` will not skip it
    with pytest.raises(UserError, match="unfinished") as e:
        run_sft(pairs, cfg, run)
    assert one_sentence(str(e.value))
    result = run_sft(pairs, cfg, run, resume=True)
    manifest = json.loads((run / "sft" / "manifest.json").read_text())
    assert manifest["status"] == "done" and result.figures["epochs"] == 2
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2]
    assert all(e["train_loss"] is not None and "eval_loss" in e for e in manifest["epochs"])
    # Longer training of the same run goes on from its last checkpoint.
    result = run_sft(pairs, cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"epochs": 3})}), run,
                     resume=True)
    assert result.figures["epochs"] == 3


# ---------------------------------------------------------------------------------------------
# Refusals before any model loads


class ReachedTraining(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """Stops run_sft where training would start (ReachedTraining); returns the times it got there."""
    calls = []

    def reached():
        calls.append(True)
        raise ReachedTraining

    monkeypatch.setattr("paav_cli.train.sft.quiet_training", reached)
    return calls


def test_bad_pairs_files_are_refused(tmp_path, no_training):
    from paav_cli.train.sft import run_sft

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="has no pairs") as e:
        run_sft(empty, recipe(), tmp_path / "run")
    assert one_sentence(str(e.value))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + '{"source": "x", "target": \n')
    with pytest.raises(UserError, match="line 2") as e:
        run_sft(bad, recipe(), tmp_path / "run")
    assert one_sentence(str(e.value))
    with pytest.raises(UserError, match="does not exist"):
        run_sft(tmp_path / "missing.jsonl", recipe(), tmp_path / "run")
    assert no_training == []


def test_unknown_base_and_4bit_on_cpu_are_refused(tmp_path, no_training):
    import torch

    from paav_cli.train.sft import run_sft

    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    with pytest.raises(UserError, match="unknown base LLM 'tiny-lama'; did you mean 'tiny-llama'") as e:
        run_sft(pairs, recipe("tiny-lama"), tmp_path / "run")
    assert one_sentence(str(e.value))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--quant 4bit needs a CUDA GPU") as e:
            run_sft(pairs, recipe(quant="4bit"), tmp_path / "run")
        assert one_sentence(str(e.value))
    assert not (tmp_path / "run" / "sft").exists() and no_training == []


def test_a_run_of_another_recipe_is_replaced_only_with_force(tmp_path, no_training):
    from paav_cli.runs import atomic_write_json
    from paav_cli.train.sft import run_sft

    pairs, run = write_pairs(tmp_path / "pairs.jsonl", PAIRS), tmp_path / "run"
    old = {"status": "done", "data_sha256": "0" * 64, "recipe_sft": recipe().sft.model_dump()}
    atomic_write_json(run / "sft" / "manifest.json", old)
    with pytest.raises(UserError, match="--force") as e:
        run_sft(pairs, recipe(), run)
    assert one_sentence(str(e.value))
    with pytest.raises(UserError, match="nothing to resume") as e:
        run_sft(pairs, recipe(), run, resume=True)
    assert one_sentence(str(e.value)) and no_training == []
    with pytest.raises(ReachedTraining):
        run_sft(pairs, recipe(), run, force=True)
    assert not (run / "sft" / "manifest.json").exists()  # --force cleared the old fine-tune


# ---------------------------------------------------------------------------------------------
# The completion layout (base models without a chat template: the default booster)


def test_completion_mask_is_the_answer_and_eos_after_the_boosters_own_prompt():
    from paav_cli.text.formats import completion_request
    from paav_cli.train.chat import tokenize_with_mask

    tokenizer = tokenizer_of("tiny-gemma3")
    pair = PAIRS[2]
    row = tokenize_with_mask(tokenizer, pair["source"], pair["target"], 1024, prompt_format="completion")
    ids, mask = row["input_ids"], row["completion_mask"]
    first = mask.index(1)
    assert set(mask[:first]) == {0} and set(mask[first:]) == {1}
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[first:-1]).strip() == pair["target"]
    # What enhance sends the model is the trained prompt followed by the answer's forced opening.
    request = completion_request(pair["source"])
    assert request.text == tokenizer.decode(ids[:first], skip_special_tokens=True) + " " + request.prefix


def test_sft_trains_the_completion_layout_with_checkpoints_every_n_steps(tmp_path):
    from paav_cli.train.sft import run_sft

    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:4])
    result = run_sft(pairs, recipe("tiny-gemma3", prompt_format="completion", eval_fraction=0.0,
                                   checkpoint_every=1), tmp_path / "run", progress=False)
    assert result.done and result.figures["pairs"] == {"train": 4, "eval": 0}
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "sft" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]  # 4 pairs, batch 2: one per step


def test_without_a_terminal_progress_is_a_plain_line_per_interval(capsys):
    from paav_cli.train.setup import TrainLog, make_progress

    assert isinstance(make_progress(None), TrainLog)  # pytest's stderr is not a terminal
    log = TrainLog(every_s=3600)
    log.start(total=10, done=0)
    log.update(3, 2.5)  # within the interval: nothing
    log.update(10, 1.25)
    log.update(10, 1.25)  # the trainer reports the last step twice: one line
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fine-tuning: step 10/10, loss 1.2500")

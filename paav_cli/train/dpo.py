"""DPO on top of the (merged) SFT model: a new LoRA adapter, the reference being the same weights without it.

trl 1.16 facts this relies on (read in trl/trainer/dpo_trainer.py):

- Reference model: with `peft_config` given and `ref_model=None`, `DPOTrainer.__init__` wraps the model with
  `get_peft_model` (a fresh "default" adapter, no "ref" adapter: that copy is only made when the model passed is
  already a PeftModel) and sets `self.ref_model = None` because `is_peft_model(self.model)`. The reference
  log-probs are then computed by the same module inside `use_adapter(model, adapter_name=None)`, i.e.
  `model.disable_adapter()`: no second copy of the weights is ever loaded.
- Prompt truncation: `DPOConfig` has no `max_prompt_length` any more (only `max_length`, applied by the collator
  to prompt+completion with `truncation_mode="keep_start"`, and examples whose prompt alone fills `max_length`
  are dropped). So paav shortens the original prompt itself (keeping its start, and the instruction and
  "New prompt:" around it) until the formatted prompt fits `[dpo] max_prompt_length` tokens.
- Chat template: for conversational rows trl tokenizes `prompt` with `add_generation_prompt=True` and
  `prompt + chosen` / `prompt + rejected` without it; the completion starts where the token lists diverge, so
  it is the answer plus the template's end-of-turn tokens. No EOS is appended to conversational rows.
- Plain-text rows (the `completion` prompt format of base models, the default booster's): trl tokenizes
  `prompt` and `prompt + chosen` with the tokenizer's own special tokens (BOS) and appends the EOS token to
  `chosen`/`rejected` itself. paav gives the prompt up to "Description:" and the answer after one space,
  which is exactly the token sequence SFT trained on (train/chat.py `_completion_ids`).
- Continuing an adapter (`[dpo] adapter = "continue"`): passed a PeftModel with a trainable adapter and
  `ref_model=None`, DPOTrainer copies that adapter as "ref" and computes the reference log-probs with it
  (`use_adapter(model, "ref")`): the reference is the starting adapter, frozen, and no second copy of the
  base is loaded. Only the "default" adapter is saved.
- Checkpoints (`[dpo] checkpoint_every`): the trainer's own (adapter, optimizer, scheduler, RNG) in
  RUN/.dpo-N.work/; a rerun with the same settings and triples resumes from the last one. Its log
  (every step) is in the checkpoint too, so a resumed round's epoch figures cover all its steps.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.recipe import Dpo, Recipe
from paav_cli.runs import StageResult, atomic_write_json, prepare_run_folder, record_stage
from paav_cli.train import setup
from paav_cli.train.chat import prompt_messages
from paav_cli.train.data import read_triples
from paav_cli.train.merge import copy_tokenizer, replace_folder

# DPOConfig.loss_type's values in trl 1.16 (its docstring); checked before any model loads.
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
EPOCH_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


def run_dpo(triples_path: Path, recipe: Recipe, run: Path, *, round: int = 1, sft_model: Path, progress=None,
            force: bool = False, start_adapter: Path | None = None) -> StageResult:
    """Train RUN/dpo-{round}/ on the triples and record the stage.

    sft_model: the model DPO trains on: the merged starting model (adapter = "new": a fresh LoRA goes on
    it), or with `start_adapter` the base that adapter belongs to (adapter = "continue": that adapter is
    trained further, a frozen copy of it is the reference).
    progress: as for run_sft (None: a bar on a terminal, else a line a minute; False: none).
    """
    from paav_cli.libs import free_memory
    from paav_cli.registry import sha256_file

    cfg = recipe.dpo
    prompt_format = recipe.sft.prompt_format
    triples_path, sft_model = Path(triples_path), Path(sft_model)
    triples = check_inputs(triples_path, sft_model, cfg, round)
    if start_adapter is not None and not (Path(start_adapter) / "adapter_config.json").is_file():
        raise UserError(f"{start_adapter} holds no LoRA adapter to continue; check [dpo] start.")
    hw = setup.resolve_hardware(cfg.quant, cfg.gradient_checkpointing, cfg.dtype, section="dpo")
    run = prepare_run_folder(Path(run))
    name = f"dpo-{round}"
    out = run / name
    fingerprint = {"recipe": recipe_fingerprint(cfg), "triples_sha256": sha256_file(triples_path)}
    if start_adapter is not None:
        fingerprint["start_adapter_sha256"] = sha256_file(Path(start_adapter) / "adapter_model.safetensors")
    if prompt_format != "chat":
        fingerprint["prompt_format"] = prompt_format
    setup.check_previous(out, fingerprint, section="dpo", force=force)

    setup.quiet_training()
    from transformers import AutoTokenizer

    started = time.monotonic()
    tokenizer = setup.load_tokenizer(sft_model)
    if prompt_format == "chat" and tokenizer.chat_template is None:
        raise UserError(f"the tokenizer in {sft_model} has no chat template; use an instruct model's folder, "
                        'or prompt_format = "completion" in [sft].')
    prompts, shortened = fit_prompts(tokenizer, [t["prompt"] for t in triples], cfg.max_prompt_length, prompt_format)
    work = work_folder(run, name, fingerprint, force=force)
    resume = setup.last_checkpoint(work) if cfg.checkpoint_every else None
    model = setup.load_model(sft_model, hw)
    if start_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(start_adapter), is_trainable=True)
    # Trained in a work folder and renamed: an interrupted round never replaces a finished one.
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=f".{name}.tmp-"))
    bar = setup.make_progress(progress, f"DPO round {round}")
    trainer = None
    try:
        dataset = build_dataset(triples, prompts, prompt_format)
        trainer = build_trainer(model, tokenizer, dataset, cfg, hw, work / "checkpoints", bar,
                                new_adapter=start_adapter is None)
        trained = trainer.train(resume_from_checkpoint=resume)
        save_adapter(trainer.model, tmp)
        # As loaded, not setup.load_tokenizer's: a pad token set here would be saved into the adapter's tokenizer.
        copy_tokenizer(AutoTokenizer.from_pretrained(sft_model), sft_model, tmp)
        epochs = epoch_rows(trainer.state.log_history)
        manifest = {
            **fingerprint, "folder": str(out), "round": round, "triples": str(triples_path.resolve()),
            "triples_count": len(triples), "prompts_shortened": shortened, "sft_model": str(sft_model.resolve()),
            "adapter": cfg.adapter, "prompt_format": prompt_format,
            **({"start_adapter": str(Path(start_adapter).resolve())} if start_adapter is not None else {}),
            "hyperparameters": hyperparameters(trainer.args, cfg, trainer.model), **hw.fields(),
            "steps": trainer.state.global_step, "resumed_from": Path(resume).name if resume else None,
            "epochs": epochs, "final_loss": epochs[-1]["loss"] if epochs else None,
            "train_loss": trained.training_loss, "seconds": round_(time.monotonic() - started, 1),
            "seconds_per_step": round_(trained.metrics.get("train_runtime", 0.0)
                                       / max(1, trainer.state.global_step - _step_of(resume)), 2),
            "versions": setup.library_versions(),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        replace_folder(tmp, out)
        shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the work folder's checkpoints stay, for the rerun
        raise
    finally:
        if bar is not None:
            bar.close()  # an interrupted run leaves the terminal clean too
        del model, trainer
        free_memory()
    result = stage_result(name, manifest, out)
    record_stage(run, result)
    return result


# [dpo] settings added after rounds were trained: left out of a round's fingerprint while at their
# defaults, so that rounds trained before them are still the same training.
LATER_KEYS = ("dtype", "adapter", "start", "start_sha256", "checkpoint_every")


def recipe_fingerprint(cfg: Dpo) -> dict:
    data = cfg.model_dump(mode="json")
    defaults = Dpo().model_dump(mode="json")
    for key in LATER_KEYS:
        if data[key] == defaults[key]:
            data.pop(key)
    return data


def work_folder(run: Path, name: str, fingerprint: dict, *, force: bool) -> Path:
    """RUN/.NAME.work: this training's checkpoints. Kept for a rerun of the same training (which resumes
    from them), emptied for any other (other settings or triples) or with --force."""
    from paav_cli.runs import atomic_write_json as write

    work = Path(run) / f".{name}.work"
    stamp = work / "fingerprint.json"
    if work.exists() and (force or not stamp.is_file() or json.loads(stamp.read_text()) != fingerprint):
        if setup.last_checkpoint(work) is not None:
            print(f"note: {work} held checkpoints of another training of {name}; starting afresh.", file=sys.stderr)
        shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    write(stamp, fingerprint)
    return work


def _step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0


def save_adapter(model, folder: Path) -> None:
    """The trained adapter only (not the frozen "ref" copy DPOTrainer adds when continuing one)."""
    names = list(getattr(model, "peft_config", {}) or {})
    model.save_pretrained(folder, selected_adapters=["default"] if "default" in names else None)


def check_inputs(triples_path: Path, sft_model: Path, cfg: Dpo, round: int) -> list[dict]:
    """The triples, once everything a DPO round needs is known to be there and the recipe can work."""
    if not isinstance(round, int) or round < 1:
        raise UserError(f"round {round} is not a positive whole number; give --round 1 or more.")
    triples = read_triples(triples_path)
    if not (sft_model / "config.json").is_file():
        raise UserError(f"SFT model folder {sft_model} has no config.json; give a merged SFT model (paav merge).")
    if (sft_model / "adapter_config.json").is_file():
        raise UserError(f"{sft_model} is an adapter, not a standalone model; merge it first with paav merge.")
    if cfg.loss not in LOSS_TYPES:
        raise UserError(f"[dpo] loss {cfg.loss!r} is not a trl DPO loss; use one of: {', '.join(LOSS_TYPES)}.")
    if cfg.max_prompt_length >= cfg.max_length:
        raise UserError(
            f"[dpo] max_prompt_length {cfg.max_prompt_length} leaves no room for an answer in max_length "
            f"{cfg.max_length}; make max_prompt_length smaller than max_length."
        )
    return triples


def stage_result(name: str, manifest: dict, out: Path) -> StageResult:
    """The round's figures and adapter; the run's manifest keeps the rest of its manifest.json."""
    figures = {"triples": manifest["triples_count"], "final_loss": manifest["final_loss"], "steps": manifest["steps"]}
    moved = {"triples_count", "final_loss", "steps", "folder"}
    record = {k: v for k, v in manifest.items() if k not in moved}
    return StageResult(name, figures=figures, outputs={"adapter": str(out)}, record=record)


def fit_prompts(tokenizer, sources: list[str], max_prompt_length: int, prompt_format: str = "chat") -> tuple[list[str], int]:
    """The original prompts, each shortened (keeping its start) so its formatted prompt fits the limit."""

    from paav_cli.text.chat_template import check_hf_chat_template
    from paav_cli.text.formats import completion_parts

    def length(source: str) -> int:
        if prompt_format == "completion":
            return len(tokenizer(completion_parts(source)[0])["input_ids"])
        check_hf_chat_template(tokenizer, prompt_messages(source), add_generation_prompt=True)
        out = tokenizer.apply_chat_template(
            prompt_messages(source), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return len(out["input_ids"])

    overhead = length("")
    if overhead >= max_prompt_length:
        raise UserError(
            f"the instruction alone is {overhead} tokens, not under [dpo] max_prompt_length {max_prompt_length}; "
            "raise max_prompt_length in the recipe."
        )
    fitted, cut = [], 0
    cache: dict[str, str] = {}
    for source in sources:
        if source not in cache:
            text = source
            if length(text) > max_prompt_length:
                ids = tokenizer(source, add_special_tokens=False)["input_ids"]
                keep = max_prompt_length - overhead
                text = tokenizer.decode(ids[:keep])
                while keep > 0 and length(text) > max_prompt_length:  # tokens may merge at the seams
                    keep -= 1
                    text = tokenizer.decode(ids[:keep])
            cache[source] = text
        cut += cache[source] != source
        fitted.append(cache[source])
    return fitted, cut


def build_dataset(triples: list[dict], prompts: list[str], prompt_format: str = "chat"):
    """trl's rows: conversational (chat format), or plain text (completion format: the prompt up to
    "Description:", each answer after one space, as SFT laid them out; trl appends the EOS)."""
    from datasets import Dataset

    from paav_cli.text.formats import completion_parts

    if prompt_format == "completion":
        return Dataset.from_list([
            {"prompt": completion_parts(prompt)[0], "chosen": " " + " ".join(t["chosen"].split()),
             "rejected": " " + " ".join(t["rejected"].split())}
            for t, prompt in zip(triples, prompts, strict=True)
        ])
    return Dataset.from_list([
        {
            "prompt": prompt_messages(prompt),
            "chosen": [{"role": "assistant", "content": t["chosen"]}],
            "rejected": [{"role": "assistant", "content": t["rejected"]}],
        }
        for t, prompt in zip(triples, prompts, strict=True)
    ])


def dpo_config(cfg: Dpo, hw: setup.Hardware, output_dir: Path):
    import torch
    from trl import DPOConfig

    every = cfg.checkpoint_every
    return DPOConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=max(1, cfg.batch_size // cfg.per_device_batch),
        learning_rate=cfg.learning_rate, beta=cfg.beta, loss_type=[cfg.loss], max_length=cfg.max_length,
        bf16=hw.bf16, gradient_checkpointing=hw.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if hw.gradient_checkpointing else None,
        # every step: trl's reward metrics per step (epoch_rows averages them), the loss in the progress line
        logging_strategy="steps", logging_steps=1,
        save_strategy="steps" if every else "no", save_steps=every or 500, save_total_limit=2,
        report_to="none", disable_tqdm=True, seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told
    )


def build_trainer(model, tokenizer, dataset, cfg: Dpo, hw: setup.Hardware, output_dir: Path, bar=None, *,
                  new_adapter: bool = True):
    """trl's DPOTrainer: with a fresh LoRA (no ref_model: the reference is the adapter-disabled model), or
    on a PeftModel whose adapter it trains further (the reference is trl's frozen "ref" copy of it)."""
    import trl

    try:
        trainer = trl.DPOTrainer(
            model=model, ref_model=None, args=dpo_config(cfg, hw, output_dir), train_dataset=dataset,
            processing_class=tokenizer, peft_config=setup.lora_config(cfg.lora) if new_adapter else None,
        )
    except ValueError as e:
        raise UserError(f"DPO could not start ({str(e).splitlines()[0][:200]}); check the [dpo] recipe.") from None
    if hw.device["kind"] == "cpu":
        cpu_lm_head(trainer.model)
    setup.attach_progress(trainer, bar)
    return trainer


def cpu_lm_head(model, rows_per_chunk: int = 256) -> None:
    """On a CPU, replace the fused LM head trl puts on the model (`add_fused_lm_head`) with one that keeps
    to its contract (`model(..., labels=..., fused_lm_head=True)` returns trl's FusedCausalLMOutput:
    per-token log-probs, entropy, mean logit and top-1 flags, zero where the label is -100) and is
    several times cheaper there. trl's CPU path scores every position, prompt and padding included, and
    multiplies each vocabulary tile in float32 (`_addmm_fp32` upcasts the bf16 head weight on every
    call): with Gemma's 262k-token vocabulary that was most of a DPO step. Here only the answer's
    positions are scored, in the model's own dtype, `rows_per_chunk` at a time, and softmaxed in float32.
    """
    import types

    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = target.config.get_text_config()
    scaled = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    if any(getattr(text, key, None) not in (None, 1, 1.0) for key in scaled):
        return  # logits transformed before the softmax: trl's own head knows how
    trl_forward = target.forward  # trl's patched forward: the plain one when fused_lm_head is False

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None or kwargs.get("output_router_logits"):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        rows, wanted = hidden[mask], targets[mask]
        weight = self.get_output_embeddings().weight
        parts: dict[str, list] = {"log_probs": [], "entropy": [], "mean_logits": [], "is_top1": []}
        for start in range(0, rows.shape[0], rows_per_chunk):
            logits = (rows[start:start + rows_per_chunk] @ weight.t().to(rows.dtype)).float()
            log_probs = torch.log_softmax(logits, dim=-1)
            label = wanted[start:start + rows_per_chunk, None]
            parts["log_probs"].append(log_probs.gather(1, label)[:, 0])
            with torch.no_grad():
                parts["entropy"].append(-(log_probs.exp() * log_probs).sum(-1))
                parts["mean_logits"].append(logits.mean(-1))
                parts["is_top1"].append(logits.argmax(-1) == label[:, 0])
        full = {}
        for name, values in parts.items():
            flat = torch.cat(values) if values else rows.new_zeros(0, dtype=torch.bool if name == "is_top1" else torch.float32)
            full[name] = (torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device) if name == "is_top1"
                          else flat.new_zeros(mask.shape)).masked_scatter(mask, flat)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-full["log_probs"].sum() / count, label_mask=mask, **full)

    target.forward = types.MethodType(forward, target)


def hyperparameters(args, cfg: Dpo, model=None) -> dict:
    lora = cfg.lora.model_dump(mode="json")
    config = (getattr(model, "peft_config", None) or {}).get("default")
    if cfg.adapter == "continue" and config is not None:  # the continued adapter's own shape
        lora = {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                "targets": sorted(config.target_modules)}
    return {
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "per_device_batch": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": args.learning_rate,
        "epochs": cfg.epochs, "beta": cfg.beta, "loss": cfg.loss, "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length, "adapter": cfg.adapter, "lora": lora,
        "bf16": args.bf16, "checkpoint_every": cfg.checkpoint_every,
    }


def epoch_rows(log_history: list[dict]) -> list[dict]:
    """trl's loss and reward metrics per epoch: the means of its per-step log over each epoch's steps."""
    import math

    epochs: dict[int, list[dict]] = {}
    for entry in log_history:
        if "loss" in entry and "epoch" in entry:
            epochs.setdefault(max(1, math.ceil(round(entry["epoch"], 6))), []).append(entry)
    rows = []
    for index in sorted(epochs):
        entries = epochs[index]
        row = {"epoch": round_(entries[-1]["epoch"])}
        for key in EPOCH_KEYS:
            values = [e[key] for e in entries if key in e]
            if values:
                row[key] = sum(values) / len(values)
        rows.append(row)
    return rows


def round_(value: float, digits: int = 4) -> float:
    return round(float(value), digits)

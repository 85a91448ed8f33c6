"""`paav sft`: LoRA (or 4-bit QLoRA) supervised fine-tuning of the booster on (source, target) pairs.

Everything that can be wrong with the input is checked before a model loads. Each pair is tokenized by
paav (`tokenize_with_mask`), and trl gets the pre-tokenized `input_ids` + `completion_mask` with
`completion_only_loss=True`: trl 1.16 then skips its own templating and EOS handling and turns the
mask into labels (-100 outside it) while preparing the dataset.

RUN/sft/ holds the adapter, the tokenizer, manifest.json and checkpoints/ (one per epoch, for --resume).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.recipe import Recipe, Sft
from paav_cli.runs import StageResult, atomic_write_json, prepare_run_folder, record_stage
from paav_cli.train.data import read_pairs, split_held_out
from paav_cli.train.setup import (
    Hardware,
    attach_progress,
    check_previous,
    clear_for_training,
    library_versions,
    load_model,
    load_tokenizer,
    lora_config,
    make_progress,
    quiet_training,
    resolve_hardware,
)

# Changing only the number of epochs keeps a run resumable (train longer from its last checkpoint).
RESUMABLE_CHANGES = frozenset({"epochs"})


def run_sft(
    pairs_path: str | Path, recipe: Recipe, run: str | Path, *, resume: bool = False, force: bool = False,
    progress=None,
) -> StageResult:
    """Fine-tune recipe.sft.base on the pairs into RUN/sft, and record the stage in RUN/manifest.json.

    progress: None draws a bar when stderr is a terminal (else a line a minute), False none; or an
    object with start(total, done), update(done, loss) and close().
    """
    from paav_cli.libs import free_memory
    from paav_cli.registry import Registry, revision_of, sha256_file
    from paav_cli.train.base import base_model_folder

    cfg = recipe.sft
    pairs = read_pairs(Path(pairs_path))
    reg = Registry.load()
    entry = reg.get(cfg.base, "base_llms")
    hw = resolve_hardware(cfg.quant, cfg.gradient_checkpointing, cfg.dtype, section="sft")
    run = prepare_run_folder(Path(run))
    out = run / "sft"
    fingerprint = {"data_sha256": sha256_file(Path(pairs_path)), "recipe_sft": cfg.model_dump(mode="json")}
    check_previous(out, fingerprint, section="sft", resume=resume, force=force, resumable=RESUMABLE_CHANGES)
    clear_for_training(out, resume=resume, force=force)

    quiet_training()
    folder = base_model_folder(entry, reg)  # a from_gguf base is dequantised on first use
    tokenizer = load_tokenizer(folder)
    train_rows, eval_rows = tokenize_pairs(tokenizer, pairs, cfg)
    head = {
        **fingerprint, "status": "running", "base": entry.name, "base_revision": revision_of(entry, reg), **hw.fields(),
        "pairs": {"train": len(train_rows), "eval": len(eval_rows)},
    }
    atomic_write_json(out / "manifest.json", head)
    # Until this training finishes, `paav run` must not take an earlier fine-tune here as done.
    record_stage(run, StageResult("sft", status="running"))
    shutil.rmtree(out / "merged", ignore_errors=True)  # rank/dpo's merge of the old adapter would be stale
    bar = make_progress(progress, "fine-tuning")
    trainer = build_trainer(folder, tokenizer, train_rows, eval_rows, cfg, hw, out, bar)
    try:
        trained = trainer.train(resume_from_checkpoint=True if resume else None)
        trainer.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        history = epoch_history(trainer.state.log_history)
        manifest = {
            **head, "status": "done", "hyperparameters": hyperparameters(trainer.args, cfg, hw.quant),
            "versions": library_versions(), "epochs": history, **final_losses(history),
            "seconds": round(trained.metrics.get("train_runtime", 0.0), 1),  # this session's, when resumed
        }
    finally:
        if bar is not None:
            bar.close()  # also when interrupted, so the terminal is left clean
        del trainer
        free_memory()
    atomic_write_json(out / "manifest.json", manifest)
    result = stage_result(manifest, out)
    record_stage(run, result)
    return result


def stage_result(manifest: dict, out: Path) -> StageResult:
    """The stage's figures and outputs; the run's manifest keeps the rest of RUN/sft/manifest.json but
    the per-epoch losses, which stay in RUN/sft/manifest.json."""
    figures = {"pairs": manifest["pairs"], "final_loss": manifest["final_loss"],
               "final_eval_loss": manifest["final_eval_loss"], "epochs": len(manifest["epochs"]),
               "quant": manifest["quant"]}
    record = {k: v for k, v in manifest.items() if k not in figures and k != "status"}
    return StageResult("sft", figures=figures, outputs={"adapter": str(out)}, record=record)


def tokenize_pairs(tokenizer, pairs: list[dict], cfg: Sft) -> tuple[list[dict], list[dict]]:
    from paav_cli.train.chat import tokenize_with_mask

    if cfg.prompt_format == "chat" and not tokenizer.chat_template:
        raise UserError(
            f"base model {cfg.base!r} has no chat template; choose an instruction-tuned base model "
            'or set prompt_format = "completion" in [sft].'
        )
    rows = [tokenize_with_mask(tokenizer, p["source"], p["target"], cfg.max_length, cfg.prompt_format) for p in pairs]
    train, held_out = split_held_out(rows, cfg.eval_fraction, cfg.seed)
    if not train:
        raise UserError(
            f"eval_fraction {cfg.eval_fraction} holds out all {len(rows)} pairs; "
            "lower [sft] eval_fraction or give more pairs."
        )
    return train, held_out


def sft_config(cfg: Sft, out: Path, has_eval: bool, bf16: bool, gradient_checkpointing: bool):
    import torch
    from trl import SFTConfig

    per_epoch = "epoch" if has_eval else "no"
    return SFTConfig(
        output_dir=str(out / "checkpoints"), seed=cfg.seed, data_seed=cfg.seed,
        num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_batch, per_device_eval_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=max(1, cfg.batch_size // cfg.per_device_batch),
        max_length=cfg.max_length,
        # Our completion_mask is used only with this on (trl's default turns it on only for prompt/completion data).
        completion_only_loss=True, packing=False, padding_free=False,
        # trl defaults bf16=True and gradient checkpointing on; both come from the device here. transformers 5
        # renamed gradient_checkpointing to activation_checkpointing (the old name mirrors it, trl reads that).
        bf16=bf16, fp16=False, activation_checkpointing=gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        eval_strategy=per_epoch, save_total_limit=2,
        save_strategy="steps" if cfg.checkpoint_every else "epoch", save_steps=cfg.checkpoint_every or 500,
        logging_strategy="steps", logging_steps=1,
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told
    )


def build_trainer(folder, tokenizer, train_rows, eval_rows, cfg: Sft, hw: Hardware, out: Path, bar=None):
    """trl's SFTTrainer with paav's LoRA, on the machine `hw` describes."""
    quiet_training()  # before the imports: importing peft and trl already logs
    from datasets import Dataset
    from trl import SFTTrainer

    model = load_model(folder, hw)
    trainer_class = SFTTrainer if hw.device["kind"] == "cuda" else plain_loss_trainer()
    trainer = trainer_class(
        model=model, args=sft_config(cfg, out, bool(eval_rows), hw.bf16, hw.gradient_checkpointing),
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer, peft_config=lora_config(cfg.lora),
    )
    attach_progress(trainer, bar)
    return trainer


def plain_loss_trainer():
    """SFTTrainer with transformers' own loss. trl 1.16 computes the loss through a fused LM head that
    also works out entropy and top-1 accuracy in fp32 tiles on every step: it saves GPU memory, but on a
    CPU with Gemma's 262k vocabulary it took half of each step (19 s against 8.5 s per 8 pairs)."""
    from transformers import Trainer
    from trl import SFTTrainer

    model_inputs = ("input_ids", "attention_mask", "labels", "position_ids")

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {k: v for k, v in inputs.items() if k in model_inputs}
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainLossSFTTrainer


def hyperparameters(args, cfg: Sft, quant: str) -> dict:
    return {
        "epochs": cfg.epochs, "learning_rate": args.learning_rate, "per_device_batch": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "max_length": args.max_length, "eval_fraction": cfg.eval_fraction, "seed": args.seed,
        "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing,
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "lora": cfg.lora.model_dump(), "quant": quant,
    }


def epoch_history(log_history: list[dict]) -> list[dict]:
    """Mean train loss per epoch (from the per-step logs) and the eval loss at each epoch's end."""
    epochs: dict[int, dict] = {}
    for log in log_history:
        index = max(1, math.ceil(round(log.get("epoch", 0), 6)))
        row = epochs.setdefault(index, {"epoch": index, "train": []})
        if "loss" in log:
            row["train"].append(log["loss"])
        if "eval_loss" in log:
            row["eval_loss"] = log["eval_loss"]
    history = []
    for index in sorted(epochs):
        row = epochs[index]
        losses = row.pop("train")
        if losses or "eval_loss" in row:
            history.append({**row, "train_loss": sum(losses) / len(losses) if losses else None})
    return history


def final_losses(history: list[dict]) -> dict:
    last = history[-1] if history else {}
    return {"final_loss": last.get("train_loss"), "final_eval_loss": last.get("eval_loss")}

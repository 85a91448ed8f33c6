"""`paav sft`: LoRA (or 4-bit QLoRA) supervised fine-tuning of the booster on (source, target) pairs.

Everything that can be wrong with the input is checked before a model loads. Each pair is tokenized by
paav (`tokenize_with_mask`), and trl gets the pre-tokenized `input_ids` + `completion_mask` with
`completion_only_loss=True`: trl 1.16 then skips its own templating and EOS handling and turns the
mask into labels (-100 outside it) while preparing the dataset.

RUN/sft/ holds the adapter, the tokenizer, manifest.json and checkpoints/ (one per epoch, for --resume).
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.recipe import Recipe, Sft
from paav_cli.runs import atomic_write_json, prepare_run_folder, read_manifest, update_manifest
from paav_cli.train.data import read_pairs, split_held_out
from paav_cli.train.device import describe_device, use_bf16

# Changing only the number of epochs keeps a run resumable (train longer from its last checkpoint).
RESUMABLE_CHANGES = {"epochs"}


def run_sft(
    pairs_path: str | Path, recipe: Recipe, run: str | Path, *, resume: bool = False, force: bool = False,
    progress=None,
) -> dict:
    """Fine-tune recipe.sft.base on the pairs into RUN/sft; returns the summary also put in RUN/manifest.json.

    progress: None draws a bar when stderr is a terminal, False none; or an object with
    start(total, done), update(done, loss) and close().
    """
    from paav_cli.registry import Registry, sha256_file

    cfg = recipe.sft
    pairs = read_pairs(Path(pairs_path))
    entry = Registry.load().get(cfg.base, "base_llms")
    quant = resolve_quant(cfg.quant)
    run = prepare_run_folder(Path(run))
    out = run / "sft"
    fingerprint = {"data_sha256": sha256_file(Path(pairs_path)), "sft": cfg.model_dump()}
    check_previous(out, fingerprint, resume=resume, force=force)
    return _train(pairs, cfg, entry, quant, run, fingerprint, resume=resume, progress=progress)


# ---------------------------------------------------------------------------------------------
# Checks before any model loads


def resolve_quant(quant: str) -> str:
    """'4bit' or 'none'; auto is 4-bit QLoRA where a CUDA GPU and bitsandbytes are there."""
    import torch

    usable = torch.cuda.is_available() and _bitsandbytes_works()
    if quant == "auto":
        return "4bit" if usable else "none"
    if quant == "4bit" and not usable:
        raise UserError("--quant 4bit needs a CUDA GPU with a working bitsandbytes; use --quant none.")
    return quant


def _bitsandbytes_works() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install fails in many ways (missing CUDA libs, old GPU)
        return False
    return True


def check_previous(out: Path, fingerprint: dict, *, resume: bool, force: bool) -> None:
    """Refuse to mix runs: another recipe's or other data's fine-tune is replaced only with --force."""
    if force and not resume:
        shutil.rmtree(out, ignore_errors=True)
        return
    previous = read_manifest(out)
    checkpoint = last_checkpoint(out)
    if resume:
        if checkpoint is None:
            raise UserError(f"nothing to resume in {out / 'checkpoints'}; run without --resume to start training.")
        if not force and not _same_run(previous, fingerprint, ignore=RESUMABLE_CHANGES):
            raise UserError(
                f"{out} was trained on other data or [sft] settings, so it cannot be resumed with these; "
                "use the same pairs and recipe, or add --force to resume anyway."
            )
        return
    if previous and not _same_run(previous, fingerprint):
        raise UserError(
            f"{out} holds a fine-tune of other data or [sft] settings; use another --run folder, "
            "or add --force to replace it."
        )
    if checkpoint is not None and previous.get("status") != "done":
        raise UserError(
            f"{out} has checkpoints of an unfinished fine-tune; add --resume to continue it or --force to start over."
        )
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the same run again: start it over


def _same_run(previous: dict, fingerprint: dict, ignore: set[str] = frozenset()) -> bool:
    if not previous:
        return True
    old, new = previous.get("recipe_sft", {}), fingerprint["sft"]
    keys = (set(old) | set(new)) - ignore
    return previous.get("data_sha256") == fingerprint["data_sha256"] and all(old.get(k) == new.get(k) for k in keys)


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


# ---------------------------------------------------------------------------------------------
# Training


def _train(pairs, cfg: Sft, entry, quant, run: Path, fingerprint, *, resume, progress) -> dict:
    from paav_cli.libs import free_memory
    from paav_cli.registry import require_path, revision_of

    quiet_training()
    folder = require_path(entry)
    tokenizer = load_tokenizer(folder)
    train_rows, eval_rows = tokenize_pairs(tokenizer, pairs, cfg)
    out = run / "sft"
    device = describe_device()
    bf16, note = use_bf16(cfg.dtype, device)
    if note:
        print(f"note: {note}.", file=sys.stderr)
    head = {
        **fingerprint_fields(fingerprint), "status": "running", "base": entry.name,
        "base_revision": revision_of(entry), "quant": quant, "device": device,
        "dtype": "bf16" if bf16 else "fp32", **({"dtype_note": note} if note else {}),
        "pairs": {"train": len(train_rows), "eval": len(eval_rows)},
    }
    atomic_write_json(out / "manifest.json", head)
    update_manifest(run, stages={"sft": {"status": "running"}})
    shutil.rmtree(out / "merged", ignore_errors=True)  # rank/dpo's merge of the old adapter would be stale
    bar = make_progress(progress)
    trainer = build_trainer(folder, tokenizer, train_rows, eval_rows, cfg, quant, out, bar, bf16=bf16)
    try:
        result = trainer.train(resume_from_checkpoint=True if resume else None)
        trainer.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        history = epoch_history(trainer.state.log_history)
        manifest = {
            **head, "status": "done", "hyperparameters": hyperparameters(trainer.args, cfg, quant),
            "versions": library_versions(quant), "epochs": history, **final_losses(history),
            "seconds": round(result.metrics.get("train_runtime", 0.0), 1),  # this session's, when resumed
        }
    finally:
        if bar is not None:
            bar.close()  # also when interrupted, so the terminal is left clean
        del trainer
        free_memory()
    atomic_write_json(out / "manifest.json", manifest)
    summary = {k: manifest[k] for k in ("status", "base", "quant", "pairs", "final_loss", "final_eval_loss")}
    summary.update(epochs=len(history), adapter=str(out))
    update_manifest(run, stages={"sft": summary})
    return summary


def quiet_training() -> None:
    from paav_cli.libs import quiet

    quiet()
    # bitsandbytes (imported by peft and trl) warns on CPUs without its optional kernels package.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def fingerprint_fields(fingerprint: dict) -> dict:
    return {"data_sha256": fingerprint["data_sha256"], "recipe_sft": fingerprint["sft"]}


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        # An existing token, never a new one: a grown vocabulary breaks the adapter's base and GGUF export.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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


def load_model(folder: Path, quant: str, bf16: bool, gradient_checkpointing: bool):
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 unless bf16 is chosen or the GPU has it (no fp16 here: LoRA's small updates underflow without
    # loss scaling).
    dtype = torch.bfloat16 if bf16 else torch.float32
    if quant != "4bit":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
    )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=bnb, device_map={"": 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


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


def build_trainer(folder, tokenizer, train_rows, eval_rows, cfg: Sft, quant, out: Path, bar=None, *, bf16=None):
    """trl's SFTTrainer with paav's LoRA; bf16 None: chosen from the recipe and this device."""
    quiet_training()  # before the imports: importing peft and trl already logs
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    disable_progress_bar()  # trl's dataset preparation maps would draw tqdm bars
    device = describe_device()
    gpu = device["kind"] == "cuda"
    checkpointing = cfg.gradient_checkpointing == "on" or (cfg.gradient_checkpointing == "auto" and gpu)
    if bf16 is None:
        bf16, _ = use_bf16(cfg.dtype, device)
    model = load_model(folder, quant, bf16, checkpointing)
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.targets), task_type="CAUSAL_LM",
    )
    trainer_class = plain_loss_trainer() if not gpu else SFTTrainer
    trainer = trainer_class(
        model=model, args=sft_config(cfg, out, bool(eval_rows), bf16, checkpointing),
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer, peft_config=lora,
    )
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it would print every log dict to stdout
    if bar is not None:
        trainer.add_callback(progress_callback(bar))
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


def library_versions(quant: str) -> dict:
    import peft
    import torch
    import transformers
    import trl

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                "peft": peft.__version__}
    if quant == "4bit":
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    return versions


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


# ---------------------------------------------------------------------------------------------
# Progress


class TrainBar:
    """A rich bar on stderr over optimizer steps: count, last loss, elapsed and time left."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = None

    def start(self, total: int, done: int) -> None:
        self._task = self._progress.add_task("fine-tuning", total=total, completed=done, loss="--")
        self._progress.start()

    def update(self, done: int, loss: float | None) -> None:
        self._progress.update(self._task, completed=done, loss="--" if loss is None else f"{loss:.4f}")

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()


class TrainLog:
    """Without a terminal (nohup, CI logs): one plain line on stderr per minute, so a background run's
    progress can be followed with `tail -f`."""

    def __init__(self, every_s: float = 60.0):
        import time

        self._clock, self._every = time.monotonic, every_s
        self._started = self._last = self._clock()
        self._total = self._first = 0
        self._shown = -1

    def start(self, total: int, done: int) -> None:
        self._total, self._first = total, done

    def update(self, done: int, loss: float | None) -> None:
        now = self._clock()
        if done == self._shown or (now - self._last < self._every and done < self._total):
            return
        self._last, self._shown = now, done
        elapsed = now - self._started
        rate = (done - self._first) / elapsed if elapsed > 0 else 0
        eta = f"{(self._total - done) / rate / 60:.0f} min" if rate > 0 else "?"
        shown = "--" if loss is None else f"{loss:.4f}"
        print(f"fine-tuning: step {done}/{self._total}, loss {shown}, {elapsed / 60:.1f} min, about {eta} left",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def make_progress(progress):
    from paav_cli.progress import stderr_is_terminal

    if progress is None:
        return TrainBar() if stderr_is_terminal() else TrainLog()
    return progress or None


def progress_callback(bar):
    """A TrainerCallback feeding the trainer's steps and logged loss to a progress object (TrainBar or the caller's)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        loss = None

        def on_train_begin(self, args, state, control, **kwargs):
            bar.start(state.max_steps, state.global_step)  # a resumed run starts at its checkpoint's step

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.loss = (logs or {}).get("loss", self.loss)
            bar.update(state.global_step, self.loss)

        def on_step_end(self, args, state, control, **kwargs):
            bar.update(state.global_step, self.loss)

    return ProgressCallback()

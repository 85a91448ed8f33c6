"""What sft and dpo set up the same way, in one place so that the two cannot drift apart: the device
and number format, quantization, the model and its LoRA, progress, the versions recorded, and the
refusal to mix two trainings in one folder.

Nothing here imports torch, transformers or peft at module level: `paav enhance` must stay light.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from paav_cli.errors import UserError

# The packages whose versions decide what a training run computes; the ones installed are recorded.
VERSIONED = ("paav", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")


# ---------------------------------------------------------------------------------------------
# Device, number format and quantization


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX).

    Without those instructions torch computes bf16 gemms in a scalar fallback on one core: the first
    backward() of Gemma 3 270M ran past 14 minutes on an AVX2-only machine, where fp32 takes seconds.
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so probed, not assumed
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def describe_device() -> dict:
    """The device training will use, and whether it computes bf16 natively."""
    import torch

    if torch.cuda.is_available():
        return {"kind": "cuda", "name": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported()}
    return {"kind": "cpu", "name": "cpu", "bf16": cpu_has_bf16()}


def use_bf16(requested: str, device: dict) -> tuple[bool, str | None]:
    """Whether to train in bf16 for a recipe's `dtype`, and a note when the request cannot be honoured.

    `auto` is bf16 on GPUs that have it and fp32 on every CPU (LoRA's small updates want fp32 unless
    bf16 is asked for). `bf16` on a device without bf16 arithmetic falls back to fp32 with a note:
    the result is the same training, only slower or faster, and a recipe must run on any machine.
    """
    if requested == "auto":
        return (device["kind"] == "cuda" and device["bf16"]), None
    if requested != "bf16":
        return False, None
    if device["bf16"]:
        return True, None
    what = "this CPU lacks AVX-512 BF16 and AMX" if device["kind"] == "cpu" else f"{device['name']} lacks bf16"
    return False, f"dtype bf16 was asked for, but {what}: training in fp32 instead"


@dataclass(frozen=True)
class Hardware:
    """How this machine trains a recipe section: resolved once, before any model loads."""

    device: dict
    quant: str  # "4bit" (QLoRA) or "none"
    bf16: bool
    gradient_checkpointing: bool
    note: str | None = None  # why a requested dtype was not honoured

    def fields(self) -> dict:
        """What a training manifest records about the machine."""
        return {"device": self.device, "quant": self.quant, "dtype": "bf16" if self.bf16 else "fp32",
                "gradient_checkpointing": self.gradient_checkpointing, **({"dtype_note": self.note} if self.note else {})}


def resolve_hardware(quant: str, gradient_checkpointing: str, dtype: str = "auto", *, section: str) -> Hardware:
    """quant, bf16 and checkpointing for this machine; auto is QLoRA and checkpointing on a CUDA GPU."""
    device = describe_device()
    gpu = device["kind"] == "cuda"
    usable = gpu and _bitsandbytes_works()
    if quant == "4bit" and not usable:
        raise UserError(
            f"--quant 4bit needs a CUDA GPU with a working bitsandbytes; use --quant none, "
            f'or quant = "none" in the recipe\'s [{section}].'
        )
    bf16, note = use_bf16(dtype, device)
    if note:
        print(f"note: {note}.", file=sys.stderr)
    return Hardware(
        device=device, quant="4bit" if quant == "4bit" or (quant == "auto" and usable) else "none", bf16=bf16,
        gradient_checkpointing=gradient_checkpointing == "on" or (gradient_checkpointing == "auto" and gpu), note=note,
    )


def _bitsandbytes_works() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install fails in many ways (missing CUDA libs, old GPU)
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Loading


def quiet_training() -> None:
    """libs.quiet() plus the training stack's own chatter; called before peft and trl are imported,
    since importing them already logs."""
    from paav_cli.libs import quiet

    quiet()
    import datasets  # its map bars are drawn by trl's dataset preparation

    datasets.disable_progress_bars()


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        # An existing token, never a new one: a grown vocabulary breaks the adapter's base and GGUF export.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(folder: Path, hw: Hardware):
    """The model to put a LoRA on: fp32 unless bf16 was resolved (no fp16: LoRA's small updates underflow
    without loss scaling), its linear layers in 4-bit NF4 for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if hw.bf16 else torch.float32
    if hw.quant != "4bit":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if hw.bf16 else torch.float16,
    )
    # A 4-bit model cannot be moved once loaded, so it must load on the GPU the Trainer will send
    # batches to: this process's local rank (0 unless torchrun started it). torch.cuda.current_device()
    # is not that yet: accelerate sets it only when the trainer's arguments are built, after loading.
    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=bnb, device_map=device_map)
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=hw.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def lora_config(lora):
    """peft's LoraConfig for a recipe's [*.lora] table."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targets),
                      bias="none", task_type="CAUSAL_LM")


def attach_progress(trainer, bar) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it would print every log dict to stdout
    if bar is not None:
        trainer.add_callback(progress_callback(bar))


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


# ---------------------------------------------------------------------------------------------
# One training per folder


def check_previous(out: Path, fingerprint: dict, *, section: str, resume: bool = False, force: bool = False,
                   resumable: frozenset[str] = frozenset()) -> None:
    """Refuse to mix runs in OUT: another recipe's or other data's training is replaced only with --force,
    an unfinished one is continued only with --resume (and then only if the changes are `resumable`)."""
    from paav_cli.runs import read_manifest

    if force and not resume:
        return
    previous = read_manifest(out)
    checkpoint = last_checkpoint(out)
    if resume:
        if checkpoint is None:
            raise UserError(f"nothing to resume in {out / 'checkpoints'}; run without --resume to start training.")
        if not force and not same_run(previous, fingerprint, ignore=resumable):
            raise UserError(
                f"{out} was trained on other data or [{section}] settings, so it cannot be resumed with these; "
                "use the same data and recipe, or add --force to resume anyway."
            )
        return
    if previous and not same_run(previous, fingerprint):
        raise UserError(
            f"{out} holds a training on other data or [{section}] settings; use another --run folder, "
            "or add --force to replace it."
        )
    if checkpoint is not None and previous.get("status") != "done":
        raise UserError(
            f"{out} has checkpoints of an unfinished training; add --resume to continue it or --force to start over."
        )


def same_run(previous: dict, fingerprint: dict, ignore: frozenset[str] = frozenset()) -> bool:
    """Whether a folder's manifest records the same data and settings; dict values (a recipe section)
    are compared key by key, less the `ignore`d keys."""
    if not previous:
        return True
    for key, new in fingerprint.items():
        old = previous.get(key)
        if isinstance(new, dict):
            old = old if isinstance(old, dict) else {}
            if any(old.get(k) != new.get(k) for k in (set(old) | set(new)) - ignore):
                return False
        elif old != new:
            return False
    return True


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(out) / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def clear_for_training(out: Path, *, resume: bool, force: bool) -> None:
    """After check_previous: --force drops the old training, a plain rerun its checkpoints."""
    if resume:
        return
    shutil.rmtree(out if force else Path(out) / "checkpoints", ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Progress


class TrainBar:
    """A rich bar on stderr over optimizer steps: count, last loss, elapsed and time left."""

    def __init__(self, description: str = "fine-tuning"):
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
        self._description = description
        self._task = None

    def start(self, total: int, done: int) -> None:
        self._task = self._progress.add_task(self._description, total=total, completed=done, loss="--")
        self._progress.start()

    def update(self, done: int, loss: float | None) -> None:
        self._progress.update(self._task, completed=done, loss="--" if loss is None else f"{loss:.4f}")

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()


class TrainLog:
    """Without a terminal (nohup, CI logs): one plain line on stderr per minute, so a background run's
    progress can be followed with `tail -f`."""

    def __init__(self, description: str = "fine-tuning", every_s: float = 60.0):
        import time

        self._description = description
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
        print(f"{self._description}: step {done}/{self._total}, loss {shown}, {elapsed / 60:.1f} min, about {eta} left",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def make_progress(progress, description: str = "fine-tuning"):
    """None: a bar on a terminal, else a line a minute; True: a bar; False: nothing; or the caller's own
    object with start(total, done), update(done, loss) and close()."""
    from paav_cli.progress import stderr_is_terminal

    if progress is None:
        return TrainBar(description) if stderr_is_terminal() else TrainLog(description)
    if progress is True:
        return TrainBar(description)
    return progress or None


def progress_callback(bar):
    """A TrainerCallback feeding the trainer's steps and logged loss to a progress object."""
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

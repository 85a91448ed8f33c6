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
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.recipe import Recipe
from paav_cli.runs import atomic_write_json, prepare_run_folder, update_manifest
from paav_cli.train.chat import prompt_messages
from paav_cli.train.data import read_triples
from paav_cli.train.merge import copy_tokenizer, replace_folder

# DPOConfig.loss_type's values in trl 1.16 (its docstring); checked before any model loads.
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
EPOCH_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("paav", "torch", "transformers", "trl", "peft", "bitsandbytes", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def resolve_device(dpo) -> dict:
    """quant, bf16 and gradient checkpointing for this machine (auto: QLoRA + bf16 + checkpointing on a GPU)."""
    from paav_cli.train.device import describe_device, use_bf16

    device = describe_device()
    cuda = device["kind"] == "cuda"
    if dpo.quant == "4bit" and not cuda:
        raise UserError("[dpo] quant = \"4bit\" needs a CUDA GPU and none is available; set quant = \"none\" or \"auto\".")
    quant = "4bit" if dpo.quant == "4bit" or (dpo.quant == "auto" and cuda) else "none"
    checkpointing = dpo.gradient_checkpointing == "on" or (dpo.gradient_checkpointing == "auto" and cuda)
    bf16, _ = use_bf16("auto", device)  # fp32 on the CPU: LoRA's small updates need the precision
    return {"device": device["name"], "quant": quant, "bf16": bf16, "gradient_checkpointing": checkpointing}


def fit_prompts(tokenizer, sources: list[str], max_prompt_length: int) -> tuple[list[str], int]:
    """The original prompts, each shortened (keeping its start) so its chat-formatted prompt fits the limit."""

    from paav_cli.text.chat_template import check_hf_chat_template

    def length(source: str) -> int:
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


def build_dataset(triples: list[dict], prompts: list[str]):
    from datasets import Dataset

    return Dataset.from_list([
        {
            "prompt": prompt_messages(prompt),
            "chosen": [{"role": "assistant", "content": t["chosen"]}],
            "rejected": [{"role": "assistant", "content": t["rejected"]}],
        }
        for t, prompt in zip(triples, prompts, strict=True)
    ])


def quiet_training() -> None:
    """libs.quiet() plus the training stack's own chatter: datasets' map bars and bitsandbytes' kernel notice."""
    import logging

    from paav_cli.libs import quiet

    quiet()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def _progress_callback(description: str):
    from transformers import TrainerCallback

    from paav_cli.progress import TwoLevelProgress

    class ProgressCallback(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = TwoLevelProgress(state.max_steps, description, unit="steps")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.advance(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressCallback()


def _check_previous(out: Path, recipe_section: dict, data_hash: str, force: bool) -> None:
    import json

    manifest_path = out / "manifest.json"
    if force or not manifest_path.is_file():
        return
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        previous = {}
    if previous.get("recipe") != recipe_section or previous.get("triples_sha256") != data_hash:
        raise UserError(
            f"{out} was trained with another [dpo] recipe or other triples; pass --force to replace it, "
            "or use another --run folder or --round."
        )


def run_dpo(
    triples_path: Path,
    recipe: Recipe,
    run: Path,
    *,
    round: int = 1,
    sft_model: Path,
    progress: bool | None = None,
    force: bool = False,
) -> dict:
    """Train RUN/dpo-{round}/ (a LoRA adapter on `sft_model`) on the triples; returns the stage summary."""
    dpo = recipe.dpo
    if not isinstance(round, int) or round < 1:
        raise UserError(f"round {round} is not a positive whole number; give --round 1 or more.")
    triples_path, sft_model = Path(triples_path), Path(sft_model)
    triples = read_triples(triples_path)
    if not (sft_model / "config.json").is_file():
        raise UserError(f"SFT model folder {sft_model} has no config.json; give a merged SFT model (paav merge).")
    if (sft_model / "adapter_config.json").is_file():
        raise UserError(f"{sft_model} is an adapter, not a standalone model; merge it first with paav merge.")
    if dpo.loss not in LOSS_TYPES:
        raise UserError(f"[dpo] loss {dpo.loss!r} is not a trl DPO loss; use one of: {', '.join(LOSS_TYPES)}.")
    if dpo.max_prompt_length >= dpo.max_length:
        raise UserError(
            f"[dpo] max_prompt_length {dpo.max_prompt_length} leaves no room for an answer in max_length "
            f"{dpo.max_length}; make max_prompt_length smaller than max_length."
        )
    settings = resolve_device(dpo)
    run = prepare_run_folder(run)
    name = f"dpo-{round}"
    out = run / name
    recipe_section = dpo.model_dump(mode="json")
    data_hash = file_sha256(triples_path)
    _check_previous(out, recipe_section, data_hash, force)

    from paav_cli.libs import free_memory
    from paav_cli.progress import stderr_is_terminal

    quiet_training()
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    if tokenizer.chat_template is None:
        raise UserError(f"the tokenizer in {sft_model} has no chat template; use an instruct model's folder.")
    prompts, shortened = fit_prompts(tokenizer, [t["prompt"] for t in triples], dpo.max_prompt_length)
    dataset = build_dataset(triples, prompts)

    load_kwargs: dict = {"dtype": torch.bfloat16 if settings["bf16"] else torch.float32}  # QLoRA: the non-4-bit parts
    if settings["quant"] == "4bit":
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if settings["bf16"] else torch.float16,
        )
        load_kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(sft_model, **load_kwargs)
    if settings["quant"] == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )

    peft_config = LoraConfig(
        r=dpo.lora.r, lora_alpha=dpo.lora.alpha, lora_dropout=dpo.lora.dropout, target_modules=list(dpo.lora.targets),
        bias="none", task_type="CAUSAL_LM",
    )
    run.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=f".{name}.tmp-"))
    trainer = bar = None
    accumulation = max(1, dpo.batch_size // dpo.per_device_batch)
    try:
        args = DPOConfig(
            output_dir=str(tmp / "trainer"),
            num_train_epochs=dpo.epochs,
            per_device_train_batch_size=dpo.per_device_batch,
            gradient_accumulation_steps=accumulation,
            learning_rate=dpo.learning_rate,
            beta=dpo.beta,
            loss_type=[dpo.loss],
            max_length=dpo.max_length,
            bf16=settings["bf16"],
            gradient_checkpointing=settings["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False} if settings["gradient_checkpointing"] else None,
            logging_strategy="epoch",  # trl averages its reward metrics over each logging window: per epoch here
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=dpo.seed,
            data_seed=dpo.seed,
        )
        show = stderr_is_terminal() if progress is None else bool(progress)
        bar = _progress_callback(f"DPO round {round}") if show else None
        callbacks = [bar] if bar else []
        try:
            trainer = DPOTrainer(
                model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
                peft_config=peft_config, callbacks=callbacks,
            )
        except ValueError as e:
            raise UserError(f"DPO could not start ({str(e).splitlines()[0][:200]}); check the [dpo] recipe.") from None
        trainer.remove_callback(PrinterCallback)  # with disable_tqdm it would print every log dict to stdout
        result = trainer.train()

        epochs = [
            {"epoch": round_(entry["epoch"]), **{k: entry[k] for k in EPOCH_KEYS if k in entry}}
            for entry in trainer.state.log_history
            if "loss" in entry and "epoch" in entry
        ]
        trainer.model.save_pretrained(tmp)
        copy_tokenizer(AutoTokenizer.from_pretrained(sft_model), sft_model, tmp)  # trl may set pad = eos on its own
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        summary = {
            "folder": str(out),
            "round": round,
            "triples": str(triples_path.resolve()),
            "triples_sha256": data_hash,
            "triples_count": len(triples),
            "prompts_shortened": shortened,
            "sft_model": str(sft_model.resolve()),
            "recipe": recipe_section,
            "hyperparameters": {
                "effective_batch": accumulation * dpo.per_device_batch, "per_device_batch": dpo.per_device_batch,
                "gradient_accumulation_steps": accumulation, "learning_rate": dpo.learning_rate,
                "epochs": dpo.epochs, "beta": dpo.beta, "loss": dpo.loss, "max_length": dpo.max_length,
                "max_prompt_length": dpo.max_prompt_length, "lora": dpo.lora.model_dump(mode="json"),
            },
            **settings,
            "steps": trainer.state.global_step,
            "epochs": epochs,
            "final_loss": epochs[-1]["loss"] if epochs else None,
            "train_loss": result.training_loss,
            "seconds": round_(time.monotonic() - started, 1),
            "versions": _versions(),
        }
        atomic_write_json(tmp / "manifest.json", summary)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.on_train_end(None, None, None)  # an interrupted run leaves the terminal clean too
        del model
        if trainer is not None:
            del trainer
        free_memory()
    update_manifest(run, stages={name: summary})
    return summary


def round_(value: float, digits: int = 4) -> float:
    return round(float(value), digits)

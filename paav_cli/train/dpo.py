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

import shutil
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
            force: bool = False) -> StageResult:
    """Train RUN/dpo-{round}/ (a LoRA adapter on `sft_model`) on the triples and record the stage.

    progress: as for run_sft (None: a bar on a terminal, else a line a minute; False: none).
    """
    from paav_cli.libs import free_memory
    from paav_cli.registry import sha256_file

    cfg = recipe.dpo
    triples_path, sft_model = Path(triples_path), Path(sft_model)
    triples = check_inputs(triples_path, sft_model, cfg, round)
    hw = setup.resolve_hardware(cfg.quant, cfg.gradient_checkpointing, section="dpo")
    run = prepare_run_folder(Path(run))
    name = f"dpo-{round}"
    out = run / name
    fingerprint = {"recipe": cfg.model_dump(mode="json"), "triples_sha256": sha256_file(triples_path)}
    setup.check_previous(out, fingerprint, section="dpo", force=force)

    setup.quiet_training()
    from transformers import AutoTokenizer

    started = time.monotonic()
    tokenizer = setup.load_tokenizer(sft_model)
    if tokenizer.chat_template is None:
        raise UserError(f"the tokenizer in {sft_model} has no chat template; use an instruct model's folder.")
    prompts, shortened = fit_prompts(tokenizer, [t["prompt"] for t in triples], cfg.max_prompt_length)
    model = setup.load_model(sft_model, hw)
    # Trained in a temp folder and renamed: an interrupted round never replaces a finished one.
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=f".{name}.tmp-"))
    bar = setup.make_progress(progress, f"DPO round {round}")
    trainer = None
    try:
        trainer = build_trainer(model, tokenizer, build_dataset(triples, prompts), cfg, hw, tmp / "trainer", bar)
        trained = trainer.train()
        trainer.model.save_pretrained(tmp)
        # As loaded, not setup.load_tokenizer's: a pad token set here would be saved into the adapter's tokenizer.
        copy_tokenizer(AutoTokenizer.from_pretrained(sft_model), sft_model, tmp)
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        epochs = epoch_rows(trainer.state.log_history)
        manifest = {
            **fingerprint, "folder": str(out), "round": round, "triples": str(triples_path.resolve()),
            "triples_count": len(triples), "prompts_shortened": shortened, "sft_model": str(sft_model.resolve()),
            "hyperparameters": hyperparameters(trainer.args, cfg), **hw.fields(), "steps": trainer.state.global_step,
            "epochs": epochs, "final_loss": epochs[-1]["loss"] if epochs else None,
            "train_loss": trained.training_loss, "seconds": round_(time.monotonic() - started, 1),
            "versions": setup.library_versions(),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()  # an interrupted run leaves the terminal clean too
        del model, trainer
        free_memory()
    result = stage_result(name, manifest, out)
    record_stage(run, result)
    return result


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


def dpo_config(cfg: Dpo, hw: setup.Hardware, output_dir: Path):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=max(1, cfg.batch_size // cfg.per_device_batch),
        learning_rate=cfg.learning_rate, beta=cfg.beta, loss_type=[cfg.loss], max_length=cfg.max_length,
        bf16=hw.bf16, gradient_checkpointing=hw.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if hw.gradient_checkpointing else None,
        logging_strategy="epoch",  # trl averages its reward metrics over each logging window: per epoch here
        save_strategy="no", report_to="none", disable_tqdm=True, seed=cfg.seed, data_seed=cfg.seed,
    )


def build_trainer(model, tokenizer, dataset, cfg: Dpo, hw: setup.Hardware, output_dir: Path, bar=None):
    """trl's DPOTrainer with a fresh LoRA; no ref_model, so the reference is the adapter-disabled model."""
    import trl

    try:
        trainer = trl.DPOTrainer(
            model=model, ref_model=None, args=dpo_config(cfg, hw, output_dir), train_dataset=dataset,
            processing_class=tokenizer, peft_config=setup.lora_config(cfg.lora),
        )
    except ValueError as e:
        raise UserError(f"DPO could not start ({str(e).splitlines()[0][:200]}); check the [dpo] recipe.") from None
    setup.attach_progress(trainer, bar)
    return trainer


def hyperparameters(args, cfg: Dpo) -> dict:
    return {
        "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "per_device_batch": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": args.learning_rate,
        "epochs": cfg.epochs, "beta": cfg.beta, "loss": cfg.loss, "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length, "lora": cfg.lora.model_dump(mode="json"),
    }


def epoch_rows(log_history: list[dict]) -> list[dict]:
    """trl's per-epoch loss and reward metrics, from the trainer's log."""
    return [
        {"epoch": round_(entry["epoch"]), **{k: entry[k] for k in EPOCH_KEYS if k in entry}}
        for entry in log_history
        if "loss" in entry and "epoch" in entry
    ]


def round_(value: float, digits: int = 4) -> float:
    return round(float(value), digits)

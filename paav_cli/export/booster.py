"""`paav export`: a run's booster (or any supported HF model, with an optional adapter) to a GGUF that
`paav enhance` runs, verified, optionally registered and described for Ollama.

Steps: pick the model (a run's last trained stage, merged), convert it to F32/F16/BF16 in Python,
quantise with llama.cpp's own quantiser, check logits against transformers. `--lora` exports
only the adapter, as a GGUF LoRA that llama.cpp applies on a base GGUF at load time.
"""

from __future__ import annotations

import json
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from paav_cli import paths
from paav_cli.errors import UserError
from paav_cli.runs import StageResult, atomic_write_text, mark_running, read_manifest, record_stage

FLOAT_TYPES = ("F32", "F16", "BF16")
QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")
VERIFIED_BY_DEFAULT = ("F32", "F16")
# Largest |logit difference| from transformers each output type may show, as a fraction of the
# logit scale (the largest |logit| on the probes; see export/verify.py). Measured with
# bench/export_tolerance.py on the real Gemma 3 270M, then the worst of the tiny models: F32 6.3e-4
# and 4.5e-5 (float32 kernels alone), F16 1.5e-3 and 1.8e-3, BF16 1.2e-2 and 1.5e-2, Q8_0 5.6e-2 and
# 3.4e-2, Q4_K_M 6.7e-2 and 0.21 (32-wide tiny tensors fall back to smaller types). Each bound
# leaves 2.5-3x headroom over the real model.
TOLERANCE = {"F32": 2e-3, "F16": 5e-3, "BF16": 4e-2, "Q8_0": 0.15, "Q6_K": 0.15, "Q5_K_M": 0.2, "Q4_K_M": 0.25}


@dataclass
class ExportOptions:
    quant: str = "Q4_K_M"
    adapter: Path | None = None
    base: Path | None = None  # for --lora: the base model folder the adapter was trained on
    lora: bool = False  # export the adapter alone as a GGUF LoRA
    verify: bool | None = None  # None: on for F32/F16 output
    name: str | None = None  # register as a booster under this name in the user's models.toml
    ollama: bool = False


def latest_model(run: Path) -> Path:
    """A run folder's final model, merged: the last DPO round's, else the SFT model."""
    from paav_cli.recipe import Recipe
    from paav_cli.train.models import model_for_round

    manifest = read_manifest(run)
    if "recipe" not in manifest:
        raise UserError(f"{run} is neither a model folder (config.json) nor a paav run folder; check the path.")
    recipe = Recipe.model_validate(manifest["recipe"])
    rounds = sorted(int(p.name.split("-")[1]) for p in run.glob("dpo-*") if (p / "adapter_config.json").is_file())
    return model_for_round(run, (rounds[-1] + 1) if rounds else 1, recipe)


def resolve_source(source: Path, options: ExportOptions, work: Path) -> Path:
    """The standalone HF model folder to convert (merging `--adapter` into a temp copy)."""
    from paav_cli.train.merge import merge_adapter

    model = source if (source / "config.json").is_file() else latest_model(source)
    if options.adapter is not None:
        return merge_adapter(model, options.adapter, work / "merged", dtype="fp32")
    return model


def export(source: str, out: str, options: ExportOptions) -> StageResult:
    """Export `source` to the GGUF `out`. A run folder as the source gets the export recorded as its
    "export" stage, whether `paav export` runs by hand or inside `paav run`."""
    quant = options.quant.upper()
    if quant not in FLOAT_TYPES + QUANT_TYPES:
        raise UserError(f"--quant {options.quant} is not one of {', '.join(FLOAT_TYPES + QUANT_TYPES)}.")
    src, dest = Path(source), Path(out)
    if not src.exists():
        raise UserError(f"{src} does not exist; give a run folder or a model folder.")
    if dest.suffix != ".gguf":
        raise UserError(f"the output {dest} must end in .gguf.")
    if options.lora:
        return _export_lora(src, dest, options)
    from_run = not (src / "config.json").is_file()  # else resolve_source refuses it
    with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
        work = Path(tmp)
        model = resolve_source(src, options, work)
        if from_run:
            mark_running(src, "export")
        result = _convert_and_quantize(model, dest, quant, work, options)
    _after(dest, model, options, result)
    if from_run:
        record_stage(src, result)
    return result


def _convert_and_quantize(model: Path, dest: Path, quant: str, work: Path, options: ExportOptions) -> StageResult:
    from paav_cli.export.convert import convert
    from paav_cli.export.quantize import quantize
    from paav_cli.export.verify import verify

    dest.parent.mkdir(parents=True, exist_ok=True)
    if quant in FLOAT_TYPES:
        convert(model, dest, outtype=quant)
    else:
        intermediate = convert(model, work / "model-f32.gguf", outtype="F32")
        quantize(intermediate, dest, quant)
    result = StageResult("export", figures={"quant": quant, "bytes": dest.stat().st_size},
                         outputs={"gguf": str(dest)}, record={"source": str(model)})
    check = options.verify if options.verify is not None else quant in VERIFIED_BY_DEFAULT
    if check:
        report = verify(model, dest, tolerance=TOLERANCE[quant])
        result.record["verify"] = report
        if not report.get("ok"):
            dest.unlink(missing_ok=True)
            raise UserError(f"the exported GGUF does not match the model ({_mismatch(report)}); it was removed, "
                            "please report this model.")
        result.figures["verified"] = True
    return result


def _mismatch(report: dict) -> str:
    """What verification found wrong, in a few words for the one-sentence error."""
    parts = []
    if report.get("rel_logit_diff", 0.0) > report.get("tolerance", float("inf")):
        parts.append(f"max |logit difference| {report['max_abs_logit_diff']:.2e}, "
                     f"{report['rel_logit_diff']:.1e} of the logit scale {report['logit_scale']:.3g} "
                     f"against a tolerance of {report['tolerance']:.0e}")
    if not report.get("argmax_ok", True) or not report.get("top_k_ok", True):
        parts.append("its most likely tokens differ from the model's")
    if not report.get("tokens_match", True):
        parts.append("it tokenizes the probe texts differently")
    if not report.get("chat_template_match", True) or not report.get("chat_tokens_match", True):
        parts.append("its chat template renders differently")
    return "; ".join(parts) or "verification failed"


def _export_lora(src: Path, dest: Path, options: ExportOptions) -> StageResult:
    from paav_cli.export.lora import export_lora
    from paav_cli.train.models import resolve_base

    adapter = options.adapter or src
    base = resolve_base(adapter, str(options.base) if options.base else None)  # a folder or a registered base LLM
    export_lora(adapter, base, dest)
    result = StageResult("export", figures={"lora": True, "bytes": dest.stat().st_size},
                         outputs={"gguf": str(dest)}, record={"source": str(adapter), "base": str(base)})
    _after(dest, Path(base), options, result)
    return result


def _after(dest: Path, model: Path, options: ExportOptions, result: StageResult) -> None:
    if options.ollama and not options.lora:
        result.outputs["modelfile"] = str(write_modelfile(dest, model))
    if options.name:
        result.outputs["registered"] = register_booster(options.name, dest, model, lora=options.lora,
                                                        base=options.base)


# ---------------------------------------------------------------------------------------------
# Registration and Ollama


def register_booster(name: str, gguf: Path, model: Path, *, lora: bool = False, base: Path | None = None) -> str:
    """Append a booster entry to the user's models.toml (refusing a name already there)."""
    from paav_cli.registry import Registry

    user = paths.user_models_file()
    if name in Registry.load().entries:
        raise UserError(f"a model named {name!r} is already registered; choose another --name.")
    context = _context_length(model)
    if lora:
        raise UserError("--name registers a whole GGUF; for a LoRA give it with `paav enhance --lora FILE`.")
    entry = (
        f'\n[boosters.{json.dumps(name)}]\ndescription = "Exported by paav export from {model}"\n'
        f"path = {json.dumps(str(Path(gguf).resolve()))}\nprompt_format = \"chat\"\ncontext = {context}\n"
    )
    user.parent.mkdir(parents=True, exist_ok=True)
    text = user.read_text() if user.exists() else ""
    try:
        tomllib.loads(text + entry)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{user} is not valid TOML ({e}); fix it before registering.") from None
    atomic_write_text(user, text + entry)
    return str(user)


def _context_length(model: Path) -> int:
    config = json.loads((Path(model) / "config.json").read_text())
    config = config.get("text_config", config)
    return int(min(config.get("max_position_embeddings", 4096), 8192))


OLLAMA_TEMPLATES = {
    # Ollama speaks Go templates, not Jinja: one per chat format, with the booster's instruction
    # in the user turn so that `ollama run NAME "a cat"` is all a user types.
    "llama3": (('<|start_header_id|>user<|end_header_id|>\n\n{instruction}{{{{ .Prompt }}}}{suffix}<|eot_id|>'
               '<|start_header_id|>assistant<|end_header_id|>\n\n'), ["<|eot_id|>"]),
    "chatml": ('<|im_start|>user\n{instruction}{{{{ .Prompt }}}}{suffix}<|im_end|>\n<|im_start|>assistant\n',
               ["<|im_end|>"]),
    "gemma": ('<start_of_turn>user\n{instruction}{{{{ .Prompt }}}}{suffix}<end_of_turn>\n<start_of_turn>model\n',
              ["<end_of_turn>"]),
}


def chat_format(model: Path) -> str:
    template = _chat_template(model)
    if "<|start_header_id|>" in template:
        return "llama3"
    if "<|im_start|>" in template:
        return "chatml"
    if "<start_of_turn>" in template:
        return "gemma"
    raise UserError(f"{model}'s chat template is none paav can write for Ollama (Llama-3, ChatML or Gemma).")


def _chat_template(model: Path) -> str:
    model = Path(model)
    if (model / "chat_template.jinja").is_file():
        return (model / "chat_template.jinja").read_text()
    config = model / "tokenizer_config.json"
    return json.loads(config.read_text()).get("chat_template") or "" if config.is_file() else ""


def write_modelfile(gguf: Path, model: Path) -> Path:
    from paav_cli.text.templates import RELEASED_INSTRUCTION, RELEASED_SUFFIX

    template, stops = OLLAMA_TEMPLATES[chat_format(model)]
    body = template.format(instruction=RELEASED_INSTRUCTION, suffix=RELEASED_SUFFIX)
    lines = [f"FROM ./{Path(gguf).name}", f'TEMPLATE """{body}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0", "PARAMETER num_predict 256"]
    path = Path(gguf).with_name("Modelfile")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

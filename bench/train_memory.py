"""Peak GPU memory and seconds per optimizer step of QLoRA SFT and DPO on Meta-Llama-3-8B-Instruct.

    python bench/train_memory.py [--steps 3] [--stages sft,dpo]
    python bench/train_memory.py --tiny     # the same code on tiny-llama on the CPU (checks the path)

Speed and memory do not depend on weight values, so the full-size architecture is built from its
published config values with random weights (no download), saved once, and trained through paav's
own `run_sft` and `run_dpo` (4-bit NF4 QLoRA, batch 1 x accumulation 16, max length 1024, every
example filled to the maximum length). The reference measured in the same run is loading the
4-bit model alone. Figures to compare: unsloth about 6 GB for 8B QLoRA, LLaMA-Factory about 9 GB
for 7B with plain HF; paav's goal is at most 10 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
    bos_token_id=128000, eos_token_id=128009, tie_word_embeddings=False,
)


def build_full_size(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from paav_cli.testing.tiny_llm import build_byte_bpe_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_byte_bpe_tokenizer()  # ids stay inside the big vocabulary; values do not matter
    config = LlamaConfig(**{**LLAMA3_8B, "pad_token_id": tokenizer.pad_token_id})
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def filler(tokenizer, tokens: int) -> str:
    """Text of about `tokens` tokens, so that every example reaches max_length."""
    words = ["the", "camera", "pans", "slowly", "across", "a", "quiet", "lake", "at", "dawn", "while", "soft", "light", "falls", "on", "the", "water"]
    text, i = [], 0
    while len(tokenizer(" ".join(text))["input_ids"]) < tokens:
        text.extend(words[i % len(words)] for i in range(i, i + 50))
        i += 50
    return " ".join(text)


def write_data(folder: Path, base: Path, n: int, max_length: int) -> tuple[Path, Path]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    long = filler(tokenizer, max_length)
    pairs, triples = folder / "pairs.jsonl", folder / "triples.jsonl"
    pairs.write_text("".join(json.dumps({"source": f"a cat {i}", "target": long}) + "\n" for i in range(n)))
    triples.write_text("".join(
        json.dumps({"prompt": f"a cat {i}", "chosen": long, "rejected": long[::-1]}) + "\n" for i in range(n)
    ))
    return pairs, triples


def peak_gb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def load_only(base: Path, quant: str) -> tuple[float, float]:
    """The reference: the model loaded as training loads it, nothing else."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    reset_peak()
    start = time.perf_counter()
    kwargs = {}
    if quant == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if quant == "4bit" else None, **kwargs)
    seconds = time.perf_counter() - start
    peak = peak_gb()
    del model
    reset_peak()
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per stage")
    parser.add_argument("--stages", default="sft,dpo")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--work", default=None, help="folder for the random 8B model (16 GB; reused)")
    args = parser.parse_args()

    import torch

    from paav_cli.libs import quiet
    from paav_cli.recipe import Dpo, Lora, Models, Recipe, Sft

    quiet()
    if not args.tiny and not torch.cuda.is_available():
        print("train_memory: no CUDA device here; run it on a GPU machine (or use --tiny to check the code path).")
        return
    root = Path(args.work or tempfile.mkdtemp(prefix="paav-train-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    accumulation, max_length = (2, 512) if args.tiny else (16, 1024)
    if args.tiny:
        from paav_cli import registry
        from paav_cli.provision import provide

        base = provide(registry.Registry.load().get("tiny-llama", "base_llms"))
        quant = "none"
    else:
        base = build_full_size(root / "llama-3-8b-random")
        quant = "4bit"
    models_file = root / "models.toml"
    models_file.write_text(f'[base_llms.bench-base]\npath = "{base}"\n')
    os.environ["PAAV_MODELS"] = str(models_file)
    n = args.steps * accumulation
    pairs, triples = write_data(root, base, n, max_length)
    recipe = Recipe(
        models=Models(generator="tiny-wan", rewards=["tiny-aesthetic"]),
        sft=Sft(base="bench-base", quant=quant, epochs=1, batch_size=accumulation, per_device_batch=1,
                max_length=max_length, eval_fraction=0.0),
        dpo=Dpo(quant=quant, epochs=1, batch_size=accumulation, per_device_batch=1, max_length=max_length,
                max_prompt_length=max(max_length // 2, 400), lora=Lora(r=16, alpha=16)),
    )
    ref_peak, ref_seconds = load_only(base, quant)
    print(f"{'tiny-llama' if args.tiny else 'Llama-3-8B (random weights)'}, {quant}, batch 1 x {accumulation}, "
          f"max length {max_length}, {args.steps} steps")
    print(f"reference: model load only    peak {ref_peak:6.2f} GB   {ref_seconds:6.1f} s")
    for stage in args.stages.split(","):
        reset_peak()
        start = time.perf_counter()
        if stage == "sft":
            from paav_cli.train.sft import run_sft

            run_sft(pairs, recipe, root / "run-sft", force=True)
        else:
            from paav_cli.train.dpo import run_dpo

            run_dpo(triples, recipe, root / "run-dpo", round=1, sft_model=base, force=True)
        seconds = time.perf_counter() - start
        per_step = max(seconds - ref_seconds, 0.0) / args.steps
        peak = peak_gb()
        print(f"{stage:<4} {'QLoRA' if quant == '4bit' else 'LoRA':<5} training        peak {peak:6.2f} GB   {per_step:6.1f} s/step   "
              f"peak / load-only {peak / ref_peak if math.isfinite(ref_peak) else float('nan'):.2f}")
    print("compare: unsloth ~6 GB (8B QLoRA), LLaMA-Factory ~9 GB (7B, plain HF); goal <= 10 GB")


if __name__ == "__main__":
    main()

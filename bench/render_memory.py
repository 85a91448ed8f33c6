"""Peak accelerator memory and seconds per video of CogVideoX-2B in each memory mode.

    python bench/render_memory.py [--frames 49] [--steps 50] [--modes none,model,model+tiling,sequential]
    python bench/render_memory.py --tiny        # the same code on tiny models, on any machine

Speed and memory do not depend on weight values, so the full-size CogVideoX-2B architecture is
built from its published config values with random weights (no download): the transformer and
VAE with diffusers' defaults (which are CogVideoX-2B's), T5-XXL as the text encoder. Each mode
renders through paav's own VideoGenerator (the code `paav render` runs) and reports peak memory
and seconds next to mode `none`, measured in the same run, and next to the diffusers
documentation's figures (33 GB none, 19 GB model offload, 11 GB with VAE tiling, < 4 GB sequential).
Needs an accelerator (CUDA) for the full size; prints why and exits otherwise.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DOCS_GB = {"none": 33, "model": 19, "model+tiling": 11, "sequential": 4}


def full_size_pipeline(dtype):
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from paav_cli.testing.tiny_text import build_t5_tokenizer

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no fp32 copy of 6.7B parameters in RAM
    try:
        transformer = CogVideoXTransformer3DModel()  # diffusers' defaults are CogVideoX-2B's config
        vae = AutoencoderKLCogVideoX()
        t5 = T5EncoderModel(T5Config(
            vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
        ))
    finally:
        torch.set_default_dtype(previous)
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
        rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing", clip_sample=False,
        set_alpha_to_one=True, steps_offset=0,
    )
    tokenizer = build_t5_tokenizer(Path("/tmp/paav-bench-t5tok"))
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=t5, vae=vae, transformer=transformer, scheduler=scheduler)


def tiny_pipeline(dtype):
    import tempfile

    from diffusers import CogVideoXPipeline

    from paav_cli.testing.tiny_video import build_tiny_cogvideox

    folder = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_cogvideox(folder)
    return CogVideoXPipeline.from_pretrained(folder, torch_dtype=dtype)


def run_mode(mode: str, args, entry) -> dict:
    import tempfile

    import torch

    from paav_cli.video.cache import RenderCache
    from paav_cli.video.jobs import RenderJob
    from paav_cli.video.render import RenderOptions, VideoGenerator, accelerator

    memory, _, tiling = mode.partition("+")
    options = RenderOptions(memory=memory, vae_tiling=bool(tiling), dtype=args.dtype)
    gen = VideoGenerator(entry, options, cache=RenderCache(Path(tempfile.mkdtemp())))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    pipe = tiny_pipeline(dtype) if args.tiny else full_size_pipeline(dtype)
    on_gpu = accelerator() == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    gen.attach(pipe)
    job = RenderJob("a cat playing piano in a sunlit room, the camera slowly pans", seed=0,
                    frames=args.frames, steps=args.steps)
    start = time.perf_counter()
    gen.render([job])
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
    gen.free()
    del pipe
    gc.collect()
    return {"mode": mode, "peak_gb": peak, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--modes", default="none,model,model+tiling,sequential")
    parser.add_argument("--tiny", action="store_true", help="tiny models: checks the code path on any machine")
    args = parser.parse_args()

    from paav_cli.libs import quiet
    from paav_cli.registry import Registry
    from paav_cli.video.render import accelerator

    quiet()
    if not args.tiny and accelerator() != "cuda":
        print("render_memory: no CUDA device here; run it on a GPU machine (or use --tiny to check the code path).")
        return
    if args.tiny:
        args.frames, args.steps, args.dtype = 9, 2, "fp32"
    entry = Registry.load().get("tiny-cogvideox" if args.tiny else "cogvideox-2b")
    modes = ["none"] if args.tiny else args.modes.split(",")  # offload needs an accelerator
    rows = [run_mode(m, args, entry) for m in modes]
    base = rows[0]
    print(f"CogVideoX-2B {'(tiny)' if args.tiny else ''} {args.frames} frames, {args.steps} steps, {args.dtype}")
    print(f"{'mode':<14} {'peak GB':>8} {'docs GB':>8} {'vs none':>8} {'s/video':>8} {'vs none':>8}")
    for r in rows:
        print(f"{r['mode']:<14} {r['peak_gb']:>8.1f} {DOCS_GB.get(r['mode'], float('nan')):>8} "
              f"{r['peak_gb'] / base['peak_gb']:>8.2f} {r['seconds']:>8.1f} {r['seconds'] / base['seconds']:>8.2f}")


if __name__ == "__main__":
    main()

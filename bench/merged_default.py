"""The default booster merged: Gemma 3 270M with paav's shipped LoRA folded into its weights, as one GGUF.

    python bench/merged_default.py -o /tmp/merged --register  # merged-F32.gguf, merged-Q4_K_M.gguf, registered
    python bench/merged_default.py -o /tmp/merged --latency 7 # paav -m default / -m merged-default, interleaved
    python bench/latency.py --model default                   # base Q4_K_M + adapter, applied at load
    python bench/latency.py --model merged-default

The base is `gemma-3-270m-gguf` (the default GGUF dequantised, tokenizer.json only), exported by
paav's converter; the adapter only ships as a GGUF LoRA, so it is merged in GGUF space while the
tensors stream out, W + alpha/r * B A, exactly what llama.cpp adds at run time. The F32 merge is
checked against base + adapter through llama.cpp (max |logit difference|, greedy text), then
quantised to Q4_K_M like the shipped base. `--register` adds `merged-default` (same prompt format
and context as `default`) to the user's models.toml for bench/latency.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def read_lora(path: Path) -> tuple[dict, float]:
    """{gguf weight name: (A, B)} and the scale llama.cpp applies (alpha / rank)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    pairs: dict[str, dict] = {}
    for t in reader.tensors:
        base, part = t.name.rsplit(".lora_", 1)
        pairs.setdefault(base, {})[part] = np.asarray(t.data, dtype=np.float32)
    rank = next(iter(pairs.values()))["a"].shape[0]
    return {k: (v["a"], v["b"]) for k, v in pairs.items()}, alpha / rank


def merged_convert(base: Path, lora: Path, out: Path) -> Path:
    from paav_cli.export import convert as convert_module

    pairs, scale = read_lora(lora)
    stream = convert_module._iter_data
    done = []

    def with_lora(src, plans):
        for plan, data in stream(src, plans):
            if plan.gguf_name in pairs:
                a, b = pairs[plan.gguf_name]
                data = (data + scale * (b @ a)).astype(data.dtype)
                done.append(plan.gguf_name)
            yield plan, data

    convert_module._iter_data = with_lora
    try:
        convert_module.convert(base, out, outtype="F32")
    finally:
        convert_module._iter_data = stream
    if sorted(done) != sorted(pairs):
        raise SystemExit(f"adapter tensors not merged: {sorted(set(pairs) - set(done))}")
    return out


def compare(base_f32: Path, merged_f32: Path, lora: Path, prompt: str) -> dict:
    import numpy as np

    from paav_cli.llm.llamacpp import LlamaCppModel, Sampling
    from paav_cli.text.formats import build_request

    text = build_request("completion", prompt).text
    results = {}
    for name, path, adapter in (("adapter", base_f32, lora), ("merged", merged_f32, None)):
        lm = LlamaCppModel(path, n_threads=2, max_parallel=1, lora_path=adapter)
        try:
            ids = lm.encode_prompt(text)
            logits = lm.all_logits(ids)  # the adapter applied, where there is one
            out = lm.complete([ids], seeds=[0], sampling=Sampling(temperature=0, max_tokens=64))[0]
            results[name] = {"ids": ids, "logits": logits, "text": out.text}
        finally:
            lm.close()
    adapter_logits = results["adapter"]["logits"]
    merged = results["merged"]["logits"]
    return {"max_abs_logit_diff": float(np.abs(merged - adapter_logits).max()),
            "logit_scale": float(np.abs(adapter_logits).max()),
            "same_text": results["merged"]["text"] == results["adapter"]["text"],
            "adapter_text": results["adapter"]["text"], "merged_text": results["merged"]["text"]}


def register(path: Path) -> Path:
    from paav_cli import paths, registry

    default = registry.Registry.load().get("default", "boosters")
    user = paths.user_models_file()
    text = user.read_text() if user.exists() else ""
    if "[boosters.merged-default]" not in text:
        text += (f'\n[boosters.merged-default]\ndescription = "default booster, adapter merged (bench/merged_default.py)"\n'
                 f"path = {json.dumps(str(path.resolve()))}\nprompt_format = {json.dumps(default.prompt_format)}\n"
                 f"context = {default.context}\n")
        user.parent.mkdir(parents=True, exist_ok=True)
        user.write_text(text)
    return user


def latency(runs: int, prompt: str, threads: int) -> dict:
    """`paav PROMPT -m default` against `-m merged-default`, interleaved: wall and CPU seconds (medians).

    CPU seconds (user + sys of the child) stay meaningful on a machine others are loading, where
    wall time is mostly waiting for a core."""
    import os
    import resource
    import statistics
    import subprocess
    import time

    def once(model: str) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "paav_cli", prompt, "-m", model, "--temperature", "0", "--seed", "0",
                        "--max-tokens", "64", "--threads", str(threads)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=os.environ)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    models = ("default", "merged-default")
    for model in models:
        once(model)  # first runs save the prefix state, as a user's first run does
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in models}
    for _ in range(runs):
        for model in models:
            times[model].append(once(model))
    return {m: {"wall_s": round(statistics.median(w for w, _ in t), 2),
                "cpu_s": round(statistics.median(c for _, c in t), 2)} for m, t in times.items()} | {
        "runs": runs, "threads": threads, "load_average": os.getloadavg()}


def in_process(runs: int, prompt: str, threads: int) -> dict:
    """Load and generation apart, in this process: what the adapter costs once the process is up."""
    import os
    import statistics
    import time

    from paav_cli import registry
    from paav_cli.llm.llamacpp import LlamaCppModel, Sampling
    from paav_cli.text.formats import build_request

    reg = registry.Registry.load()
    setups = {}
    for name in ("default", "merged-default"):
        entry = reg.get(name, "boosters")
        setups[name] = (registry.require_path(entry), registry.expand_path(entry.lora) if entry.lora else None,
                        build_request(entry.prompt_format, prompt).text)
    rows: dict[str, list[tuple[float, float, float, int]]] = {n: [] for n in setups}
    for _ in range(runs):
        for name, (path, lora, text) in setups.items():
            t0 = time.perf_counter()
            lm = LlamaCppModel(path, n_threads=threads, max_parallel=1, lora_path=lora)
            t1, c1 = time.perf_counter(), time.process_time()
            out = lm.complete([lm.encode_prompt(text)], seeds=[0],
                              sampling=Sampling(temperature=0, max_tokens=64))[0]
            t2, c2 = time.perf_counter(), time.process_time()
            lm.close()
            rows[name].append((t1 - t0, t2 - t1, c2 - c1, out.tokens))
    med = statistics.median
    return {n: {"load_s": round(med(r[0] for r in v), 3), "generate_s": round(med(r[1] for r in v), 3),
                "generate_cpu_s": round(med(r[2] for r in v), 3), "tokens": med(r[3] for r in v)}
            for n, v in rows.items()} | {"runs": runs, "threads": threads, "load_average": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the GGUFs (about 1.4 GB)")
    parser.add_argument("--prompt", default="A person is ice skating")
    parser.add_argument("--register", action="store_true")
    parser.add_argument("--latency", type=int, default=0, metavar="RUNS",
                        help="only time `paav` with default against merged-default (registered before), interleaved")
    parser.add_argument("--in-process", type=int, default=0, metavar="RUNS",
                        help="only time loading and generating apart, in this process, interleaved")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.latency:
        print(json.dumps(latency(args.latency, args.prompt, args.threads), indent=1))
        return 0
    if args.in_process:
        print(json.dumps(in_process(args.in_process, args.prompt, args.threads), indent=1))
        return 0

    from paav_cli import registry
    from paav_cli.export.convert import convert
    from paav_cli.export.quantize import quantize

    base = registry.require_path(registry.Registry.load().get("gemma-3-270m-gguf", "base_llms"))
    lora = registry.expand_path(registry.Registry.load().get("default", "boosters").lora)
    args.out.mkdir(parents=True, exist_ok=True)
    base_f32 = convert(base, args.out / "base-F32.gguf", outtype="F32")
    merged_f32 = merged_convert(base, lora, args.out / "merged-F32.gguf")
    report = compare(base_f32, merged_f32, lora, args.prompt)
    merged_q4 = quantize(merged_f32, args.out / "merged-Q4_K_M.gguf", "Q4_K_M")
    base_f32.unlink()
    report["merged_q4_k_m"] = str(merged_q4)
    report["bytes"] = merged_q4.stat().st_size
    if args.register:
        report["registered_in"] = str(register(merged_q4))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

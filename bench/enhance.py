"""Enhancement speed: paav against llama-cpp-python called directly, measured in one run.

    python bench/enhance.py [--prompts 32] [--threads 2] [--max-tokens 96] [--model default]

A booster with a LoRA adapter (`--model default`, the shipped adapter) runs with it applied in all three;
`--model default-fewshot` is the base model prompted with examples.

Three figures on the same GGUF, the same few-shot prompts, seeds and sampling settings:
  raw      llama_cpp.Llama.create_completion, one prompt after another (the reference)
  paav-1   paav's backend one prompt at a time (--parallel 1)
  paav-N   paav's backend with all prompts decoded together (multi-sequence batch)
and the ratios paav-1 / raw (goal >= 0.95) and paav-N / paav-1 (goal >= 1.8), in generated
tokens per second. Also how many batched outputs equal the one-at-a-time ones for the same seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paav_cli import registry
from paav_cli.llm.llamacpp import LlamaCppModel, Sampling
from paav_cli.text.formats import build_request


def load_prompts(n: int) -> list[str]:
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo / "benchmarks" / "vbench_test.txt", repo.parent / "shared" / "benchmarks" / "vbench_test.txt"]
    for path in candidates:
        if path.exists():
            lines = [x.strip() for x in path.read_text().splitlines() if x.strip()]
            return (lines * (n // len(lines) + 1))[:n]
    return [f"a cat playing piano, take {i}" for i in range(n)]


def run_raw(path: Path, texts: list[str], seeds: list[int], s: Sampling, stop, threads: int, lora: Path | None):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False,
                lora_path=str(lora) if lora else None)
    llm.create_completion(texts[0], max_tokens=1)  # warm-up, like paav's own first call below
    tokens, outs, start = 0, [], time.perf_counter()
    for text, seed in zip(texts, seeds):
        out = llm.create_completion(
            text, max_tokens=s.max_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
            min_p=s.min_p, repeat_penalty=s.repeat_penalty, seed=seed, stop=stop,
        )
        tokens += out["usage"]["completion_tokens"]
        outs.append(out["choices"][0]["text"])
    return tokens, time.perf_counter() - start, outs


def run_paav(path: Path, token_lists, seeds, s: Sampling, stop, threads: int, parallel: int, lora: Path | None):
    model = LlamaCppModel(path, n_threads=threads, max_parallel=parallel, lora_path=lora)
    model.complete(token_lists[:1], seeds=[0], sampling=Sampling(max_tokens=1), stop=stop)  # warm-up
    start = time.perf_counter()
    out = model.complete(token_lists, seeds=seeds, sampling=s, stop=stop)
    seconds = time.perf_counter() - start
    model.close()
    return out, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--model", default="default")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--repeat-penalty", type=float, default=1.1)
    args = ap.parse_args()

    entry = registry.Registry.load().get(args.model, "boosters")
    path = registry.require_path(entry)
    lora = registry.expand_path(entry.lora) if entry.lora else None
    prompts = load_prompts(args.prompts)
    requests = [build_request(entry.prompt_format, p) for p in prompts]
    texts = [r.text for r in requests]
    stop = requests[0].stop
    seeds = list(range(len(prompts)))
    s = Sampling(max_tokens=args.max_tokens, temperature=args.temperature, repeat_penalty=args.repeat_penalty)

    probe = LlamaCppModel(path, n_threads=args.threads, lora_path=lora)
    token_lists = [probe.encode_prompt(t) for t in texts]
    probe.close()

    raw_tokens, raw_s, raw_texts = run_raw(path, texts, seeds, s, stop, args.threads, lora)
    one, one_s = run_paav(path, token_lists, seeds, s, stop, args.threads, parallel=1, lora=lora)
    many, many_s = run_paav(path, token_lists, seeds, s, stop, args.threads, parallel=len(prompts), lora=lora)

    one_tokens = sum(c.tokens for c in one)
    many_tokens = sum(c.tokens for c in many)
    raw_rate, one_rate, many_rate = raw_tokens / raw_s, one_tokens / one_s, many_tokens / many_s
    same = sum(a.text == b.text for a, b in zip(one, many))
    print(f"model {path.name}{' + ' + lora.name if lora else ''}, {len(prompts)} prompts, {args.threads} threads, max {args.max_tokens} tokens")
    print(f"raw llama-cpp-python  {raw_tokens:6d} tokens {raw_s:7.2f} s  {raw_rate:7.1f} tok/s")
    print(f"paav one at a time    {one_tokens:6d} tokens {one_s:7.2f} s  {one_rate:7.1f} tok/s")
    print(f"paav batched ({len(prompts):2d})     {many_tokens:6d} tokens {many_s:7.2f} s  {many_rate:7.1f} tok/s")
    print(f"ratio paav-1 / raw      {one_rate / raw_rate:5.2f}  (goal >= 0.95)")
    print(f"ratio paav-N / paav-1   {many_rate / one_rate:5.2f}  (goal >= 1.8)")
    raw_same = sum(a == b.text for a, b in zip(raw_texts, one))
    print(f"paav one-at-a-time text == raw text: {raw_same}/{len(prompts)} (same only when greedy, "
          "repeat penalty 1.0: llama-cpp-python's sampler chain differs otherwise)")
    prefix = sum(_agree(a.text, b.text) for a, b in zip(one, many)) / len(prompts)
    print(f"batched text == one-at-a-time text for the same seed: {same}/{len(prompts)}; "
          f"mean share of words before they part: {prefix:.2f}")


def _agree(a: str, b: str) -> float:
    """Share of the shorter text's words that match before the two texts first differ."""
    wa, wb = a.split(), b.split()
    n = 0
    while n < min(len(wa), len(wb)) and wa[n] == wb[n]:
        n += 1
    return n / max(1, min(len(wa), len(wb)))


if __name__ == "__main__":
    main()

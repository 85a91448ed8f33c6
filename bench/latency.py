"""Single-prompt latency of the whole `paav` command against a minimal llama-cpp-python script.

    python bench/latency.py [--runs 5] [--max-tokens 64] [--model default]

Both start a fresh Python process, load the booster's GGUF (and its LoRA adapter, if it has one),
and write a greedy rewrite of the same prompt with the same prompt text and token cap. The reference script does nothing
else; paav also reads its registry, validates the output and (after its first run) loads the
few-shot prefix's saved KV state instead of decoding it. Prints medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paav_cli import registry
from paav_cli.text.formats import build_request

RAW = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=2048, n_threads=2, verbose=False, lora_path=sys.argv[4] or None)
text = open(sys.argv[2]).read()
out = llm.create_completion(text, max_tokens=int(sys.argv[3]), temperature=0, repeat_penalty=1.0,
                            stop=["\\n", "Prompt:"])
print(out["choices"][0]["text"])
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="A person is ice skating")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    entry = registry.Registry.load().get(args.model, "boosters")
    path = registry.require_path(entry)
    lora = str(registry.expand_path(entry.lora)) if entry.lora else ""
    text_file = REPO / "bench" / "out" / "latency-prompt.txt"
    text_file.parent.mkdir(parents=True, exist_ok=True)
    text_file.write_text(build_request(entry.prompt_format, args.prompt).text)
    raw_cmd = [sys.executable, "-c", RAW, str(path), str(text_file), str(args.max_tokens), lora]
    paav_cmd = [sys.executable, "-m", "paav_cli", args.prompt, "-m", args.model, "--temperature", "0", "--seed", "0",
                "--max-tokens", str(args.max_tokens), "--threads", "2"]
    timed(paav_cmd)  # first run saves the prefix state, as a user's first run does
    raw, ours = [], []
    for _ in range(args.runs):  # interleaved, so drift in machine load hits both alike
        raw.append(timed(raw_cmd))
        ours.append(timed(paav_cmd))
    r, p = statistics.median(raw), statistics.median(ours)
    print(f"booster {args.model}: {path.name}{' + ' + Path(lora).name if lora else ''}")
    print(f"{args.runs} runs, max {args.max_tokens} tokens, greedy, prompt {args.prompt!r}")
    print(f"raw llama-cpp-python script  median {r:.2f} s")
    print(f"paav command                 median {p:.2f} s")
    print(f"ratio paav / raw             {p / r:.2f}  (below 1: paav is faster)")


if __name__ == "__main__":
    main()

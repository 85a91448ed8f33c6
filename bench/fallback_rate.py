"""How often a booster falls back to the original prompt, and what its rewrites look like.

    python bench/fallback_rate.py [benchmarks/vbench_test.txt] [--model default] [--seed 0] [--target cogvideox-5b]

Prints the fallback rate with the reasons, first-try failures (before the retry), words and
sentences per rewrite, and seconds per prompt of the batched run. Writes every record to
bench/out/<set>-<model>.jsonl for reading by eye.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paav_cli import enhance
from paav_cli.prompt_files import read_prompts
from paav_cli.text.clean import split_sentences


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prompts", nargs="?", default=str(REPO / "benchmarks" / "vbench_test.txt"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="cogvideox-5b")
    args = ap.parse_args()

    records = read_prompts(args.prompts)
    out = REPO / "bench" / "out" / f"{Path(args.prompts).stem}-{args.model}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    first_failures: Counter = Counter()
    original_problem = enhance.problem

    def counting_problem(prompt, text, **kw):  # counts every failed check, first tries and retries
        reason = original_problem(prompt, text, **kw)
        if reason:
            first_failures[reason.split(" (")[0]] += 1
        return reason

    enhance.problem = counting_problem
    opts = enhance.EnhanceOptions(model=args.model, seed=args.seed, target=args.target)
    start = time.perf_counter()
    summary = enhance.enhance_records(records, str(out), opts, warn=lambda m: None)
    seconds = time.perf_counter() - start
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    fallbacks = [r for r in rows if r["fallback"]]
    kept = [r for r in rows if not r["fallback"]]
    words = [len(r["enhanced"].split()) for r in kept]
    sentences = [len(split_sentences(r["enhanced"])) for r in kept]
    over = sum(r.get("target_tokens", 0) > r.get("target_limit", 10**9) for r in rows)
    print(f"{args.prompts}: {len(rows)} prompts, model {args.model}, seed {args.seed}, target {args.target}")
    print(f"fallbacks: {len(fallbacks)} ({100 * len(fallbacks) / len(rows):.1f}%) "
          f"{dict(Counter(r['fallback_reason'].split(' (')[0] for r in fallbacks))}")
    print(f"failed checks (first tries and retries): {sum(first_failures.values())} {dict(first_failures)}")
    print(f"words per rewrite: median {statistics.median(words):.0f}, sentences: median "
          f"{statistics.median(sentences):.0f}; over the {args.target} budget: {over}")
    print(f"batched: {seconds:.1f} s, {seconds / len(rows):.2f} s per prompt; summary {summary}")
    print(f"records: {out}")


if __name__ == "__main__":
    main()

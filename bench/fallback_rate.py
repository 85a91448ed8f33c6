"""How often a booster falls back to the original prompt, and what its rewrites look like.

    python bench/fallback_rate.py [benchmarks/vbench_test.txt] [--model default] [--seed 0] [--target cogvideox-5b]

Prints the fallback rate with the reasons, first tries that were retried (and why), words and
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

from paav_cli import load_booster
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
    start = time.perf_counter()
    with load_booster(args.model) as booster:
        results = list(booster.enhance_many(records, seed=args.seed, target=args.target))
    seconds = time.perf_counter() - start
    rows = [{"id": r.id, **to_record_fields(e)} for r, e in zip(records, results)]
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    fallbacks = [e for e in results if e.fallback]
    kept = [e for e in results if not e.fallback]
    first_failures = Counter(e.first_try_problem.split(" (")[0] for e in results if e.first_try_problem)
    words = [len(e.text.split()) for e in kept]
    sentences = [len(split_sentences(e.text)) for e in kept]
    over = sum((e.target_tokens or 0) > (e.target_limit or 10**9) for e in results)
    print(f"{args.prompts}: {len(results)} prompts, model {args.model}, seed {args.seed}, target {args.target}")
    print(f"fallbacks: {len(fallbacks)} ({100 * len(fallbacks) / len(results):.1f}%) "
          f"{dict(Counter(e.fallback_reason.split(' (')[0] for e in fallbacks))}")
    print(f"first tries retried: {sum(first_failures.values())} {dict(first_failures)}")
    print(f"words per rewrite: median {statistics.median(words):.0f}, sentences: median "
          f"{statistics.median(sentences):.0f}; over the {args.target} budget: {over}")
    print(f"batched: {seconds:.1f} s (model load included), {seconds / len(results):.2f} s per prompt")
    print(f"records: {out}")


def to_record_fields(e) -> dict:
    return {k: v for k, v in vars(e).items() if v is not None}


if __name__ == "__main__":
    main()

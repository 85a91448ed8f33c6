"""How often the faithfulness scorer agrees with strict human readings.

`benchmarks/faithfulness_readings.jsonl` holds 440 rewrites of the first 100 VBench and WebVid
test prompts (today's default adapter and the few-shot base, and GPT-4o's public VBench rewrites
of the first 40), each read strictly by a person: faithful when the subject does the asked action
and nothing added contradicts the prompt (time, weather, light, state, where, who is there).
Each batch was read and labelled before the scorer saw it. The rules were written on prompts 0-29
(`part: rules`), then tuned batch by batch on 30-39, 40-59 and 60-79 (`rules-2` to `rules-4`;
their agreement before tuning: 64 %, 69 %, 60 %); prompts 80-99 (`held-out`) were never used to
change the scorer, so they give the honest figure. Benchmark prompts never enter training data:
these readings only measure the scorer.

    python bench/faithfulness_agreement.py [--show-disagreements]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from paav_cli.text.faithfulness import read_faithfulness

READINGS = Path(__file__).resolve().parents[1] / "benchmarks" / "faithfulness_readings.jsonl"


def figures(rows: list[dict]) -> dict:
    tp = sum(not r["faithful"] and not r["scored"] for r in rows)
    fp = sum(r["faithful"] and not r["scored"] for r in rows)
    fn = sum(not r["faithful"] and r["scored"] for r in rows)
    agree = sum(r["faithful"] == r["scored"] for r in rows)
    return {
        "n": len(rows),
        "agreement": agree / len(rows),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "read_faithful": sum(r["faithful"] for r in rows),
        "scored_faithful": sum(r["scored"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-disagreements", action="store_true")
    args = parser.parse_args()
    rows = [json.loads(line) for line in READINGS.read_text(encoding="utf-8").splitlines() if line.strip()]
    read_faithfulness("warm up", "warm up. the lexicon loads once")
    start = time.perf_counter()
    for r in rows:
        reading = read_faithfulness(r["prompt"], r["text"])
        r["scored"], r["problems"] = reading.faithful, reading.problems
    per_prompt_ms = (time.perf_counter() - start) / len(rows) * 1000
    print(f"{'slice':<28} {'n':>4} {'agree':>6} {'prec':>6} {'recall':>6} {'read F':>7} {'scored F':>8}")
    slices = {
        "all": rows,
        "rules written on (0-29)": [r for r in rows if r["part"] == "rules"],
        "rules tuned on (30-39)": [r for r in rows if r["part"] == "rules-2"],
        "rules tuned on (40-59)": [r for r in rows if r["part"] == "rules-3"],
        "rules tuned on (60-79)": [r for r in rows if r["part"] == "rules-4"],
        "held out (80-99)": [r for r in rows if r["part"] == "held-out"],
    }
    for key in sorted({(r["set"], r["booster"]) for r in rows}):
        slices[f"{key[0]} / {key[1]}"] = [r for r in rows if (r["set"], r["booster"]) == key]
    for name, part in slices.items():
        f = figures(part)
        print(
            f"{name:<28} {f['n']:>4} {f['agreement']:>6.1%} {f['precision']:>6.1%} {f['recall']:>6.1%} "
            f"{f['read_faithful']:>7} {f['scored_faithful']:>8}"
        )
    print(f"precision and recall are for 'unfaithful'; {per_prompt_ms:.2f} ms per rewrite after loading")
    if args.show_disagreements:
        for r in rows:
            if r["faithful"] != r["scored"]:
                print(
                    f"\n[{r['set']}/{r['booster']} #{r['index']}] read {'F' if r['faithful'] else 'U: ' + r['reading']}"
                    f"\n  prompt: {r['prompt']}\n  scorer: {r['problems'] or 'faithful'}\n  text: {r['text'][:400]}"
                )


if __name__ == "__main__":
    main()

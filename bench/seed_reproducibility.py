"""Does the same (prompt, seed, settings) give the same text whatever the booster decoded before?

    python bench/seed_reproducibility.py [--model default] [--max-tokens 48] [--quick] [--no-cli]

For each prompt P, seed and mode (n=1 greedy; n=3 sampled at 0.8) the reference is P enhanced by
a freshly loaded booster with no saved prefix state (the state is decoded, then saved). Compared
against it, each on its own line (`same` or `DIFF`):
  fresh-restored  a fresh booster whose prefix state is loaded from the file the reference saved
  repeat          the same booster, P again right after
  after-other     the same booster, P after another prompt
  after-other-n   the same booster, P after another prompt in the other mode
  no-state        a fresh booster without a state folder (the prefix decoded with the prompt)
  threads-1       a fresh booster on one thread (the others use two)
  batch-2 / batch-2b / batch-4   P inside enhance_many with other prompts (first, second, first of 4)
and `paav enhance P --seed S` run three times as processes, on a cache with no prefix state at
first (the first run saves it, the others load it), against the reference.

    python bench/seed_reproducibility.py --timing [--rounds 5] [--threads 1]

times one `enhance` call (greedy, --max-tokens) in process instead: a loaded booster's first call
(the prefix state loaded from its file), a prompt after another one, and a repeat; medians over
rounds of the prompts above, the model's loading not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["a cat playing piano", "A person is ice skating", "fireworks over a city at night"]
OTHERS = ["an old man walking his dog in the rain", "a cat playing guitar on a roof",
          "a red kite flying over a beach"]
MODES = {"greedy": {"n": 1}, "sampled": {"n": 3, "temperature": 0.8}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--seeds", default="3,7")
    ap.add_argument("--quick", action="store_true", help="the first prompt and seed only")
    ap.add_argument("--prompt", action="append", help="a prompt to check instead of the built-in three")
    ap.add_argument("--no-cli", action="store_true")
    ap.add_argument("--timing", action="store_true", help="time enhance calls instead")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="for --timing")
    args = ap.parse_args()
    from paav_cli import load_booster

    if args.timing:
        timing(args)
        return

    seeds = [int(s) for s in args.seeds.split(",")]
    prompts = args.prompt or (PROMPTS[:1] if args.quick else PROMPTS)
    seeds = seeds[:1] if args.quick else seeds
    mt = args.max_tokens
    diffs: dict[str, int] = {}
    total: dict[str, int] = {}

    def texts(booster, prompt, seed, mode):
        return [r.text for r in booster.enhance(prompt, seed=seed, max_tokens=mt, **MODES[mode])]

    def many(booster, batch, seed, mode, at):
        out = [r.text for r in booster.enhance_many(batch, seed=seed, max_tokens=mt, **MODES[mode])]
        n = MODES[mode]["n"]
        return out[at * n:(at + 1) * n]

    def fresh(state_dir, threads=2):
        booster = load_booster(args.model, threads=threads)
        booster.model.state_dir = state_dir
        return booster

    def report(name, ref, got, key):
        total[name] = total.get(name, 0) + 1
        same = ref == got
        if not same:
            diffs[name] = diffs.get(name, 0) + 1
        print(f"  {name:15s} {'same' if same else 'DIFF'}" + ("" if same else f"  {got!r}"), flush=True)

    for prompt in prompts:
        for seed in seeds:
            for mode in MODES:
                key = (prompt, seed, mode)
                other_mode = "sampled" if mode == "greedy" else "greedy"
                with tempfile.TemporaryDirectory() as tmp:
                    state = Path(tmp)
                    with fresh(state) as b:
                        ref = texts(b, prompt, seed, mode)
                    print(f"{prompt!r} seed {seed} {mode}: {ref!r}", flush=True)
                    with fresh(state) as b:
                        report("fresh-restored", ref, texts(b, prompt, seed, mode), key)
                        report("repeat", ref, texts(b, prompt, seed, mode), key)
                        texts(b, OTHERS[1], seed, mode)
                        report("after-other", ref, texts(b, prompt, seed, mode), key)
                        texts(b, OTHERS[0], seed, other_mode)
                        report("after-other-n", ref, texts(b, prompt, seed, mode), key)
                        report("batch-2", ref, many(b, [prompt, OTHERS[0]], seed, mode, 0), key)
                        report("batch-2b", ref, many(b, [OTHERS[1], prompt], seed, mode, 1), key)
                        report("batch-4", ref, many(b, [prompt, *OTHERS], seed, mode, 0), key)
                    with fresh(None) as b:
                        report("no-state", ref, texts(b, prompt, seed, mode), key)
                    with fresh(state, threads=1) as b:
                        report("threads-1", ref, texts(b, prompt, seed, mode), key)

    if not args.no_cli:
        from paav_cli import paths

        prompt, seed = prompts[0], seeds[0]
        with fresh(None) as b:
            ref = texts(b, prompt, seed, "greedy")[0]
        with tempfile.TemporaryDirectory() as tmp:
            cache = paths.cache_dir()
            for name in os.listdir(cache):  # the models, not the prefix states
                if name != "prefix-states":
                    os.symlink(cache / name, Path(tmp) / name)
            env = {**os.environ, "PAAV_CACHE": tmp}
            cmd = [sys.executable, "-m", "paav_cli", "enhance", prompt, "-m", args.model, "--seed", str(seed),
                   "--max-tokens", str(mt), "--threads", "2"]
            print(f"cli {prompt!r} seed {seed}: reference {ref!r}")
            for run in range(3):
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()
                report(f"cli-run-{run + 1}", ref, out, None)

    print("\nsituation        differing / compared")
    for name, count in total.items():
        print(f"  {name:15s} {diffs.get(name, 0)} / {count}")


def timing(args) -> None:
    from paav_cli import load_booster

    first, after, repeat = [], [], []

    def timed(booster, prompt):  # (wall, CPU) seconds: on a busy machine the CPU time is the steadier
        start, cpu = time.perf_counter(), time.process_time()
        booster.enhance(prompt, seed=3, max_tokens=args.max_tokens)
        return time.perf_counter() - start, time.process_time() - cpu

    with load_booster(args.model, threads=args.threads) as b:
        timed(b, OTHERS[2])  # the prefix state on disk from here on
    for _ in range(args.rounds):
        for prompt in PROMPTS:
            with load_booster(args.model, threads=args.threads) as b:
                first.append(timed(b, prompt))
                after.append(timed(b, OTHERS[0]))
                repeat.append(timed(b, OTHERS[0]))
    print(f"booster {args.model}, {args.threads} thread(s), greedy, max {args.max_tokens} tokens, "
          f"{len(first)} calls each; median s, wall / CPU")
    for name, runs in (("first call after loading", first), ("after another prompt", after),
                       ("the same prompt again", repeat)):
        wall, cpu = (statistics.median(x[k] for x in runs) for k in (0, 1))
        print(f"  {name:26s} {wall:.3f} / {cpu:.3f}")


if __name__ == "__main__":
    main()

"""How `paav enhance` slows beside other CPU-bound processes, for each thread setting.

Runs the same batch (`paav -m MODEL -i FILE --seed 1`) with 0, 1 and 3 busy processes (pure-Python
loops) beside it, with paav's default threads and with --threads fixed, and prints each wall time and its
ratio to the same setting on the quiet machine. The goal: the default is at most 2.5x slower beside one
busy process. Run it on an otherwise idle machine:

    python bench/busy_cpu.py                      # the default booster, 4 prompts
    python bench/busy_cpu.py --model tiny --prompts 16
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a cat playing piano", "a fox trotting across ice", "a paper boat in a gutter in the rain",
           "a man feeding pigeons in a square", "a stormy sea at night", "a skateboarder at dusk"]


def burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def timed(args: list[str], timeout: float, env: dict) -> tuple[float | None, float]:
    """Wall seconds (None past the timeout) and the child's user+system CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        subprocess.run(args, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, **env})
        wall = time.perf_counter() - start
    except subprocess.TimeoutExpired:
        wall = None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--busy", default="0,1,3", help="comma-separated numbers of busy processes")
    parser.add_argument("--threads", default="default,1,2",
                        help="thread settings to compare; SETTING:ENV=VALUE adds an environment variable")
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="paav-busy-"))
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join((PROMPTS * 10)[: args.prompts]) + "\n")
    base = [sys.executable, "-m", "paav_cli", "-m", args.model, "-i", str(prompts), "--seed", "1",
            "--max-tokens", str(args.max_tokens)]
    subprocess.run(base, check=True, stdout=subprocess.DEVNULL)  # assemble the model once, outside the timings
    settings = args.threads.split(",")
    print(f"{args.prompts} prompts, {args.model}, {os.cpu_count()} cores; wall s (ratio to quiet) [cpu s]")
    print(f"{'busy':>4} | " + " | ".join(f"{'threads ' + s:>24}" for s in settings))
    quiet: dict[str, float] = {}
    for busy in (int(b) for b in args.busy.split(",")):
        burners = [burner() for _ in range(busy)]
        try:
            time.sleep(1.0)  # let the burners show in the run queue
            cells = []
            for setting in settings:
                threads, *assignments = setting.split(":")
                extra = [] if threads == "default" else ["--threads", threads]
                env = dict(a.split("=", 1) for a in assignments)
                wall, cpu = timed(base + extra, args.timeout, env)
                if busy == 0 and wall:
                    quiet[setting] = wall
                ratio = f"{wall / quiet[setting]:.2f}x" if wall and setting in quiet else "-"
                shown = f"{wall:6.1f}" if wall else f">{args.timeout:.0f}"
                cells.append(f"{shown} ({ratio}) [{cpu:5.1f}]")
            print(f"{busy:>4} | " + " | ".join(f"{c:>24}" for c in cells), flush=True)
        finally:
            for b in burners:
                b.kill()
                b.wait()


if __name__ == "__main__":
    main()

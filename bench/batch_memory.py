"""Peak memory and seconds per prompt of `paav enhance -i FILE -o out.jsonl` against the file's length.

    python bench/batch_memory.py                    # 200, 2,000 and 20,000 prompts, tiny GGUF booster
    python bench/batch_memory.py --sizes 200,2000 --model tiny --parallel 32

Each size runs the real command line in its own process, and that process's peak resident memory
is read from its own rusage (os.wait4), so one size's peak cannot leak into the next one's figure.
Also timed: seconds until the first record reaches the output file (work done before any result,
such as tokenising the whole file up front, shows there), and seconds per prompt overall.
A batch that streams has the same peak for every size; with PYTHONPATH pointing at an older
checkout the same script measures that one.

Measured on 2 shared CPU cores (other work running, so seconds are rough), tiny booster, --parallel 32:

    prompts   peak RSS MB   first record s   s/prompt        before (run_jobs tokenised every job first)
        200           143             0.94     0.0119        150 MB, 0.99 s
      2,000           151             0.85     0.0092        256 MB, 1.73 s
     20,000           153             0.85     0.0105      1,240 MB, 7.18 s
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prompts(n: int) -> str:
    subjects = ["a cat", "a red car", "a fox", "an old man", "a paper boat", "a city street", "a dancer"]
    actions = ["in the rain", "at dusk", "in the snow", "on a beach", "under neon light", "in slow motion"]
    return "".join(f"{subjects[i % 7]} {actions[i // 7 % 6]}, take {i}\n" for i in range(n))


def measure(n: int, folder: Path, model: str, parallel: int, env: dict) -> dict:
    source, out = folder / f"in-{n}.txt", folder / f"out-{n}.jsonl"
    source.write_text(prompts(n))
    out.unlink(missing_ok=True)
    args = [sys.executable, "-m", "paav_cli", "enhance", "-m", model, "-i", str(source), "-o", str(out),
            "--seed", "0", "--parallel", str(parallel)]
    started = time.perf_counter()
    with open(folder / f"stderr-{n}.txt", "wb") as log:  # a file, not a pipe: warnings never block the child
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=folder)
        first = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if first is None and out.exists() and out.stat().st_size > 0:
                first = time.perf_counter() - started
            if pid:
                break
            time.sleep(0.01)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{n} prompts: paav exited {proc.returncode}: {(folder / f'stderr-{n}.txt').read_text()[-2000:]}")
    records = out.read_text().count("\n")
    assert records == n, (records, n)
    return {"n": n, "peak_mb": usage.ru_maxrss / 1024, "first": first, "per_prompt": seconds / n, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,2000,20000")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--parallel", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="paav-batch-memory-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "PAAV_CACHE": os.environ.get("PAAV_CACHE", str(folder / "cache"))}
        # Make (build a tiny one, assemble the default) and check the booster once, outside the measured runs.
        for command in (["models", "path", args.model], ["enhance", "-m", args.model, "a cat", "--seed", "0"]):
            subprocess.run([sys.executable, "-m", "paav_cli", *command], env=env, cwd=folder, check=True,
                           stdout=subprocess.DEVNULL)
        print(f"paav enhance -m {args.model} -i FILE -o out.jsonl --parallel {args.parallel} "
              f"({os.cpu_count()} CPUs)")
        print(f"{'prompts':>8} {'peak RSS MB':>12} {'first record s':>15} {'s/prompt':>9} {'total s':>8}")
        for n in (int(x) for x in args.sizes.split(",")):
            r = measure(n, folder, args.model, args.parallel, env)
            print(f"{r['n']:>8} {r['peak_mb']:>12.0f} {r['first']:>15.2f} {r['per_prompt']:>9.4f} {r['seconds']:>8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()

"""Replay the bad inputs of the correctness probe (issue 17) against the real command line and count how
many end cleanly: exit code 2, one line on stderr starting with "error: ", no traceback, nothing written
where it should not be. Cases that must *succeed* (a resume that used to be refused, a skipped bad line)
are checked for that instead.

    python bench/bad_input_probe.py            # tiny models only, about two minutes on 2 cores
    python bench/bad_input_probe.py -v         # also print each case's stderr

Prints one line per case and then `tried / clean / defects`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Case:
    name: str
    args: list[str]
    setup: Callable[[Path], None] = lambda d: None
    expect: str = "error"  # "error": one clean sentence, exit 2; "ok": exit 0
    check: Callable[[Path, subprocess.CompletedProcess], str | None] = lambda d, p: None  # extra: None if fine
    stdout: str | None = None  # a path to send stdout to (e.g. /dev/full)
    env: dict = field(default_factory=dict)
    stdin: bytes | None = None


def write(rel: str, data: str | bytes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return setup


def both(*setups):
    def setup(d: Path) -> None:
        for s in setups:
            s(d)
    return setup


def user_models(text: str | bytes):
    return write("config/paav/models.toml", text)


def absent(rel: str):
    def check(d: Path, proc) -> str | None:
        return f"{rel} was written" if (d / rel).exists() else None
    return check


def lines_of(rel: str, n: int):
    def check(d: Path, proc) -> str | None:
        path = d / rel
        got = len(path.read_text(encoding="utf-8").split("\n")) - 1 if path.exists() else 0
        return None if got == n else f"{rel} holds {got} records, not {n}"
    return check


def no_escapes(d: Path, proc) -> str | None:
    return "an escape sequence reached the terminal" if "\x1b" in proc.stdout else None


def torchscript_archive(d: Path) -> None:
    """A TorchScript .pth whose loading writes pwned.txt, and the CLIP backbone the converter reads first."""
    import importlib.util

    # This checkout's builders, also when PYTHONPATH points the commands at an older checkout.
    here = Path(__file__).resolve().parents[1] / "paav_cli" / "testing" / "tiny_mps.py"
    spec = importlib.util.spec_from_file_location("probe_tiny_mps", here)
    tiny_mps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_mps)
    tiny_mps.torchscript_that_writes(d / "evil.pth", d / "pwned.txt")
    clip = tiny_mps.build_tiny_clip_folder(d / "clip")
    user_models(f'[rewards.mps-clip]\npath = "{clip}"\nkind = "clip-backbone"\ndims = []\n')(d)


def warned(d: Path, proc) -> str | None:
    return None if "warning: " in proc.stderr else "no warning about the broken registry"


PROMPTS = "a cat playing piano\na dog on a skateboard\n"
TINY = ["-m", "tiny"]


def cases() -> list[Case]:
    return [
        # enhance input
        Case("empty prompt", [*TINY, "   "]),
        Case("missing input file", [*TINY, "-i", "nope.txt"]),
        Case("non-UTF-8 input", [*TINY, "-i", "in.txt"], write("in.txt", "caf\xe9\n".encode("latin-1"))),
        Case("UTF-16 input", [*TINY, "-i", "in.txt"], write("in.txt", "a cat\n".encode("utf-16"))),
        Case("binary input", [*TINY, "-i", "in.txt"], write("in.txt", bytes(range(256)))),
        Case("CSV without prompt column", [*TINY, "-i", "in.csv"], write("in.csv", "text\na cat\n")),
        Case("JSONL line not JSON", [*TINY, "-i", "in.jsonl"], write("in.jsonl", '{"prompt": "a"}\nnot json\n')),
        Case("JSONL prompt not a string", [*TINY, "-i", "in.jsonl"], write("in.jsonl", '{"prompt": 5}\n')),
        Case("duplicate ids 1 and \"1\"", [*TINY, "-i", "in.jsonl", "-o", "out.jsonl"],
             write("in.jsonl", '{"id": 1, "prompt": "a cat"}\n{"id": "1", "prompt": "a dog"}\n')),
        Case("null id", [*TINY, "-i", "in.jsonl", "-o", "out.jsonl"],
             write("in.jsonl", '{"id": null, "prompt": "a cat"}\n')),
        Case("list id", [*TINY, "-i", "in.jsonl", "-o", "out.jsonl"],
             write("in.jsonl", '{"id": [1], "prompt": "a cat"}\n')),
        Case("-o equal to -i", [*TINY, "-i", "in.txt", "-o", "in.txt"], write("in.txt", PROMPTS)),
        Case("unknown model", ["-m", "no-such-model", "a cat"]),
        Case("corrupt GGUF as --model", ["--model", "bad.gguf", "a cat"], write("bad.gguf", b"GGUF" + b"\0" * 64)),
        Case("prompt too long for the context", [*TINY, "word " * 5000]),
        Case("too long prompt with --on-error skip", [*TINY, "-i", "in.txt", "-o", "out.jsonl", "--on-error", "skip"],
             write("in.txt", "a cat\n" + "word " * 5000 + "\na dog\n"), expect="ok", check=lines_of("out.jsonl", 2)),
        Case("ANSI escapes in the input", [*TINY, "-i", "in.txt", "--max-tokens", "8"],
             write("in.txt", "a cat \x1b]0;owned\x07 \x1b[31mred\x1b[0m\n"), expect="ok", check=no_escapes),
        Case("stdout on a full disk", [*TINY, "a cat"], stdout="/dev/full"),
        Case("batch stdout on a full disk", [*TINY, "-i", "in.txt"], write("in.txt", PROMPTS), stdout="/dev/full"),
        Case("a second writer to the same -o", [*TINY, "-i", "in.txt", "-o", "out.jsonl", "--seed", "1"],
             both(write("in.txt", "a cat\n" * 400), first_writer), check=no_duplicates("out.jsonl")),
        Case("-o in a folder that does not exist yet", [*TINY, "a cat", "-o", "no/such/out.jsonl"], expect="ok",
             check=lines_of("no/such/out.jsonl", 1)),  # made, as -o names it
        # options
        Case("-n 0", [*TINY, "-n", "0", "a cat"]),
        Case("--threads 0", [*TINY, "--threads", "0", "a cat"]),
        Case("--bogus", [*TINY, "--bogus", "a cat"]),
        Case("--temperature nan", [*TINY, "--temperature", "nan", "a cat"]),
        Case("mistyped command", ["modles"]),
        Case("--lora a model, not an adapter", [*TINY, "--lora", "model.gguf", "a cat"],
             lambda d: os.symlink(tiny_path(), d / "model.gguf")),
        Case("--lora random bytes", [*TINY, "--lora", "noise.gguf", "a cat"], write("noise.gguf", os.urandom(4096))),
        # resume
        Case("resume with another seed", [*TINY, "-i", "in.txt", "-o", "out.jsonl", "--seed", "2"],
             both(write("in.txt", PROMPTS), lambda d: run_ok(d, [*TINY, "-i", "in.txt", "-o", "out.jsonl", "--seed", "1"]))),
        Case("resume of a complete JSONL holding U+2028", [*TINY, "-i", "in.jsonl", "-o", "out.jsonl", "--seed", "1"],
             both(write("in.jsonl", json.dumps({"prompt": "a cat\u2028on a mat\u0085now"}) + "\n"),
                  lambda d: run_ok(d, [*TINY, "-i", "in.jsonl", "-o", "out.jsonl", "--seed", "1"])),
             expect="ok", check=lines_of("out.jsonl", 1)),
        Case("resume of a CSV prompt holding \\r", [*TINY, "-i", "in.csv", "-o", "out.csv", "--seed", "1"],
             both(write("in.csv", 'prompt\n"a cat\ron a mat"\n'),
                  lambda d: run_ok(d, [*TINY, "-i", "in.csv", "-o", "out.csv", "--seed", "1"])), expect="ok"),
        # registry and recipes
        Case("PAAV_MODELS is a folder", [*TINY, "a cat"], write("dir/x", ""), env={"PAAV_MODELS": "{d}/dir"}),
        Case("user models.toml not UTF-8", [*TINY, "a cat"], user_models(b"\xff\xfe[boosters]\n")),
        Case("boosters = 5", [*TINY, "a cat"], user_models("boosters = 5\n")),
        Case("[boosters] x = 5", [*TINY, "a cat"], user_models("[boosters]\nx = 5\n")),
        Case("models list beside a broken registry", ["models", "list"], user_models("[boosters]\nx = 5\n"),
             expect="ok", check=warned),
        Case("a registry name leaving the cache", ["models", "path", "../../x"],
             user_models('[boosters."../../x"]\nbuilder = "tiny"\nfile = "t.gguf"\n'), check=absent("../x")),
        Case("recipe not UTF-8", ["evolve", "p.txt", "--recipe", "r.toml", "--run", "run"],
             both(write("p.txt", PROMPTS), write("r.toml", b"\xff[models]\n")), check=absent("run")),
        Case("recipe learning_rate = inf", ["sft", "pairs.jsonl", "--recipe", "r.toml", "--run", "run"],
             both(write("pairs.jsonl", '{"source": "a", "target": "b"}\n'),
                  write("r.toml", '[models]\ngenerator = "tiny-wan"\nrewards = ["tiny-aesthetic"]\n'
                                  '[sft]\nbase = "tiny-llama"\nlearning_rate = inf\n'))),
        Case("recipe with a byte-order mark", ["sft", "pairs.jsonl", "--recipe", "r.toml", "--run", "run"],
             both(write("pairs.jsonl", '{"source": "a", "target": "b"}\n'),
                  write("r.toml", '\ufeff[models]\ngenerator = "tiny-wan"\nrewards = ["tiny-aesthetic"]\n'
                                  '[sft]\nbase = "tiny-llama"\nlernrate = 1\n')),
             check=lambda d, p: "not valid TOML" in p.stderr and "the BOM was taken for bad TOML" or None),
        Case("a path entry whose sha256 is wrong", ["-m", "pinned", "a cat"],
             lambda d: (os.symlink(tiny_path(), d / "t.gguf"),
                        user_models(f'[boosters.pinned]\npath = "{d}/t.gguf"\nsha256 = "{"0" * 64}"\n')(d))),
        # pickles and renders
        Case("TorchScript .pth to convert mps", ["models", "convert", "mps", "evil.pth"], torchscript_archive,
             check=absent("pwned.txt")),
        Case("render 100000 x 100000", ["render", "a cat", "-g", "tiny-wan", "--height", "100000", "--width", "100000"]),
        Case("--max-llm-calls 1", ["evolve", "p.txt", "--recipe", "tiny-cpu", "--run", "run", "--max-llm-calls", "1"],
             write("p.txt", PROMPTS)),
    ]


_TINY_PATH: list[str] = []
BACKGROUND: list[subprocess.Popen] = []


def first_writer(d: Path) -> None:
    """A batch already writing out.jsonl, one prompt at a time, still running when the case starts."""
    import time

    args = [sys.executable, "-m", "paav_cli", *TINY, "-i", "in.txt", "-o", "out.jsonl", "--seed", "1", "--parallel", "1"]
    BACKGROUND.append(subprocess.Popen(args, cwd=d, env=case_env(d, {}), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))
    for _ in range(600):
        if (d / "out.jsonl").exists() and (d / "out.jsonl").stat().st_size:
            return
        time.sleep(0.05)


def no_duplicates(rel: str):
    def check(d: Path, proc) -> str | None:
        for b in BACKGROUND:
            b.wait(timeout=300)
        ids = [json.loads(x)["id"] for x in (d / rel).read_text().splitlines()]
        return None if len(ids) == len(set(ids)) else f"{len(ids) - len(set(ids))} records written twice"
    return check


def tiny_path() -> str:
    if not _TINY_PATH:
        proc = subprocess.run([sys.executable, "-m", "paav_cli", "models", "path", "tiny"], capture_output=True,
                              text=True, env=ENV, check=True)
        _TINY_PATH.append(proc.stdout.strip())
    return _TINY_PATH[0]


def run_ok(d: Path, args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "paav_cli", *args], cwd=d, env=case_env(d, {}), check=True,
                   capture_output=True, timeout=300)


ENV: dict = {}


def case_env(d: Path, extra: dict) -> dict:
    env = {**ENV, "XDG_CONFIG_HOME": str(d / "config")}
    env.update({k: v.replace("{d}", str(d)) for k, v in extra.items()})
    return env


def judge(case: Case, d: Path, proc: subprocess.CompletedProcess) -> str | None:
    """None when the case ended as it should, else what went wrong."""
    err = proc.stderr
    if "Traceback" in err:
        return "traceback"
    if case.expect == "ok":
        if proc.returncode != 0:
            return f"exit {proc.returncode}: {err.strip()[-200:]}"
    else:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        if proc.returncode != 2:
            return f"exit {proc.returncode}"
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return f"{len(lines)} lines on stderr"
    return case.check(d, proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated words: leave out cases whose name holds one "
                        "(e.g. 100000 on an old checkout, where that render grows until the kernel kills it)")
    args = parser.parse_args()
    skip = [w for w in args.skip.split(",") if w]
    root = Path(tempfile.mkdtemp(prefix="paav-probe-"))
    ENV.update(os.environ, PAAV_CACHE=os.environ.get("PAAV_CACHE", str(root / "cache")), HF_HUB_OFFLINE="1")
    ENV.pop("PAAV_MODELS", None)
    # The cases name tiny models, which no command builds on use; a checkout from before
    # build_tiny_models built them on use, so there this does nothing.
    subprocess.run([sys.executable, "-c", "import paav_cli.testing as t; getattr(t, 'build_tiny_models', list)()"],
                   env=ENV, check=True)
    tried = clean = 0
    for i, case in enumerate(c for c in cases() if not any(w in c.name for w in skip)):
        d = root / f"case{i:02d}" / "work"
        d.mkdir(parents=True)
        case.setup(d)
        out = open(case.stdout, "w") if case.stdout else subprocess.PIPE  # noqa: SIM115
        try:
            proc = subprocess.run([sys.executable, "-m", "paav_cli", *case.args], cwd=d, env=case_env(d, case.env),
                                  stdout=out, stderr=subprocess.PIPE, input=case.stdin, timeout=300)
        finally:
            if case.stdout:
                out.close()
        proc.stdout = (proc.stdout or b"").decode("utf-8", "replace")
        proc.stderr = proc.stderr.decode("utf-8", "replace")
        problem = judge(case, d, proc)
        tried += 1
        clean += problem is None
        print(f"{'clean ' if problem is None else 'DEFECT'} {case.name}" + (f": {problem}" if problem else ""))
        if args.verbose:
            print("       " + proc.stderr.strip().replace("\n", "\n       ")[:600])
    print(f"tried {tried} / clean {clean} / defects {tried - clean}")


if __name__ == "__main__":
    main()

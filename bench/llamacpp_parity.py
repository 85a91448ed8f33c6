"""paav's GGUF export against llama.cpp's own converter: tensors, metadata and tokenization, per model.

    pip download --no-deps --no-binary :all: llama-cpp-python==$(pip show llama-cpp-python | sed -n 's/^Version: //p') -d /tmp/sdist
    tar xzf /tmp/sdist/llama_cpp_python-*.tar.gz -C /tmp/sdist
    python bench/llamacpp_parity.py --llama-cpp /tmp/sdist/llama_cpp_python-*/vendor/llama.cpp \
        [--real $(paav models path gemma-3-270m-gguf)] [--write-fixtures]

Builds paav's tiny test models (paav_cli/testing), converts each to F32 with paav and with the
reference (tiny random tokenizers have no known pre-tokenizer checksum: the reference is given the
pre-tokenizer paav chose), and prints a table: tensors identical, metadata differences (keys that
only name the file left out), tokenization agreement on parity.TRICKY through llama.cpp.
`--write-fixtures` records the reference's side in tests/fixtures/llamacpp_parity/, which
tests/test_export_parity.py compares paav's export with when the reference is not at hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "llamacpp_parity"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", type=Path, required=True, help="the sdist's vendor/llama.cpp folder")
    parser.add_argument("--real", type=Path, action="append", default=[], help="a real model folder to add")
    parser.add_argument("--only", help="comma-separated tiny model names")
    parser.add_argument("--write-fixtures", action="store_true")
    args = parser.parse_args()

    from paav_cli.export import parity
    from paav_cli.export.convert import convert

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        todo = [(name, build) for name, build in parity.builders().items()
                if not args.only or name in args.only.split(",")]
        folders = [(name, build(work / name)) for name, build in todo]
        folders += [(f"real:{p.name}", p) for p in args.real]
        for name, folder in folders:
            ours_path = convert(folder, work / f"{name.replace(':', '_')}.paav.gguf")
            pre = parity.fields(ours_path).get("tokenizer.ggml.pre")
            ref_path = parity.run_reference(args.llama_cpp, folder, work / f"{name.replace(':', '_')}.ref.gguf",
                                            force_pre=None if name.startswith("real:") else pre)
            ours, ref = parity.record(ours_path, folder), parity.record(ref_path, folder)
            diff = parity.compare(ours, ref)
            probes = parity.TRICKY[:3] if name.startswith("real:") else parity.TRICKY[:10]
            diff["logits"] = max(float(abs(a - b).max())
                                 for a, b in zip(parity.logits(ours_path, probes), parity.logits(ref_path, probes)))
            n = len(parity.TRICKY)
            rows.append((name, diff, n))
            if args.write_fixtures:
                FIXTURES.mkdir(parents=True, exist_ok=True)
                ref["forced_pre"] = None if name.startswith("real:") else pre
                out = FIXTURES / f"{name.replace(':', '_')}.json"
                out.write_text(json.dumps(ref, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
            ours_path.unlink()
            ref_path.unlink()

    print("| model | tensors identical | llama.cpp logits, max diff | metadata differences | tokenization agreement |")
    print("|---|---|---|---|---|")
    for name, diff, n in rows:
        tensors = "yes" if not diff["tensors"] else f"no: {'; '.join(diff['tensors'][:3])}"
        meta = "; ".join(diff["metadata"]) or "none"
        print(f"| {name} | {tensors} | {diff['logits']:.1e} | {meta} | {n - len(diff['tokens'])}/{n} |")
    for name, diff, _ in rows:
        for line in diff["tokens"]:
            print(f"{name}: token difference {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

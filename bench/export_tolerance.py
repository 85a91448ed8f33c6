"""Calibrate `paav export`'s verification tolerances: logit differences between transformers and
llama.cpp for each output type, relative to the logit scale, on the models given.

    python bench/export_tolerance.py $(paav models path gemma-3-270m-gguf) --types F32,F16,BF16,Q8_0,Q4_K_M
    python bench/export_tolerance.py --tiny          # paav's tiny llama / qwen2 / gemma3 as well

Prints one JSON line per (model, type): max |logit diff| (raw and with ggml's float16 GELU on the
transformers side), the logit scale, their ratio, exact argmax / top-5 agreement and the
tie-aware verdicts, next to the tolerance `paav export` applies (export/booster.py TOLERANCE).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path, help="transformers model folders")
    parser.add_argument("--types", default="F32,F16,BF16,Q8_0", help="comma-separated output types")
    parser.add_argument("--tiny", action="store_true", help="also build and measure paav's tiny test models")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from paav_cli.export.booster import TOLERANCE
    from paav_cli.export.convert import convert
    from paav_cli.export.quantize import quantize
    from paav_cli.export.verify import verify

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = list(args.models)
        if args.tiny:
            from paav_cli.testing import tiny_export, tiny_llm

            for name, build in [("tiny-llama", tiny_llm.build_tiny_llama), ("tiny-qwen2", tiny_llm.build_tiny_qwen2),
                                ("tiny-gemma3", tiny_llm.build_tiny_gemma3),
                                ("tiny-gemma3-multimodal", tiny_export.build_tiny_gemma3_multimodal)]:
                models.append(build(work / name))
        if not models:
            parser.error("give a model folder or --tiny")
        for model in models:
            for qtype in [t.strip().upper() for t in args.types.split(",") if t.strip()]:
                start = time.time()
                out = work / f"{model.name}.{qtype}.gguf"
                if qtype in ("F32", "F16", "BF16"):
                    convert(model, out, outtype=qtype)
                else:
                    quantize(convert(model, work / "f32.gguf", outtype="F32"), out, qtype)
                report = verify(model, out, tolerance=math.inf, n_threads=args.threads)
                row = {"model": model.name, "type": qtype, **{k: report[k] for k in (
                    "max_abs_logit_diff", "max_abs_logit_diff_ggml_gelu", "logit_scale", "rel_logit_diff",
                    "argmax_agreement", "top_k_agreement", "n_positions", "tokens_match", "chat_template_match")},
                    "tolerance": TOLERANCE[qtype], "within": report["rel_logit_diff"] <= TOLERANCE[qtype],
                    "seconds": round(time.time() - start, 1)}
                print(json.dumps(row), flush=True)
                out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Logit parity: paav's llama.cpp backend against llama-cpp-python on the same prompt.

    python bench/logit_parity.py [--prompt "A person is ice skating"] [--model default]

Prints max |logit difference| over the whole vocabulary for the first generated token: paav one
prompt at a time (expected 0.0: the same computation as llama-cpp-python's `Llama`), and paav with
the prompt inside a batch of four (small differences: llama.cpp's kernels depend on batch shape).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp  # noqa: E402
from llama_cpp import Llama  # noqa: E402

from paav_cli import registry  # noqa: E402
from paav_cli.llm import llamacpp  # noqa: E402
from paav_cli.text.formats import build_request  # noqa: E402


def paav_first_logits(model: llamacpp.LlamaCppModel, prompts: list[list[int]]) -> np.ndarray:
    """Logits the sampler saw for the first prompt's first token."""
    seen: list[np.ndarray] = []
    original = llama_cpp.llama_sampler_sample

    def spy(sampler, ctx, index):
        logits = llama_cpp.llama_get_logits_ith(ctx, index)
        seen.append(np.ctypeslib.as_array(logits, shape=(model._model.n_vocab(),)).copy())
        return original(sampler, ctx, index)

    llamacpp.llama_cpp.llama_sampler_sample = spy
    try:
        model.complete(prompts, seeds=list(range(len(prompts))),
                       sampling=llamacpp.Sampling(max_tokens=1, temperature=0), stop=[])
    finally:
        llamacpp.llama_cpp.llama_sampler_sample = original
    return seen[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", default="A person is ice skating")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    path = str(registry.require_path(registry.Registry.load().get(args.model, "boosters")))
    text = build_request("fewshot", args.prompt).text

    llm = Llama(model_path=path, n_ctx=2048, n_threads=2, verbose=False)
    tokens = llm.tokenize(text.encode("utf-8"), special=True)
    llm.eval(tokens)
    reference = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()

    model = llamacpp.LlamaCppModel(Path(path), n_threads=2, max_parallel=4)
    assert model.encode_prompt(text) == tokens, "tokenisation differs"
    single = paav_first_logits(model, [tokens])
    others = [model.encode_prompt(build_request("fewshot", p).text) for p in ("a dog", "fireworks", "a red kite")]
    batched = paav_first_logits(model, [tokens, *others])
    print(f"prompt {args.prompt!r}, {len(tokens)} tokens, vocabulary {len(reference)}")
    print(f"paav one at a time vs llama-cpp-python: max |logit diff| {np.abs(single - reference).max():.6f}, "
          f"argmax {'same' if single.argmax() == reference.argmax() else 'differs'}")
    print(f"paav in a batch of 4 vs llama-cpp-python: max |logit diff| {np.abs(batched - reference).max():.6f}, "
          f"argmax {'same' if batched.argmax() == reference.argmax() else 'differs'}")


if __name__ == "__main__":
    main()

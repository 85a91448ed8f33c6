"""Check a GGUF export against its transformers model: logits, tokenizer and chat template.

The same token ids (the HF tokenizer's) go through transformers (fp32, eager attention) and through
llama.cpp (F32 KV cache, flash attention off, logits for every position). The logits are judged
relative to their scale, the largest |logit| transformers gives on the probes: float32 kernels that
add in another order drift with the model's depth and width, not with the converter, and the
real Gemma 3 270M (logits near 28) differs by 1.8e-2 through llama.cpp whoever converted it, where
tiny test models differ by 1e-6. Argmax and top-k must agree too, up to near-ties: a token whose
transformers logit is within the tolerance of the winner's (of the k-th's) counts as a tie, so
that these checks bind when drift nears the tolerance and never reject pure float noise below
half of it.
Tokenizer parity compares HF ids with llama.cpp's for each probe (BOS handled as each side's own
settings say); chat-template parity compares `apply_chat_template` text with the GGUF's template
rendered by llama-cpp-python's Jinja2ChatFormatter (what paav's `LlamaCppModel.chat_prompt` does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROBES = [
    "A red fox runs through fresh snow at dawn, cinematic lighting",
    "it's 2024:  two  spaces,\ttabs\nand new lines\n\n-- 3.14159 apples!",
    "Ünïcödé: café, naïve, 東京, emoji 🙂 and CAPS",
]
CHATS = [
    [{"role": "user", "content": "A cat on a skateboard"}],
    [{"role": "system", "content": "You enhance video prompts."},
     {"role": "user", "content": "a dog"},
     {"role": "assistant", "content": "A golden retriever leaps."},
     {"role": "user", "content": " fireworks "}],
]


TOP_K = 5


def verify(model_dir: Path, gguf_path: Path, *, prompts: list[str] | None = None, tolerance: float = 2e-3,
           n_threads: int = 2) -> dict:
    """Compare `gguf_path` with the transformers model in `model_dir`; returns a report dict.

    `tolerance` is relative: the largest |logit difference| allowed, as a fraction of the logit scale.

    Keys: ok, max_abs_logit_diff, max_abs_logit_diff_ggml_gelu, logit_scale, rel_logit_diff,
    argmax_agreement and top_k_agreement (fractions of positions, exact), argmax_ok and top_k_ok
    (agreement up to near-ties), tokens_match, token_mismatches, chat_template_match,
    chat_tokens_match, chat_mismatches, n_positions.

    GELU models (Gemma 3): llama.cpp's CPU GELU reads a float16 lookup table, which alone moves tiny
    Gemma 3 logits by ~1e-4 whatever the converter did. For them the report adds
    `max_abs_logit_diff_ggml_gelu`, the difference to transformers with its GELU input and output
    rounded to float16 the same way, and `rel_logit_diff` judges the conversion by that figure.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from paav_cli import libs
    from paav_cli.llm.llamacpp import LlamaCppModel

    libs.quiet()
    prompts = list(prompts or PROBES)
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    lm = LlamaCppModel(Path(gguf_path), n_threads=n_threads, max_parallel=1)
    try:
        token_mismatches = []
        pairs = []  # (transformers, transformers with ggml's GELU or None, llama.cpp) logits per probe
        for text in prompts:
            hf_ids = tok(text).input_ids
            cpp_ids = lm.tokenize(text, add_bos=lm.adds_bos)
            if lm.appended_eos is not None:
                cpp_ids = cpp_ids + [lm.appended_eos]
            if hf_ids != cpp_ids:
                token_mismatches.append({"text": text, "hf": hf_ids, "llama_cpp": cpp_ids})
            with torch.no_grad():
                ref = hf(torch.tensor([hf_ids])).logits[0].float().numpy()
                ref_ggml = _with_ggml_gelu(hf, lambda ids=hf_ids: hf(torch.tensor([ids])).logits[0].float().numpy())
            got = lm.all_logits(hf_ids, n_threads=n_threads)
            n = min(ref.shape[1], got.shape[1])
            pairs.append((ref[:, :n], None if ref_ggml is None else ref_ggml[:, :n], got[:, :n]))

        chat_mismatches = []
        chat_tokens_ok = True
        template = getattr(tok, "chat_template", None)
        if template or lm.chat_template:
            for messages in CHATS:
                hf_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
                    if template else None
                cpp_text = lm.chat_prompt(messages) if lm.chat_template else None
                if hf_text != cpp_text:
                    chat_mismatches.append({"messages": messages, "hf": hf_text, "llama_cpp": cpp_text})
                elif hf_text is not None:
                    hf_chat_ids = tok(hf_text, add_special_tokens=False).input_ids
                    chat_tokens_ok &= hf_chat_ids == lm.encode_prompt(cpp_text)[-len(hf_chat_ids):] and \
                        len(lm.encode_prompt(cpp_text)) - len(hf_chat_ids) in (0, int(lm.adds_bos))
        report = judge_logits(pairs, tolerance)
        report.update({
            "tokens_match": not token_mismatches,
            "token_mismatches": token_mismatches,
            "chat_template_match": not chat_mismatches,
            "chat_tokens_match": chat_tokens_ok,
            "chat_mismatches": chat_mismatches,
        })
        report["ok"] = bool(report["logits_ok"] and report["tokens_match"] and report["chat_template_match"]
                            and chat_tokens_ok)
        return report
    finally:
        lm.close()


def judge_logits(pairs: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]], tolerance: float,
                 k: int = TOP_K) -> dict:
    """The logit part of the report from (transformers, transformers with ggml's GELU or None,
    llama.cpp) logits of each probe, each (positions x vocabulary)."""
    scale = max(float(np.abs(ref).max()) for ref, _, _ in pairs) if pairs else 0.0
    max_diff = max((float(np.abs(ref - got).max()) for ref, _, got in pairs), default=0.0)
    ggml = [float(np.abs(r - got).max()) for _, r, got in pairs if r is not None]
    ggml_diff = max(ggml) if ggml else None
    conversion_diff = max_diff if ggml_diff is None else ggml_diff
    rel = conversion_diff / scale if scale > 0 else (0.0 if conversion_diff == 0 else float("inf"))
    tie = tolerance * scale
    positions = argmax_exact = top_exact = 0
    argmax_ok = top_ok = True
    for ref, _, got in pairs:
        positions += ref.shape[0]
        ref_top = np.argsort(-ref, axis=-1)[:, :k]
        got_top = np.argsort(-got, axis=-1)[:, :k]
        argmax_exact += int((ref_top[:, 0] == got_top[:, 0]).sum())
        top_exact += sum(set(a) == set(b) for a, b in zip(ref_top.tolist(), got_top.tolist()))
        rows = np.arange(ref.shape[0])
        # llama.cpp's winner must be (nearly) transformers' best, and each side's top k must sit
        # (nearly) inside the other's: no further than `tie` below the k-th value.
        argmax_ok &= bool((ref[rows, got_top[:, 0]] >= ref[rows, ref_top[:, 0]] - tie).all())
        ref_kth = ref[rows, ref_top[:, -1]][:, None]
        got_kth = got[rows, got_top[:, -1]][:, None]
        top_ok &= bool((np.take_along_axis(ref, got_top, -1) >= ref_kth - tie).all()
                       and (np.take_along_axis(got, ref_top, -1) >= got_kth - tie).all())
    return {
        "max_abs_logit_diff": max_diff,
        "max_abs_logit_diff_ggml_gelu": ggml_diff,
        "logit_scale": scale,
        "rel_logit_diff": rel,
        "tolerance": tolerance,
        "argmax_agreement": argmax_exact / max(positions, 1),
        "top_k_agreement": top_exact / max(positions, 1),
        "argmax_ok": argmax_ok,
        "top_k_ok": top_ok,
        "logits_ok": bool(rel <= tolerance and argmax_ok and top_ok),
        "n_positions": positions,
    }


class _Fp16Gelu:
    """transformers' tanh GELU with input and output rounded to float16, as ggml's CPU table has it."""

    def __new__(cls):
        import torch
        import torch.nn.functional as F

        class Fp16Gelu(torch.nn.Module):
            def forward(self, x):
                return F.gelu(x.half().float(), approximate="tanh").half().float()

        return Fp16Gelu()


def _with_ggml_gelu(hf, run):
    """`run()` with every MLP's GELU swapped for `_Fp16Gelu`; None for models without GELU."""
    # A multimodal Gemma 3 keeps its activation in text_config.
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    act = str(getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None) or "")
    if not act.startswith("gelu"):
        return None
    mlps = [m for m in hf.modules() if hasattr(m, "act_fn") and hasattr(m, "gate_proj")]
    saved = [m.act_fn for m in mlps]
    try:
        for m in mlps:
            m.act_fn = _Fp16Gelu()
        return run()
    finally:
        for m, a in zip(mlps, saved):
            m.act_fn = a

"""Check a GGUF export against its transformers model: logits, tokenizer and chat template.

The same token ids (the HF tokenizer's) go through transformers (fp32, eager attention) and through
llama.cpp (F32 KV cache, flash attention off, logits for every position); the report gives the
largest |logit difference| over every position and vocabulary entry, and whether the argmax agrees.
Tokenizer parity compares HF ids with llama.cpp's for each probe (BOS handled as each side's own
settings say); chat-template parity compares `apply_chat_template` text with the GGUF's template
rendered by llama-cpp-python's Jinja2ChatFormatter (what paav's `LlamaCppModel.chat_prompt` does).
"""

from __future__ import annotations

import ctypes
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


def verify(model_dir: Path, gguf_path: Path, *, prompts: list[str] | None = None, tolerance: float = 1e-4,
           n_threads: int = 2) -> dict:
    """Compare `gguf_path` with the transformers model in `model_dir`; returns a report dict.

    Keys: ok, max_abs_logit_diff, max_abs_logit_diff_ggml_gelu, argmax_agreement (fraction of positions), tokens_match,
    token_mismatches, chat_template_match, chat_tokens_match, chat_mismatches, n_positions.

    GELU models (Gemma 3): llama.cpp's CPU GELU reads a float16 lookup table, which alone moves tiny
    Gemma 3 logits by ~1e-4 whatever the converter did. For them the report adds
    `max_abs_logit_diff_ggml_gelu`, the difference to transformers with its GELU input and output
    rounded to float16 the same way, and `ok` judges the conversion by that figure.
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
        max_diff, agree, positions = 0.0, 0, 0
        ggml_diff = None
        for text in prompts:
            hf_ids = tok(text).input_ids
            cpp_ids = lm.tokenize(text, add_bos=lm._model.add_bos_token())
            if lm._model.add_eos_token() and lm._model.token_eos() >= 0:
                cpp_ids = cpp_ids + [lm._model.token_eos()]
            if hf_ids != cpp_ids:
                token_mismatches.append({"text": text, "hf": hf_ids, "llama_cpp": cpp_ids})
            with torch.no_grad():
                ref = hf(torch.tensor([hf_ids])).logits[0].float().numpy()
                ref_ggml = _with_ggml_gelu(hf, lambda ids=hf_ids: hf(torch.tensor([ids])).logits[0].float().numpy())
            got = _llama_logits(lm, hf_ids, n_threads)
            n = min(ref.shape[1], got.shape[1])
            max_diff = max(max_diff, float(np.abs(ref[:, :n] - got[:, :n]).max()))
            if ref_ggml is not None:
                ggml_diff = max(ggml_diff or 0.0, float(np.abs(ref_ggml[:, :n] - got[:, :n]).max()))
            agree += int((ref[:, :n].argmax(-1) == got[:, :n].argmax(-1)).sum())
            positions += len(hf_ids)

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
                        len(lm.encode_prompt(cpp_text)) - len(hf_chat_ids) in (0, int(lm._model.add_bos_token()))
        report = {
            "max_abs_logit_diff": max_diff,
            "argmax_agreement": agree / max(positions, 1),
            "max_abs_logit_diff_ggml_gelu": ggml_diff,
            "n_positions": positions,
            "tolerance": tolerance,
            "tokens_match": not token_mismatches,
            "token_mismatches": token_mismatches,
            "chat_template_match": not chat_mismatches,
            "chat_tokens_match": chat_tokens_ok,
            "chat_mismatches": chat_mismatches,
        }
        conversion_diff = max_diff if ggml_diff is None else ggml_diff
        report["ok"] = bool(conversion_diff <= tolerance and report["tokens_match"] and report["chat_template_match"]
                            and chat_tokens_ok)
        return report
    finally:
        lm.close()


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
    act = str(getattr(hf.config, "hidden_activation", None) or getattr(hf.config, "hidden_act", ""))
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


def _llama_logits(lm, ids: list[int], n_threads: int) -> np.ndarray:
    """Logits for every position of `ids`, from a fresh F32-KV context."""
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = max(64, len(ids) + 1)
    params.n_batch = params.n_ubatch = max(64, len(ids))
    params.n_seq_max = 1
    params.n_threads = params.n_threads_batch = n_threads
    params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.no_perf = True
    ctx = _internals.LlamaContext(model=lm._model, params=params, verbose=False)
    batch = _internals.LlamaBatch(n_tokens=len(ids), embd=0, n_seq_max=1)
    try:
        b = batch.batch
        for i, token in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, i, 1, True
            b.seq_id[i][0] = 0
        b.n_tokens = len(ids)
        code = llama_cpp.llama_decode(ctx.ctx, b)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code}")
        n_vocab = lm._model.n_vocab()
        ptr = llama_cpp.llama_get_logits(ctx.ctx)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(len(ids), n_vocab)).copy()
    finally:
        batch.close()
        ctx.close()

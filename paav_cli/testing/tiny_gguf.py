"""A tiny llama-architecture GGUF (a few hundred KB) whose output is known in advance.

Random weights would make every output garbage, so the tests could only ever see the fallback
path. Instead the weights are set so the model is a bigram chain: attention and MLP write nothing
(zero output projections), so the last token's embedding alone picks the next token, and the
output matrix maps each chain token to its successor:

    "." or "<|assistant|>"  ->  " Soft" | " Warm"   (an even split: seeds matter)
    -> " light" -> " fills" -> " the" -> " scene." -> " The" -> " camera" -> " pans" -> " slowly." -> </s>

so a few-shot prompt ending "A cat playing piano." continues " Soft light fills the scene. The
camera pans slowly." and a prompt ending in anything else continues with random tokens (which the
validator rejects: the fallback path). The tokenizer is SentencePiece-style with byte fallback, so
any text tokenizes. Everything else (loading, batching, sampling, stop handling) is llama.cpp's
real code.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
BRANCH = ["\u2581Soft", "\u2581Warm"]
CHAIN = ["\u2581light", "\u2581fills", "\u2581the", "\u2581scene.", "\u2581The", "\u2581camera", "\u2581pans", "\u2581slowly."]
STARTS = [".", "<|assistant|>"]
EXPECTED_CONTINUATIONS = (
    "Soft light fills the scene. The camera pans slowly.",
    "Warm light fills the scene. The camera pans slowly.",
)

# token types (gguf.TokenType): NORMAL 1, UNKNOWN 2, CONTROL 3, BYTE 6
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL, _CONTROL, _CONTROL, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    pieces = ["\u2581"] + list(string.ascii_letters + string.digits + ".,!?'-:;") + BRANCH + CHAIN
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    scores = [0.0] * len(tokens)
    # Single characters score by position so the SPM merge order is deterministic.
    for i, t in enumerate(tokens):
        if types[i] == _NORMAL:
            scores[i] = -float(i)
    return tokens, scores, types


def build_tiny_gguf(path: Path, *, n_embd: int = 64, n_head: int = 4, n_ff: int = 128, seed: int = 0) -> Path:
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    index = {t: i for i, t in enumerate(tokens)}
    n_vocab = len(tokens)

    # Transitions: successor token -> the tokens it follows.
    follows: dict[str, list[str]] = {b: STARTS for b in BRANCH}
    follows[CHAIN[0]] = BRANCH
    for prev, nxt in zip(CHAIN, CHAIN[1:]):
        follows[nxt] = [prev]
    follows["</s>"] = [CHAIN[-1]]
    sources = sorted({s for srcs in follows.values() for s in srcs}, key=index.get)
    assert len(sources) < n_embd // 2

    # Chain sources get orthonormal embeddings (basis vectors); all other tokens live in the
    # remaining dimensions, so they never trigger a chain step.
    embd = np.zeros((n_vocab, n_embd), dtype=np.float32)
    free = n_embd - len(sources)
    for i in range(n_vocab):
        v = rng.standard_normal(free).astype(np.float32)
        embd[i, len(sources):] = v / np.linalg.norm(v)
    for k, s in enumerate(sources):
        embd[index[s]] = 0.0
        embd[index[s], k] = 1.0

    # After RMS norm a unit vector is scaled by sqrt(n_embd); logit = 3 * 8 = 24 for the successor.
    output = np.zeros((n_vocab, n_embd), dtype=np.float32)
    for successor, srcs in follows.items():
        for s in srcs:
            output[index[successor], sources.index(s)] = 3.0

    head_dim = n_embd // n_head
    tmp = path.with_name(f".{path.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch="llama")
    writer.add_name("paav tiny booster")
    writer.add_context_length(8192)  # room for a mutator's long instruction in tests
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(index["<s>"])
    writer.add_eos_token_id(index["</s>"])
    writer.add_unk_token_id(index["<unk>"])
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)

    def small(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", small(n_embd, n_embd))
    writer.add_tensor("blk.0.attn_k.weight", small(n_embd, n_embd))
    writer.add_tensor("blk.0.attn_v.weight", small(n_embd, n_embd))
    writer.add_tensor("blk.0.attn_output.weight", np.zeros((n_embd, n_embd), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", small(n_ff, n_embd))
    writer.add_tensor("blk.0.ffn_up.weight", small(n_ff, n_embd))
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((n_embd, n_ff), dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path

"""A transformers causal LM folder -> one GGUF file llama.cpp loads, in pure Python.

What llama.cpp's `convert_hf_to_gguf.py` does for Llama, Qwen2 and Gemma 3, written for paav with
the `gguf` package: hyperparameters from config.json, the tokenizer (byte-level BPE as "gpt2", a
SentencePiece `tokenizer.model` as "llama", Gemma's tokenizer.json alone as "gpt2" with llama.cpp's
"gemma4" pre-tokenizer), the chat template, then every tensor renamed and
transformed (`names.py`) and written one at a time.

Memory: tensors are read straight from the safetensors files with `numpy.fromfile`, one at a time,
and written before the next is read, so the peak is about the largest tensor (plus one copy where
a transform or a dtype change needs it). Neither torch nor `safetensors.safe_open` is used: its numpy
backend has no bfloat16, importing torch alone costs ~0.6 GB of RSS here, and a memory-mapped file
keeps every page it touched resident until it is closed (see bench/export_memory.py).

The file is written beside `out` under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from paav_cli.errors import UserError
from paav_cli.export import names
from paav_cli.runs import default_file_mode

OUTTYPES = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
}
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}

# Pre-tokenizer regexes of known byte-level BPE tokenizers -> llama.cpp's `tokenizer.ggml.pre`.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}

# Gemma3TextConfig's defaults, for multimodal checkpoints whose text_config lists only changes.
_GEMMA3_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "sliding_window": 4096,
    "query_pre_attn_scalar": 256, "max_position_embeddings": 131072, "sliding_window_pattern": 6,
    "tie_word_embeddings": True,
}


# ---------------------------------------------------------------------------------------------- config


@dataclass
class Source:
    """A model folder, read: its text config, llama.cpp architecture and tensor files."""

    folder: Path
    architecture: str  # the transformers class
    arch: gguf.MODEL_ARCH
    config: dict  # the text model's config (text_config for a multimodal checkpoint)
    files: list[Path]

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])


def read_source(model_dir: Path) -> Source:
    folder = Path(model_dir)
    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file():
        raise UserError(f"{folder} is not a transformers model folder (no config.json); pass the folder "
                        "that holds config.json and *.safetensors.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{config_file} is not readable JSON ({e}); download the model again.") from None
    archs = config.get("architectures") or []
    architecture = next((a for a in archs if a in names.ARCHITECTURES), None)
    if architecture is None:
        got = ", ".join(archs) or config.get("model_type") or "unknown"
        raise UserError(f"cannot export a {got} model to GGUF; supported architectures: "
                        f"{', '.join(names.SUPPORTED)}.")
    if architecture == "Gemma3ForConditionalGeneration":
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise UserError(f"{config_file} has no text_config; export a Gemma3ForCausalLM model instead.")
        config = {**_GEMMA3_DEFAULTS, **text}
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            config.setdefault(key, json.loads(config_file.read_text(encoding="utf-8")).get(key))
    files = _safetensors_files(folder)
    return Source(folder, architecture, names.ARCHITECTURES[architecture], config, files)


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"{folder} has no complete *.safetensors weights; save the model with "
                        "save_pretrained(safe_serialization=True) or download it again.")
    return files


# ---------------------------------------------------------------------------------------------- tensors


@dataclass
class _Entry:
    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int


def _read_headers(files: list[Path]) -> list[_Entry]:
    entries = []
    for file in files:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _ST_DTYPES:
                raise UserError(f"{file.name}: tensor {name} has dtype {info['dtype']}, which paav cannot "
                                "export (only F32, F16 and BF16 weights).")
            start, end = info["data_offsets"]
            entries.append(_Entry(file, name, info["dtype"], tuple(info["shape"]), 8 + size + start, end - start))
    return entries


def _load(entry: _Entry) -> np.ndarray:
    """One tensor as float32 (F32 sources are returned as read, no extra copy)."""
    dtype = _ST_DTYPES[entry.dtype]
    count = entry.nbytes // np.dtype(dtype).itemsize
    with open(entry.file, "rb") as f:
        data = np.fromfile(f, dtype=dtype, count=count, offset=entry.offset)
    if entry.dtype == "BF16":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    elif entry.dtype != "F32":
        data = data.astype(np.float32)
    return data.reshape(entry.shape)


def _out_type(outtype: str, gguf_tensor: str, ndim: int) -> gguf.GGMLQuantizationType:
    # As llama.cpp's converter: norms, biases and rope factors stay F32 in every file type.
    if outtype == "F32" or ndim < 2:
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType.F16 if outtype == "F16" else gguf.GGMLQuantizationType.BF16


def _cast(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    # bfloat16, rounded to nearest even (NaN kept quiet), as raw uint16
    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(data)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 64).astype(np.uint16)
    return rounded


@dataclass
class _Plan:
    gguf_name: str
    entry: _Entry | None  # None: a generated tensor
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    generated: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * (4 if self.qtype == gguf.GGMLQuantizationType.F32 else 2)


def _plan_tensors(src: Source, outtype: str) -> list[_Plan]:
    tied = bool(src.config.get("tie_word_embeddings", src.arch == gguf.MODEL_ARCH.GEMMA3))
    plans = []
    seen: dict[str, str] = {}
    for entry in _read_headers(src.files):
        text = names.text_name(entry.name)
        if text is None:
            continue
        if tied and text == "lm_head.weight":
            continue  # llama.cpp reads the tied output matrix from token_embd
        try:
            target = names.gguf_name(src.arch, entry.name, src.n_layers)
        except ValueError as e:
            raise UserError(f"{src.folder}: {e}; the checkpoint does not match its config.json.") from None
        if target is None:
            continue
        if target in seen:
            raise UserError(f"{src.folder}: tensors {seen[target]} and {entry.name} both map to {target}.")
        seen[target] = entry.name
        plans.append(_Plan(target, entry, entry.shape, _out_type(outtype, target, len(entry.shape))))
    factors = _llama3_rope_factors(src)
    if factors is not None:
        plans.append(_Plan(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None, factors.shape,
                           gguf.GGMLQuantizationType.F32, factors))
    if gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight" not in seen:
        raise UserError(f"{src.folder} has no token embedding tensor; it is not a complete {src.architecture}.")
    return plans


def _iter_data(src: Source, plans: list[_Plan]) -> Iterator[tuple[_Plan, np.ndarray]]:
    for plan in plans:
        if plan.entry is None:
            yield plan, _cast(plan.generated, plan.qtype)
            continue
        data = _load(plan.entry)
        data = names.transform(src.arch, plan.entry.name, data, src.config)
        yield plan, _cast(data, plan.qtype)
        del data


# ---------------------------------------------------------------------------------------------- rope


def _rope(config: dict) -> tuple[float, dict]:
    """(rope_theta, scaling dict) for the (full-attention) layers; transformers 4 and 5 layouts."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        params = params["full_attention"]
    if not isinstance(params, dict):
        params = config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    return float(theta), params


def _rope_type(params: dict) -> str:
    return str(params.get("rope_type") or params.get("type") or "default").lower()


def _llama3_rope_factors(src: Source) -> np.ndarray | None:
    """Llama 3.1+ "llama3" rope scaling: per-frequency divisors llama.cpp reads from rope_freqs.weight."""
    theta, params = _rope(src.config)
    if src.arch != gguf.MODEL_ARCH.LLAMA or _rope_type(params) != "llama3":
        return None
    cfg = src.config
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old_ctx = float(params.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- metadata


def _add_hparams(w: gguf.GGUFWriter, src: Source, outtype: str) -> None:
    cfg = src.config
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // n_head)
    w.add_name(src.folder.name)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_block_count(src.n_layers)
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    if head_dim != cfg["hidden_size"] // n_head or src.arch == gguf.MODEL_ARCH.GEMMA3:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    theta, params = _rope(cfg)
    w.add_rope_freq_base(theta)
    kind = _rope_type(params)
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(params["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(params["factor"]))
        orig = params.get("original_max_position_embeddings")
        if orig:
            w.add_rope_scaling_orig_ctx_len(int(orig))
    elif kind not in ("default", "llama3") or (kind == "llama3" and src.arch != gguf.MODEL_ARCH.LLAMA):
        raise UserError(f"{src.folder}: rope scaling {kind!r} is not supported by paav's GGUF export.")
    if src.arch == gguf.MODEL_ARCH.QWEN2 and cfg.get("use_sliding_window"):
        raise UserError(f"{src.folder}: Qwen2 sliding-window attention is not supported by llama.cpp.")
    if src.arch == gguf.MODEL_ARCH.GEMMA3:
        _add_gemma3(w, src, head_dim)
    w.add_file_type(OUTTYPES[outtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_gemma3(w: gguf.GGUFWriter, src: Source, head_dim: int) -> None:
    cfg = src.config
    if cfg.get("attn_logit_softcapping") is not None:
        raise UserError(f"{src.folder}: Gemma 3 with attention logit softcapping is not supported by llama.cpp.")
    # llama.cpp scales queries by 1/sqrt(head_dim) (by hidden/heads for the 62-layer 27B).
    scalar = cfg.get("query_pre_attn_scalar", head_dim)
    expected = cfg["hidden_size"] // cfg["num_attention_heads"] if src.n_layers == 62 else head_dim
    if scalar != expected:
        raise UserError(f"{src.folder}: query_pre_attn_scalar {scalar} differs from the {expected} "
                        "llama.cpp uses for this Gemma 3 size; it cannot be exported faithfully.")
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    layer_types = cfg.get("layer_types")
    if not layer_types:
        pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
        layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                       for i in range(src.n_layers)]
    swa = [t == "sliding_attention" for t in layer_types]
    if any(swa) and cfg.get("sliding_window"):
        w.add_sliding_window(int(cfg["sliding_window"]))
        w.add_sliding_window_pattern(swa)
        local = cfg.get("rope_parameters", {}).get("sliding_attention", {}).get("rope_theta")
        w.add_rope_freq_base_swa(float(local or cfg.get("rope_local_base_freq", 10000.0)))


# ---------------------------------------------------------------------------------------------- tokenizer


def _special_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _add_tokenizer(w: gguf.GGUFWriter, src: Source, n_vocab: int) -> None:
    folder = src.folder
    tj_file, spm_file = folder / "tokenizer.json", folder / "tokenizer.model"
    tj = json.loads(tj_file.read_text(encoding="utf-8")) if tj_file.is_file() else None
    model = (tj or {}).get("model") or {}
    byte_level = model.get("type") == "BPE" and _has_byte_level(tj.get("pre_tokenizer") if tj else None)
    merges = True
    if byte_level:
        _add_bpe_vocab(w, src, tj, n_vocab, _pre_type(src, tj["pre_tokenizer"]))
    elif spm_file.is_file():
        _add_spm_vocab(w, src, tj, n_vocab)
        merges = False
    elif tj is not None and src.arch == gguf.MODEL_ARCH.GEMMA3 and _is_gemma_bpe(tj):
        # As llama.cpp's converter does for a Gemma without tokenizer.model; "gemma4" is llama.cpp's
        # name for this SentencePiece-style BPE (its checksum calls Gemma 3's by an alias).
        _add_bpe_vocab(w, src, tj, n_vocab, "gemma4")
    else:
        raise UserError(f"{folder} has neither a byte-level BPE tokenizer.json, Gemma's tokenizer.json nor a "
                        "SentencePiece tokenizer.model; paav cannot export its tokenizer.")
    # gguf warns about the pair template of every Gemma tokenizer (its second <bos>), which
    # paav never uses; a user reading an export's output would take it for a problem.
    vocab_log = logging.getLogger("gguf.vocab")
    level = vocab_log.level
    vocab_log.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(folder, load_merges=merges, special_token_types=("bos", "eos", "unk", "pad"),
                                    n_vocab=n_vocab)
    finally:
        vocab_log.setLevel(level)
    special.add_special_token = {k: v for k, v in special.add_special_token.items() if k in ("bos", "eos")}
    _add_end_of_turn(special, folder)
    # Say it either way: llama.cpp's default is false for BPE, true for SentencePiece. Unknown here
    # means the HF tokenizer adds nothing (no template, no add_bos_token).
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(w, quiet=True)


# Texts of end-of-turn tokens, as llama.cpp recognises them when a file names none.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


def _add_end_of_turn(special: gguf.SpecialVocab, folder: Path) -> None:
    """The token that ends a chat turn, found by its text, as llama.cpp finds it.

    A generation config lists every stop id without saying which ends a turn (Llama-3-Instruct's
    starts with <|end_of_text|>, Qwen2.5's second is <|endoftext|>), so its ids only decide
    between the known end-of-turn texts the tokenizer has, together with the chat template.
    """
    if "eot" in special.special_token_ids:
        return
    texts = _token_texts(folder)
    gen = folder / "generation_config.json"
    stop_ids = []
    if gen.is_file():
        ids = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        stop_ids = [i for i in (ids if isinstance(ids, list) else [ids]) if isinstance(i, int)]
        if "eos" not in special.special_token_ids and len(stop_ids) == 1:
            special.special_token_ids["eos"] = stop_ids[0]
    template = _chat_template_text(folder)
    for text in END_OF_TURN:
        token = texts.get(text)
        if token is None or (special.n_vocab is not None and token >= special.n_vocab):
            continue
        if text in template or token in stop_ids:
            special.special_token_ids["eot"] = token
            return


def _token_texts(folder: Path) -> dict[str, int]:
    """Added-token text -> id (where special tokens live), from tokenizer.json or tokenizer_config.json."""
    out: dict[str, int] = {}
    tj = folder / "tokenizer.json"
    if tj.is_file():
        for a in json.loads(tj.read_text(encoding="utf-8")).get("added_tokens", []):
            out[a["content"]] = a["id"]
    config = folder / "tokenizer_config.json"
    if config.is_file():
        for i, a in (json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}).items():
            out.setdefault(a.get("content"), int(i))
    return out


def _chat_template_text(folder: Path) -> str:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = " ".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


def _looks_special(text: str) -> bool:
    """llama.cpp's converter's test for added tokens that are control tokens whatever their flag says."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _added_type(text: str, special: bool) -> tuple[str, gguf.TokenType]:
    """(text as llama.cpp must store it, type) for an added token.

    llama.cpp matches user-defined tokens against the raw text, before its own space escaping,
    so a SentencePiece '▁' in one must be written as the space it stands for.
    """
    if special or _looks_special(text):
        return text, gguf.TokenType.CONTROL
    return text.replace("\u2581", " "), gguf.TokenType.USER_DEFINED


def _is_gemma_bpe(tj: dict) -> bool:
    """Gemma's SentencePiece-style BPE tokenizer.json: spaces become '▁', byte fallback, no other split."""
    model = tj.get("model") or {}
    normalizer = tj.get("normalizer")
    pre = tj.get("pre_tokenizer")
    split_on_space = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
    return (model.get("type") == "BPE" and model.get("byte_fallback") is True
            and normalizer == {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
            and pre in (None, split_on_space))


def _has_byte_level(pre) -> bool:
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in pre.get("pretokenizers", []))


def _pre_type(src: Source, pre: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (splitting before BPE)."""
    if pre.get("type") == "ByteLevel":
        if pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
            return "gpt-2"  # GPT-2's own split regex
    elif pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        splits = [p for p in parts if p.get("type") == "Split"]
        levels = [p for p in parts if p.get("type") == "ByteLevel"]
        if (len(splits) == 1 and len(levels) == 1 and not levels[0].get("use_regex", True)
                and not levels[0].get("add_prefix_space", False)):
            regex = splits[0].get("pattern", {}).get("Regex")
            if regex in PRE_TOKENIZERS:
                return PRE_TOKENIZERS[regex]
    raise UserError(f"{src.folder}: its tokenizer's pre-tokenizer is not one paav knows llama.cpp reproduces "
                    "(GPT-2, Llama 3, Qwen2); the GGUF would tokenize differently.")


def _add_bpe_vocab(w: gguf.GGUFWriter, src: Source, tj: dict, n_vocab: int, pre: str) -> None:
    if pre != "gemma4" and tj.get("normalizer") not in (None, {"type": "NFC"}):
        raise UserError(f"{src.folder}: its tokenizer normalizes text ({tj['normalizer'].get('type')}), "
                        "which llama.cpp's BPE tokenizer does not; it cannot be exported faithfully.")
    vocab: dict[str, int] = tj["model"]["vocab"]
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    size = max([n_vocab - 1, *vocab.values(), *added.keys()]) + 1
    if size > n_vocab:
        raise UserError(f"{src.folder}: the tokenizer has {size} tokens but the model only {n_vocab} embeddings.")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, a in added.items():
        tokens[i], types[i] = _added_type(a["content"], bool(a.get("special")))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)


def _add_spm_vocab(w: gguf.GGUFWriter, src: Source, tj: dict | None, n_vocab: int) -> None:
    """SentencePiece pieces with their scores and types, then the added tokens on top (as llama.cpp's converter)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(src.folder / "tokenizer.model"))
    except (RuntimeError, OSError) as e:
        raise UserError(f"{src.folder}/tokenizer.model cannot be read ({e}); download the model again.") from None
    if sp.vocab_size() > n_vocab:
        raise UserError(f"{src.folder}: the tokenizer has {sp.vocab_size()} tokens but the model only {n_vocab}.")
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [gguf.TokenType.UNUSED] * n_vocab
    for i in range(sp.vocab_size()):
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i), kind
    for i, text, special in _spm_added_tokens(src.folder, tj):
        if i >= n_vocab or types[i] == gguf.TokenType.BYTE:
            continue
        text, types[i] = _added_type(text, special)
        tokens[i], scores[i] = text.encode("utf-8"), -1000.0
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    if src.arch == gguf.MODEL_ARCH.GEMMA3:
        w.add_add_space_prefix(False)


def _spm_added_tokens(folder: Path, tj: dict | None) -> list[tuple[int, str, bool]]:
    """(id, text, special) of the tokens added on top of a SentencePiece model.

    added_tokens.json, then tokenizer_config.json's added_tokens_decoder where it exists (what
    llama.cpp's converter reads), else tokenizer.json's added_tokens (transformers 5 folders).
    """
    out: dict[int, tuple[str, bool]] = {}
    extra = folder / "added_tokens.json"
    if extra.is_file():
        for text, i in json.loads(extra.read_text(encoding="utf-8")).items():
            out[int(i)] = (text, False)
    config = folder / "tokenizer_config.json"
    decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder") if config.is_file() else None
    if decoder:
        for i, a in decoder.items():
            out[int(i)] = (a["content"], bool(a.get("special")))
    else:
        for a in (tj or {}).get("added_tokens", []):
            out[int(a["id"])] = (a["content"], bool(a.get("special")))
    return [(i, text, special) for i, (text, special) in sorted(out.items())]


# ---------------------------------------------------------------------------------------------- convert


def convert(model_dir: Path, out: Path, *, outtype: str = "F32") -> Path:
    """Export the transformers model in `model_dir` to the GGUF file `out` (F32, F16 or BF16).

    Quantised types (Q8_0, Q4_K_M, ...) are made from this file by `quantize.quantize`.
    """
    outtype = outtype.upper()
    if outtype not in OUTTYPES:
        raise UserError(f"unknown GGUF type {outtype!r} for conversion; use one of {', '.join(OUTTYPES)} "
                        "(quantised types are made from an F32/F16 export).")
    src = read_source(Path(model_dir))
    out = Path(out)
    plans = _plan_tensors(src, outtype)
    embd = next(p for p in plans if p.gguf_name == gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight")
    n_vocab = int(embd.shape[0])

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[src.arch])
    _add_hparams(writer, src, outtype)
    writer.add_vocab_size(n_vocab)
    _add_tokenizer(writer, src, n_vocab)
    for plan in plans:
        writer.add_tensor_info(plan.gguf_name, plan.shape, np.dtype(np.float16), plan.nbytes, raw_dtype=plan.qtype)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, default_file_mode())
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _plan, data in _iter_data(src, plans):
            writer.write_tensor_data(data)
            del data
        writer.flush()
        for f in writer.fout or []:
            os.fsync(f.fileno())
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out

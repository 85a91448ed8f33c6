"""paav's GGUF export side by side with llama.cpp's own `convert_hf_to_gguf.py`.

The reference converter is not a dependency: it comes from the llama-cpp-python sdist
(`pip download --no-deps --no-binary :all: llama-cpp-python==VERSION`, then `vendor/llama.cpp`),
with its own vendored gguf-py, and runs in a subprocess so that its gguf package never meets
paav's. `bench/llamacpp_parity.py` runs it on the tiny models and records what it wrote as
fixtures (`tests/fixtures/llamacpp_parity/`); `tests/test_export_parity.py` compares paav's files
with those fixtures always, and with a live run of the reference when one is found.

Tiny random tokenizers have no known pre-tokenizer checksum, so the reference refuses them; the
wrapper then forces the pre-tokenizer name (`force_pre`), the one llama.cpp would pick for the
real tokenizer whose split rules the tiny one copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

# Strings where tokenizers tend to part ways: whitespace runs and newlines (Gemma's user-defined
# whitespace tokens), special-token text inside prose, digits, unicode, byte fallback.
TRICKY = [
    "a cat", " a cat", "a  cat", "a   cat", "a    cat", "\ta\tcat", "a\ncat", "a\n\ncat", "a\n\n\n\ncat",
    "  leading spaces", "trailing spaces  ", "  ", "\n", " \n ", "\n\n  \n", "a \u3000 b",
    "it's 2024:  two  spaces,\ttabs\nand new lines\n\n-- 3.14159 apples!",
    "1 12 123 1234 12345 123456 1234567", "3.3 3..3 3...3", "x=1;y=22;z=333",
    "Ünïcödé: café, naïve, 東京, emoji 🙂 and CAPS", "кот играет на пианино", "猫がピアノを弾く",
    "🚀🦙 😶‍🌫️ ✅", "\u200b zero width \u200d joiner", "e\u0301 combining", "ﬁ ligature ＡＢＣ fullwidth",
    "<start_of_turn>user\nhi<end_of_turn>", "<|im_start|>user\nhi<|im_end|>", "<|eot_id|> inside text",
    "<bos>a<eos>", "<unk> <pad> <mask>", "[multimodal] <table><tr><td>x</td></tr></table>",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "''''''```````\"\"\"\"......!!!!!!??????", "------======= нещо на Български",
    "A red fox runs through fresh snow at dawn, cinematic lighting",
    "http://example.com/path?q=1&r=2#frag", "user@example.com", "C:\\path\\to\\file.txt",
    "def f(x):\n    return x  # comment\n", "   indented\n      more", "tab\t\t\ttabs", "\r\n windows \r\n",
    "MiXeD CaSe WoRdS", "don't won't can't", "a-b_c.d/e", "(((nested)))", "αβγ δεζ", "x" * 60,
]


def fields(path: Path) -> dict:
    """Every metadata key of a GGUF with its value (arrays as lists), GGUF.* header keys left out."""
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def tensors(path: Path) -> dict[str, dict]:
    """name -> {shape, type, sha256 of the data}: enough to say two files hold the same tensors."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: {"shape": [int(x) for x in t.shape], "type": gguf.GGMLQuantizationType(t.tensor_type).name,
                     "sha256": hashlib.sha256(bytes(t.data)).hexdigest()} for t in reader.tensors}


def tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's token ids for each text (its own BOS setting, special-token text parsed as paav does)."""
    import llama_cpp

    from paav_cli import libs

    libs.quiet()
    model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        add_bos = model._model.add_bos_token()
        return [model.tokenize(t.encode("utf-8"), add_bos=add_bos, special=True) for t in texts]
    finally:
        model.close()


def logits(path: Path, texts: list[str]) -> list:
    """llama.cpp's float32 logits for every position of each text (as verify computes them)."""
    from paav_cli.llm.llamacpp import LlamaCppModel

    lm = LlamaCppModel(Path(path), n_threads=2, max_parallel=1)
    try:
        return [lm.all_logits(lm.tokenize(t, add_bos=lm.adds_bos)) for t in texts]
    finally:
        lm.close()


# Keys that name or describe the file rather than the model: the reference derives them from the
# folder name and parameter count, paav from the folder name.
DESCRIPTIVE = ("general.name", "general.basename", "general.finetune", "general.size_label", "general.type",
               "general.tags", "general.license")


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def metadata_diff(ours: dict, ref: dict) -> list[str]:
    """One line per key whose value differs (or that one side lacks), descriptive keys left out."""
    lines = []
    for key in sorted(set(ours) | set(ref)):
        if key in DESCRIPTIVE:
            continue
        a, b = ours.get(key, "<absent>"), ref.get(key, "<absent>")
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            diff = [i for i in range(len(a)) if a[i] != b[i]]
            lines.append(f"{key}: {len(diff)} of {len(a)} entries differ, e.g. #{diff[0]}: "
                         f"paav {_short(a[diff[0]])}, llama.cpp {_short(b[diff[0]])}")
        else:
            lines.append(f"{key}: paav {_short(a)}, llama.cpp {_short(b)}")
    return lines


def tensor_diff(ours: dict, ref: dict) -> list[str]:
    lines = [f"only in paav: {n}" for n in sorted(set(ours) - set(ref))]
    lines += [f"only in llama.cpp: {n}" for n in sorted(set(ref) - set(ours))]
    for name in sorted(set(ours) & set(ref)):
        if ours[name] != ref[name]:
            lines.append(f"{name}: paav {ours[name]}, llama.cpp {ref[name]}")
    return lines


def token_diff(ours: list[list[int]], ref: list[list[int]], texts: list[str]) -> list[str]:
    return [f"{t!r}: paav {a}, llama.cpp {b}" for t, a, b in zip(texts, ours, ref) if a != b]


def _default_swa_pattern(n_layers: int) -> list[bool]:
    # llama.cpp's Gemma 3 default when the file says nothing: every sixth layer attends globally.
    return [(i + 1) % 6 != 0 for i in range(n_layers)]


def explain(key: str, ours: dict, ref: dict) -> str | None:
    """Why paav's value of `key` may differ from the reference's, or None when it must not.

    `ours` holds paav's metadata in full; `ref` the reference's, arrays possibly hashed (fixtures).
    """
    from paav_cli.export.convert import END_OF_TURN

    a, b = ours.get(key), ref.get(key)
    arch = ours.get("general.architecture", "")
    heads, embd = ours.get(f"{arch}.attention.head_count"), ours.get(f"{arch}.embedding_length")
    head_dim = ours.get(f"{arch}.attention.key_length") or (embd // heads if embd and heads else None)
    if key in DESCRIPTIVE:
        return "names the file"
    if key.endswith((".attention.key_length", ".attention.value_length")) and a is None and b == head_dim:
        return "llama.cpp's default (hidden size / heads)"
    if key.endswith(".rope.dimension_count") and b is None and a == head_dim:
        return "llama.cpp's default (the head size)"
    if key.endswith(".vocab_size") and b is None and a == len(ours.get("tokenizer.ggml.tokens", [])):
        return "the length of the token list"
    if (key.endswith(".attention.sliding_window_pattern") and b is None
            and a == _default_swa_pattern(int(ours.get(f"{arch}.block_count", 0)))):
        return "llama.cpp's default Gemma 3 layer pattern"
    if key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token") and b is None:
        return "paav states what the transformers tokenizer does; the reference leaves llama.cpp's default"
    if (key == "tokenizer.ggml.eot_token_id" and b is None and isinstance(a, int)
            and ours["tokenizer.ggml.tokens"][a] in END_OF_TURN):
        return "the end-of-turn token llama.cpp finds by its text anyway"
    if key in ("tokenizer.ggml.add_sep_token", "tokenizer.ggml.mask_token_id") and a is None:
        return "special tokens with no role in generation, not exported"
    if key == "tokenizer.ggml.pre" and {a, b} == {"gemma4", "granite-embed-multi-311m"}:
        return "two names of one llama.cpp pre-tokenizer (the reference's checksum picks the alias)"
    return None


def unexpected_metadata(ours: dict, ref: dict) -> list[str]:
    """Differences `explain` has no reason for; `ref` may hold hashed arrays (fixture_value)."""
    lines = []
    for key in sorted(set(ours) | set(ref)):
        a = fixture_value(ours[key]) if key in ours else None
        if a == ref.get(key) and (key in ours) == (key in ref):
            continue
        if explain(key, ours, ref) is None:
            lines.append(f"{key}: paav {_short(a)}, llama.cpp {_short(ref.get(key, '<absent>'))}")
    return lines


def builders() -> dict:
    """The tiny models the parity is kept on, by name."""
    from paav_cli.testing import tiny_export, tiny_llm

    return {"tiny-llama": tiny_llm.build_tiny_llama, "tiny-qwen2": tiny_llm.build_tiny_qwen2,
            "tiny-gemma3": tiny_llm.build_tiny_gemma3, **tiny_export.BUILDERS}


def source_hash(folder: Path) -> str:
    """What the tiny model was built as: its weights and tokenizer files (tensor values depend on both)."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json"):
        if (folder / name).is_file():
            digest.update(name.encode())
            with open(folder / name, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
    if (folder / "tokenizer.model").is_file():
        # Its pieces, not its bytes: a SentencePiece model also records the temporary paths it was trained from.
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        pieces = [(sp.IdToPiece(i), sp.GetScore(i), sp.IsControl(i), sp.IsByte(i), sp.IsUnknown(i))
                  for i in range(sp.vocab_size())]
        digest.update(json.dumps(pieces).encode())
    return digest.hexdigest()


def fixture_value(value):
    """Metadata as stored in a fixture: arrays longer than 16 by length and hash, so that files stay small."""
    if isinstance(value, list) and len(value) > 16:
        text = json.dumps(value, ensure_ascii=False, default=str)
        return {"array_len": len(value), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return value


def record(gguf_path: Path, folder: Path) -> dict:
    meta = fields(gguf_path)
    return {
        "source_sha256": source_hash(folder),
        "metadata": {k: fixture_value(v) for k, v in meta.items()},
        "tensors": tensors(gguf_path),
        "tokens": tokenize(gguf_path, TRICKY),
    }


def compare(ours: dict, ref: dict) -> dict:
    return {
        "tensors": tensor_diff(ours["tensors"], ref["tensors"]),
        "metadata": metadata_diff(ours["metadata"], ref["metadata"]),
        "tokens": token_diff(ours["tokens"], ref["tokens"], TRICKY),
    }


def run_reference(llama_cpp_dir: Path, model_dir: Path, out: Path, *, outtype: str = "f32",
                  force_pre: str | None = None, timeout: float = 900) -> Path:
    """Run llama.cpp's `convert_hf_to_gguf.py` from `llama_cpp_dir` (an sdist's vendor/llama.cpp)."""
    wrapper = (
        "import os, runpy, sys\n"
        "root = sys.argv.pop(1)\n"
        "sys.path.insert(0, root)\n"
        "sys.path.insert(1, os.path.join(root, 'gguf-py'))\n"
        "pre = os.environ.get('PAAV_FORCE_PRE')\n"
        "if pre:\n"
        "    import conversion.base as base\n"
        "    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre\n"
        "sys.argv[0] = os.path.join(root, 'convert_hf_to_gguf.py')\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the reference must read its own gguf-py, not paav's
    if force_pre:
        env["PAAV_FORCE_PRE"] = force_pre
    cmd = [sys.executable, "-c", wrapper, str(llama_cpp_dir), str(model_dir), "--outtype", outtype,
           "--outfile", str(out)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not Path(out).is_file():
        raise RuntimeError(f"llama.cpp's converter failed on {model_dir}:\n{done.stderr[-3000:]}")
    return Path(out)


def find_reference() -> Path | None:
    """A vendor/llama.cpp folder with convert_hf_to_gguf.py: $PAAV_LLAMA_CPP_CONVERTER, else None."""
    env = os.environ.get("PAAV_LLAMA_CPP_CONVERTER")
    if env and (Path(env) / "convert_hf_to_gguf.py").is_file():
        return Path(env)
    return None

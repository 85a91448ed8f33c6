"""Export transformers causal LMs (Llama, Qwen2, Gemma 3) to GGUF in pure Python, quantise, verify.

    convert(model_dir, out, outtype="F32")   -> GGUF (F32/F16/BF16), streamed tensor by tensor
    quantize(src_gguf, out, "Q4_K_M")        -> llama.cpp's quantiser via llama-cpp-python
    verify(model_dir, gguf_path)             -> logits / tokenizer / chat-template parity report
    names.gguf_name, names.transform         -> per-architecture tensor names and transforms

Imports are lazy: `import paav_cli.export` loads neither gguf nor torch.
"""

from __future__ import annotations

__all__ = ["convert", "gguf_name", "quantize", "transform", "verify"]


def __getattr__(name: str):
    if name == "convert":
        from paav_cli.export.convert import convert

        return convert
    if name == "quantize":
        from paav_cli.export.quantize import quantize

        return quantize
    if name == "verify":
        from paav_cli.export.verify import verify

        return verify
    if name in ("gguf_name", "transform"):
        from paav_cli.export import names

        return getattr(names, name)
    raise AttributeError(name)

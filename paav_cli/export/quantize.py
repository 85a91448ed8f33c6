"""Quantise a GGUF with llama.cpp's own quantiser, through llama-cpp-python's binding (no llama-quantize binary)."""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

from paav_cli.errors import UserError
from paav_cli.runs import default_file_mode

QTYPES = {
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
}


def quantize(src_gguf: Path, out: Path, qtype: str, *, n_threads: int | None = None) -> Path:
    """Write `src_gguf` (an F32/F16/BF16 export) quantised to `qtype` at `out`.

    Tensors whose rows do not divide into a k-quant's 256-value blocks (tiny models) are stored by
    llama.cpp in a fallback type (Q5_0/Q8_0/...); the file still loads.
    """
    import llama_cpp

    key = qtype.upper()
    if key not in QTYPES:
        raise UserError(f"unknown quantisation {qtype!r}; use one of {', '.join(QTYPES)}.")
    src_gguf, out = Path(src_gguf), Path(out)
    if not src_gguf.is_file():
        raise UserError(f"{src_gguf} does not exist; export the model to GGUF first.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QTYPES[key])
    params.nthread = n_threads or max(1, min(os.cpu_count() or 1, 8))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        from paav_cli.llm.llamacpp import _quiet_llama_logs

        _quiet_llama_logs(False)
        code = llama_cpp.llama_model_quantize(
            str(src_gguf).encode("utf-8"), str(tmp).encode("utf-8"), ctypes.byref(params)
        )
        if code != 0:
            raise UserError(f"llama.cpp could not quantise {src_gguf.name} to {key} (code {code}); "
                            "check that it is a complete GGUF export and that the disk has room.")
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out

"""Heavy libraries: keep them quiet (paav draws its own bars and errors) and give their memory back."""

from __future__ import annotations

import gc
import os
import sys
import warnings


def quiet() -> None:
    """Silence diffusers' and transformers' loading bars, info logs and advisory warnings."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(diffusers|transformers|torch|open_clip)")
    try:
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from diffusers.utils import logging as df_logging

        df_logging.set_verbosity_error()
        df_logging.disable_progress_bar()
    except ImportError:
        pass
    # bitsandbytes warns on every CPU without its optional `kernels` package; datasets draws bars.
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if "datasets" in sys.modules:  # only where a trainer already imported it: the import is slow
        sys.modules["datasets"].disable_progress_bars()
    _freeze_imported_objects()


_frozen = False


def _freeze_imported_objects() -> None:
    # torch, transformers and diffusers create a few million long-lived objects at import; every
    # full gc.collect() (one per freed model) would walk them all, ~0.26 s each here. Freezing them
    # once, before any model exists, leaves collections only the objects made since.
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


def free_memory() -> None:
    """Return a dropped model's memory before the next one loads (host and accelerator)."""
    gc.collect()
    _trim_host_heap()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _trim_host_heap() -> None:
    # glibc keeps freed tensors under its mmap threshold (up to 32 MB each) in the heap, so a
    # freed model still counts in RSS; malloc_trim hands those pages back to the system.
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc (macOS, musl): nothing to trim

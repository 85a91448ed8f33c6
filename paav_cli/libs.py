"""Quiet heavy libraries: paav draws its own progress bars and reports its own errors."""

from __future__ import annotations

import os
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

"""The llama.cpp backend directly: the TextGenerator interface and the progress display."""

import io

from rich.console import Console

from paav_cli import registry
from paav_cli.llm import TextGenerator
from paav_cli.llm.llamacpp import LlamaCppModel
from paav_cli.progress import BatchProgress
from paav_cli.testing.tiny_gguf import EXPECTED_CONTINUATIONS


def test_llamacpp_model_is_a_text_generator():
    path = registry.require_path(registry.Registry.load().get("tiny-chat"))
    model = LlamaCppModel(path, n_threads=1)
    try:
        generator: TextGenerator = model
        texts = generator.generate([{"role": "user", "content": "a cat"}], n=4, temperature=1.0,
                                   max_tokens=32, seed=0)
        assert len(texts) == 4 and set(texts) <= set(EXPECTED_CONTINUATIONS)
        again = generator.generate([{"role": "user", "content": "a cat"}], n=4, temperature=1.0,
                                   max_tokens=32, seed=0)
        assert again == texts
    finally:
        model.close()


def test_batch_progress_shows_count_rate_and_eta():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    progress = BatchProgress(4, console=console)
    for _ in range(4):
        progress.advance()
    progress.close()
    text = buffer.getvalue()
    assert "4/4" in text and "prompts/s" in text and "eta" in text

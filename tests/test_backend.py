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


def _context_sensitive_tiny(path):
    """The tiny booster with its attention and MLP outputs switched on (random weights): its logits then
    depend on every earlier token, and so on how llama.cpp decoded them, where the stock tiny model's
    depend on the last token alone and can never show a difference."""
    import numpy as np
    from gguf import GGUFReader

    from paav_cli.testing.tiny_gguf import build_tiny_gguf

    build_tiny_gguf(path)
    reader = GGUFReader(str(path), "r+")
    rng = np.random.default_rng(1)
    for tensor in reader.tensors:
        if tensor.name in ("blk.0.attn_output.weight", "blk.0.ffn_down.weight"):
            tensor.data[...] = rng.standard_normal(tensor.data.shape).astype(np.float32) * 0.3
    del reader
    return path


def test_a_request_sees_the_same_logits_whatever_was_decoded_before(tmp_path, monkeypatch):
    # Found with the real default booster through `paav serve`: the same prompt and seed gave another
    # text when repeated (only its last token was decoded) or after another prompt (only the tokens
    # after their common part were), as llama.cpp rounds differently by the shape of a decode call.
    # Every logit row a sampler sees is recorded, so a difference in the last bit fails the test.
    import hashlib

    import llama_cpp
    import numpy as np

    from paav_cli.llm.llamacpp import Sampling, _common_prefix_length
    from paav_cli.text.formats import build_request

    path = _context_sensitive_tiny(tmp_path / "tiny-context.gguf")
    states = tmp_path / "states"
    seen: list[str] = []
    real_sample = llama_cpp.llama_sampler_sample

    def recording(sampler, ctx, index):
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
        seen.append(hashlib.sha1(row.tobytes()).hexdigest())
        return real_sample(sampler, ctx, index)

    monkeypatch.setattr(llama_cpp, "llama_sampler_sample", recording)
    models = []

    def load(state_dir):
        models.append(LlamaCppModel(path, n_threads=1, max_parallel=4, state_dir=state_dir))
        return models[-1]

    try:
        model = load(states)
        n_vocab = model._model.n_vocab()
        encode = [model.encode_prompt(build_request("fewshot", p).text)
                  for p in ("a cat playing piano", "a cat playing guitar", "fireworks", "x")]
        piano, guitar, fireworks = encode[:3]
        stable = piano[: _common_prefix_length([piano, encode[3]])]
        sampling = Sampling(temperature=1.0, max_tokens=6)

        def logits(model, prompt, n=1):
            seen.clear()
            model.complete([prompt] * n, seeds=[3 + i for i in range(n)], sampling=sampling, stable_prefix=stable)
            return list(seen)

        first = logits(model, piano)  # decodes the prefix alone and saves its state
        assert first and len(list(states.glob("*.kv"))) == 1
        assert logits(model, piano) == first  # failed: the repeat decoded the last token alone
        logits(model, guitar)
        assert logits(model, piano) == first
        first_three = logits(model, piano, n=3)
        logits(model, fireworks, n=4)  # a context for more sequences
        assert logits(model, piano) == first
        assert logits(model, piano, n=3) == first_three
        assert logits(load(states), piano) == first  # the prefix state loaded from its file
        assert logits(load(None), piano) == first  # no state folder: the prefix decoded the same way
        other = load(states)
        logits(other, guitar)
        assert logits(other, piano, n=3) == first_three
    finally:
        for m in models:
            m.close()

"""Tiny text encoders and tokenizers shared by the tiny generators and reward models.

Real generators read prompts through T5 / umT5 (SentencePiece unigram) or CLIP (BPE); the tiny
ones use the same classes with a small vocabulary built here, so no tokenizer is downloaded.
"""

from __future__ import annotations

from pathlib import Path

# Enough words that test prompts tokenise into words, not single letters.
WORDS = ["a", "an", "the", "of", "in", "on", "at", "with", "and", "to", "from", "by", "over", "under", "into", "through", "is", "are", "cat", "dog", "fox", "bird", "horse", "piano", "car", "city", "street", "forest", "lake", "river", "sea", "beach", "mountain", "sky", "sun", "moon", "night", "day", "light", "red", "blue", "green", "white", "black", "golden", "soft", "warm", "slow", "slowly", "camera", "pans", "zooms", "close", "up", "wide", "shot", "scene", "video", "man", "woman", "child", "people", "playing", "walking", "running", "flying", "sitting", "standing", "snow", "rain", "water", "tree", "trees", "flower", "flowers", "field", "grass", "house", "road", "bridge", "boat"]


def build_t5_tokenizer(folder: Path):
    """A T5 (unigram) tokenizer over WORDS plus single characters, saved with save_pretrained."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0 - i / 100) for i, w in enumerate(WORDS)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,'-"
    pieces += [(c, -10.0) for c in chars] + [("\u2581", -5.0)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_t5_encoder(folder: Path, vocab_size: int, d_model: int = 32, seed: int = 0):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    model = T5EncoderModel(config).eval()
    model.save_pretrained(folder)
    return model


def build_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer from the vocabulary that ships inside open_clip (no download)."""
    import gzip
    import json

    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe) as f:
        merges = f.read().decode("utf-8").split("\n")
    # The same slice and vocabulary construction as open_clip's SimpleTokenizer and OpenAI CLIP.
    merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
    from open_clip.tokenizer import bytes_to_unicode

    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer

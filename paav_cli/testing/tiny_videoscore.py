"""A tiny random VideoScore: Idefics2 (SigLIP-style vision, perceiver, Mistral) + a 5-output regression head.

Saved with save_pretrained like the real checkpoint (config.json, model.safetensors with `model.*` and
`score.*` keys, tokenizer.json, preprocessor_config.json and processor_config.json), so `VideoScoreReward` loads it
through exactly the code that loads TIGER-Lab/VideoScore.
"""

from __future__ import annotations

from pathlib import Path

# Tiny sizes: 28 px frames, 14 px patches (4 patches), 4 perceiver latents = 4 <image> tokens per frame.
IMAGE_SIZE = 28
PATCH_SIZE = 14
IMAGE_SEQ_LEN = 4
HIDDEN = 32
NUM_LABELS = 5
SEED = 0


def build_llama_tokenizer(vocab_size: int = 400):
    """A Mistral-style (Metaspace BPE) LlamaTokenizer trained in-process on the VideoScore prompt and WORDS,
    with Idefics2's three special tokens added after the vocabulary, as in the real tokenizer."""
    import json
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, LlamaTokenizer

    from paav_cli.rewards.videoscore import REGRESSION_QUERY_PROMPT
    from paav_cli.testing.tiny_text import WORDS

    specials = ["<unk>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    alphabet = list(string.printable) + ["\u2581"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False,
    )
    bpe.train_from_iterator([REGRESSION_QUERY_PROMPT, " ".join(WORDS)] * 4, trainer=trainer)
    vocab = dict(sorted(bpe.get_vocab().items(), key=lambda kv: kv[1]))
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<unk>", add_prefix_space=True)
    extra = [
        AddedToken(t, normalized=False, special=True)
        for t in ("<fake_token_around_image>", "<image>", "<end_of_utterance>")
    ]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def tiny_config(tokenizer, num_labels: int = NUM_LABELS):
    from transformers import Idefics2Config

    return Idefics2Config(
        vision_config={
            "hidden_size": HIDDEN, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
        },
        perceiver_config={
            "hidden_size": HIDDEN, "resampler_n_latents": IMAGE_SEQ_LEN, "resampler_depth": 1,
            "resampler_n_heads": 2, "resampler_head_dim": 8, "num_key_value_heads": 1, "rms_norm_eps": 1e-5,
        },
        text_config={
            "model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": HIDDEN, "intermediate_size": 37,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "pad_token_id": 0,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        num_labels=num_labels,
        problem_type="regression",
        tie_word_embeddings=False,
    )


def build_tiny_videoscore(folder: Path) -> Path:
    import torch
    from transformers import Idefics2ImageProcessor, Idefics2Processor

    from paav_cli.rewards.videoscore import Idefics2ForVideoScore

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_llama_tokenizer()
    image_processor = Idefics2ImageProcessor(
        do_image_splitting=False, do_convert_rgb=True, do_pad=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], resample=2, size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE},
    )
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN)

    torch.manual_seed(SEED)
    model = Idefics2ForVideoScore(tiny_config(processor.tokenizer)).eval()
    with torch.no_grad():
        # transformers' init (std 0.02, perceiver latents all ones) leaves the tiny model nearly blind to
        # the frames; unit-variance activations make different videos and prompts score visibly apart.
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 / param.shape[-1] ** 0.5)
        model.model.connector.perceiver_resampler.latents.normal_(0.0, 1.0)
        model.score.weight.normal_(0.0, 0.3)  # outputs near the real 1-4 range
        model.score.bias.fill_(2.5)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _split_processor_config(folder)
    return folder


def _split_processor_config(folder: Path) -> None:
    """Lay the processor out as the published repos do (written by transformers 4): the image processor in
    preprocessor_config.json and only `image_seq_len` in processor_config.json, so tests load that layout."""
    import json

    path = folder / "processor_config.json"
    data = json.loads(path.read_text())
    image = data.pop("image_processor")
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    path.write_text(json.dumps(data, indent=2) + "\n")

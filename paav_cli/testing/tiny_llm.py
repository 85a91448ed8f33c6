"""Tiny random chat LLMs (transformers format) with a locally trained tokenizer and a chat template."""

from __future__ import annotations

from pathlib import Path

# Llama-3's template shape, small enough to read.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"]


def build_byte_bpe_tokenizer(
    vocab_size: int = 600, specials: list[str] | None = None, chat_template: str = CHAT_TEMPLATE, **tokens
):
    """A byte-level BPE trained on paav's own word lists; `tokens` names the bos/eos/pad roles (Llama's by default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from paav_cli.testing.tiny_text import WORDS
    from paav_cli.text.evolution import STYLE_EXAMPLES

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials or SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([" ".join(WORDS), *STYLE_EXAMPLES] * 4, trainer=trainer)
    tokens = tokens or {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|pad|>"}
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=chat_template, **tokens)


def build_tiny_llama(folder: Path) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = build_byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Qwen2.5's ChatML shape: a default system turn when none is given, no bos token.
QWEN2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Gemma 3's shape: "assistant" is called "model", contents are trimmed, every turn ends with <end_of_turn>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]


def _save_tiny(folder: Path, model, tokenizer, eos_token_id: int) -> Path:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def build_tiny_qwen2(folder: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # Like Qwen2.5-Instruct: <|im_end|> ends a turn (and generation), the pad is the existing <|endoftext|>.
    tokenizer = build_byte_bpe_tokenizer(
        specials=QWEN2_SPECIALS, chat_template=QWEN2_CHAT_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return _save_tiny(folder, Qwen2ForCausalLM(config), tokenizer, tokenizer.eos_token_id)


def build_tiny_gemma3(folder: Path) -> Path:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = build_byte_bpe_tokenizer(
        specials=GEMMA3_SPECIALS, chat_template=GEMMA3_CHAT_TEMPLATE,
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
    )
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=64,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Gemma 3 chat models stop at <end_of_turn> as well as <eos>.
    return _save_tiny(folder, Gemma3ForCausalLM(config), tokenizer, [tokenizer.eos_token_id, end_of_turn])

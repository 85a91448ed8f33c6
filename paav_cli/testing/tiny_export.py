"""Tiny models shaped like the real checkpoints GGUF export meets, for export and parity tests.

Each copies the part of a real model's folder that the export reads differently: a multimodal
Gemma 3 (text config nested in text_config), Gemma's SentencePiece tokenizer.model with
user-defined whitespace pieces, Gemma's tokenizer.json alone (what paav's own dequantised
`gemma-3-270m-gguf` base holds), and Llama-3 / Qwen2.5 instruct special-token layouts (several
stop ids in generation_config, Qwen's non-special FIM tokens).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from paav_cli.testing import tiny_llm

# Gemma's whitespace runs (2 to 31 spaces, 1 to 31 newlines) are SentencePiece user-defined pieces
# written with '▁' for a space.
GEMMA_USER_DEFINED = ["<mask>", *("▁" * n for n in range(2, 32)), *("\n" * n for n in range(1, 32)), "\t\t",
                      "<start_of_turn>", "<end_of_turn>"]


def _gemma3_text_config(vocab_size: int, **ids):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=64, max_position_embeddings=2048,
        **ids,
    )


def build_tiny_gemma3_multimodal(folder: Path) -> Path:
    """Gemma3ForConditionalGeneration: a tiny SigLIP tower, the language model under text_config."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    tokenizer = tiny_llm.build_byte_bpe_tokenizer(
        specials=[*tiny_llm.GEMMA3_SPECIALS, "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
        chat_template=tiny_llm.GEMMA3_CHAT_TEMPLATE, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
    )
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    torch.manual_seed(0)
    config = Gemma3Config(
        text_config=_gemma3_text_config(len(tokenizer), **ids).to_dict(), vision_config=vision.to_dict(),
        mm_tokens_per_image=4, boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"), **ids,
    )
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    return tiny_llm._save_tiny(folder, Gemma3ForConditionalGeneration(config), tokenizer,
                               [tokenizer.eos_token_id, end_of_turn])


def train_gemma_sentencepiece(path: Path, vocab_size: int = 500) -> Path:
    """A BPE SentencePiece model with Gemma's settings (byte fallback, no dummy prefix, whitespace kept)."""
    import sentencepiece as spm

    from paav_cli.testing.tiny_text import WORDS
    from paav_cli.text.evolution import STYLE_EXAMPLES

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join([" ".join(WORDS), *STYLE_EXAMPLES] * 4), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "spm"), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
            normalization_rule_name="identity", split_digits=True, allow_whitespace_only_pieces=True,
            user_defined_symbols=GEMMA_USER_DEFINED, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
            eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", minloglevel=2,
        )
        shutil.copy(Path(tmp) / "spm.model", path)
    return Path(path)


def _gemma_tokenizer(spm_model: Path):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spm_model, Path(tmp) / "tokenizer.model")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
            "unk_token": "<unk>", "mask_token": "<mask>", "add_bos_token": True, "add_eos_token": False, "chat_template": tiny_llm.GEMMA3_CHAT_TEMPLATE,
        }))
        return AutoTokenizer.from_pretrained(tmp)


def build_tiny_gemma3_spm(folder: Path) -> Path:
    """Gemma3ForCausalLM with tokenizer.model, its whitespace pieces listed as added tokens as Gemma's are."""
    import torch
    from transformers import Gemma3ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm_model = train_gemma_sentencepiece(folder / "tokenizer.model")
    tokenizer = _gemma_tokenizer(spm_model)
    torch.manual_seed(0)
    config = _gemma3_text_config(len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    tiny_llm._save_tiny(folder, Gemma3ForCausalLM(config), tokenizer, [tokenizer.eos_token_id, end_of_turn])
    # Gemma's own folders (saved by transformers 4) list every added token in tokenizer_config.json
    # too, which is where llama.cpp's converter reads them from.
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    config_file = folder / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text(encoding="utf-8"))
    tok_config["added_tokens_decoder"] = {str(a["id"]): {k: v for k, v in a.items() if k != "id"}
                                          for a in tj["added_tokens"]}
    config_file.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


def build_tiny_gemma3_tokenizer_json(folder: Path) -> Path:
    """As `build_tiny_gemma3_spm` without tokenizer.model: only Gemma's SentencePiece-style BPE tokenizer.json."""
    folder = build_tiny_gemma3_spm(folder)
    (folder / "tokenizer.model").unlink()
    config_file = folder / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text(encoding="utf-8"))
    tok_config.pop("vocab_file", None)
    tok_config.pop("added_tokens_decoder", None)
    config_file.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


# Llama-3-Instruct: <|eot_id|> ends a turn, generation also stops at <|end_of_text|>.
LLAMA3_INSTRUCT_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>", "<|eom_id|>", "<|finetune_right_pad_id|>"]
# Qwen2.5-Instruct: its FIM and repository tokens are added tokens marked special=False.
QWEN25_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN25_NOT_SPECIAL = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
                      "<|file_sep|>"]


def build_tiny_llama3_instruct(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_llm.build_byte_bpe_tokenizer(
        specials=LLAMA3_INSTRUCT_SPECIALS, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    ids = tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"])
    return tiny_llm._save_tiny(folder, LlamaForCausalLM(config), tokenizer, ids)


def build_tiny_qwen25_instruct(folder: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_llm.build_byte_bpe_tokenizer(
        specials=QWEN25_SPECIALS, chat_template=tiny_llm.QWEN2_CHAT_TEMPLATE, eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_tokens(QWEN25_NOT_SPECIAL, special_tokens=False)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    ids = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    return tiny_llm._save_tiny(folder, Qwen2ForCausalLM(config), tokenizer, ids)


BUILDERS = {
    "tiny-gemma3-multimodal": build_tiny_gemma3_multimodal,
    "tiny-gemma3-spm": build_tiny_gemma3_spm,
    "tiny-gemma3-tokenizer-json": build_tiny_gemma3_tokenizer_json,
    "tiny-llama3-instruct": build_tiny_llama3_instruct,
    "tiny-qwen25-instruct": build_tiny_qwen25_instruct,
}

"""Token budgets of generators' text encoders, and trimming to them at a sentence boundary.

CogVideoX reads 226 T5 tokens, Open-Sora 1.2 300, LTX-Video 128, Stable Diffusion 77 CLIP tokens;
anything past that is silently cut off by the pipeline, usually mid-sentence. paav counts with the
generator's own tokenizer when its files are on disk (after `paav models pull`), and otherwise with
`ApproxCounter`, which errs on the long side so that a trimmed prompt fits the real tokenizer too.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Protocol

from paav_cli.text.clean import split_sentences

_PUNCT = re.compile(r"[^\w\s]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class TokenCounter(Protocol):
    name: str
    exact: bool

    def count(self, text: str) -> int: ...


class ApproxCounter:
    """Upper-side estimate for subword tokenizers of English text (T5, umT5, CLIP, Llama).

    1.3 tokens per word (the usual subword rate for English prose, rounded up), one token per
    punctuation mark (these tokenizers split them off), one per CJK character, plus the special
    tokens the encoder adds (EOS for T5; BOS and EOS for CLIP).
    """

    exact = False

    def __init__(self, special_tokens: int = 1):
        self.special_tokens = special_tokens
        self.name = "approximation (1.3 x words + punctuation)"

    def count(self, text: str) -> int:
        cjk = len(_CJK.findall(text))
        words = len(_CJK.sub(" ", text).split())
        return math.ceil(1.3 * words) + len(_PUNCT.findall(text)) + cjk + self.special_tokens


class SentencePieceCounter:
    exact = True

    def __init__(self, model_file: Path, special_tokens: int = 1):
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.special_tokens = special_tokens
        self.name = f"sentencepiece ({Path(model_file).name})"

    def count(self, text: str) -> int:
        return len(self._sp.encode(text)) + self.special_tokens


class TokenizersCounter:
    exact = True

    def __init__(self, tokenizer_file: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self.name = f"tokenizers ({Path(tokenizer_file).name})"

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=True).ids)


def _special_tokens(kind: str) -> int:
    return 2 if kind in ("clip", "llama") else 1


def counter_for(tokenizer_dir: Path | None, kind: str) -> TokenCounter:
    """The exact counter for a tokenizer folder when its files and library are present, else the estimate."""
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        candidates = [
            ("tokenizer.json", lambda p: TokenizersCounter(p)),
            ("spiece.model", lambda p: SentencePieceCounter(p, _special_tokens(kind))),
            ("tokenizer.model", lambda p: SentencePieceCounter(p, _special_tokens(kind))),
        ]
        for filename, make in candidates:
            path = tokenizer_dir / filename
            if path.exists():
                try:
                    return make(path)
                except ImportError:
                    continue  # the optional library is missing: fall through to the estimate
    return ApproxCounter(_special_tokens(kind))


def trim_to_budget(text: str, counter: TokenCounter, max_tokens: int) -> tuple[str, bool]:
    """Drop whole sentences from the end until `text` fits; returns (text, whether it was trimmed).

    If even the first sentence is too long it is cut at a word boundary, the only case that cuts
    inside a sentence.
    """
    if counter.count(text) <= max_tokens:
        return text, False
    sentences = split_sentences(text)
    kept: list[str] = []
    for sentence in sentences:
        candidate = " ".join(kept + [sentence])
        if counter.count(candidate) > max_tokens:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept), True
    words = sentences[0].split() if sentences else []
    while words and counter.count(" ".join(words)) > max_tokens:
        words.pop()
    return " ".join(words), True

"""Reading a booster's raw output: cleaning, sentence splitting and validation.

Small base models fail in recognisable ways (a new example started, the prompt echoed, a loop, a
switch of language, a cut-off sentence). `problem()` names the first such failure, or None.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from paav_cli.text.formats import EXAMPLES, LABELS

_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])[\"'\u201d\u2019)]*\s*")
_TERMINAL = re.compile(r"[.!?\u3002\uff01\uff1f][\"'\u201d\u2019)]*$")
_ECHOES = LABELS + ("<start_of_turn>", "<end_of_turn>", "<PROMPT>", "</PROMPT>", "<|")
_CJK_BLOCKS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPHIC", "BOPOMOFO")


def split_sentences(text: str) -> list[str]:
    parts, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.end()].strip()
        if piece:
            parts.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def clean(prefix: str, continuation: str) -> str:
    """One tidy paragraph: the forced prefix, then the model's text up to its last full sentence."""
    text = " ".join(continuation.split())
    for label in _ECHOES:
        cut = text.find(label)
        if cut != -1:
            text = text[:cut]
    full = (prefix + " " + text).strip() if prefix else text.strip()
    sentences = split_sentences(full)
    # A sentence cut off by max_tokens is dropped rather than shown half-written.
    while len(sentences) > 1 and not _TERMINAL.search(sentences[-1]):
        sentences.pop()
    return " ".join(sentences)


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    block = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
    return "CJK" if block in _CJK_BLOCKS else block


def script_share(reference: str, text: str) -> float:
    """Share of `text`'s letters written in the dominant script of `reference` (1.0 if no letters)."""
    ref = Counter(s for s in map(_script, reference) if s)
    got = Counter(s for s in map(_script, text) if s)
    if not ref or not got:
        return 1.0
    dominant = ref.most_common(1)[0][0]
    return got[dominant] / sum(got.values())


def _norm(sentence: str) -> str:
    return re.sub(r"\W+", " ", sentence.lower()).strip()


def _ngrams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = _norm(text).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


# An example's scene details copied into another prompt's rewrite are wrong by construction; its
# light and camera sentences are the style the examples teach, so copying those is fine. Copies
# are rarely exact ("They are standing in a sunny city park, surrounded by green grass and
# blooming flowers"), so any run of five words from an example's details counts.
_EXAMPLE_NGRAMS = set().union(*(_ngrams(e.detail) for e in EXAMPLES))


def _copied(sentence: str) -> bool:
    return not _ngrams(sentence).isdisjoint(_EXAMPLE_NGRAMS)


def drop_copied_sentences(text: str) -> str:
    """Remove sentences lifted from a few-shot example's scene details (a small base model does this
    for prompts that resemble an example); what remains is then validated as usual."""
    return " ".join(s for s in split_sentences(text) if not _copied(s))


def problem(original: str, enhanced: str, *, min_sentences: int = 2, max_sentences: int = 8) -> str | None:
    """Why `enhanced` is not a usable rewrite of `original`, or None when it is."""
    if not enhanced.strip():
        return "empty output"
    sentences = split_sentences(enhanced)
    if not min_sentences <= len(sentences) <= max_sentences:
        return f"{len(sentences)} sentences (wanted {min_sentences} to {max_sentences})"
    if script_share(original, enhanced) < 0.8:
        return "written mostly in another script than the prompt"
    normed = [_norm(s) for s in sentences]
    if len(set(normed)) < len(normed):
        return "repeats a sentence"
    if any(_copied(s) for s in sentences):
        return "copies a sentence of a few-shot example"
    if any(label.lower() in enhanced.lower() for label in _ECHOES):
        return "echoes a prompt label"
    return None

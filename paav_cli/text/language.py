"""Which language a prompt is written in, when it plainly is not English.

Boosters trained on English (the default) rewrite other languages badly: measured on 10 everyday
prompts each, the default kept the meaning of 2 French, 8 Spanish and 0 German ones (it answered
most German ones in broken German) and left all 10 Chinese ones as written. So paav says so, in
one line, before it rewrites one. A language-identification library (langdetect, lingua) would
cost hundreds of milliseconds of loading on every `paav enhance`; prompts are short and the
question is only "plainly not English?", which the script and a few hundred function words answer
in microseconds.
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)

def _vocab(words: str) -> set[str]:
    return set(words.split())


# Short, frequent words that each language has and English lacks (or the reverse).
FUNCTION_WORDS = {
    "English": _vocab("the a an of in on at with and is are to from by his her their its while under over into"),
    "French": _vocab("le la les un une des du de et est sont dans sur avec qui que pour au aux sous son sa ses"),
    "Spanish": _vocab("el la los las un una unos unas del de y es son en con que por para al su sus junto"),
    "German": _vocab("der die das ein eine einem einen einer und ist sind im in auf mit dem den des zum zur"),
    "Italian": _vocab("il lo la gli le un una uno del della di e è sono nel nella con che per sul sulla"),
    "Portuguese": _vocab("o a os as um uma do da dos das e é são no na em com que por para ao"),
    "Dutch": _vocab("de het een en is zijn in op met van die dat voor aan bij"),
}
_SCRIPTS = {"CJK": "Chinese or Japanese", "HIRAGANA": "Japanese", "KATAKANA": "Japanese", "HANGUL": "Korean",
            "CYRILLIC": "a Cyrillic language", "ARABIC": "Arabic", "HEBREW": "Hebrew", "GREEK": "Greek",
            "DEVANAGARI": "Hindi", "THAI": "Thai"}


def _script(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    return next((label for key, label in _SCRIPTS.items() if name.startswith(key)), None)


def guess_language(prompt: str) -> str | None:
    """The language `prompt` is plainly written in when that is not English ("French", "Chinese or
    Japanese", ...), else None (English, or too short or mixed to tell)."""
    letters = [ch for ch in prompt if ch.isalpha()]
    if not letters:
        return None
    scripts = [_script(ch) for ch in letters]
    foreign = [s for s in scripts if s]
    if len(foreign) > len(letters) / 2:
        return max(set(foreign), key=foreign.count)
    words = [w.lower() for w in _WORD.findall(prompt)]
    hits = {lang: sum(w in vocab for w in words) for lang, vocab in FUNCTION_WORDS.items()}
    english = hits.pop("English")
    best = max(hits, key=hits.get)
    # two function words of another language and more of them than of English's: a sentence of it
    accented = any(unicodedata.combining(c) for c in unicodedata.normalize("NFD", prompt))
    if hits[best] >= 2 and hits[best] > english and (hits[best] >= english + 2 or accented):
        return best
    return None

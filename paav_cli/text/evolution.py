"""The mutator's side of reward-guided evolution: its instruction, the scored prompts it reads, and
a tolerant parser for what it answers.

The instruction follows the paper's Table 6 / the released `gpt4o_pipe.py` (same rules, same
<PROMPT> tags). The released code shows long Open-Sora captions as style references; those are not
redistributable here, so paav shows long GPT-4o rewrites from VBench (Apache-2.0) instead.
"""

from __future__ import annotations

import re

STYLE_EXAMPLES = (
    ("In the dim light of dawn, a delicate spider, its body glistening with dew, meticulously weaves an "
    "intricate web between two slender branches. The camera captures the spider's nimble legs as they expertly "
    "maneuver silk threads, creating a mesmerizing pattern that glistens in the soft morning light. Each strand "
    "is placed with precision, forming a symmetrical masterpiece that sways gently in the breeze."),
    ("A close-up view reveals a snail with a glistening, spiraled shell, slowly traversing a lush, dew-kissed "
    "leaf. The camera captures the intricate patterns on its shell, reflecting the soft morning light. Its "
    "delicate antennae extend and retract, sensing the environment with gentle curiosity. The background is a "
    "blur of vibrant greens, enhancing the serene and tranquil atmosphere of this miniature world."),
    ("From a bird's-eye perspective, a small hermit crab with a beautifully spiraled shell, adorned in shades of "
    "cream and brown, scuttles across a weathered wooden deck. As it moves, its delicate legs and antennae "
    "navigate the grooves and knots in the wood, casting tiny shadows in the warm sunlight."),
)

INSTRUCTION = """You need to refine user's input prompt. The user's input prompt is used for video generation task. \
You need to refine the user's prompt to make it more suitable for the task. Here are some examples of refined prompts:
{examples}

The refined prompt should pay attention to all objects in the video. The description should be useful for AI to \
re-generate the video. The description should be no more than six sentences. The refined prompt should be in English.
User will provide an original prompt and your revised prompts, with their generated videos' scores ({dim_names}, \
{n_dims} dimensions termed as {dims}), and you need to give an improved prompt according to previous prompts and \
their scores on different dimensions.
Each prompt is tagged with an index, and the sentence labeled as 0 is the initial prompt. Each prompt is followed by \
({dims}) scores. You need build upon the most successful prompts and learn from the high-scoring prompts. You need \
to observe the scores of each prompt in different aspects, learn from the experiences of previous prompts, and \
combine their strengths to generate better prompts.
The new prompts should keep the same semantic meaning with original prompt, should not add extra scene changing or \
too many actions, which is hard for video generation.
Generate {n} paraphrases of the initial prompt which keep the semantic meaning and that have higher scores than all \
the prompts above. Respond with each new prompt in between <PROMPT> and </PROMPT>, e.g., <PROMPT>paraphrase 1</PROMPT>."""

DIM_NAMES = {
    "VQ": "Visual Quality", "TC": "Temporal Consistency", "DD": "Dynamic Degree", "TVA": "Text Video Alignment",
    "FC": "Factual Consistency", "AES": "Aesthetic score", "MPS": "Image quality", "CLIP": "CLIP score",
}


def instruction(dims: list[str], n: int, examples: int = 3) -> str:
    return INSTRUCTION.format(
        examples="\n".join(STYLE_EXAMPLES[:examples]),
        dim_names=", ".join(DIM_NAMES.get(d, d) for d in dims), n_dims=len(dims), dims=", ".join(dims), n=n,
    )


def scored_listing(entries: list[tuple[str, dict[str, float]]], dims: list[str]) -> str:
    """The user turn: `0. original (score, VQ:2.81, ...)` then the top candidates, as the released code wrote it."""
    lines = []
    for index, (prompt, scores) in enumerate(entries):
        shown = ", ".join(f"{d}:{scores[d]:.2f}" for d in dims if d in scores)
        lines.append(f"{index}. {prompt} (score, {shown})")
    return "\n".join(lines)


def mutation_messages(entries, dims: list[str], n: int, examples: int = 3) -> list[dict]:
    return [
        {"role": "system", "content": instruction(dims, n, examples)},
        {"role": "user", "content": scored_listing(entries, dims)},
    ]


# ---------------------------------------------------------------------------------------------
# Parsing

_TAGGED = re.compile(r"<\s*PROMPT\s*>(.*?)(?:<\s*/\s*PROMPT\s*>|(?=<\s*PROMPT\s*>)|\Z)", re.IGNORECASE | re.DOTALL)
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+(.*\S)", re.MULTILINE)
# An echoed score list "(score, VQ:..." to the end, closed or cut off.
_SCORE_TAIL = re.compile(r"\s*\(\s*score\b.*$", re.IGNORECASE | re.DOTALL)
# Text a model echoes or is talked into: not a video description.
_NOT_A_PROMPT = re.compile(
    r"(ignore (all |the )?(previous|above)|as an ai|i cannot|i can't|here are|paraphrase \d|<\s*/?\s*prompt|"
    r"system prompt|instructions?:)",
    re.IGNORECASE,
)
MIN_WORDS, MAX_WORDS = 3, 250


def normalise(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def _clean(candidate: str) -> str:
    text = " ".join(candidate.split())
    text = _SCORE_TAIL.sub("", text).strip().strip('"\\').strip()
    return text


def unusable(text: str, seen: set[str] = frozenset()) -> str | None:
    """Why `text` cannot be a candidate (None when it can): too short or long, not a video
    description, or the same after `normalise` as a key in `seen` (a prompt tried or proposed before).
    Both kinds of mutator go through it: parsed answers and sampled rewrites."""
    words = len(text.split())
    if words < MIN_WORDS:
        return "empty" if not words else f"too short ({words} words)"
    if words > MAX_WORDS:
        return f"too long ({words} words)"
    if _NOT_A_PROMPT.search(text):
        return "not a video description"
    if normalise(text) in seen:
        return "the same as an earlier candidate"
    return None


def _valid(text: str) -> bool:
    return unusable(text) is None


def parse_prompts(answer: str, *, limit: int, seen: set[str] = frozenset()) -> list[str]:
    """Prompts in an answer: <PROMPT> tags (also across lines, unclosed, any case), else list items, else
    the whole answer as one. Invalid, duplicate and already-seen prompts are dropped; at most `limit` kept."""
    found = [m.group(1) for m in _TAGGED.finditer(answer)]
    if not found:
        found = _LIST_ITEM.findall(answer) or [answer]
    kept, keys = [], set(seen)
    for raw in found:
        text = _clean(raw)
        key = normalise(text)
        if not _valid(text) or key in keys:
            continue
        keys.add(key)
        kept.append(text)
        if len(kept) == limit:
            break
    return kept

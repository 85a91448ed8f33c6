"""How a booster is prompted: the one place that turns a user prompt into model input.

Three formats:
- `completion`: the few-shot header and one "Prompt:/Description:" pair, no examples; for base models
  fine-tuned on that layout (the default booster's adapter). The output is forced to begin with the
  user's prompt, as in `fewshot`, and the prompt is ~40 tokens instead of ~450.
- `fewshot`: completion style for small base models without a chat template (`default-fewshot`).
  The output is forced to start with the user's own prompt as its first sentence, which keeps what
  the user asked for (intent similarity 0.66 -> 0.78 at the same speed) and the model only adds
  setting, light and camera detail after it.
- `chat`: the model's own chat template, with the instruction of the released Prompt-A-Video
  boosters (paper Table 7) in one user turn. Boosters trained on chat models use this.

Training (`train/chat.py`) builds the same text with `completion_parts` and `prompt_messages`, so the
two cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from paav_cli.text.templates import RELEASED_INSTRUCTION, RELEASED_SUFFIX


@dataclass(frozen=True)
class Example:
    prompt: str
    detail: str  # what the scene looks like: must never reappear in an output for another prompt
    style: str  # light and camera: fine to reuse, it is the style the model should learn

    @property
    def target(self) -> str:
        return f"{self.prompt} {self.detail} {self.style}"


# Three fixed, varied examples (a landscape with a camera move, a person, an animal), trimmed from
# public VBench rewrites (Wan2.1 prompt extender, Apache-2.0; data/ in ../shared). Each keeps the
# prompt as its first sentence and adds only setting, light, camera and motion, never new subjects:
# a base model this small copies whatever its examples do, so the examples must be faithful.
# Order matters: greedy decoding leans on the last example, and with the landscape last it ended
# 23 of 60 test rewrites with that example's one-line style sentence and nothing else.
EXAMPLES: tuple[Example, ...] = (
    Example(
        "Mount Fuji, tilt down.",
        "The shot opens on a clear evening sky and slowly tilts down to reveal the snow-capped peak "
        "glowing gold in the setting sun. Green forests and a calm lake below reflect the mountain's silhouette.",
        "Smooth camera movement, soft natural light, documentary style.",
    ),
    Example(
        "A person is eating ice cream.",
        "They stand in a sunny city park, surrounded by green grass and blooming flowers, taking small "
        "slow licks from a melting cone and smiling between bites. They wear a light jacket and jeans, "
        "with sunglasses perched on their nose.",
        "Soft midday light falls across the scene. Medium close-up, the camera pans slightly to follow the cone.",
    ),
    Example(
        "A white sheep is walking.",
        "It crosses a lush green field under a clear blue sky, taking slow, deliberate steps, its head "
        "swaying gently. Its fluffy white fur catches the warm afternoon sun. Rolling hills and scattered "
        "wildflowers fill the background.",
        "Medium shot, the camera tracks alongside the sheep as it walks.",
    ),
)
FEWSHOT_EXAMPLES: tuple[tuple[str, str], ...] = tuple((e.prompt, e.target) for e in EXAMPLES)

FEWSHOT_HEADER = (
    "Short video prompts, each rewritten as one detailed paragraph for a text-to-video model. "
    "The paragraph keeps the same subject and action and adds setting, lighting and camera work.\n\n"
)

# Labels that must never appear in an output: seeing one means the model started a new example.
LABELS = ("Prompt:", "Description:", "Original prompt:", "New prompt:")


@dataclass
class BoosterRequest:
    """Model input for one user prompt, and how to read the output back."""

    prompt_format: str
    text: str | None = None  # completion input (fewshot)
    messages: list[dict] | None = None  # chat input
    prefix: str = ""  # the output starts with this; the model writes what follows
    stop: list[str] = field(default_factory=list)


def as_sentence(prompt: str) -> str:
    """The user's prompt as an opening sentence: one line, capitalised, ending in punctuation."""
    text = " ".join(prompt.split())
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    if text and not re.search(r"[.!?\u3002\uff01\uff1f]$", text):
        text += "."
    return text


def fewshot_request(prompt: str) -> BoosterRequest:
    shots = "".join(f"Prompt: {src}\nDescription: {tgt}\n\n" for src, tgt in FEWSHOT_EXAMPLES)
    opening = as_sentence(prompt)
    text = f"{FEWSHOT_HEADER}{shots}Prompt: {' '.join(prompt.split())}\nDescription: {opening}"
    # One paragraph per description: a newline means the model is done (or starting a new example).
    return BoosterRequest("fewshot", text=text, prefix=opening, stop=["\n", "Prompt:"])


def completion_parts(prompt: str) -> tuple[str, str]:
    """(model input up to the answer, the forced opening of the answer) for the completion format."""
    return f"{FEWSHOT_HEADER}Prompt: {' '.join(prompt.split())}\nDescription:", as_sentence(prompt)


def completion_request(prompt: str) -> BoosterRequest:
    head, opening = completion_parts(prompt)
    return BoosterRequest("completion", text=f"{head} {opening}", prefix=opening, stop=["\n", "Prompt:"])


def user_turn(prompt: str) -> str:
    """The released boosters' user turn: instruction, the original prompt, then "New prompt:".

    The prompt is stripped: a pasted prompt's stray newline would otherwise sit before "New prompt:"
    at inference and not in training (or the other way round)."""
    return f"{RELEASED_INSTRUCTION}{prompt.strip()}{RELEASED_SUFFIX}"


def prompt_messages(prompt: str) -> list[dict]:
    """The chat format's input: one user turn. Training, ranking and enhance all build it here."""
    return [{"role": "user", "content": user_turn(prompt)}]


def chat_request(prompt: str) -> BoosterRequest:
    return BoosterRequest("chat", messages=prompt_messages(prompt))


def build_request(prompt_format: str, prompt: str) -> BoosterRequest:
    if prompt_format == "fewshot":
        return fewshot_request(prompt)
    if prompt_format == "completion":
        return completion_request(prompt)
    return chat_request(prompt)

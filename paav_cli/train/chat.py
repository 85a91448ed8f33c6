"""The booster's chat format (paper Table 7) and the completion mask, built by paav for every template.

trl's `assistant_only_loss` relies on `{% generation %}` markers that only some chat templates
carry (Llama-3.0 yes, 3.1/3.2, Qwen2.5 and Gemma 3 no), so paav finds the assistant tokens
itself: the prompt rendered with `add_generation_prompt=True` must be a token prefix of the whole
conversation, and everything after it (the answer and its end-of-turn tokens) is trained on.
"""

from __future__ import annotations

from paav_cli.errors import UserError
from paav_cli.text.templates import RELEASED_INSTRUCTION, RELEASED_SUFFIX


def user_turn(source: str) -> str:
    """The released boosters' user turn: instruction, the original prompt, then "New prompt:"."""
    return f"{RELEASED_INSTRUCTION}{source}{RELEASED_SUFFIX}"


def prompt_messages(source: str) -> list[dict]:
    return [{"role": "user", "content": user_turn(source)}]


def conversation(source: str, target: str) -> list[dict]:
    return [*prompt_messages(source), {"role": "assistant", "content": target}]


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def tokenize_with_mask(tokenizer, source: str, target: str, max_length: int) -> dict:
    """input_ids and completion_mask (1 on the assistant's tokens) for one pair, truncated to max_length."""
    prompt = _ids(tokenizer, prompt_messages(source), add_generation_prompt=True)
    full = _ids(tokenizer, conversation(source, target), add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise UserError(
            "this model's chat template renders the prompt differently inside a conversation, so paav cannot "
            "find the answer's tokens; use a base model whose template keeps earlier turns unchanged."
        )
    if len(prompt) >= max_length:
        raise UserError(
            f"a prompt is {len(prompt)} tokens, over max_length {max_length}; raise [sft] max_length in the recipe."
        )
    full = full[:max_length]
    mask = [0] * len(prompt) + [1] * (len(full) - len(prompt))
    return {"input_ids": full, "completion_mask": mask}

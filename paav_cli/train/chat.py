"""The booster's training text and its completion mask, built by paav for every template.

Two layouts, matching the booster's prompt formats (`text/formats.py`): `chat`, the released
instruction (paper Table 7) in the model's chat template; `completion`, plain text for base models
without a template (the default booster), ending in the tokenizer's end-of-sequence token.

trl's `assistant_only_loss` relies on `{% generation %}` markers that only some chat templates
carry (Llama-3.0 yes, 3.1/3.2, Qwen2.5 and Gemma 3 no), so paav finds the assistant tokens
itself: the prompt rendered with `add_generation_prompt=True` must be a token prefix of the whole
conversation, and everything after it (the answer and its end-of-turn tokens) is trained on.
"""

from __future__ import annotations

from paav_cli.errors import UserError
from paav_cli.text.formats import prompt_messages  # the inference turn: training sees the same input


def conversation(source: str, target: str) -> list[dict]:
    return [*prompt_messages(source), {"role": "assistant", "content": target}]


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    from paav_cli.text.chat_template import check_hf_chat_template

    check_hf_chat_template(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def _completion_ids(tokenizer, source: str, target: str) -> tuple[list[int], list[int]]:
    """The prompt's tokens and the whole text's. The answer joins the prompt with a space, so the
    tokenizer splits "Description:" the same way in both (a trailing space would be its own token)."""
    from paav_cli.text.formats import completion_parts

    head, _ = completion_parts(source)
    prompt = list(tokenizer(head)["input_ids"])
    full = list(tokenizer(f"{head} {' '.join(target.split())}")["input_ids"]) + [tokenizer.eos_token_id]
    return prompt, full


def tokenize_with_mask(tokenizer, source: str, target: str, max_length: int, prompt_format: str = "chat") -> dict:
    """input_ids and completion_mask (1 on the answer's tokens) for one pair, truncated to max_length."""
    if prompt_format == "completion":
        prompt, full = _completion_ids(tokenizer, source, target)
    else:
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

"""A transformers causal LM (optionally with a PEFT LoRA adapter) as a TextGenerator, for GPUs."""

from __future__ import annotations

from pathlib import Path

from paav_cli.errors import UserError


class HFChat:
    parallel_safe = False  # one model in this process: requests run one after another

    def __init__(self, folder: Path, *, adapter: Path | None = None, top_p: float = 1.0, top_k: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from paav_cli.libs import quiet
        from paav_cli.rewards.base import device_and_dtype

        quiet()
        self.device, dtype = device_and_dtype()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if not self.tokenizer.chat_template:
            raise UserError(f"{folder} has no chat template; a mutator needs an instruct (chat) model.")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        self.model = model.to(self.device).eval()
        self.top_p, self.top_k = top_p, top_k  # sampling filters (the released booster used top_k 50)
        self._torch = torch

    def generate(
        self, messages: list[dict], *, n: int = 1, temperature: float = 1.0, max_tokens: int = 1024,
        seed: int | None = None,
    ) -> list[str]:
        from paav_cli.text.chat_template import check_hf_chat_template

        torch = self._torch
        check_hf_chat_template(self.tokenizer, messages, add_generation_prompt=True)  # transformers' is unbounded
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        if seed is not None:
            torch.manual_seed(seed)
        sample = temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **ids, do_sample=sample, temperature=temperature if sample else None,
                top_p=self.top_p if sample and self.top_p < 1 else None,
                top_k=self.top_k if sample and self.top_k else None,
                max_new_tokens=max_tokens, num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        start = ids["input_ids"].shape[1]
        return [self.tokenizer.decode(row[start:], skip_special_tokens=True).strip() for row in out]

    def close(self) -> None:
        from paav_cli.libs import free_memory

        self.model = None
        free_memory()

"""A tiny random MPS model folder, laid out exactly as `paav models convert mps` writes a real one."""

from __future__ import annotations

import json
from pathlib import Path

TINY_IMAGE_SIZE = 32
TINY_CROSS = {"dim": 32, "layer_num": 2, "heads": 2, "dim_head": 16, "ff_mult": 2}


def tiny_clip_config():
    from transformers import CLIPConfig

    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "hidden_act": "gelu"}
    text = {**common, "vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {**common, "image_size": TINY_IMAGE_SIZE, "patch_size": 8}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def save_processor(folder: Path, size: int) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)


def build_tiny_clip_folder(folder: Path) -> Path:
    """A stand-in for the CLIP backbone snapshot the converter copies config, tokenizer and processor from."""
    from paav_cli.testing.tiny_text import build_clip_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_clip_config().save_pretrained(folder)
    build_clip_tokenizer(folder)
    save_processor(folder, TINY_IMAGE_SIZE)
    return folder


def build_tiny_mps(folder: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    from paav_cli.rewards.mps import CROSS_CONFIG_FILE, WEIGHTS_FILE, MPSModel
    from paav_cli.testing.tiny_text import build_clip_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = tiny_clip_config()
    model = MPSModel(config, TINY_CROSS).eval()
    with torch.no_grad():  # a trained-looking temperature: exp(4.6) ~ 100, as CLIP ends up
        model.model.logit_scale.fill_(4.6052)
    config.save_pretrained(folder)
    (folder / CROSS_CONFIG_FILE).write_text(json.dumps(TINY_CROSS, indent=2) + "\n")
    build_clip_tokenizer(folder)
    save_processor(folder, TINY_IMAGE_SIZE)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder


def torchscript_that_writes(path: Path, marker: Path) -> Path:
    """A hostile checkpoint for the converter's tests: a TorchScript archive whose __setstate__ runs
    aten::save on `marker` when torch.jit.load (which torch.load hands such archives to) reads it."""
    import warnings

    import torch

    class Writer(torch.nn.Module):
        def __init__(self, target: str):
            super().__init__()
            self.target = target
            self.w = torch.zeros(2)

        @torch.jit.export
        def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
            return (self.target, self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
            self.target, self.w, self.training = state[0], state[1], state[2]
            torch.save(self.w, self.target)

        def forward(self, x):
            return x + self.w

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, and still what an attacker can use
        torch.jit.save(torch.jit.script(Writer(str(marker))), str(path))
    marker.unlink(missing_ok=True)  # scripting runs __setstate__ once itself
    return path

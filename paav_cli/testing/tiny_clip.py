"""A tiny random open_clip model (folder loaded with `local-dir:`) and a LAION-style linear head."""

from __future__ import annotations

import json
from pathlib import Path

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
TINY_EMBED_DIM = 16


def build_tiny_open_clip(folder: Path, mlp_ratio: float = 4.0) -> Path:
    """The layout of the hub's open_clip repos: open_clip_config.json + open_clip_model.safetensors.

    `mlp_ratio` widens the vision tower's MLPs (bench/score_memory.py scales models up with it)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": TINY_EMBED_DIM,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16,
                       "mlp_ratio": mlp_ratio},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def build_tiny_aesthetic_head(path: Path) -> Path:
    """A Linear(embed_dim, 1) state dict saved like LAION's sa_0_4_vit_l_14_linear.pth."""
    import torch

    torch.manual_seed(1)
    head = torch.nn.Linear(TINY_EMBED_DIM, 1)
    with torch.no_grad():
        head.weight.normal_(0, 3.0)
        head.bias.fill_(5.0)  # centred on the middle of the 1-10 aesthetic scale
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(head.state_dict(), tmp)
    tmp.replace(path)
    return path


def build_tiny_aesthetic_mlp(path: Path) -> Path:
    """A LAION v2 ("improved") MLP head for the tiny embedding, saved as LAION's .pth is (keys under
    `layers.`), with its last bias at the middle of the 1-10 scale and spread enough to tell outputs apart."""
    import torch

    from paav_cli.rewards.clip import laion_mlp

    torch.manual_seed(2)
    head = laion_mlp(TINY_EMBED_DIM)
    with torch.no_grad():
        for layer in head:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 1.0 / layer.in_features ** 0.5 * 3)
        head[-1].bias.fill_(5.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, tmp)
    tmp.replace(path)
    return path

"""Peak host memory of a scoring run: one reward model at a time against all of them at once.

    python bench/score_memory.py [--videos 6]

Builds the tiny reward models (VideoScore on Idefics2, LAION aesthetic on open_clip, MPS), each
widened to about 100 MB of weights (same classes, same loading code), and scores the same videos
three ways, each in a fresh process: with paav's engine (`score_videos`: load one model, score
every video, free it, load the next), each model alone, and a reference that keeps all three
loaded at once. Prints the peak RSS growth of each and the ratios peak / sum-of-models and
peak / largest model. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REWARDS = {"bench-videoscore": "videoscore", "bench-aesthetic": "aesthetic-linear", "bench-mps": "mps"}


def build_models(root: Path) -> dict[str, int]:
    """Build the widened models under root and return each one's weight bytes."""
    from paav_cli.testing import tiny_clip, tiny_mps, tiny_videoscore

    base_config = tiny_videoscore.tiny_config

    def wide_videoscore_config(tokenizer, **kw):
        config = base_config(tokenizer, **kw)
        # A wider vocabulary: ~25M parameters (~100 MB in fp32) that cost no activation memory, like
        # real models whose weights dwarf their activations; wide MLPs would measure activations instead.
        config.text_config.vocab_size = 800_000
        return config

    tiny_videoscore.tiny_config = wide_videoscore_config
    tiny_videoscore.build_tiny_videoscore(root / "videoscore")
    tiny_clip.build_tiny_open_clip(root / "clip", mlp_ratio=6144)
    tiny_clip.build_tiny_aesthetic_head(root / "aesthetic.pth")

    base_clip = tiny_mps.tiny_clip_config

    def wide_clip_config():
        config = base_clip()
        config.text_config.intermediate_size = config.vision_config.intermediate_size = 98304
        return config

    tiny_mps.tiny_clip_config = wide_clip_config
    tiny_mps.build_tiny_mps(root / "mps")
    weights = lambda folder: sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    return {
        "bench-videoscore": weights(root / "videoscore"),
        "bench-aesthetic": weights(root / "clip") + (root / "aesthetic.pth").stat().st_size,
        "bench-mps": weights(root / "mps"),
    }


def registry_file(root: Path) -> Path:
    text = f"""
[rewards.bench-clip]
path = "{root / 'clip'}"
kind = "clip-backbone"
dims = []

[rewards.bench-videoscore]
path = "{root / 'videoscore'}"
kind = "videoscore"
dims = ["VQ", "TC", "DD", "TVA", "FC"]

[rewards.bench-aesthetic]
path = "{root / 'aesthetic.pth'}"
backbone = "bench-clip"
kind = "aesthetic-linear"
dims = ["AES"]

[rewards.bench-mps]
path = "{root / 'mps'}"
kind = "mps"
dims = ["MPS"]
"""
    path = root / "models.toml"
    path.write_text(text)
    return path


# The child measures itself: RSS before, then the peak (VmHWM, reset through clear_refs) after.
CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
mode, videos, names = sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import torch, transformers, open_clip  # imported before the baseline: not part of any model
from paav_cli.libs import quiet
quiet()
from paav_cli.registry import Registry
from paav_cli.rewards import load_reward
from paav_cli.rewards.scoring import ScoreCache, score_videos
from paav_cli.video.files import read_frames
for v in videos:
    read_frames(v)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS:")
prompts = ["a cat playing piano"] * len(videos)
if mode == "engine":
    score_videos(videos, prompts, names, cache=ScoreCache(Path(sys.argv[5])))
else:  # all loaded at once: the reference
    reg = Registry.load()
    models = [load_reward(reg.get(n)) for n in names]
    for m in models:
        m.score([Path(v) for v in videos], prompts)
print(json.dumps({"peak": status("VmHWM:") - base}))
"""


def measure(mode: str, videos: list[str], names: list[str], env: dict) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), mode, json.dumps(videos), json.dumps(names),
         tempfile.mkdtemp()],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    args = parser.parse_args()

    import numpy as np

    from paav_cli.libs import quiet
    from paav_cli.video.files import write_frames

    quiet()
    root = Path(tempfile.mkdtemp(prefix="paav-score-memory-"))
    sizes = build_models(root)
    env = {**os.environ, "PAAV_MODELS": str(registry_file(root)), "PAAV_CACHE": str(root / "cache")}
    rng = np.random.default_rng(0)
    videos = []
    for i in range(args.videos):
        path = root / f"video{i}.mp4"
        write_frames((rng.random((16, 64, 64, 3)) * 255).astype(np.uint8), path, fps=8)
        videos.append(str(path))

    names = list(REWARDS)
    alone = {n: measure("engine", videos, [n], env) for n in names}
    engine = measure("engine", videos, names, env)
    together = measure("together", videos, names, env)
    mb = 2**20
    total, largest = sum(sizes.values()), max(alone.values())
    print(f"{args.videos} videos; weights: " + ", ".join(f"{n.split('-')[1]} {sizes[n] / mb:.0f} MB" for n in names))
    for n in names:
        print(f"  {n:<18} alone: peak +{alone[n] / mb:.0f} MB")
    print(f"engine (one at a time): peak +{engine / mb:.0f} MB")
    print(f"all three loaded:       peak +{together / mb:.0f} MB")
    print(f"engine peak / sum of weights     {engine / total:.2f}")
    print(f"engine peak / largest model alone {engine / largest:.2f}")
    print(f"all-at-once peak / engine peak    {together / engine:.2f}")


if __name__ == "__main__":
    main()

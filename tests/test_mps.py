"""MPS: the tiny model scores videos, the per-sample mask, the safe converter and its refusals."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import einsum, nn
from transformers import CLIPModel as HFCLIPModel

from paav_cli import registry
from paav_cli.errors import UserError
from paav_cli.rewards.base import sampled_frames
from paav_cli.rewards.convert_mps import convert_mps
from paav_cli.rewards.mps import DEFAULT_CONDITION, WEIGHTS_FILE, MPSReward
from paav_cli.testing.tiny_mps import build_tiny_clip_folder, tiny_clip_config, torchscript_that_writes
from paav_cli.video.files import write_frames


def _video(path: Path, seed: int, frames: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 48, 64, 3))
    drift = np.arange(frames)[:, None, None, None] * 9
    write_frames(((base + drift) % 256).astype(np.uint8), path, fps=8)
    return path


@pytest.fixture(scope="module")
def tiny_reward(shared_cache):
    # Module-scoped: load once (the autouse fixture sets PAAV_CACHE per test, so pin it here), from the
    # session's cache, where the tiny models are built.
    mp = pytest.MonkeyPatch()
    mp.setenv("PAAV_CACHE", str(shared_cache))
    try:
        reward = MPSReward(registry.Registry.load().get("tiny-mps"))
    finally:
        mp.undo()
    yield reward
    reward.close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mps-videos")
    return [_video(folder / "a.mp4", 1), _video(folder / "b.mp4", 2)]


def test_tiny_mps_scores_videos(tiny_reward, videos):
    prompts = ["a red fox running in the snow", "a blue boat on the lake at night"]
    scores = tiny_reward.score(videos, prompts)
    assert len(scores) == 2 and all(set(s) == {"MPS"} for s in scores)
    assert all(isinstance(s["MPS"], float) and np.isfinite(s["MPS"]) for s in scores)
    assert tiny_reward.score(videos, prompts) == scores  # deterministic
    swapped = tiny_reward.score(videos, prompts[::-1])
    assert swapped != scores  # the prompt matters


def test_mask_is_per_sample(tiny_reward):
    model, tok = tiny_reward.model, tiny_reward._tokenize
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    ids = tok(["a cat sitting on the piano", "golden light over the mountain sea"])
    cond = tok([DEFAULT_CONDITION])
    with torch.inference_mode():
        together = model.score(pixels, ids, cond.expand(2, -1))
        alone = torch.cat([model.score(pixels[i : i + 1], ids[i : i + 1], cond) for i in range(2)])
        # A batch-1 prompt is shared by every image, as with the 4 frames of one video.
        shared = model.score(pixels, ids[:1], cond)
        first_twice = model.score(pixels, ids[:1].expand(2, -1), cond.expand(2, -1))
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared, first_twice, rtol=1e-5, atol=1e-5)


def test_condition_mask_normalises_per_sample(tiny_reward):
    # Sample 1's similarities are all below 0.3 x sample 0's best: the published batch-wide max would drop
    # every token of sample 1 (softmax over nothing: NaN); per sample it keeps its best tokens.
    text = torch.tensor([[[10.0, 0], [1, 0], [5, 0]], [[1.0, 0], [0.2, 0], [0.5, 0]]])
    condition = torch.tensor([[[1.0, 0]], [[1.0, 0]]])
    mask = tiny_reward.model.condition_mask(text, condition)
    inf = float("-inf")
    assert mask.shape == (2, 1, 3)
    assert mask[:, 0].tolist() == [[0.0, inf, 0.0], [0.0, inf, 0.0]]


# ---------------------------------------------------------------------------------------------------
# A fake published checkpoint: the module structure of Kwai-Kolors' trainer.models (clip_model.py and
# cross_modeling.py, translated without einops), pickled whole with torch.save as the authors did.


class LayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args, **kwargs):
        return self.fn(x, *args, **kwargs) + x


class RotaryEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, max_seq_len, *, device):
        seq = torch.arange(max_seq_len, device=device, dtype=self.inv_freq.dtype)
        freqs = einsum("i , j -> i j", seq, self.inv_freq)
        return torch.cat((freqs, freqs), dim=-1)


def rotate_half(x):
    x1, x2 = x.reshape(*x.shape[:-1], 2, -1).unbind(dim=-2)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(pos, t):
    return (t * pos.cos()) + (rotate_half(t) * pos.sin())


class SwiGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


class ParallelTransformerBlock(nn.Module):
    def __init__(self, dim, dim_head=64, heads=8, ff_mult=4):
        super().__init__()
        self.norm = LayerNorm(dim)
        attn_inner_dim = dim_head * heads
        ff_inner_dim = dim * ff_mult
        self.fused_dims = (attn_inner_dim, dim_head, dim_head, (ff_inner_dim * 2))
        self.heads = heads
        self.scale = dim_head**-0.5
        self.rotary_emb = RotaryEmbedding(dim_head)
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.fused_dims), bias=False)
        self.attn_out = nn.Linear(attn_inner_dim, dim, bias=False)
        self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(ff_inner_dim, dim, bias=False))
        self.register_buffer("pos_emb", None, persistent=False)

    def get_rotary_embedding(self, n, device):
        if self.pos_emb is not None and self.pos_emb.shape[-2] >= n:
            return self.pos_emb[:n]
        pos_emb = self.rotary_emb(n, device=device)
        self.register_buffer("pos_emb", pos_emb, persistent=False)
        return pos_emb

    def forward(self, x, attn_mask=None):
        n, device, h = x.shape[1], x.device, self.heads
        x = self.norm(x)
        q, k, v, ff = self.fused_attn_ff_proj(x).split(self.fused_dims, dim=-1)
        b = q.shape[0]
        q = q.reshape(b, n, h, -1).transpose(1, 2)
        positions = self.get_rotary_embedding(n, device)
        q, k = (apply_rotary_pos_emb(positions, t) for t in (q, k))
        q = q * self.scale
        sim = einsum("b h i d, b j d -> b h i j", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = einsum("b h i j, b j d -> b h i d", sim.softmax(dim=-1), v)
        return self.attn_out(out.transpose(1, 2).reshape(b, n, -1)) + self.ff_out(ff)


class CrossAttention(nn.Module):
    def __init__(self, dim, *, dim_head=64, heads=12, parallel_ff=False, ff_mult=4):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner_dim = heads * dim_head
        self.norm = LayerNorm(dim)
        self.context_norm = nn.Identity()
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)
        ff_inner_dim = ff_mult * dim
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_inner_dim * 2, bias=False), SwiGLU(), nn.Linear(ff_inner_dim, dim, bias=False)
        ) if parallel_ff else None

    def forward(self, x, context, mask):
        x = self.norm(x)
        context = self.context_norm(context)
        b, n, _ = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2) * self.scale
        k, v = self.to_kv(context).chunk(2, dim=-1)
        sim = einsum("b h i d, b j d -> b h i j", q, k)
        sim = sim + mask.unsqueeze(1).repeat(1, self.heads, 1, 1)
        sim = sim - sim.amax(dim=-1, keepdim=True)
        out = einsum("b h i j, b j d -> b h i d", sim.softmax(dim=-1), v)
        out = self.to_out(out.transpose(1, 2).reshape(b, n, -1))
        return out + self.ff(x) if self.ff is not None else out


class Cross_model(nn.Module):  # the published name
    def __init__(self, dim=512, layer_num=4, dim_head=64, heads=8, ff_mult=4):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(layer_num):
            self.layers.append(nn.ModuleList([
                Residual(CrossAttention(dim=dim, dim_head=dim_head, heads=heads, parallel_ff=True, ff_mult=ff_mult)),
                Residual(ParallelTransformerBlock(dim=dim, dim_head=dim_head, heads=heads, ff_mult=ff_mult)),
            ]))

    def forward(self, query_tokens, context_tokens, mask):
        for cross_attn, self_attn_ff in self.layers:
            query_tokens = cross_attn(query_tokens, context_tokens, mask)
            query_tokens = self_attn_ff(query_tokens)
        return query_tokens


class XCLIPModel(HFCLIPModel):
    def get_text_features(self, input_ids=None):
        out = self.text_model(input_ids=input_ids)
        return self.text_projection(out[0]), self.text_projection(out[1])

    def get_image_features(self, pixel_values=None):
        return self.visual_projection(self.vision_model(pixel_values=pixel_values)[0])


class CLIPModel(nn.Module):
    def __init__(self, config, cross):
        super().__init__()
        self.model = XCLIPModel(config)
        self.cross_model = Cross_model(**cross)

    @property
    def logit_scale(self):
        return self.model.logit_scale


CROSS = {"dim": 32, "layer_num": 2, "heads": 2, "dim_head": 16, "ff_mult": 2}


def published_score(clip_model, tokenizer, processor, frames, prompt, condition=DEFAULT_CONDITION, threshold=0.3):
    """The published inference code (Kolors eval / Prompt-A-Video RM_MPS.score), batch of frames."""

    def _tokenize(caption):
        return tokenizer(caption, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                         return_tensors="pt").input_ids

    image_input = processor(images=frames, return_tensors="pt")["pixel_values"]
    text_input = _tokenize([prompt] * len(frames))
    condition_batch = _tokenize(condition).repeat(text_input.shape[0], 1)
    with torch.no_grad():
        text_f, text_features = clip_model.model.get_text_features(text_input)
        image_f = clip_model.model.get_image_features(image_input)
        condition_f, _ = clip_model.model.get_text_features(condition_batch)
        sim_text_condition = einsum("b i d, b j d -> b j i", text_f, condition_f)
        sim_text_condition = torch.max(sim_text_condition, dim=1, keepdim=True)[0]
        sim_text_condition = sim_text_condition / sim_text_condition.max()
        mask = torch.where(sim_text_condition > threshold, 0, float("-inf"))
        mask = mask.repeat(1, image_f.shape[1], 1)
        image_features = clip_model.cross_model(image_f, text_f, mask)[:, 0, :]
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        image_score = clip_model.logit_scale.exp() * text_features @ image_features.T
    return image_score[0]


def make_published_checkpoint(path: Path, seed: int = 3) -> CLIPModel:
    """torch.save of the whole wrapper, with an old-transformers-style persistent position_ids buffer."""
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(), CROSS).eval()
    with torch.no_grad():
        model.model.logit_scale.fill_(4.6)
    for emb in (model.model.text_model.embeddings, model.model.vision_model.embeddings):
        ids = emb.position_ids
        del emb._buffers["position_ids"]
        emb._non_persistent_buffers_set.discard("position_ids")
        emb.register_buffer("position_ids", ids.clone(), persistent=True)
    # Run once so the rotary cache (a non-persistent buffer) is in the pickle, as in a used model.
    with torch.no_grad():
        x = torch.randn(1, 17, 32)
        model.cross_model(x, torch.randn(1, 77, 32), torch.zeros(1, 17, 77))
    torch.save(model, path)
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("mps-convert")
    original = make_published_checkpoint(root / "MPS_overall_checkpoint.pth")
    clip = build_tiny_clip_folder(root / "clip")
    out = convert_mps(root / "MPS_overall_checkpoint.pth", clip, root / "models" / "mps")
    return original, clip, out


def _entry(folder: Path):
    return registry.Registry.load().get("mps").model_copy(update={"path": str(folder)})


def test_converter_round_trip(converted, videos):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, CLIPImageProcessor

    original, clip, out = converted
    assert sorted(p.name for p in out.parent.iterdir()) == ["mps"]  # no temp folders left
    saved = load_file(str(out / WEIGHTS_FILE))
    expected = original.state_dict()
    assert "model.text_model.embeddings.position_ids" in expected  # the old layout ...
    expected = {k: v for k, v in expected.items() if not k.endswith("position_ids")}  # ... dropped on convert
    assert set(saved) == set(expected)
    assert "cross_model.layers.1.1.fn.rotary_emb.inv_freq" in saved and "cross_model.layers.0.0.fn.norm.bias" in saved
    assert not any("pos_emb" in k for k in saved)
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key

    prompts = ["a red fox running in the snow", "a boat on the lake"]
    tokenizer, processor = AutoTokenizer.from_pretrained(clip), CLIPImageProcessor.from_pretrained(clip)
    reward = MPSReward(_entry(out))
    try:
        # The published threshold keeps every token of these tiny random features; 0.9 drops some.
        for threshold in (0.3, 0.9):
            reward.model.mask_threshold = threshold
            ours = reward.score(videos, prompts)
            for video, prompt, got in zip(videos, prompts, ours):
                ref = published_score(original, tokenizer, processor, sampled_frames(video, 4), prompt,
                                      threshold=threshold)
                assert ref.shape == (4,)
                assert got["MPS"] == pytest.approx(float(ref.mean()), abs=2e-3)
            if threshold == 0.3:
                published = ours
        assert ours != published  # the mask changed the scores, and both agree with the published code
    finally:
        reward.close()


def test_converter_reads_a_plain_state_dict(converted, tmp_path):
    original, clip, _ = converted
    torch.save({"state_dict": original.state_dict()}, tmp_path / "sd.pt")
    out = convert_mps(tmp_path / "sd.pt", clip, tmp_path / "mps")
    assert (out / WEIGHTS_FILE).exists()


class _Evil:
    def __init__(self, marker: Path, how: str):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "eval":
            return (eval, (f"open({self.marker!r}, 'w').write('pwned')",))
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["system", "eval", "open"])
@pytest.mark.parametrize("container", ["torch", "raw"])
def test_malicious_pickle_is_refused(tmp_path, how, container):
    marker = tmp_path / "PWNED"
    path = tmp_path / "MPS_overall_checkpoint.pth"
    payload = {"model": _Evil(marker, how), "weight": torch.zeros(2)}
    if container == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    clip = tmp_path / "clip"  # never reached
    with pytest.raises(UserError) as err:
        convert_mps(path, clip, tmp_path / "mps")
    assert "\n" not in str(err.value)
    assert not marker.exists()
    assert not (tmp_path / "mps").exists()


def _save_as_trainer_module(model, path: Path) -> Path:
    """torch.save with this file's classes pickled under the published module path trainer.models.clip_model."""
    import sys
    import types

    classes = (CLIPModel, Cross_model, CrossAttention, ParallelTransformerBlock, XCLIPModel, LayerNorm,
               Residual, RotaryEmbedding, SwiGLU)
    names = ("trainer", "trainer.models", "trainer.models.clip_model")
    fakes = {name: types.ModuleType(name) for name in names}
    originals = {cls: cls.__module__ for cls in classes}
    sys.modules.update(fakes)
    try:
        for cls in classes:
            cls.__module__ = "trainer.models.clip_model"
            setattr(fakes["trainer.models.clip_model"], cls.__name__, cls)
        torch.save(model, path)
    finally:
        for cls, module in originals.items():
            cls.__module__ = module
        for name in names:
            del sys.modules[name]
    return path


def test_unknown_classes_are_stubbed_not_imported(tmp_path, converted):
    import sys

    original, clip, _ = converted
    path = _save_as_trainer_module(original, tmp_path / "trainer.pth")
    assert b"trainer.models.clip_model" in path.read_bytes() or True  # zip members may be compressed
    out = convert_mps(path, clip, tmp_path / "mps")
    assert (out / WEIGHTS_FILE).exists()
    assert "trainer" not in sys.modules  # the converter never imported the named module


def test_missing_key_is_a_user_error(converted, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, _, out = converted
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    state = load_file(str(broken / WEIGHTS_FILE))
    del state["cross_model.layers.0.0.fn.to_q.weight"]
    save_file(state, str(broken / WEIGHTS_FILE))
    with pytest.raises(UserError, match="missing") as err:
        MPSReward(_entry(broken))
    assert "cross_model.layers.0.0.fn.to_q.weight" in str(err.value) and "\n" not in str(err.value)


def test_cli_convert_then_score(tmp_path, videos):
    """The user's path: a downloaded pickle + the pulled CLIP snapshot -> `paav models convert mps` -> score."""
    from conftest import assert_user_error, paav, user_models

    from paav_cli import paths

    make_published_checkpoint(tmp_path / "MPS_overall_checkpoint.pth")
    clip = build_tiny_clip_folder(tmp_path / "clip")
    user_models(tmp_path, f'[rewards.mps-clip]\npath = "{clip}"\nkind = "clip-backbone"\ndims = []\n')
    assert_user_error(paav("score", str(videos[0]), "--prompt", "a cat", "--rewards", "mps"),
                      "paav models convert mps")
    proc = paav("models", "convert", "mps", str(tmp_path / "MPS_overall_checkpoint.pth"))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == paths.cache_dir() / "models" / "mps"
    assert (paths.cache_dir() / "models" / "mps" / WEIGHTS_FILE).is_file()
    proc = paav("score", str(videos[0]), "--prompt", "a cat", "--rewards", "mps", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "MPS" in proc.stdout
    assert_user_error(paav("models", "convert", "mps", str(tmp_path / "nope.pth")), "does not exist")


def test_converter_reads_the_legacy_format(converted, tmp_path):
    original, clip, _ = converted
    torch.save(original.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    out = convert_mps(tmp_path / "old.pt", clip, tmp_path / "mps")
    from safetensors.torch import load_file

    saved = load_file(str(out / WEIGHTS_FILE))
    key = "cross_model.layers.0.0.fn.to_q.weight"
    assert torch.equal(saved[key], original.state_dict()[key])


def _torchscript_that_writes(path: Path, marker: Path) -> Path:
    import warnings

    archive = torchscript_that_writes(path, marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated, and still what torch.load calls
        torch.jit.load(str(archive))  # the payload is live: a plain load writes the marker
    assert marker.exists()
    marker.unlink()
    return archive


def test_torchscript_archive_is_refused_before_it_runs(tmp_path):
    """torch.load hands TorchScript to torch.jit.load, which runs the archive's code; paav must not."""
    from conftest import assert_user_error, paav, user_models

    marker = tmp_path / "PWNED"
    archive = _torchscript_that_writes(tmp_path / "MPS_overall_checkpoint.pth", marker)
    with pytest.raises(UserError, match="TorchScript") as err:
        convert_mps(archive, tmp_path / "clip", tmp_path / "mps")
    assert "\n" not in str(err.value)
    assert not marker.exists()

    clip = build_tiny_clip_folder(tmp_path / "clip")
    user_models(tmp_path, f'[rewards.mps-clip]\npath = "{clip}"\nkind = "clip-backbone"\ndims = []\n')
    assert_user_error(paav("models", "convert", "mps", str(archive)), "refusing to load", "TorchScript")
    assert not marker.exists()


def _checkpoint_declaring(path: Path, numel: int, data: bytes, compress: bool, fill: int = 0) -> Path:
    """A torch.save-style zip whose only tensor declares `numel` floats, holding `data` (+ `fill` zeros)."""
    import io
    import zipfile
    from collections import OrderedDict

    class _Storage:
        pass

    class _Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (_Storage(), 0, (numel,), (1,), False, OrderedDict()))

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, _Storage) else None

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"model.weight": _Tensor()})
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method, compresslevel=9) as z:
        z.writestr("ckpt/data.pkl", buf.getvalue())
        z.writestr("ckpt/byteorder", "little")
        z.writestr("ckpt/version", "3\n")
        with z.open("ckpt/data/0", "w", force_zip64=True) as w:
            w.write(data)
            zeros = bytes(16 << 20)
            for _ in range(fill // len(zeros)):
                w.write(zeros)
    return path


@pytest.mark.parametrize("kind", ["short", "bomb"])
def test_declared_storage_is_bounded_by_the_file(tmp_path, kind):
    """A ~1 MB file naming 1 GiB of storage is refused before anything that size is allocated."""
    import subprocess
    import sys

    gib = 1 << 30
    if kind == "short":  # the pickle declares 1 GiB, the archive holds 1 MB
        path = _checkpoint_declaring(tmp_path / "c.pth", gib // 4, bytes(1 << 20), compress=False)
    else:  # the archive really inflates to 1 GiB: deflated zeros
        path = _checkpoint_declaring(tmp_path / "c.pth", gib // 4, b"", compress=True, fill=gib)
    assert path.stat().st_size < 2 << 20
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked (large) pytest process.
    script = (
        "import re, sys\n"
        "from paav_cli.rewards.convert_mps import load_checkpoint\n"
        "from paav_cli.errors import UserError\n"
        "try:\n    load_checkpoint(sys.argv[1])\n    print('loaded')\n"
        "except UserError as e:\n    print(e)\n"
        "status = open('/proc/self/status').read()\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300,
                          check=False)
    message, peak = proc.stdout.strip().splitlines()
    assert message.startswith(f"refusing to load {path}"), proc.stdout + proc.stderr
    assert ("holds 1048576" in message) if kind == "short" else ("more than the file holds" in message)
    # Importing torch alone is ~0.7 GB here; inflating the storage would add a whole GiB on top.
    assert int(peak) < gib, f"peak RSS {int(peak) >> 20} MB"


def test_a_small_file_of_repeated_views_is_refused(converted, tmp_path):
    """Stride-0 views of one element each are a few bytes on disk but the model's full size once copied
    out; with the published MPS's shapes that is a 50 KB file asking for 4 GB."""
    original, clip, _ = converted
    views = {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in original.state_dict().items()}
    torch.save(views, tmp_path / "views.pt")
    assert sum(v.nbytes for v in views.values()) > 4 * (tmp_path / "views.pt").stat().st_size
    with pytest.raises(UserError, match="repeated views") as err:
        convert_mps(tmp_path / "views.pt", clip, tmp_path / "mps")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "mps").exists()

"""Peak memory of paav's GGUF export against the model's size on disk.

    python bench/export_memory.py [--outtype F32] [--layers 20] [--keep DIR]

Builds a random ~300M-parameter Llama (config + random float32 weights written straight to
safetensors, with a tiny byte-level tokenizer) in a temp folder, then measures in fresh
subprocesses, each reporting its peak RSS (VmHWM from /proc/self/status):

- import only: the modules the export imports (numpy, gguf, paav_cli.export.convert);
- export: `convert(folder, out, outtype=...)`, with seconds;
- transformers: `AutoModelForCausalLM.from_pretrained(folder, dtype=float32)`, for reference.

Goal: export peak RSS / safetensors size < 0.3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

PEAK = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024"


def build_model(folder: Path, layers: int) -> int:
    """A random Llama with ~300M parameters; returns its safetensors size in bytes."""
    from safetensors.numpy import save_file

    from paav_cli.testing.tiny_llm import build_byte_bpe_tokenizer

    hidden, inter, vocab, heads, kv = 1024, 2816, 32000, 16, 4
    head_dim = hidden // heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
        "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    build_byte_bpe_tokenizer().save_pretrained(folder)
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, hidden), "lm_head.weight": w(vocab, hidden),
               "model.norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": w(hidden, hidden), p + "self_attn.k_proj.weight": w(kv * head_dim, hidden),
            p + "self_attn.v_proj.weight": w(kv * head_dim, hidden), p + "self_attn.o_proj.weight": w(hidden, hidden),
            p + "mlp.gate_proj.weight": w(inter, hidden), p + "mlp.up_proj.weight": w(inter, hidden),
            p + "mlp.down_proj.weight": w(hidden, inter),
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
        })
    n_params = sum(t.size for t in tensors.values())
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    print(f"built random llama: {n_params / 1e6:.0f}M parameters, {layers} layers")
    return (folder / "model.safetensors").stat().st_size


def child(code: str) -> dict:
    """Run `code` in a fresh interpreter; it must leave a dict in `result`."""
    script = f"import json, sys, time\nsys.path.insert(0, {str(REPO)!r})\n{code}\n" \
             f"result['peak_rss'] = {PEAK}\nprint(json.dumps(result))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outtype", default="F32", choices=["F32", "F16", "BF16"])
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--keep", type=Path, help="build the model here and keep it")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.keep.parent if args.keep else None) as tmp:
        folder = args.keep or Path(tmp) / "llama"
        size = build_model(folder, args.layers)
        out = Path(tmp) / "model.gguf"
        imports = child("import numpy, gguf\nimport paav_cli.export.convert\nresult = {}")
        t0 = time.perf_counter()
        export = child(
            "from pathlib import Path\nfrom paav_cli.export.convert import convert\nt = time.perf_counter()\n"
            f"convert(Path({str(folder)!r}), Path({str(out)!r}), outtype={args.outtype!r})\n"
            "result = {'seconds': time.perf_counter() - t}"
        )
        wall = time.perf_counter() - t0
        gguf_size = out.stat().st_size
        gib = 1024**3
        print(f"safetensors on disk:        {size / gib:6.2f} GiB")
        print(f"GGUF {args.outtype:4s} written:          {gguf_size / gib:6.2f} GiB "
              f"in {export['seconds']:.1f} s ({wall:.1f} s with interpreter start)")
        print(f"peak RSS, imports only:      {imports['peak_rss'] / gib:6.3f} GiB "
              f"({imports['peak_rss'] / size:.3f} x model size)")
        print(f"peak RSS, paav export:       {export['peak_rss'] / gib:6.3f} GiB "
              f"({export['peak_rss'] / size:.3f} x model size; goal < 0.3)")
        if not args.skip_transformers:
            hf = child(
                "import torch\nfrom transformers import AutoModelForCausalLM\n"
                f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, dtype=torch.float32)\nresult = {{}}"
            )
            print(f"peak RSS, transformers load: {hf['peak_rss'] / gib:6.3f} GiB "
                  f"({hf['peak_rss'] / size:.3f} x model size); paav export / that = "
                  f"{export['peak_rss'] / hf['peak_rss']:.3f}")


if __name__ == "__main__":
    main()

"""The manifest of an adapter shipped with paav: what it was trained from and how it did.

`adapters/<name>/manifest.json` records the sha256 of every shipped file, the training data, the
recipe and the base GGUF, the training figures from RUN/sft/manifest.json and the eval figures, so
that a test can check the files are the ones measured and anyone can retrain the same adapter:

    python -m paav_cli.export.adapter_manifest adapters/default-booster --run RUN \\
        --recipe recipes/default-booster.toml --pairs data/default_booster_pairs.jsonl [--eval FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paav_cli.errors import UserError

MANIFEST = "manifest.json"


def build_manifest(folder: Path, run: Path, recipe_path: Path, pairs: Path, evaluation: dict | None = None) -> dict:
    from paav_cli import registry
    from paav_cli.recipe import load_recipe

    recipe = load_recipe(str(recipe_path))
    reg = registry.Registry.load()
    base = reg.get(recipe.sft.base, "base_llms")
    trained = json.loads((Path(run) / "sft" / MANIFEST).read_text())
    if trained.get("status") != "done":
        raise UserError(f"{run}/sft holds no finished fine-tune; finish `paav sft` first.")
    base_gguf = reg.get(base.from_gguf, "boosters") if base.from_gguf else None
    return {
        "files": {p.name: registry.sha256_file(p) for p in sorted(Path(folder).iterdir())
                  if p.is_file() and p.name != MANIFEST},
        "recipe": {"path": Path(recipe_path).as_posix(), "sha256": registry.sha256_file(Path(recipe_path)),
                   "sft": recipe.sft.model_dump()},
        "data": {"path": Path(pairs).as_posix(), "sha256": registry.sha256_file(Path(pairs)),
                 "pairs": trained["pairs"]},
        "base": {"name": base.name, "gguf": base_gguf.name if base_gguf else None,
                 "sha256": dict(base_gguf.sha256) if base_gguf else {}},
        "training": {k: trained.get(k) for k in ("hyperparameters", "epochs", "final_loss", "final_eval_loss",
                                                 "device", "versions", "seconds")},
        "eval": evaluation or {},
    }


def check_manifest(folder: Path) -> list[str]:
    """What does not match: files missing, changed, or not listed. Empty when all is well."""
    from paav_cli.registry import sha256_file

    folder = Path(folder)
    listed = json.loads((folder / MANIFEST).read_text())["files"]
    problems = [f"{name} is missing" for name in listed if not (folder / name).is_file()]
    problems += [f"{name} has changed" for name, digest in listed.items()
                 if (folder / name).is_file() and sha256_file(folder / name) != digest]
    problems += [f"{p.name} is not listed" for p in folder.iterdir() if p.is_file() and p.name not in listed
                 and p.name != MANIFEST]
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write an adapter folder's manifest.json.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--eval", type=Path, help="A JSON file of eval figures to record.")
    args = parser.parse_args(argv)
    evaluation = json.loads(args.eval.read_text()) if args.eval else None
    manifest = build_manifest(args.folder, args.run, args.recipe, args.pairs, evaluation)
    (args.folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.folder / MANIFEST} ({len(manifest['files'])} files)")


if __name__ == "__main__":
    main()

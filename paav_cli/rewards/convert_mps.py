"""Convert the published MPS checkpoint (a pickled whole model) to a safetensors model folder, safely.

`MPS_overall_checkpoint.pth` was written with `torch.save(model)`: unpickling it normally imports the
authors' `trainer.*` classes and runs whatever the pickle names. Here the pickle is read by a restricted
unpickler: tensors are rebuilt by torch's own functions from an allow-list, every other class becomes an
inert stub that only records its pickled state (its module is never imported), and any name from a
module that can run commands or code (os, subprocess, builtins.eval, ...) stops the load. The stubs are
then walked as `nn.Module.state_dict()` walks modules (`_parameters`, `_buffers`, `_modules`).
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
import types
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
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return _rebuild_from_type_v2
    if module == "torch" and not name.startswith("_"):
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
            return value
        if value is torch.Size or value is torch.device:
            return value
        return None  # storage classes are mapped by torch.load itself, before find_class
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


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load needs of a pickle module: Unpickler (subclassed by torch, which maps storage names
# itself and calls ours for everything else), load (legacy format), __name__.
restricted_pickle = types.ModuleType("paav_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.UnpicklingError = pickle.UnpicklingError


def load_checkpoint(path: Path):
    """The checkpoint's object graph, with every non-tensor class replaced by a stub."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; download MPS_overall_checkpoint.pth first.")
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing to load {path}: {e}.") from e
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError, KeyError) as e:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}).") from e


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

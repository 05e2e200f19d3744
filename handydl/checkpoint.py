"""Checkpoints: the architecture (JSON) and the weights in one .npz file; never pickle.

The architecture is a tree of ``{"type", "config", "children"}``: each
module's class name (looked up in ``MODULES``, never evaluated), its
``get_config()`` and its children by attribute name.  A module used in two
places is written once and referred to (``{"ref": "path.of.first.use"}``)
after that; a Parameter shared by two modules (a tied weight) is stored once,
under its first name, and the header's ``"tied"`` map says where else it
stands, so it is tied again after loading.

Writes are atomic (temporary file, then rename).  Loading checks everything
(format, architecture, every array's name and shape) before returning: a
corrupted, truncated or incompatible file raises CheckpointError naming the
file and the problem, never a half-loaded model.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from . import nn
from ._io import atomic_path

FORMAT = "handydl-checkpoint"
VERSION = 2                 # 2: children by name, refs and tied parameters; 1 still loads
_HEADER = "__handydl__"
MAX_DEPTH = 64              # nesting of the architecture tree


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def _handydl_modules():
    """Every Module class that handydl.nn exports, by class name (losses excepted)."""
    return {name: obj for name, obj in vars(nn).items()
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj is not nn.Module
            and not issubclass(obj, nn.Loss) and obj not in (nn.OpModule, nn.OpFunction)}


MODULES = _handydl_modules()


def register(cls):
    """Let checkpoints save and load a user-defined Module subclass (usable as a
    decorator).  It needs ``get_config()`` returning its constructor arguments
    as JSON; ``from_config`` (inherited) rebuilds it."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"checkpoint.register: expected a Module subclass, got {cls!r}")
    known = MODULES.get(cls.__name__)
    if known is not None and known is not cls:
        raise ValueError(f"checkpoint.register: another class named {cls.__name__!r} is "
                         f"registered ({known.__module__}.{known.__qualname__})")
    MODULES[cls.__name__] = cls
    return cls


# -- writing ------------------------------------------------------------------------------

def architecture(model):
    """The JSON tree of ``model`` (see the module docstring)."""
    paths = {}

    def spec(m, path):
        if id(m) in paths:
            return {"ref": paths[id(m)]}
        paths[id(m)] = path
        cls = type(m)
        if not hasattr(m, "get_config"):
            raise TypeError(f"{cls.__name__} has no get_config(): it cannot be saved; give it one "
                            "returning its constructor arguments (JSON) and register the class "
                            f"with handydl.checkpoint.register({cls.__name__})")
        if MODULES.get(cls.__name__) is not cls:
            raise TypeError(f"{cls.__name__} is not a module handydl knows how to save: register it "
                            f"with handydl.checkpoint.register({cls.__name__})")
        children = {name: spec(c, f"{path}.{name}" if path else name) for name, c in m._modules.items()}
        return {"type": cls.__name__, "config": m.get_config(), "children": children}
    return spec(model, "")


def tied_parameters(model):
    """{name: first name} for every Parameter that stands in two distinct modules."""
    first, tied = {}, {}
    for mod_name, mod in model.named_modules():
        for attr, p in mod._params.items():
            name = f"{mod_name}.{attr}" if mod_name else attr
            if id(p) in first:
                tied[name] = first[id(p)]
            else:
                first[id(p)] = name
    return tied


def save(model, path, meta=None):
    """Write ``model`` (architecture + parameters + buffers) and optional JSON ``meta`` to ``path``."""
    header = {"format": FORMAT, "version": VERSION, "architecture": architecture(model),
              "tied": tied_parameters(model), "meta": meta or {}}
    arrays = {f"state/{k}": v for k, v in model.state_dict().items()}
    arrays[_HEADER] = np.array(json.dumps(header))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


# -- reading ------------------------------------------------------------------------------

def build(spec, tied=None):
    """A fresh module tree from an architecture spec, shared modules and tied
    parameters restored.  ValueError for anything malformed."""
    built = {}
    model = _build(spec, "", built, 0)
    for name, first in (tied or {}).items():
        _tie(model, str(name), str(first))
    return model


def _build(spec, path, built, depth):
    if depth > MAX_DEPTH:
        raise ValueError(f"the architecture is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict):
        raise ValueError(f"module {path or '(root)'}: expected a JSON object, got {type(spec).__name__}")
    if "ref" in spec:
        if spec["ref"] not in built:
            raise ValueError(f"module {path}: refers to {spec['ref']!r}, which is not built before it")
        return built[spec["ref"]]
    kind, config = spec.get("type"), spec.get("config", {})
    cls = MODULES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"module {path or '(root)'}: unknown module type {kind!r}; a class of your "
                         f"own must be registered first: handydl.checkpoint.register(YourClass)")
    if not isinstance(config, dict):
        raise ValueError(f"module {path or '(root)'}: config must be a JSON object")
    children_spec = spec.get("children")
    if children_spec is None and kind == "Sequential" and "children" in config:   # version 1
        children_spec = {str(i): c for i, c in enumerate(config["children"])}
        config = {}
    if not isinstance(children_spec or {}, dict):
        raise ValueError(f"module {path or '(root)'}: children must be a JSON object")
    children = {}
    for name, c in (children_spec or {}).items():
        children[name] = _build(c, f"{path}.{name}" if path else name, built, depth + 1)
    module = cls.from_config(dict(config), children)
    built[path] = module
    return module


def _tie(model, name, first):
    mod_path, _, attr = name.rpartition(".")
    src_path, _, src_attr = first.rpartition(".")
    try:
        target, source = model.get_submodule(mod_path), model.get_submodule(src_path)
    except AttributeError as e:
        raise ValueError(f"tied parameter {name} -> {first}: {e}") from None
    p = source._params.get(src_attr)
    if p is None or attr not in target._params:
        raise ValueError(f"tied parameter {name} -> {first}: no such parameter")
    if target._params[attr].shape != p.shape:
        raise ValueError(f"tied parameter {name} has shape {target._params[attr].shape}, "
                         f"{first} has {p.shape}")
    setattr(target, attr, p)


def load(path, return_meta=False):
    """The model saved at ``path`` (and its meta with ``return_meta=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if _HEADER not in z.files:
                raise CheckpointError(f"{path}: not a handydl checkpoint (no header)")
            header = json.loads(str(z[_HEADER]))
            state = {k[len("state/"):]: z[k] for k in z.files if k.startswith("state/")}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise CheckpointError(f"{path}: not a handydl checkpoint (format {found!r})")
    version = header.get("version", 0)
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not an integer")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version} is newer than this "
                              f"handydl reads ({VERSION}); upgrade handydl")
    tied = header.get("tied", {})
    if not isinstance(tied, dict):
        raise CheckpointError(f"{path}: incompatible checkpoint (tied must be a JSON object)")
    try:
        model = build(header.get("architecture"), tied)
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise CheckpointError(f"{path}: incompatible checkpoint ({e})") from None
    model.eval()
    meta = header.get("meta", {})
    return (model, meta if isinstance(meta, dict) else {}) if return_meta else model

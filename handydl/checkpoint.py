"""Checkpoints: the architecture (JSON) and the weights in one .npz file.

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
VERSION = 1
_HEADER = "__handydl__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def save(model, path, meta=None):
    """Write ``model`` (architecture + parameters + buffers) and optional JSON ``meta`` to ``path``."""
    header = {"format": FORMAT, "version": VERSION, "architecture": nn.module_spec(model),
              "meta": meta or {}}
    arrays = {f"state/{k}": v for k, v in model.state_dict().items()}
    arrays[_HEADER] = np.array(json.dumps(header))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def build(spec):
    """A fresh module from {"type", "config"} (see nn.module_spec)."""
    kind, config = spec["type"], dict(spec["config"])
    cls = getattr(nn, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"unknown module type {kind!r}")
    if kind == "Sequential":
        return cls(*[build(c) for c in config["children"]])
    if kind == "Standardize":
        shape, dtype = tuple(config["shape"]), config["dtype"]
        return cls(np.zeros(shape, dtype), np.ones(shape, dtype))
    return cls(**config)


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
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a handydl checkpoint (format {header.get('format')!r})")
    if header.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {header['version']} is newer than this "
                              f"handydl reads ({VERSION}); upgrade handydl")
    try:
        model = build(header["architecture"])
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: incompatible checkpoint ({e})") from None
    model.eval()
    return (model, header.get("meta", {})) if return_meta else model

"""Checkpoints: the architecture (JSON) and the weights in one .npz or safetensors file;
never pickle.

The architecture is a tree of ``{"type", "config", "children"}``: each
module's class name (looked up in ``MODULES``, never evaluated), its
``get_config()`` and its children by attribute name.  A module used in two
places is written once and referred to (``{"ref": "path.of.first.use"}``)
after that; a Parameter shared by two modules (a tied weight) is stored once,
under its first name, and the header's ``"tied"`` map says where else it
stands, so it is tied again after loading.

Writes are atomic (temporary file, then rename).  Loading checks everything
before it allocates (the header's size, nesting and types, the module kinds,
every array's shape from its npy or safetensors header against the file's
size and against each module's config, ``DECLARED``) and again after building
(every array's name and shape): a corrupted, truncated, hostile or
incompatible file raises CheckpointError naming the file and the problem,
never a half-loaded model and never a MemoryError.
"""
from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from . import _safetensors, nn
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


def save(model, path, meta=None, format=None):
    """Write ``model`` (architecture + parameters + buffers) and optional JSON ``meta`` to ``path``.

    ``format`` is "npz" or "safetensors"; by default the extension decides
    (``.safetensors``, else npz).  A safetensors file keeps the header (the
    architecture, the tied parameters, ``meta``) as JSON in its metadata under
    ``"handydl"``, and the state under the same dotted names as ``state_dict()``,
    so the ``safetensors`` library (and so PyTorch) reads its tensors as they are.
    """
    path = Path(path)
    format = format or ("safetensors" if path.suffix == ".safetensors" else "npz")
    if format not in FORMATS:
        raise ValueError(f"checkpoint.save: format={format!r} is not valid; expected one of {FORMATS}")
    header = {"format": FORMAT, "version": VERSION, "architecture": architecture(model),
              "tied": tied_parameters(model), "meta": meta or {}}
    state = model.state_dict()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            if format == "safetensors":
                _safetensors.write(f, state, {"format": FORMAT, "handydl": json.dumps(header)})
            else:
                arrays = {f"state/{k}": v for k, v in state.items()}
                arrays[_HEADER] = np.array(json.dumps(header))
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


# -- checking a file before anything is built -------------------------------------------

def load(path, return_meta=False):
    """The model saved at ``path`` (.npz or safetensors, told apart by their
    first bytes), and its meta with ``return_meta=True``.

    Everything is checked before the model is built: the header's JSON (its
    size, its nesting depth, its type), the format and version, every module
    kind (a model module, not a loss), every array's declared shape and dtype
    (read from the npy or safetensors header, not from the data) against the
    file's real size and against what each module's config declares, and the
    total against ``MAX_BYTES``.  Only then are the arrays read and the model
    built.  Anything wrong is a CheckpointError naming the file; nothing is
    ever unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        reader = _NpzReader(path) if magic.startswith(b"PK") else _SafetensorsReader(path)
        with reader:
            header = _check_header(reader.header())
            shapes = reader.shapes()
            arch, tied = header.get("architecture"), header.get("tied", {})
            _check_tree(arch, shapes, tied)
            state = reader.arrays()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({type(e).__name__}: {e})") from None
    try:
        model = build(arch, tied)
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise CheckpointError(f"{path}: incompatible checkpoint ({e})") from None
    model.eval()
    meta = header.get("meta", {})
    return (model, meta if isinstance(meta, dict) else {}) if return_meta else model


FORMATS = ("npz", "safetensors")
MAX_BYTES = 1 << 34             # 16 GiB of arrays in one checkpoint; raise it for a bigger model
MAX_HEADER_BYTES = 1 << 24      # 16 MiB of JSON header
MAX_JSON_DEPTH = 4 * MAX_DEPTH + 16     # an architecture level is a few JSON levels
_ARRAY_KINDS = "fiub"           # floats, integers, booleans: nothing that needs pickle


def _parse_json(text):
    """The header's JSON, its size and nesting depth bounded before it is decoded."""
    if len(text) > MAX_HEADER_BYTES:
        raise CheckpointError(f"the header is {len(text):,} bytes, more than {MAX_HEADER_BYTES:,}")
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"the header's JSON is nested {depth} deep, more than {MAX_JSON_DEPTH}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"the header is not valid JSON ({e})") from None


def _json_depth(text):
    """The deepest nesting of [ and { in JSON ``text``, strings skipped; no recursion."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text).encode()
    codes = np.frombuffer(bare, np.uint8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int64) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _check_header(header):
    """The header's structure and types (not yet the architecture)."""
    if not isinstance(header, dict):
        raise CheckpointError(f"not a handydl checkpoint (its header is a JSON {_json_type(header)}, "
                              "not an object)")
    if header.get("format") != FORMAT:
        raise CheckpointError(f"not a handydl checkpoint (format {header.get('format')!r}, "
                              f"expected {FORMAT!r})")
    version = header.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CheckpointError(f"checkpoint version {version!r} is not an integer >= 0")
    if version > VERSION:
        raise CheckpointError(f"checkpoint version {version} is newer than this handydl reads "
                              f"({VERSION}); upgrade handydl")
    tied = header.get("tied", {})
    if not (isinstance(tied, dict) and all(isinstance(v, str) for v in tied.values())):
        raise CheckpointError("incompatible checkpoint (tied must map names to names)")
    if not isinstance(header.get("meta", {}), dict):
        raise CheckpointError("incompatible checkpoint (meta must be a JSON object)")
    return header


def _json_type(v):
    return {list: "array", type(None): "null", str: "string", bool: "boolean"}.get(type(v), "number")


def _check_tree(spec, shapes, tied):
    """Walk the architecture as build() will, building nothing: module kinds, the
    root a model, each config's declared parameter and buffer shapes against the
    arrays in the file (``shapes``: {dotted name: (shape, dtype)})."""
    stack, order, root = [(spec, "", 0)], [], None
    while stack:
        node, path, depth = stack.pop()
        where = f"module {path or '(root)'}"
        if depth > MAX_DEPTH:
            raise CheckpointError(f"incompatible checkpoint (the architecture is nested deeper than "
                                  f"{MAX_DEPTH} levels)")
        if not isinstance(node, dict):
            raise CheckpointError(f"incompatible checkpoint ({where}: expected a JSON object, "
                                  f"got {type(node).__name__})")
        if "ref" in node:
            continue                                    # build() checks what it refers to
        kind, config, children = node.get("type"), node.get("config", {}), node.get("children") or {}
        cls = _module_class(kind, where)
        root = cls if root is None else root
        if not isinstance(config, dict) or not isinstance(children, dict):
            raise CheckpointError(f"incompatible checkpoint ({where}: config and children must be "
                                  "JSON objects)")
        order.append((cls, config, path, where))
        for name, child in reversed(list(children.items())):
            stack.append((child, f"{path}.{name}" if path else str(name), depth + 1))
    for cls, config, path, where in reversed(order):   # children first: the most precise message
        _check_declared(cls, config, path, shapes, tied, where)
    if root is not None and root.forward is nn.Module.forward:
        raise CheckpointError(f"incompatible checkpoint (the root module is a {root.__name__}, which has "
                              "no forward: it holds modules but is not a model)")


def _module_class(kind, where):
    cls = MODULES.get(kind) if isinstance(kind, str) else None
    if cls is not None:
        return cls
    known = getattr(nn, kind, None) if isinstance(kind, str) and kind.isidentifier() else None
    if isinstance(known, type) and issubclass(known, (nn.Loss, nn.OpFunction)) or known is nn.Module:
        what = "a loss" if issubclass(known, nn.Loss) else "not a model module"
        raise CheckpointError(f"incompatible checkpoint ({where}: {kind} is {what}; a checkpoint "
                              "holds a model's modules)")
    raise CheckpointError(f"incompatible checkpoint ({where}: unknown module type {kind!r}; a class "
                          "of your own must be registered first: handydl.checkpoint.register(YourClass))")


def _check_declared(cls, config, path, shapes, tied, where):
    """What ``cls(**config)`` would allocate, checked against the file's arrays
    before it is made: each own parameter and buffer's shape (DECLARED), or for
    a container that builds its own layers (MLP) their total size."""
    try:
        declared = DECLARED[cls.__name__](config) if cls.__name__ in DECLARED else {}
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as e:
        raise CheckpointError(f"incompatible checkpoint ({where}: {cls.__name__} config {_short(config)} is not "
                              f"valid: {type(e).__name__}: {e})") from None
    if isinstance(declared, int):               # a total number of elements
        below = sum(math.prod(s) for n, (s, _) in shapes.items() if _under(n, path))
        if declared > below:
            raise CheckpointError(f"incompatible checkpoint ({where}: {cls.__name__} config "
                                  f"{_short(config)} declares {declared:,} values, the file holds "
                                  f"{below:,} for it)")
        return
    for attr, shape in declared.items():
        name = f"{path}.{attr}" if path else attr
        name = tied.get(name, name)
        found = shapes.get(name)
        if found is None or found[0] != tuple(shape):
            held = "the file holds no such array" if found is None else f"the file's {name} has shape {found[0]}"
            raise CheckpointError(f"incompatible checkpoint ({where}: {cls.__name__} config declares "
                                  f"{name} of shape {tuple(shape)}; {held})")


def _under(name, path):
    return not path or name.startswith(path + ".")


def _short(config, limit=120):
    text = json.dumps(config)
    return text if len(text) <= limit else text[:limit] + "..."


def _size(v, name):
    """A size from a config: an int >= 0 (JSON gives no other kind of integer)."""
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name}={v!r} is not an integer >= 0")
    return v


def _sizes(v, name):
    return [_size(n, name) for n in (v if isinstance(v, list) else [v])]


def _linear(c):
    n_in, n_out = _size(c["in_features"], "in_features"), _size(c["out_features"], "out_features")
    return {"weight": (n_in, n_out), **({"bias": (n_out,)} if c.get("bias", True) else {})}


def _conv(c, transposed=False):
    c_in, c_out = _size(c["in_channels"], "in_channels"), _size(c["out_channels"], "out_channels")
    groups = _size(c.get("groups", 1), "groups") or 1
    kernel = tuple(_sizes(c["kernel_size"], "kernel_size"))
    shape = (c_in, c_out // groups) + kernel if transposed else (c_out, c_in // groups) + kernel
    return {"weight": shape, **({"bias": (c_out,)} if c.get("bias", True) else {})}


def _batch_norm(c):
    n = _size(c["num_features"], "num_features")
    out = {}
    if c.get("affine", True):
        out = {"weight": (n,), **({"bias": (n,)} if c.get("bias", True) else {})}
    if c.get("track_running_stats", True):
        out.update(running_mean=(n,), running_var=(n,), num_batches_tracked=())
    return out


def _affine(shape, c, flag):
    return {"weight": shape, **({"bias": shape} if c.get("bias", True) else {})} if c.get(flag, True) else {}


def _mlp(c):
    """An MLP builds its Linear (and BatchNorm1d) layers from ``sizes``: their total."""
    sizes = _sizes(c["sizes"], "sizes")
    bn = 4 if c.get("batch_norm") else 0
    return sum(a * b + b + (bn * b + (1 if bn else 0) if i < len(sizes) - 2 else 0)
               for i, (a, b) in enumerate(zip(sizes, sizes[1:])))


_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def _recurrent(kind):
    """RNN / LSTM / GRU: weight_ih_l{k}[_reverse] (gates H, in), weight_hh (gates H, H), biases."""
    def declared(c):
        n_in, H = _size(c["input_size"], "input_size"), _size(c["hidden_size"], "hidden_size")
        layers = _size(c.get("num_layers", 1), "num_layers")
        directions = 2 if c.get("bidirectional") else 1
        P = _size(c.get("proj_size", 0), "proj_size") or H      # the LSTM's projected h
        out = {}
        for layer in range(layers):
            for d in range(directions):
                s = f"l{layer}" + ("_reverse" if d else "")
                out[f"weight_ih_{s}"] = (_GATES[kind] * H, n_in if layer == 0 else P * directions)
                out[f"weight_hh_{s}"] = (_GATES[kind] * H, P)
                if c.get("bias", True):
                    out[f"bias_ih_{s}"] = out[f"bias_hh_{s}"] = (_GATES[kind] * H,)
                if P != H:
                    out[f"weight_hr_{s}"] = (P, H)
        return out
    return declared


def _cell(kind):
    def declared(c):
        n_in, H = _size(c["input_size"], "input_size"), _size(c["hidden_size"], "hidden_size")
        out = {"weight_ih": (_GATES[kind] * H, n_in), "weight_hh": (_GATES[kind] * H, H)}
        if c.get("bias", True):
            out["bias_ih"] = out["bias_hh"] = (_GATES[kind] * H,)
        return out
    return declared


def _encoder_layer(c):
    """TransformerEncoderLayer builds its attention, feed-forward and norms from d_model and
    dim_feedforward: their total."""
    d, ff, bias = _size(c["d_model"], "d_model"), _size(c["dim_feedforward"], "dim_feedforward"), c.get("bias", True)
    weights = 3 * d * d + d * d + d * ff + ff * d + 2 * d
    return weights + (3 * d + d + ff + d + 2 * d if bias else 0)


def _gpt_sizes(c, part):
    """nanoGPT's pieces build their Linear and LayerNorm layers from n_embd: their totals."""
    C, bias = _size(c["n_embd"], "n_embd"), bool(c.get("bias", True))
    attn = 4 * C * C + (4 * C if bias else 0)
    mlp = 8 * C * C + (5 * C if bias else 0)
    norm = C * (2 if bias else 1)
    if part == "attn":
        return attn
    if part == "mlp":
        return mlp
    block = attn + mlp + 2 * norm
    if part == "block":
        return block
    V, T, L = (_size(c[k], k) for k in ("vocab_size", "block_size", "n_layer"))
    return V * C + T * C + L * block + norm + (0 if c.get("tie_weights", True) else C * V)


# What each module with parameters or buffers allocates, by class name, from its config:
# {attribute: shape}, or a total number of values for a container that makes its own layers.
# A new module with parameters gets an entry (tests/test_reliability_checkpoint.py checks
# every built-in one against a real instance).
DECLARED = {
    "Linear": _linear,
    "Conv1d": _conv, "Conv2d": _conv, "ConvTranspose2d": lambda c: _conv(c, transposed=True),
    "BatchNorm1d": _batch_norm, "BatchNorm2d": _batch_norm,
    "LayerNorm": lambda c: _affine(tuple(_sizes(c["normalized_shape"], "normalized_shape")), c,
                                   "elementwise_affine"),
    "RMSNorm": lambda c: ({"weight": tuple(_sizes(c["normalized_shape"], "normalized_shape"))}
                          if c.get("elementwise_affine", True) else {}),
    "GroupNorm": lambda c: _affine((_size(c["num_channels"], "num_channels"),), c, "affine"),
    "PReLU": lambda c: {"weight": (_size(c.get("num_parameters", 1), "num_parameters"),)},
    "Standardize": lambda c: {"mean": tuple(_sizes(c["shape"], "shape")),
                              "std": tuple(_sizes(c["shape"], "shape"))},
    "MLP": _mlp,
    "Embedding": lambda c: {"weight": (_size(c["num_embeddings"], "num_embeddings"),
                                       _size(c["embedding_dim"], "embedding_dim"))},
    "LearnedPositionalEmbedding": lambda c: {"weight": (_size(c["num_positions"], "num_positions"),
                                                        _size(c["embedding_dim"], "embedding_dim"))},
    "SinusoidalPositionalEmbedding": lambda c: {"pe": (_size(c["num_positions"], "num_positions"),
                                                       _size(c["embedding_dim"], "embedding_dim"))},
    "MultiheadAttention": lambda c: {"in_proj_weight": (3 * _size(c["embed_dim"], "embed_dim"), c["embed_dim"]),
                                     **({"in_proj_bias": (3 * c["embed_dim"],)} if c.get("bias", True) else {})},
    "TransformerEncoderLayer": _encoder_layer,
    "CausalSelfAttention": lambda c: _gpt_sizes(c, "attn"), "GPTMLP": lambda c: _gpt_sizes(c, "mlp"),
    "GPTBlock": lambda c: _gpt_sizes(c, "block"), "GPT": lambda c: _gpt_sizes(c, "gpt"),
    **{kind: _recurrent(kind) for kind in _GATES}, **{f"{kind}Cell": _cell(kind) for kind in _GATES},
}


class _Reader:
    """A checkpoint file's header and array shapes, read before its arrays."""

    def __init__(self, path):
        self.path = path
        self.size = path.stat().st_size

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_shapes(self, shapes):
        total = 0
        for name, (shape, dtype) in shapes.items():
            if dtype.kind not in _ARRAY_KINDS:
                raise CheckpointError(f"array {name} has dtype {dtype}; a checkpoint holds numbers only")
            total += math.prod(shape) * dtype.itemsize
        if total > MAX_BYTES:
            raise CheckpointError(f"the arrays declare {total:,} bytes, more than "
                                  f"handydl.checkpoint.MAX_BYTES = {MAX_BYTES:,}")
        return shapes


class _NpzReader(_Reader):
    """An .npz: a zip of .npy members, each member's npy header read (not its data)
    and its declared size checked against the zip's own record of the member."""

    def __init__(self, path):
        super().__init__(path)
        self.zip = zipfile.ZipFile(path)
        self.members = {}                       # array name -> (zip info, shape, dtype)
        for info in self.zip.infolist():
            if not info.filename.endswith(".npy"):
                continue
            shape, dtype = self._npy_header(info)
            self.members[info.filename[:-4]] = (info, shape, dtype)

    def close(self):
        self.zip.close()

    def _npy_header(self, info):
        name = info.filename[:-4]
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointError(f"corrupted or truncated checkpoint (member {name}: sizes disagree)")
        if info.compress_size > self.size:
            raise CheckpointError(f"corrupted or truncated checkpoint (member {name} is larger than the file)")
        with self.zip.open(info) as f:
            version = npformat.read_magic(f)
            read = {(1, 0): npformat.read_array_header_1_0,
                    (2, 0): npformat.read_array_header_2_0}.get(version)
            if read is None:
                raise CheckpointError(f"member {name}: npy format version {version} is not read")
            shape, _, dtype = read(f, max_header_size=1 << 16)
            start = f.tell()
        if dtype.hasobject or dtype.kind not in _ARRAY_KINDS + "U":
            raise CheckpointError(f"array {name} has dtype {dtype}; a checkpoint holds numbers only "
                                  "(nothing is unpickled)")
        need = math.prod(shape) * dtype.itemsize
        if need != info.file_size - start:
            raise CheckpointError(f"corrupted or truncated checkpoint (array {name} declares shape "
                                  f"{shape} of {dtype}, {need:,} bytes, but holds {info.file_size - start:,})")
        return shape, dtype

    def header(self):
        if _HEADER not in self.members:
            raise CheckpointError("not a handydl checkpoint (no header)")
        info, shape, dtype = self.members[_HEADER]
        if shape != () or dtype.kind != "U" or info.file_size > MAX_HEADER_BYTES * 4 + 4096:
            raise CheckpointError("not a handydl checkpoint (its header is not one string of "
                                  f"at most {MAX_HEADER_BYTES:,} bytes)")
        with np.load(self.path, allow_pickle=False) as z:
            return _parse_json(str(z[_HEADER]))

    def shapes(self):
        shapes = {k[len("state/"):]: (s, d) for k, (_, s, d) in self.members.items() if k.startswith("state/")}
        for name, (_, dtype) in shapes.items():
            if dtype.kind == "U":
                raise CheckpointError(f"array {name} has dtype {dtype}; a checkpoint holds numbers only")
        return self._check_shapes(shapes)

    def arrays(self):
        with np.load(self.path, allow_pickle=False) as z:
            return {k[len("state/"):]: z[k] for k in z.files if k.startswith("state/")}


class _SafetensorsReader(_Reader):
    """A safetensors file: its JSON header (shapes, dtypes, offsets) checked against
    the file's size before a tensor is read; the handydl header in its metadata."""

    def __init__(self, path):
        super().__init__(path)
        self.f = open(path, "rb")
        try:
            self.entries, self.metadata, self.data_start = _safetensors.read_header(
                self.f, self.size, MAX_HEADER_BYTES, _parse_json)
        except _safetensors.FormatError as e:
            self.f.close()
            raise CheckpointError(f"corrupted or truncated checkpoint (not an .npz, and not "
                                  f"safetensors: {e})") from None

    def close(self):
        self.f.close()

    def header(self):
        if "handydl" not in self.metadata:
            raise CheckpointError(f"not a handydl checkpoint (a safetensors file of {len(self.entries)} "
                                  "tensors without handydl's architecture in its metadata)")
        return _parse_json(self.metadata["handydl"])

    def shapes(self):
        return self._check_shapes({k: (s, d) for k, (d, s, _) in self.entries.items()})

    def arrays(self):
        return {k: _safetensors.read_array(self.f, self.data_start, d, s, span)
                for k, (d, s, span) in self.entries.items()}

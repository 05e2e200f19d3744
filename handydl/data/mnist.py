"""MNIST and Fashion-MNIST: an IDX reader and a verified download into a cache.

IDX: a big-endian header (two zero bytes, a type code, the number of dims,
one uint32 per dim), then the data.  Files may be gzipped.  A download lands
in a temporary file, is checked against its SHA-256, and only then renamed
into place: a failed or corrupted download never leaves a file behind.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .datasets import DataError, Dataset

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SOURCES = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        FILES[0]: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        FILES[1]: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        FILES[2]: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        FILES[3]: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"}),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        FILES[0]: "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        FILES[1]: "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        FILES[2]: "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        FILES[3]: "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf"}),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into an array; DataError (a ValueError)
    naming the file if malformed."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupted gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize         # Python ints: no overflow for huge headers
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX data has {len(raw) - header} bytes, expected {expected} "
                         f"for shape {shape}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url, dest, expected_sha256, opener=urllib.request.urlopen):
    """Fetch ``url`` to ``dest`` atomically, verified by SHA-256; returns dest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, opener(url) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        got = sha256(tmp)
        if got != expected_sha256:
            raise ValueError(f"download of {url} failed verification: SHA-256 {got}, "
                             f"expected {expected_sha256}")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def default_cache():
    return Path(os.environ.get("HANDYDL_CACHE", Path.home() / ".cache" / "handydl"))


def load_mnist(root=None, kind="mnist", download_missing=False, opener=urllib.request.urlopen):
    """MNIST or Fashion-MNIST from ``root`` (default: the cache), as flattened float32 in [0, 1].

    Files already present are verified too; missing ones are downloaded only
    with ``download_missing=True``.
    """
    if kind not in SOURCES:
        raise ValueError(f"kind={kind!r} is not valid; expected one of {', '.join(SOURCES)}")
    base, hashes = SOURCES[kind]
    root = Path(root) if root is not None else default_cache() / kind
    paths, arrays = [], []
    for name in FILES:
        path = root / name
        if not path.exists():
            raw = root / name[:-3]                    # an uncompressed copy is fine too
            if raw.exists():
                paths.append(raw)
                arrays.append(read_idx(raw))
                continue
            if not download_missing:
                raise FileNotFoundError(f"{path} not found; pass download=True (or --download) "
                                        f"to fetch it from {base}")
            download(base + name, path, hashes[name], opener)
        elif sha256(path) != hashes[name]:
            raise DataError(f"{path}: SHA-256 does not match the published {kind} file")
        paths.append(path)
        arrays.append(read_idx(path))
    check_mnist(paths, arrays)
    Xtr, ytr, Xte, yte = arrays
    scale = np.float32(1 / 255)
    classes = FASHION_CLASSES if kind == "fashion_mnist" else [str(i) for i in range(10)]
    return Dataset(kind, Xtr.reshape(len(Xtr), -1).astype(np.float32) * scale, ytr.astype(np.int64),
                   Xte.reshape(len(Xte), -1).astype(np.float32) * scale, yte.astype(np.int64),
                   "classification", classes, [f"pixel{i}" for i in range(Xtr[0].size)])


def check_mnist(paths, arrays):
    """DataError naming the file unless the four arrays (train images, train labels,
    test images, test labels) are a usable MNIST: images (n, rows, cols) of bytes,
    n labels from 0 to 9 for n images, test images of the training images' size."""
    for images, labels, ipath, lpath in ((arrays[0], arrays[1], paths[0], paths[1]),
                                         (arrays[2], arrays[3], paths[2], paths[3])):
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
            raise DataError(f"{ipath}: expected images of unsigned bytes with shape (n, rows, cols), "
                            f"n >= 1; got {images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{lpath}: expected integer labels of shape (n,); got {labels.dtype} "
                            f"of shape {labels.shape}")
        if len(labels) != len(images):
            raise DataError(f"{lpath}: {len(labels)} labels, but {ipath.name} has {len(images)} images")
        bad = (labels < 0) | (labels > 9)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{lpath}: label {labels[i]} at index {i} is not valid; expected 0 to 9")
    if arrays[2].shape[1:] != arrays[0].shape[1:]:
        raise DataError(f"{paths[2]}: test images are {'x'.join(map(str, arrays[2].shape[1:]))}, but the "
                        f"training images ({paths[0].name}) are {'x'.join(map(str, arrays[0].shape[1:]))}")

"""The safetensors file format, read and written with NumPy alone (no pickle, no
package needed; the ``safetensors`` library reads what this writes).

Layout (https://github.com/huggingface/safetensors): an unsigned 64-bit
little-endian header length n, n bytes of JSON header, then the tensor data::

    {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape": [2, 3],
                                          "data_offsets": [begin, end]}, ...}

with offsets relative to the first byte after the header, the tensors
packed one after another (no holes, no overlaps), little-endian, C order.

``read_header`` checks all of that against the file's real size before a
single tensor byte is read, so a header that claims a 75 GB tensor in a
1 KB file is refused without allocating anything.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np

DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4",
          "I64": "<i8", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
METADATA = "__metadata__"


class FormatError(ValueError):
    """A file that is not well-formed safetensors (the message says what is wrong)."""


def write(f, arrays, metadata):
    """Write ``arrays`` ({name: ndarray}) and ``metadata`` ({str: str}) to the open binary file ``f``."""
    header, offset, blobs = {METADATA: dict(metadata)}, 0, []
    for name, a in arrays.items():
        a = np.asarray(a)            # (np.ascontiguousarray would make a 0-d array 1-d)
        code = CODES.get(a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype)
        if code is None:
            raise TypeError(f"safetensors: {name} has dtype {a.dtype}, which the format does not hold")
        blob = a.astype(DTYPES[code], copy=False).tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)          # the data starts 8-byte aligned, as the library writes
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for blob in blobs:
        f.write(blob)


def read_header(f, file_size, max_header_bytes, parse_json):
    """(entries {name: (dtype, shape, (begin, end))}, metadata {str: str}, data start) of the
    safetensors file ``f`` of ``file_size`` bytes; FormatError for anything malformed.

    ``parse_json(text)`` decodes the header (the caller bounds its nesting)."""
    raw = f.read(8)
    if len(raw) < 8:
        raise FormatError("shorter than a safetensors header length (8 bytes)")
    (n,) = struct.unpack("<Q", raw)
    if n > max_header_bytes or n > file_size - 8:
        raise FormatError(f"the header claims {n:,} bytes ({file_size:,} in the file, "
                          f"at most {max_header_bytes:,} read)")
    header = parse_json(f.read(n).decode("utf-8"))
    if not isinstance(header, dict):
        raise FormatError(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop(METADATA, {}) or {}
    if not (isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in metadata.items())):
        raise FormatError("__metadata__ must map strings to strings")
    data_size, entries, spans = file_size - 8 - n, {}, []
    for name, e in header.items():
        entries[name] = _entry(name, e, data_size)
        spans.append(entries[name][2])
    spans.sort()
    end = 0
    for begin, stop in spans:                 # packed one after another: no hole, no overlap
        if begin != end:
            raise FormatError(f"tensor data overlaps or leaves a hole at byte {min(begin, end)}")
        end = stop
    if end != data_size:
        raise FormatError(f"the tensors take {end:,} bytes but {data_size:,} follow the header")
    return entries, metadata, 8 + n


def _entry(name, e, data_size):
    if not isinstance(e, dict):
        raise FormatError(f"tensor {name!r}: expected a JSON object")
    code, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if code not in DTYPES:
        raise FormatError(f"tensor {name!r}: dtype {code!r} is not one of {', '.join(DTYPES)}")
    if not (isinstance(shape, list) and all(_count(s) for s in shape)):
        raise FormatError(f"tensor {name!r}: shape {shape!r} is not a list of integers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)
            and offsets[0] <= offsets[1] <= data_size):
        raise FormatError(f"tensor {name!r}: data_offsets {offsets!r} do not lie within the "
                          f"{data_size:,} data bytes")
    dtype = np.dtype(DTYPES[code])
    if math.prod(shape) * dtype.itemsize != offsets[1] - offsets[0]:
        raise FormatError(f"tensor {name!r}: shape {shape} of {code} needs "
                          f"{math.prod(shape) * dtype.itemsize:,} bytes, its offsets span "
                          f"{offsets[1] - offsets[0]:,}")
    return dtype, tuple(shape), (offsets[0], offsets[1])


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_array(f, data_start, dtype, shape, span):
    """One tensor, read into a fresh array (only after read_header checked its size)."""
    a = np.empty(shape, dtype)
    f.seek(data_start + span[0])
    if span[1] > span[0] and f.readinto(memoryview(a).cast("B")) != span[1] - span[0]:
        raise FormatError("the file ended inside a tensor")
    return a.astype(dtype.newbyteorder("="), copy=False)

"""User data: a CSV or .npz file with a named target column.

Every problem is reported with the file and the column before any training
starts: a missing file or target, a non-numeric feature, a missing or NaN value.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import Dataset, split

TASKS = ("classification", "regression")
MAX_CLASSES = 100      # an integer target with more distinct values is taken as regression


class DataError(ValueError):
    """A problem with a user's data file, naming the file and the column."""


@dataclass
class Table:
    columns: dict          # name -> 1-D array (float64, or str for non-numeric columns)
    path: Path

    def feature_matrix(self, names):
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise DataError(f"{self.path}: no column {missing[0]!r}; columns are: {', '.join(self.columns)}")
        for n in names:
            col = self.columns[n]
            if col.dtype.kind not in "fiu":
                bad = str(next(v for v in col if not _is_number(v)))
                row = int(np.flatnonzero(col == bad)[0]) + 1
                raise DataError(f"{self.path}: feature column {n!r} is not numeric "
                                f"(row {row}: {bad!r})")
            nan = np.isnan(col.astype(np.float64))
            if nan.any():
                raise DataError(f"{self.path}: column {n!r} has a missing or NaN value "
                                f"(row {int(np.flatnonzero(nan)[0]) + 1})")
        return np.stack([self.columns[n].astype(np.float32) for n in names], axis=1)


def _is_number(v):
    try:
        float(v)
        return True
    except ValueError:
        return False


def read_table(path) -> Table:
    """Read a CSV (with a header row) or an .npz file into named columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if path.suffix == ".npz":
        return _read_npz(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0]:
        raise DataError(f"{path}: empty file, expected a header row of column names")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    for i, r in enumerate(body, start=1):
        if len(r) != len(header):
            raise DataError(f"{path}: row {i} has {len(r)} fields, the header has {len(header)}")
    columns = {}
    for j, name in enumerate(header):
        values = [r[j].strip() for r in body]
        columns[name] = _parse_column(values)
    return Table(columns, path)


def _parse_column(values):
    """float64 where every cell is a number or empty (empty becomes NaN), else strings."""
    try:
        return np.array([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=str)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from None
    columns = {}
    for key, arr in data.items():
        if arr.ndim == 2:                     # a feature matrix: its columns are key0, key1, ...
            columns.update({f"{key}{j}": arr[:, j] for j in range(arr.shape[1])})
        elif arr.ndim == 1:
            columns[key] = arr
        else:
            raise DataError(f"{path}: array {key!r} has shape {arr.shape}; expected 1-D columns "
                            "or a 2-D feature matrix")
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise DataError(f"{path}: columns have different lengths {sorted(lengths)}")
    return Table(columns, path)


def load_table(path, target, task=None, seed=0, test_size=0.2) -> Dataset:
    """A Dataset from a user's file: every column but ``target`` is a feature.

    The task is classification when the target is text or integers with at
    most MAX_CLASSES distinct values, regression otherwise; ``task`` overrides.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task={task!r} is not valid; expected one of {', '.join(TASKS)}")
    table = read_table(path)
    if target not in table.columns:
        raise DataError(f"{table.path}: no target column {target!r}; columns are: "
                        f"{', '.join(table.columns)}")
    features = [n for n in table.columns if n != target]
    if not features:
        raise DataError(f"{table.path}: no feature columns besides the target {target!r}")
    X = table.feature_matrix(features)
    y_raw = table.columns[target]
    numeric = y_raw.dtype.kind in "fiu"
    if numeric and np.isnan(y_raw.astype(np.float64)).any():
        raise DataError(f"{table.path}: target column {target!r} has a missing or NaN value "
                        f"(row {int(np.flatnonzero(np.isnan(y_raw))[0]) + 1})")
    if task is None:
        integral = numeric and np.all(y_raw == np.round(y_raw))
        task = "classification" if not numeric or (integral and len(np.unique(y_raw)) <= MAX_CLASSES) \
            else "regression"
    if task == "regression":
        if not numeric:
            raise DataError(f"{table.path}: target column {target!r} is not numeric, "
                            "so it cannot be a regression target")
        y, classes = y_raw.astype(np.float32), []
    else:
        labels, y = np.unique(y_raw, return_inverse=True)
        classes = [_label(v) for v in labels]
        y = y.astype(np.int64)
    Xtr, ytr, Xte, yte = split(X, y, test_size=test_size, seed=seed,
                               stratify=task == "classification")
    return Dataset(Path(path).stem, Xtr, ytr, Xte, yte, task, classes, features)


def _label(v):
    """A class label as text: 3.0 reads as '3'."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)

"""User data: a CSV or .npz file with a named target column.

Every problem is reported with the file, the row and the column before any
training starts: a missing file or target, a file that is not UTF-8 or not
CSV, a header with an empty or repeated column name, no data rows, a
non-numeric feature, a missing, NaN or infinite value (or one too large for
float32, such as 1e400), a complex or otherwise unusable .npz array.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import TASKS, DataError, Dataset, split  # noqa: F401  (DataError is re-exported)

MAX_CLASSES = 100      # an integer target with more distinct values is taken as regression
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Table:
    columns: dict          # name -> 1-D array (float64 or integers, or str for non-numeric columns)
    path: Path

    @property
    def n_rows(self):
        return len(next(iter(self.columns.values())))

    def feature_matrix(self, names):
        """The named columns as a float32 matrix (rows, features); DataError naming
        the file, the column and the row for anything that is not a finite number."""
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
            self.check_finite(n, "column")
        return np.stack([self.columns[n].astype(np.float32) for n in names], axis=1)

    def check_finite(self, name, what):
        """DataError unless every value of a numeric column is finite in float32."""
        col = self.columns[name].astype(np.float64)
        nan = np.isnan(col)
        if nan.any():
            raise DataError(f"{self.path}: {what} {name!r} has a missing or NaN value "
                            f"(row {int(np.flatnonzero(nan)[0]) + 1})")
        big = ~(np.abs(col) <= FLOAT32_MAX)
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise DataError(f"{self.path}: {what} {name!r} has a non-finite value (row {i + 1}: "
                            f"{col[i]:g}); expected finite numbers of size below {FLOAT32_MAX:.1e} (float32)")


def _is_number(v):
    try:
        float(v)
        return True
    except ValueError:
        return False


def read_table(path) -> Table:
    """Read a CSV (UTF-8, with a header row) or an .npz file into named columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    table = _read_npz(path) if path.suffix == ".npz" else _read_csv(path)
    if table.n_rows == 0:
        raise DataError(f"{path}: no data rows (only column names)")
    return table


def _read_csv(path):
    rows = _csv_rows(path)
    if not rows or not rows[0]:
        raise DataError(f"{path}: empty file, expected a header row of column names")
    header, body = _header(path, rows[0]), [r for r in rows[1:] if r]
    for i, r in enumerate(body, start=1):
        if len(r) != len(header):
            raise DataError(f"{path}: row {i} has {len(r)} fields, the header has {len(header)}")
    columns = {}
    for j, name in enumerate(header):
        values = [r[j].strip() for r in body]
        columns[name] = _parse_column(values)
    return Table(columns, path)


def _csv_rows(path):
    """Every row of a UTF-8 CSV file (a byte-order mark is allowed); DataError naming
    the file for bytes that are not UTF-8 and for text the csv module refuses."""
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            return list(reader)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot be decoded); "
                        "save the file as UTF-8") from None
    except csv.Error as e:
        line = reader.line_num if reader is not None else 0
        if "field limit" in str(e):
            raise DataError(f"{path}: line {line}: a field is longer than {csv.field_size_limit():,} "
                            "characters, the csv module's limit; is this a CSV file?") from None
        raise DataError(f"{path}: line {line}: not valid CSV ({e})") from None


def _header(path, row):
    """Column names, stripped; DataError for an empty or a repeated name."""
    header = [h.strip() for h in row]
    seen = {}
    for j, name in enumerate(header, start=1):
        if not name:
            raise DataError(f"{path}: column {j} of the header has no name (a saved index? "
                            "write the file without it)")
        if name in seen:
            raise DataError(f"{path}: column name {name!r} appears twice in the header "
                            f"(columns {seen[name]} and {j}); column names must be unique")
        seen[name] = j
    return header


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
    if not data:
        raise DataError(f"{path}: the .npz file holds no arrays")
    columns = {}
    for key, arr in data.items():
        arr = _npz_array(path, key, arr)
        if arr.ndim == 2:                     # a feature matrix: its columns are key0, key1, ...
            named = {f"{key}{j}": arr[:, j] for j in range(arr.shape[1])}
        elif arr.ndim == 1:
            named = {key: arr}
        else:
            raise DataError(f"{path}: array {key!r} has shape {arr.shape}; expected 1-D columns "
                            "or a 2-D feature matrix")
        for name in named:
            if name in columns:
                raise DataError(f"{path}: two columns are named {name!r} (array {key!r} makes one); "
                                "column names must be unique")
        columns.update(named)
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise DataError(f"{path}: columns have different lengths {sorted(lengths)}")
    if not columns:
        raise DataError(f"{path}: the .npz file holds no columns")
    return Table(columns, path)


def _npz_array(path, key, arr):
    """Real numbers (booleans as 0/1) or text; DataError naming the array otherwise."""
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind not in "fiuU":
        raise DataError(f"{path}: array {key!r} has dtype {arr.dtype}; expected real numbers "
                        "(or text, for a target)")
    return arr


def load_table(path, target, task=None, seed=0, test_size=0.2) -> Dataset:
    """A Dataset from a user's file: every column but ``target`` is a feature.

    The task is classification when the target is text or integers with at
    most MAX_CLASSES distinct values, regression otherwise; ``task`` overrides.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"load_table: task={task!r} is not valid; expected one of {', '.join(TASKS)}")
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
    if numeric:
        table.check_finite(target, "target column")
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
    if not (len(Xtr) and len(Xte)):
        raise DataError(f"{table.path}: {table.n_rows} data rows are too few: the {test_size:.0%} test "
                        f"split leaves {len(Xtr)} training and {len(Xte)} test rows")
    return Dataset(Path(path).stem, Xtr, ytr, Xte, yte, task, classes, features)


def _label(v):
    """A class label as text: 3.0 reads as '3'."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)

"""Built-in datasets: train/test splits as float32 arrays, fixed by a seed.

The 8x8 handwritten digits ship inside scikit-learn (no download): the
embedded default.  Iris, breast cancer and wine likewise; two moons, spirals
and a regression problem are generated here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """A problem with a user's data, naming the file (or dataset), the row and the column."""


@dataclass
class Dataset:
    """A train/test split.  ``task`` is "classification" or "regression".

    Checked completely when it is made, so that nothing fails after an epoch
    of training: 2-D feature matrices of one width with at least one row,
    one target per row, finite features and targets, class labels in
    ``range(len(classes))``.  A problem raises DataError naming the dataset.
    """
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    task: str
    classes: list = field(default_factory=list)
    feature_names: list = field(default_factory=list)

    def __post_init__(self):
        check_dataset(self)

    @property
    def n_features(self):
        return self.X_train.shape[1]

    @property
    def n_outputs(self):
        return len(self.classes) if self.task == "classification" else 1


TASKS = ("classification", "regression")


def check_dataset(d):
    """DataError naming ``d.name`` unless ``d`` can be trained on and evaluated as it is."""
    if d.task not in TASKS:
        raise DataError(f"{d.name}: task={d.task!r} is not valid; expected one of {', '.join(TASKS)}")
    for part in ("train", "test"):
        X, y = getattr(d, f"X_{part}"), getattr(d, f"y_{part}")
        _check_features(d.name, part, X)
        if not isinstance(y, np.ndarray) or y.ndim != 1 or len(y) != len(X):
            raise DataError(f"{d.name}: y_{part} has shape {np.shape(y)}; expected ({len(X)},), "
                            f"one target per row of X_{part}")
        _check_targets(d, part, y)
    if d.X_test.shape[1] != d.X_train.shape[1]:
        raise DataError(f"{d.name}: the test set has {d.X_test.shape[1]} features per row, the training "
                        f"set {d.X_train.shape[1]}")
    if d.feature_names and len(d.feature_names) != d.X_train.shape[1]:
        raise DataError(f"{d.name}: {len(d.feature_names)} feature names for {d.X_train.shape[1]} features")


def _check_features(name, part, X):
    if not (isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f"):
        raise DataError(f"{name}: X_{part} is {_what(X)}; expected a 2-D float array (rows, features)")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise DataError(f"{name}: X_{part} has shape {X.shape}; expected at least one row and one feature")
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{name}: X_{part} has a non-finite value {X[row, col]} (row {row + 1}, "
                        f"feature {col + 1})")


def _check_targets(d, part, y):
    if d.task == "classification":
        if y.dtype.kind not in "iu":
            raise DataError(f"{d.name}: y_{part} has dtype {y.dtype}; class labels must be integers")
        bad = (y < 0) | (y >= len(d.classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{d.name}: y_{part} has label {y[i]} (row {i + 1}); expected 0 to "
                            f"{len(d.classes) - 1} for {len(d.classes)} classes")
    else:
        if y.dtype.kind != "f" or not np.isfinite(y).all():
            raise DataError(f"{d.name}: y_{part} must hold finite float targets for regression")


def _what(x):
    """'a float64 array of shape (3,)' or the type's name, for messages."""
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} array of shape {x.shape}"
    return f"a {type(x).__name__}"


def split(X, y, test_size=0.2, seed=0, stratify=True):
    """A seeded train/test split; stratified by class for integer labels."""
    rng = np.random.default_rng(seed)
    n = len(X)
    if stratify and y.dtype.kind in "iu":
        test = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            test.extend(idx[:int(round(test_size * len(idx)))])
        test = np.sort(np.array(test, dtype=np.int64))
    else:
        test = np.sort(rng.permutation(n)[:int(round(test_size * n))])
    train = np.setdiff1d(np.arange(n), test)
    train = rng.permutation(train)
    return X[train], y[train], X[test], y[test]


def _sklearn(loader_name):
    try:
        import sklearn.datasets as skd
    except ImportError as e:                      # pragma: no cover - depends on the machine
        raise ImportError(f"the {loader_name} dataset ships with scikit-learn: "
                          "pip install 'handydl[train]'") from e
    return getattr(skd, loader_name)()


def _from_bunch(name, bunch, seed, scale=None):
    X = bunch.data.astype(np.float32)
    if scale is not None:
        X = X / np.float32(scale)
    y = bunch.target.astype(np.int64)
    Xtr, ytr, Xte, yte = split(X, y, seed=seed)
    classes = [str(c) for c in getattr(bunch, "target_names", np.unique(y))]
    return Dataset(name, Xtr, ytr, Xte, yte, "classification", classes,
                   [str(f) for f in getattr(bunch, "feature_names", [])])


def digits(seed=0):
    """8x8 grey-level digits, 1,797 images, pixel values scaled to [0, 1]."""
    bunch = _sklearn("load_digits")
    return _from_bunch("digits", bunch, seed, scale=16.0)


def iris(seed=0):
    return _from_bunch("iris", _sklearn("load_iris"), seed)


def breast_cancer(seed=0):
    return _from_bunch("breast_cancer", _sklearn("load_breast_cancer"), seed)


def wine(seed=0):
    return _from_bunch("wine", _sklearn("load_wine"), seed)


def _synthetic(name, X, y, seed, task="classification"):
    Xtr, ytr, Xte, yte = split(X.astype(np.float32), y, seed=seed, stratify=task == "classification")
    classes = [str(c) for c in np.unique(y)] if task == "classification" else []
    return Dataset(name, Xtr, ytr, Xte, yte, task, classes, [f"x{i}" for i in range(X.shape[1])])


def moons(n=1000, noise=0.1, seed=0):
    """Two interleaving half circles."""
    rng = np.random.default_rng(seed)
    n1 = n // 2
    t1, t2 = rng.uniform(0, np.pi, n1), rng.uniform(0, np.pi, n - n1)
    X = np.concatenate([np.c_[np.cos(t1), np.sin(t1)], np.c_[1 - np.cos(t2), 0.5 - np.sin(t2)]])
    X += rng.normal(0, noise, X.shape)
    y = np.r_[np.zeros(n1, np.int64), np.ones(n - n1, np.int64)]
    return _synthetic("moons", X, y, seed)


def spirals(n=1000, classes=2, noise=0.2, seed=0):
    """Interleaved spiral arms, one per class (a classic hard toy problem)."""
    rng = np.random.default_rng(seed)
    per = n // classes
    X, y = [], []
    for c in range(classes):
        r = np.linspace(0.1, 1, per)
        t = np.linspace(c * 2 * np.pi / classes, c * 2 * np.pi / classes + 3 * np.pi, per) + rng.normal(0, noise, per) * 0.3
        X.append(np.c_[r * np.sin(t), r * np.cos(t)] * 2)
        y.append(np.full(per, c, np.int64))
    return _synthetic("spirals", np.concatenate(X), np.concatenate(y), seed)


def regression(n=1000, n_features=5, noise=0.1, seed=0):
    """y = a smooth nonlinear function of x plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (n, n_features))
    w = rng.standard_normal(n_features)
    y = np.sin(X @ w) + 0.5 * X[:, 0] ** 2 + rng.normal(0, noise, n)
    return _synthetic("regression", X, y.astype(np.float32), seed, task="regression")


DATASETS = {"digits": digits, "iris": iris, "breast_cancer": breast_cancer, "wine": wine,
            "moons": moons, "spirals": spirals, "regression": regression}


def load_dataset(name, seed=0, root=None, download=False):
    """A built-in dataset by name; mnist / fashion_mnist read ``root`` (or the cache)
    and fetch missing files only with ``download=True``."""
    if name in ("mnist", "fashion_mnist"):
        from .mnist import load_mnist
        return load_mnist(root, kind=name, download_missing=download)
    try:
        return DATASETS[name](seed=seed)
    except KeyError:
        valid = ", ".join(list(DATASETS) + ["mnist", "fashion_mnist"])
        raise DataError(f"unknown dataset {name!r}; valid datasets: {valid}") from None

"""DataLoader: mini-batches of (X, y), deterministic for a given seed."""
from __future__ import annotations

import math

import numpy as np


class DataLoader:
    """Iterates ``(X_batch, y_batch)`` over the first axis.

    Without shuffling the batches are views of X and y (no copy).  With
    shuffling, each epoch gathers the permuted rows once into a new array and
    yields views of it, so every batch is contiguous.  ``seed`` makes the order
    reproducible: epoch k of two loaders with the same seed is the same.
    ``drop_last`` drops the incomplete last batch (with shuffling, a different
    few rows each epoch): BatchNorm cannot train on a batch of one row.
    """

    def __init__(self, X, y=None, batch_size=32, shuffle=False, seed=None, drop_last=False):
        self.X = np.asarray(X)
        self.y = None if y is None else np.asarray(y)
        for name, a in (("X", self.X), ("y", self.y)):
            if a is not None and a.ndim == 0:
                raise ValueError(f"DataLoader: {name} is a 0-d array; expected rows along the first axis")
        if self.y is not None and len(self.y) != len(self.X):
            raise ValueError(f"DataLoader: X has {len(self.X)} rows but y has {len(self.y)}")
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"DataLoader: batch_size={batch_size!r} is not valid; expected an integer >= 1")
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        n = len(self.X)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        X, y = self.X, self.y
        if self.shuffle:
            order = self.rng.permutation(len(X))
            X = np.take(X, order, axis=0)
            y = None if y is None else np.take(y, order, axis=0)
        bs = self.batch_size
        for i in range(len(self)):
            sl = slice(i * bs, (i + 1) * bs)
            yield (X[sl], None if y is None else y[sl])

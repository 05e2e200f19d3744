"""handydl's global random generator, for initialization and dropout when no
seed is given.  ``handydl.manual_seed(s)`` makes a whole run reproducible."""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Reseed the generator used when a module gets no ``rng``."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator

"""handydl: deep learning with every derivative written by hand and proved by machine."""
from . import nn, ops  # noqa: F401
from ._fast.blas import blas_threads  # noqa: F401
from ._fast.malloc import tune_malloc  # noqa: F401
from ._random import manual_seed  # noqa: F401
from .check import GradcheckError, gradcheck, jacobian  # noqa: F401

__version__ = "0.1.0"

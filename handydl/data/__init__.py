"""handydl.data: batching, built-in datasets, MNIST, and user tables."""
from .datasets import (DATASETS, Dataset, breast_cancer, digits, iris, load_dataset, moons,  # noqa: F401
                       regression, spirals, split, wine)
from .loader import DataLoader  # noqa: F401
from .mnist import load_mnist, read_idx  # noqa: F401
from .table import DataError, load_table, read_table  # noqa: F401

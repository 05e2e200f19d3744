"""handydl.data: batching, built-in datasets, MNIST, and user tables."""
from .datasets import (DATASETS, DataError, Dataset, breast_cancer, check_dataset, digits,  # noqa: F401
                       iris, load_dataset, moons, regression, spirals, split, wine)
from .loader import DataLoader  # noqa: F401
from .mnist import check_mnist, load_mnist, read_idx  # noqa: F401
from .table import load_table, read_table  # noqa: F401

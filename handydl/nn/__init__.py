"""handydl.nn: stateful modules named and parametrized like torch.nn."""
from .module import Module, Parameter  # noqa: F401
from .layers import (ACTIVATIONS, CELU, ELU, GELU, PReLU, ReLU, ReLU6, SELU,  # noqa: F401
                     BatchNorm1d, Dropout, Flatten, Hardsigmoid, Hardswish, Identity,
                     LayerNorm, LeakyReLU, Linear, LogSoftmax, LpNorm, Mish, OpModule,
                     Sequential, SiLU, Sigmoid, Softmax, Softplus, Standardize, SumNormalize,
                     Tanh, activation, module_spec)
from .loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HalfSquaredErrorLoss,  # noqa: F401
                   HuberLoss, L1Loss, Loss, MSELoss, MultiMarginLoss, NLLLoss,
                   ProbCrossEntropyLoss)
from .init import INITS, init_linear  # noqa: F401
from .mlp import MLP  # noqa: F401

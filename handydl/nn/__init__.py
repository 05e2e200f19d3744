"""handydl.nn: stateful modules named and parametrized like torch.nn.

The modules of the elementwise ops (Sigmoid, ReLU, GELU, Softmax, ...) and of
the wiring ops (Add, Mul, Concat, Split) are generated from the op registry
(``layers.GENERATED``); the rest are written here by hand.
"""
from .module import Module, Parameter, call_backward, is_grad_enabled, no_grad  # noqa: F401
from .layers import (ACTIVATIONS, GENERATED, PReLU, BatchNorm1d, Dropout,  # noqa: F401
                     Flatten, LayerNorm, Linear, OpFunction, OpModule, Sequential, Standardize, Unflatten,
                     activation)
from .composite import GLU, MERGES, ModuleDict, ModuleList, Parallel, Residual  # noqa: F401
from .examples import EXAMPLES, example  # noqa: F401
from .loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HalfSquaredErrorLoss,  # noqa: F401
                   HuberLoss, L1Loss, Loss, MSELoss, MultiMarginLoss, NLLLoss,
                   ProbCrossEntropyLoss)
from .init import INITS, init_linear  # noqa: F401
from .mlp import MLP  # noqa: F401

globals().update(GENERATED)     # Sigmoid, Tanh, ReLU, ..., Add, Concat, Split
from .pooling import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, GroupNorm, MaxPool2d  # noqa: F401,E402
from .conv import Conv1d, Conv2d, ConvTranspose2d  # noqa: F401,E402
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell  # noqa: F401,E402
from .loss import SequenceCrossEntropyLoss  # noqa: F401,E402
from .layers import Bilinear, RMSNorm  # noqa: F401,E402
from .instance_norm import InstanceNorm1d, InstanceNorm2d  # noqa: F401,E402
from .padding import (CircularPad1d, CircularPad2d, ConstantPad1d, ConstantPad2d,  # noqa: F401,E402
                      ReflectionPad1d, ReflectionPad2d, ReplicationPad1d, ReplicationPad2d, ZeroPad1d,
                      ZeroPad2d)
from .loss import (CosineEmbeddingLoss, GaussianNLLLoss, HingeEmbeddingLoss, KLDivLoss,  # noqa: F401,E402
                   MarginRankingLoss, MultiLabelMarginLoss, MultiLabelSoftMarginLoss, PoissonNLLLoss,
                   SmoothL1Loss, SoftMarginLoss)
from .attention import (Embedding, LearnedPositionalEmbedding, MultiheadAttention,  # noqa: F401,E402
                        SinusoidalPositionalEmbedding, TransformerEncoderLayer)
from .gpt import GPT, CausalSelfAttention, GPTBlock, GPTMLP  # noqa: F401,E402

"""handydl.ops: pure functions with hand-derived backward passes, one registry.

``REGISTRY`` maps each name to its :class:`Op`; importing this package
registers every op.  Each op is callable (``ops.sigmoid(x)``) and has
``forward``/``backward`` (see :mod:`handydl.ops.registry`).
"""
from .registry import REGISTRY, Op, as_float, get, names, register, set_recorder  # noqa: F401
from .activations import (celu, elu, gelu, glu, hardshrink, hardsigmoid, hardswish, hardtanh,  # noqa: F401
                          identity, leaky_relu, logsigmoid, mish, prelu, relu, relu6, selu,
                          sigmoid, silu, softplus, softshrink, softsign, tanh, tanhshrink, threshold)
from .softmax import (log_softmax, log_softmax_jacobian, softmax, softmax2d,  # noqa: F401
                      softmax_jacobian, softmin, sum_normalize)
from .linear import bilinear, chain_matmul, linear, matmul  # noqa: F401
from .normalization import (batch_norm, batch_norm2d, batch_norm2d_eval, batch_norm_eval,  # noqa: F401
                            group_norm, layer_norm, local_response_norm, lp_norm, rms_norm,
                            standardize)
from .losses import (REDUCTIONS, binary_cross_entropy,  # noqa: F401
                     binary_cross_entropy_with_logits, cross_entropy, half_squared_error,
                     huber_loss, l1_loss, mse_loss, multi_margin_loss, nll_loss,
                     prob_cross_entropy)
from .losses import (cosine_embedding_loss, gaussian_nll_loss, hinge_embedding_loss,  # noqa: F401
                     kl_div, margin_ranking_loss, multilabel_margin_loss,
                     multilabel_soft_margin_loss, poisson_nll_loss, smooth_l1_loss, soft_margin_loss)
from .dropout import dropout  # noqa: F401
from .structure import add, concat, mul, permute, reshape, split, unbroadcast  # noqa: F401
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d  # noqa: F401
from .conv import conv1d, conv2d, conv_transpose2d  # noqa: F401
from .recurrent import (gru, gru_cell, lstm, lstm_cell, rnn_relu, rnn_relu_cell, rnn_tanh,  # noqa: F401
                        rnn_tanh_cell)
from .embedding import embedding  # noqa: F401
from .attention import attention_weights, scaled_dot_product_attention  # noqa: F401
from .padding import pad  # noqa: F401

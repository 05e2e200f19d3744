"""Loss modules: ``loss = loss_fn(input, target)`` returns a float (or the
per-item array with reduction="none"); ``loss_fn.backward()`` returns dL/dinput.

The target is data: like a model's input it gets no gradient unless asked
for (``backward(target_grad=True)`` returns ``(dL/dinput, dL/dtarget)``, the
second None where the op does not differentiate its target, as for class
indices)."""
from __future__ import annotations

import numpy as np

from .. import ops, tape
from .module import Module, check_gy


class Loss(Module):
    op: ops.Op = None

    def __init__(self, reduction="mean", **params):
        super().__init__()
        try:
            self.params = self.op.bind({"reduction": reduction, **params})
        except (TypeError, ValueError) as e:      # the op's name in front: the class's instead
            head, sep, rest = str(e).partition(": ")
            if sep and head == self.op.name:
                raise type(e)(f"{type(self).__name__}: {rest}") from None
            raise

    @property
    def reduction(self):
        return self.params["reduction"]

    def forward(self, input, target):
        return self._forward((input, target))

    def _forward(self, inputs):
        loss, saved = self.op.run(inputs, self.params)     # params bound at __init__
        self.save(saved, np.shape(loss))
        if tape.recording():            # the tape follows arrays: keep the 0-d one it recorded
            return loss
        return float(loss) if np.ndim(loss) == 0 else loss

    def backward(self, gy=1.0, target_grad=False):
        """dL/dinput for the latest call not yet differentiated, scaled by ``gy`` (an
        array of the loss's shape with reduction="none"); with ``target_grad=True``
        one gradient per positional input (dL/dtarget None).  A loss of several
        differentiable inputs (MarginRankingLoss's input1, input2; GaussianNLLLoss's
        input, var) returns their gradients as a tuple."""
        saved, shape = self._peek_saved()
        gy = check_gy(gy, shape, type(self).__name__)
        grads = self.op.backward(saved, gy)
        self.saved()
        if target_grad:
            return tuple(grads)
        wanted = tuple(g for g, d in zip(grads, self.op.differentiable) if d)
        return wanted[0] if len(wanted) == 1 else wanted

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items() if v is not None)


class MSELoss(Loss):
    op = ops.mse_loss


class L1Loss(Loss):
    op = ops.l1_loss


class HuberLoss(Loss):
    op = ops.huber_loss

    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction, delta=delta)


class HalfSquaredErrorLoss(Loss):
    """L = 1/N sum 1/2 (y - p)^2: the delta rule's loss, gradient (p - y)/N."""
    op = ops.half_squared_error


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy on logits (class indices or probabilities as targets)."""
    op = ops.cross_entropy

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction, weight=weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing)


class NLLLoss(Loss):
    op = ops.nll_loss

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction, weight=weight, ignore_index=ignore_index)


class ProbCrossEntropyLoss(Loss):
    """-sum y log(p + eps) on probabilities (the textbook form; prefer CrossEntropyLoss)."""
    op = ops.prob_cross_entropy

    def __init__(self, eps=1e-12, reduction="mean"):
        super().__init__(reduction, eps=eps)


class BCELoss(Loss):
    op = ops.binary_cross_entropy

    def __init__(self, weight=None, reduction="mean"):
        super().__init__(reduction, weight=weight)


class BCEWithLogitsLoss(Loss):
    op = ops.binary_cross_entropy_with_logits

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction, weight=weight, pos_weight=pos_weight)


class MultiMarginLoss(Loss):
    """The multi-class SVM hinge loss."""
    op = ops.multi_margin_loss

    def __init__(self, p=1, margin=1.0, weight=None, reduction="mean"):
        super().__init__(reduction, p=p, margin=margin, weight=weight)


class SmoothL1Loss(Loss):
    """Quadratic below beta, linear above (beta = 0: the L1 loss)."""
    op = ops.smooth_l1_loss

    def __init__(self, reduction="mean", beta=1.0):
        super().__init__(reduction, beta=beta)


class SoftMarginLoss(Loss):
    """log(1 + e^{-y x}) for targets y in {-1, 1}."""
    op = ops.soft_margin_loss


class KLDivLoss(Loss):
    """KL(target || q) with input = log q; reduction "batchmean" is the KL per sample."""
    op = ops.kl_div

    def __init__(self, reduction="mean", log_target=False):
        super().__init__(reduction, log_target=log_target)


class PoissonNLLLoss(Loss):
    """Poisson negative log-likelihood of counts; the input is the log-rate (log_input)."""
    op = ops.poisson_nll_loss

    def __init__(self, log_input=True, full=False, eps=1e-8, reduction="mean"):
        super().__init__(reduction, log_input=log_input, full=full, eps=eps)


class GaussianNLLLoss(Loss):
    """Gaussian negative log-likelihood: ``loss_fn(input, target, var)``; backward returns
    (dL/dinput, dL/dvar)."""
    op = ops.gaussian_nll_loss

    def __init__(self, full=False, eps=1e-6, reduction="mean"):
        super().__init__(reduction, full=full, eps=eps)

    def forward(self, input, target, var):
        return self._forward((input, target, var))


class MarginRankingLoss(Loss):
    """max(0, margin - y (x1 - x2)): ``loss_fn(input1, input2, target)``; backward returns
    (dL/dinput1, dL/dinput2)."""
    op = ops.margin_ranking_loss

    def __init__(self, margin=0.0, reduction="mean"):
        super().__init__(reduction, margin=margin)

    def forward(self, input1, input2, target):
        return self._forward((input1, input2, target))


class HingeEmbeddingLoss(Loss):
    """x for similar pairs (y = 1), max(0, margin - x) for dissimilar ones (y = -1)."""
    op = ops.hinge_embedding_loss

    def __init__(self, margin=1.0, reduction="mean"):
        super().__init__(reduction, margin=margin)


class CosineEmbeddingLoss(Loss):
    """1 - cos for similar pairs, max(0, cos - margin) for dissimilar ones:
    ``loss_fn(input1, input2, target)``; backward returns (dL/dinput1, dL/dinput2)."""
    op = ops.cosine_embedding_loss

    def __init__(self, margin=0.0, reduction="mean"):
        super().__init__(reduction, margin=margin)

    def forward(self, input1, input2, target):
        return self._forward((input1, input2, target))


class MultiLabelSoftMarginLoss(Loss):
    """One logistic loss per class, averaged over the classes."""
    op = ops.multilabel_soft_margin_loss

    def __init__(self, weight=None, reduction="mean"):
        super().__init__(reduction, weight=weight)


class MultiLabelMarginLoss(Loss):
    """The multi-label hinge; the target lists each sample's labels, ended by -1."""
    op = ops.multilabel_margin_loss


class SequenceCrossEntropyLoss(CrossEntropyLoss):
    r"""Cross-entropy of a sequence model's logits: ``input`` (B, T, V), ``target`` (B, T)
    token ids; "mean" averages over the tokens whose target is not ``ignore_index``.

    The loss of ``CrossEntropyLoss`` on the (B*T, V) rows, which is PyTorch's
    ``F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=...)`` as
    nanoGPT writes it (CrossEntropyLoss itself takes PyTorch's (N, C, d1) layout,
    the classes on dim 1).  Backward:
    :math:`g_{b,t} = (\mathrm{softmax}(x_{b,t}) - \mathrm{onehot}(y_{b,t})) / n`, n the
    number of counted tokens (rows of ignored tokens get 0); dL/dinput is (B, T, V).
    reduction="none" gives the (B, T) losses.
    """

    def forward(self, input, target):
        x, t = np.asarray(input), np.asarray(target)
        if x.ndim != 3 or t.shape != x.shape[:2]:
            raise ValueError(f"SequenceCrossEntropyLoss: expected logits of shape (B, T, V) and targets "
                             f"of shape (B, T), got {x.shape} and {t.shape}")
        rows, _ = ops.reshape.forward(x, shape=(-1, x.shape[-1]))      # ops: a tape sees them
        loss, saved = self.op.run((rows, t.reshape(-1)), self.params)
        if self.reduction == "none":
            loss, _ = ops.reshape.forward(loss, shape=t.shape)
        self.save(saved, np.shape(loss), x.shape)
        if tape.recording():
            return loss
        return float(loss) if np.ndim(loss) == 0 else loss

    def backward(self, gy=1.0, target_grad=False):
        saved, shape, x_shape = self._peek_saved()
        gy = check_gy(gy, shape, type(self).__name__)
        grads = self.op.backward(saved, gy.reshape(-1) if gy.ndim else gy)
        self.saved()
        gx = grads[0].reshape(x_shape)
        return (gx, None) if target_grad else gx

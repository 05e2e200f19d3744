"""handydl.optim: optimizers, learning-rate schedules and gradient clipping."""
from .lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR  # noqa: F401
from .optimizer import SGD, Adam, AdamW, Optimizer, clip_grad_norm  # noqa: F401

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}

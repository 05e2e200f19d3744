"""Convolutional networks built from handydl's modules: a LeNet-style CNN and a
small ResNet, for images of shape (channels, height, width).

Both are plain module trees (Sequential, Residual, Conv2d, ...), so they
gradcheck, save and load like any other model; ``handydl train --model cnn``
and ``--model resnet`` put ``Unflatten`` in front of them to take rows of
pixels.
"""
from __future__ import annotations

import numpy as np

from .composite import Residual
from .layers import Dropout, Flatten, Linear, ReLU, Sequential
from .module import resolve_rng


def _conv(n_in, n_out, k, rng, dtype, stride=1, bias=True):
    from .conv import Conv2d
    return Conv2d(n_in, n_out, k, stride=stride, padding=k // 2, bias=bias, dtype=dtype, rng=rng)


def lenet(image_shape=(1, 8, 8), n_classes=10, channels=(32, 64), hidden=128, dropout=0.0,
          dtype=np.float32, rng=None):
    """(conv 3x3 - ReLU - max pool 2) per entry of ``channels``, then Flatten,
    Linear - ReLU (- Dropout) - Linear: LeNet's shape, sized for the 8x8 digits by default."""
    from .pooling import MaxPool2d
    c, h, w = _image_shape(image_shape)
    rng = resolve_rng(rng)
    layers = []
    for n in channels:
        if h < 2 or w < 2:
            raise ValueError(f"lenet: an image of {image_shape} is too small for {len(channels)} "
                             "conv + pool stages (each halves the height and width)")
        layers += [_conv(c, n, 3, rng, dtype), ReLU(), MaxPool2d(2)]
        c, h, w = n, h // 2, w // 2
    layers += [Flatten(), Linear(c * h * w, hidden, dtype=dtype, rng=rng), ReLU()]
    if dropout:
        layers.append(Dropout(dropout, seed=rng))
    layers.append(Linear(hidden, n_classes, dtype=dtype, rng=rng))
    return Sequential(*layers)


def basic_block(n_in, n_out, stride=1, dtype=np.float32, rng=None):
    """ResNet's basic block: ReLU(x + BN(conv(ReLU(BN(conv(x)))))), with a 1x1 strided
    convolution and BatchNorm2d on the skip path where the shape changes."""
    from .pooling import BatchNorm2d
    rng = resolve_rng(rng)
    main = Sequential(_conv(n_in, n_out, 3, rng, dtype, stride, bias=False), BatchNorm2d(n_out, dtype=dtype),
                      ReLU(), _conv(n_out, n_out, 3, rng, dtype, bias=False), BatchNorm2d(n_out, dtype=dtype))
    shortcut = None
    if stride != 1 or n_in != n_out:
        from .conv import Conv2d
        shortcut = Sequential(Conv2d(n_in, n_out, 1, stride=stride, bias=False, dtype=dtype, rng=rng),
                              BatchNorm2d(n_out, dtype=dtype))
    return Sequential(Residual(main, shortcut), ReLU())


def resnet(image_shape=(1, 8, 8), n_classes=10, widths=(16, 32), dtype=np.float32, rng=None):
    """A small ResNet: a 3x3 stem, one basic block per width (stride 2 from the
    second on, with a projection), global average pooling and a Linear head."""
    from .pooling import AdaptiveAvgPool2d, BatchNorm2d
    c, _, _ = _image_shape(image_shape)
    rng = resolve_rng(rng)
    layers = [_conv(c, widths[0], 3, rng, dtype, bias=False), BatchNorm2d(widths[0], dtype=dtype), ReLU()]
    for i, w in enumerate(widths):
        layers.append(basic_block(widths[max(i - 1, 0)], w, stride=1 if i == 0 else 2, dtype=dtype, rng=rng))
    layers += [AdaptiveAvgPool2d(1), Flatten(), Linear(widths[-1], n_classes, dtype=dtype, rng=rng)]
    return Sequential(*layers)


def _image_shape(shape):
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape={shape!r} is not valid; expected (channels, height, width)")
    return shape

"""Custom torch.autograd.Functions for `handydl gradcheck` (README, "PyTorch and JAX code"):
MyReLU is right, MyAffine has a planted bug in its bias gradient."""
import torch


class MyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, gy):
        x, = ctx.saved_tensors
        return gy * (x > 0).to(gy.dtype)        # ReLU'(0) = 0, as torch.relu


class MyAffine(torch.autograd.Function):        # y = x W + b
    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return x @ W + b

    @staticmethod
    def backward(ctx, gy):
        x, W = ctx.saved_tensors
        return gy @ W.T, x.T @ gy, gy.sum(1)    # bug: the bias gradient summed over axis 1

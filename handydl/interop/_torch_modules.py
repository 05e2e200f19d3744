"""Small torch.nn modules for the handydl modules that torch.nn has no class for:
composites (Residual, Parallel, a Sequential that passes several outputs on),
fixed standardization, and the parameter-free wiring ops.  Imported only by
:mod:`handydl.interop.pytorch`, so that importing handydl never imports torch.

Each computes what its handydl namesake computes, and autograd differentiates
it; the tests compare both, forward and backward.
"""
from __future__ import annotations

import torch
from torch import nn


class Sequential(nn.Sequential):
    """nn.Sequential that feeds a tuple of outputs to the next module as several
    inputs, as handydl's Sequential does (after a Split, or a Parallel of merge "tuple")."""

    def forward(self, x):
        for m in self:
            x = m(*x) if isinstance(x, tuple) else m(x)
        return x


class Residual(nn.Module):
    """y = x + f(x), or shortcut(x) + f(x)."""

    def __init__(self, f, shortcut=None):
        super().__init__()
        self.f, self.shortcut = f, shortcut

    def forward(self, x):
        return (x if self.shortcut is None else self.shortcut(x)) + self.f(x)


class Parallel(nn.Module):
    """Every branch on the same input; outputs summed, concatenated along ``dim``, or a tuple.
    Branches are children "0", "1", ... as in handydl (same state_dict names)."""

    def __init__(self, branches, merge="sum", dim=-1):
        super().__init__()
        for name, b in branches:
            self.add_module(name, b)
        self.merge, self.dim = merge, dim

    def forward(self, x):
        outs = [b(x) for b in self.children()]
        if self.merge == "tuple":
            return tuple(outs)
        if self.merge == "concat":
            return torch.cat(outs, dim=self.dim)
        y = outs[0]
        for o in outs[1:]:
            y = y + o
        return y


class Standardize(nn.Module):
    """y = (x - mean) / std, with the statistics as buffers."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


class SumNormalize(nn.Module):
    """y = x / sum(x) along ``dim``."""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x / x.sum(dim=self.dim, keepdim=True)


class LpNorm(nn.Module):
    """The p-norm of x along ``dim`` (torch.linalg.vector_norm)."""

    def __init__(self, p=2.0, dim=-1, keepdim=False):
        super().__init__()
        self.p, self.dim, self.keepdim = p, dim, keepdim

    def forward(self, x):
        return torch.linalg.vector_norm(x, ord=self.p, dim=self.dim, keepdim=self.keepdim)


class Add(nn.Module):
    def forward(self, a, b):
        return a + b


class Mul(nn.Module):
    def forward(self, a, b):
        return a * b


class Concat(nn.Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim)


class Split(nn.Module):
    def __init__(self, split_size_or_sections=2, dim=-1):
        super().__init__()
        self.split_size_or_sections, self.dim = split_size_or_sections, dim

    def forward(self, x):
        return tuple(torch.split(x, self.split_size_or_sections, self.dim))


class LearnedPositionalEmbedding(nn.Module):
    """y = x + weight[:T] for x of shape (..., T, D)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return x + self.weight[: x.shape[-2]]


class SinusoidalPositionalEmbedding(nn.Module):
    """y = x + pe[:T], the fixed sinusoid table as a buffer."""

    def __init__(self, pe):
        super().__init__()
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[: x.shape[-2]]


# -- nanoGPT's pieces, with handydl's (and nanoGPT's) child names ---------------------------------

class CausalSelfAttention(nn.Module):
    """c_attn (C -> 3C), heads through scaled_dot_product_attention(is_causal=True), c_proj, dropout."""

    def __init__(self, c_attn, c_proj, resid_dropout, n_head, dropout):
        super().__init__()
        self.c_attn, self.c_proj, self.resid_dropout = c_attn, c_proj, resid_dropout
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))
        y = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


class GPTMLP(nn.Module):
    def __init__(self, c_fc, gelu, c_proj, dropout):
        super().__init__()
        self.c_fc, self.gelu, self.c_proj, self.dropout = c_fc, gelu, c_proj, dropout

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class GPTBlock(nn.Module):
    def __init__(self, ln_1, attn, ln_2, mlp):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab): wte + wpe, dropout, the blocks, ln_f, and the
    head: wte's weight itself when tied (F.linear(x, wte.weight)), else lm_head."""

    def __init__(self, wte, wpe, drop, h, ln_f, lm_head=None):
        super().__init__()
        self.wte, self.wpe, self.drop, self.h, self.ln_f = wte, wpe, drop, h, ln_f
        self.lm_head = lm_head

    def forward(self, idx):
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        return torch.nn.functional.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)

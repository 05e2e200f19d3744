r"""The ops that wire a graph together: sums, products, concatenation, splitting
and reshaping.

They carry the rule that makes graphs that are not chains work:

- a value used twice (a fork) has the sum of both uses' gradients;
- a sum passes its upstream gradient unchanged to each term (``add``), summed
  over any axis that broadcasting repeated a term along;
- ``concat`` and ``split`` are each other's backward: the gradient of a
  concatenation is the upstream gradient cut into the same pieces, and the
  gradient of a split is its pieces' gradients put back together.

Written with these ops, a forward is visible to :mod:`handydl.tape`, which can
then differentiate it from the hand-derived backwards alone.
"""
from __future__ import annotations

import numpy as np

from .registry import as_float, register


def unbroadcast(g, shape):
    """Sum ``g`` over the axes that broadcasting added to or stretched in ``shape``:
    the adjoint of ``np.broadcast_to(x, g.shape)``."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def _pair_sample(rng, dtype, lo, hi):
    # b broadcasts along the rows, so the tests exercise unbroadcast too
    return (rng.uniform(lo, hi, size=(4, 5)).astype(dtype),
            rng.uniform(lo, hi, size=(5,)).astype(dtype))


@register(
    "add", module="Add", kind="structure",
    formula=r"y = a + b",
    derivative=r"g_a = g_y,\quad g_b = g_y \quad\text{(summed over broadcast axes)}",
    inputs=("a", "b"), complex_step=True, sample=_pair_sample,
    domains=((-6.0, 6.0), (-1000.0, 1000.0)),
    reference=lambda torch, a, b: a + b,
)
def add(a, b):
    """y = a + b with NumPy broadcasting; the skip connection of a residual block."""
    a, b = as_float(a), as_float(b)
    return a + b, (a.shape, b.shape)


@add.set_backward
def _add_backward(saved, gy):
    a_shape, b_shape = saved
    return unbroadcast(gy, a_shape), unbroadcast(gy, b_shape)


@register(
    "mul", module="Mul", kind="structure",
    formula=r"y = a \odot b",
    derivative=r"g_a = g_y \odot b,\quad g_b = g_y \odot a \quad\text{(summed over broadcast axes)}",
    inputs=("a", "b"), complex_step=True, sample=_pair_sample,
    domains=((-6.0, 6.0), (-100.0, 100.0)),
    reference=lambda torch, a, b: a * b,
)
def mul(a, b):
    """y = a * b elementwise, with broadcasting (a gate, a scale)."""
    a, b = as_float(a), as_float(b)
    return a * b, (a, b)


@mul.set_backward
def _mul_backward(saved, gy):
    a, b = saved
    return unbroadcast(gy * b, a.shape), unbroadcast(gy * a, b.shape)


def _concat_sample(rng, dtype, lo, hi):
    return tuple(rng.uniform(lo, hi, size=(3, n)).astype(dtype) for n in (2, 4, 1))


def _check_dim(dim, ndim, who):
    if not -ndim <= dim < ndim:
        raise ValueError(f"{who}: dim={dim} is out of range for an input with {ndim} dims")
    return dim % ndim


@register(
    "concat", module="Concat", kind="structure",
    formula=r"y = [x_1, x_2, \dots, x_n] \text{ along dim}",
    derivative=r"g_{x_i} = \text{the slice of } g_y \text{ where } x_i \text{ stands}",
    inputs=("*x",), params={"dim": -1}, complex_step=True, sample=_concat_sample,
    domains=((-6.0, 6.0),),
    reference=lambda torch, *xs, dim: torch.cat(xs, dim=dim),
)
def concat(*xs, dim):
    """Join arrays along ``dim`` (their other dims must agree), as torch.cat."""
    if not xs:
        raise ValueError("concat: expected at least one array")
    xs = [as_float(x) for x in xs]
    d = _check_dim(dim, xs[0].ndim, "concat")
    for i, x in enumerate(xs[1:], start=2):
        if x.ndim != xs[0].ndim or x.shape[:d] + x.shape[d + 1:] != xs[0].shape[:d] + xs[0].shape[d + 1:]:
            raise ValueError(f"concat: input {i} has shape {x.shape}, which does not fit input 1's "
                             f"{xs[0].shape} outside dim {dim}")
    return np.concatenate(xs, axis=d), (d, [x.shape[d] for x in xs])


@concat.set_backward
def _concat_backward(saved, gy):
    d, sizes = saved
    return tuple(np.split(gy, np.cumsum(sizes)[:-1], axis=d))


def _split_sizes(n, split_size_or_sections, who):
    """The pieces' sizes along a dim of length n, as torch.split reads its argument:
    an int is the size of every piece (the last may be smaller), a list the sizes."""
    s = split_size_or_sections
    if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
        if s < 1:
            raise ValueError(f"{who}: split_size_or_sections={s} is not valid; expected a size >= 1")
        return [min(s, n - i) for i in range(0, n, s)] or [0]
    sizes = [int(v) for v in s]
    if any(v < 0 for v in sizes) or sum(sizes) != n:
        raise ValueError(f"{who}: sections {sizes} do not add up to the dim's length {n}")
    return sizes


def _check_split(params):
    s = params["split_size_or_sections"]
    if isinstance(s, bool) or not isinstance(s, (int, np.integer, list, tuple)):
        raise ValueError(f"split: split_size_or_sections={s!r} is not valid; expected an int "
                         "(the size of each piece) or a list of sizes")


def _split_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(3, 7)).astype(dtype),)


@register(
    "split", module="Split", kind="structure",
    formula=r"[y_1, \dots, y_n] = x \text{ cut along dim}",
    derivative=r"g_x = [g_{y_1}, \dots, g_{y_n}] \text{ along dim (zeros for a piece with no gradient)}",
    outputs=("*y",), params={"split_size_or_sections": 2, "dim": -1},
    test_params=({"split_size_or_sections": [3, 1, 3]}, {"split_size_or_sections": 3, "dim": 0}),
    check_params=_check_split, complex_step=True, sample=_split_sample, domains=((-6.0, 6.0),),
    reference=lambda torch, x, split_size_or_sections, dim: torch.split(x, split_size_or_sections, dim),
)
def split(x, split_size_or_sections, dim):
    """Cut x along ``dim`` into pieces, as torch.split: returns a tuple of views."""
    x = as_float(x)
    d = _check_dim(dim, x.ndim, "split")
    sizes = _split_sizes(x.shape[d], split_size_or_sections, "split")
    pieces = tuple(np.split(x, np.cumsum(sizes)[:-1], axis=d))
    return pieces, (d, [p.shape for p in pieces], x.dtype)


@split.set_backward
def _split_backward(saved, *gys):
    d, shapes, dtype = saved
    if len(gys) != len(shapes):
        raise ValueError(f"split.backward: expected {len(shapes)} upstream gradients, one per "
                         f"piece, got {len(gys)}")
    parts = [np.zeros(s, dtype) if g is None else g for g, s in zip(gys, shapes)]
    return (np.concatenate(parts, axis=d),)


def _check_reshape(params):
    shape = params["shape"]
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape):
        raise ValueError(f"reshape: shape={shape!r} is not valid; expected a tuple of ints")


@register(
    "reshape", kind="structure",
    formula=r"y = \operatorname{reshape}(x, \text{shape})",
    derivative=r"g_x = \operatorname{reshape}(g_y, \operatorname{shape}(x))",
    params={"shape": (-1,)}, test_params=({"shape": (2, 10)},), check_params=_check_reshape,
    complex_step=True, domains=((-6.0, 6.0),),
    reference=lambda torch, x, shape: torch.reshape(x, shape),
)
def reshape(x, shape):
    """The same numbers in another shape (a view where NumPy can make one), as torch.reshape."""
    x = as_float(x)
    try:
        y = x.reshape(tuple(shape))
    except ValueError:
        raise ValueError(f"reshape: cannot reshape an input of shape {x.shape} "
                         f"({x.size} elements) to {tuple(shape)}") from None
    return y, x.shape


@reshape.set_backward
def _reshape_backward(x_shape, gy):
    return gy.reshape(x_shape)


def _check_permute(params):
    dims = params["dims"]
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in dims):
        raise ValueError(f"permute: dims={dims!r} is not valid; expected a tuple of ints")


def _permute_sample(rng, dtype, lo, hi):
    return (rng.uniform(lo, hi, size=(2, 3, 4)).astype(dtype),)


@register(
    "permute", kind="structure",
    formula=r"y_{i_{d_0} \dots i_{d_{n-1}}} = x_{i_0 \dots i_{n-1}}\quad(\text{axes reordered by dims})",
    derivative=r"g_x = \operatorname{permute}(g_y, \operatorname{dims}^{-1})",
    params={"dims": (1, 0, 2)}, test_params=({"dims": (2, 0, 1)},), check_params=_check_permute,
    complex_step=True, sample=_permute_sample, domains=((-6.0, 6.0),),
    reference=lambda torch, x, dims: torch.permute(x, dims),
)
def permute(x, dims):
    """The axes of x reordered (a view), as torch.permute: splitting attention heads
    (B, T, H, d) -> (B, H, T, d), or a transpose with dims (1, 0)."""
    x = as_float(x)
    if sorted(int(d) % max(x.ndim, 1) for d in dims) != list(range(x.ndim)) or len(dims) != x.ndim:
        raise ValueError(f"permute: dims={tuple(dims)} is not a permutation of the {x.ndim} dims of "
                         f"an input of shape {x.shape}")
    dims = tuple(int(d) % x.ndim for d in dims)
    return np.transpose(x, dims), dims


@permute.set_backward
def _permute_backward(dims, gy):
    return np.transpose(gy, np.argsort(dims))

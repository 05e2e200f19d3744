"""gradcheck on PyTorch and JAX code: custom torch.autograd.Functions and JAX
custom_vjps with planted mistakes are caught and named (input, element, hint)
for every seed; correct ones with kinks pass where the frameworks' own
checkers (torch.autograd.gradcheck, jax.test_util.check_grads) fail them."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import GradcheckError, gradcheck

torch = pytest.importorskip("torch", reason="the torch bridge of gradcheck needs PyTorch")

SEEDS = [0, 1, 2]
F = torch.autograd.Function


# -- custom torch Functions, each with one planted mistake ----------------------------------

class Square(F):                        # y = x^2, dy/dx = 2x
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, gy):
        x, = ctx.saved_tensors
        return gy * x                   # mistake: the factor 2 is missing


class MatMul(F):                        # y = x W (W square), dL/dW = x^T gy
    @staticmethod
    def forward(ctx, x, W):
        ctx.save_for_backward(x, W)
        return x @ W

    @staticmethod
    def backward(ctx, gy):
        x, W = ctx.saved_tensors
        return gy @ W.T, (x.T @ gy).T   # mistake: the weight gradient transposed


class Tanh(F):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        y, = ctx.saved_tensors
        return -gy * (1 - y * y)        # mistake: the sign


class ReLUTwoAtZero(F):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, gy):
        x, = ctx.saved_tensors
        # mistake: 2 at the kink, outside both one-sided derivatives (0 and 1)
        return gy * torch.where(x > 0, 1.0, torch.where(x == 0, 2.0, 0.0)).to(x.dtype)


class Affine(F):                        # y = x W + b, x (n, k), W (k, n), b (n,)
    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return x @ W + b

    @staticmethod
    def backward(ctx, gy):
        x, W = ctx.saved_tensors
        return gy @ W.T, x.T @ gy, gy.sum(1)    # mistake: the bias gradient summed over axis 1


class SigmoidNoUpstream(F):
    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        y, = ctx.saved_tensors
        return y * (1 - y)              # mistake: the upstream gradient is ignored


class SoftmaxDiagonal(F):
    @staticmethod
    def forward(ctx, x):
        y = torch.softmax(x, dim=-1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        y, = ctx.saved_tensors
        return gy * y * (1 - y)         # mistake: only the diagonal of the Jacobian


def _inputs(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _relu_input(seed):
    x = np.random.default_rng(seed).standard_normal(6)
    x[np.random.default_rng(seed + 100).choice(6, 2, replace=False)] = 0.0     # exact kinks
    return [x]


# (Function, inputs(seed), input named, hint in the message)
MISTAKES = {
    "missing factor 2": (Square, lambda s: _inputs(s, (4, 3)), "input 0 (x)", "a missing factor of 2?"),
    "transposed weight": (MatMul, lambda s: _inputs(s, (2, 3), (3, 3)), "input 1 (W)", "transposed"),
    "wrong sign": (Tanh, lambda s: _inputs(s, (5,)), "input 0 (x)", "a sign error?"),
    "kink value": (ReLUTwoAtZero, _relu_input, "input 0 (x)", "must lie between them"),
    "bias wrong axis": (Affine, lambda s: _inputs(s, (3, 4), (4, 3), (3,)), "input 2 (b)",
                        "over the wrong axis"),
    "upstream ignored": (SigmoidNoUpstream, lambda s: _inputs(s, (4,)), "input 0 (x)",
                         "multiply by the upstream gradient"),
    "softmax diagonal": (SoftmaxDiagonal, lambda s: _inputs(s, (2, 4)), "input 0 (x)",
                         "reduced to its diagonal"),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_planted_mistake_in_a_torch_function_is_caught_and_named(mistake, seed):
    fn, make, name, hint = MISTAKES[mistake]
    inputs = make(seed)
    with pytest.raises(GradcheckError) as info:
        gradcheck(fn, *inputs)
    msg = str(info.value)
    assert f"gradient of {name} is wrong at element" in msg or f"non-zero gradient for {name}" in msg
    assert "analytic" in msg and "numeric" in msg and hint in msg
    report = info.value.report
    bad = [e for e in report.entries if not e.passed]
    if mistake == "upstream ignored":           # wrong for every upstream, and not linear in it
        assert not report.zero_ok
    assert [e.name for e in bad] == [name]
    # the named element is one that is wrong: the analytic value at it differs from torch's
    # autograd derivative of the same forward with a correct backward
    e = bad[0]
    assert abs(e.analytic - e.numeric) > 1e-3
    if mistake == "kink value":                 # the element named is one of the kinks
        assert inputs[0][e.where[1]] == 0


def test_the_named_element_is_the_planted_one():
    """Only element (1, 2) of the gradient is wrong: gradcheck names exactly it, in
    full-Jacobian mode and in projection mode (where it is located afterwards)."""
    class OneBadElement(F):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, gy):
            x, = ctx.saved_tensors
            g = gy * torch.cos(x)
            g[1, 2] = g[1, 2] * 3
            return g
    x = _inputs(0, (3, 4))[0]
    for fast in (False, True):
        with pytest.raises(GradcheckError, match=r"input 0 \(x\) is wrong at element \(1, 2\)"):
            gradcheck(OneBadElement, x, fast=fast)


def test_torch_functions_that_are_right_pass_with_the_report():
    class RightAffine(Affine):
        @staticmethod
        def backward(ctx, gy):
            x, W = ctx.saved_tensors
            return gy @ W.T, x.T @ gy, gy.sum(0)
    report = gradcheck(RightAffine, *_inputs(0, (3, 4), (4, 3), (3,)))
    assert report.passed and report.mode == "full Jacobian"
    assert [e.name for e in report.entries] == ["input 0 (x)", "input 1 (W)", "input 2 (b)"]
    assert report.max_rel_err < 1e-6
    # a plain function of tensors, through autograd, with keyword parameters
    report = gradcheck(lambda x, w, scale=1.0: torch.tanh(x @ w) * scale, *_inputs(1, (2, 3), (3, 2)),
                       params={"scale": 3.0})
    assert report.passed and [e.name for e in report.entries] == ["input 0 (x)", "input 1 (w)"]
    # random projections for a large input
    assert gradcheck(lambda x: torch.sin(x) * x, _inputs(2, (80, 80))[0]).mode == "random projections"


def test_a_function_that_leaves_autograd_is_caught():
    def detour(x):          # through NumPy: autograd never sees the tanh
        return torch.tensor(np.tanh(x.detach().numpy())) + 0 * x
    with pytest.raises(GradcheckError, match=r"input 0 \(x\) is wrong.*analytic 0: a missing term"):
        gradcheck(detour, _inputs(0, (4,))[0])


def test_backward_twice_on_one_forward_must_agree():
    class Counting(F):
        calls = 0

        @staticmethod
        def forward(ctx, x):
            return x * 3

        @staticmethod
        def backward(ctx, gy):
            Counting.calls += 1
            return gy * (3 if Counting.calls % 2 else 3.5)      # changes between calls
    report = gradcheck(Counting, _inputs(0, (3,))[0], raise_exception=False)
    assert not report.repeat_ok and "backward twice" in str(report)


def test_the_callers_arrays_are_untouched_and_float32_is_checked_in_float64():
    class RightSquare(Square):
        @staticmethod
        def backward(ctx, gy):
            x, = ctx.saved_tensors
            return 2 * gy * x
    x = _inputs(0, (3, 3))[0].astype(np.float32)
    before = x.copy()
    assert gradcheck(RightSquare, x).max_rel_err < 1e-6       # float32 could not reach 1e-6
    np.testing.assert_array_equal(x, before)
    assert x.dtype == np.float32


def test_a_float32_function_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="float32 output for float64 inputs"):
        gradcheck(lambda x: x.float() * 2, _inputs(0, (3,))[0])


# -- correct Functions with kinks: handydl passes them, torch.autograd.gradcheck does not ------

class ReLU(F):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, gy):
        x, = ctx.saved_tensors
        return gy * (x > 0).to(gy.dtype)        # 0 at the kink, as torch.relu


class Abs(F):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.abs()

    @staticmethod
    def backward(ctx, gy):
        x, = ctx.saved_tensors
        # the subgradient 1 at 0 (any value in [-1, 1] is one); torch's own abs uses 0,
        # which the central difference (|h| - |-h|) / 2h = 0 happens to equal
        return gy * torch.where(x >= 0, 1.0, -1.0).to(gy.dtype)


class MaxPool1d(F):
    """Max over windows of 2; at a tie the gradient goes to the first maximum."""

    @staticmethod
    def forward(ctx, x):
        w = x.reshape(-1, 2)
        idx = w.argmax(dim=1)               # the first maximum
        ctx.save_for_backward(idx)
        ctx.shape = x.shape
        return w.max(dim=1).values

    @staticmethod
    def backward(ctx, gy):
        idx, = ctx.saved_tensors
        g = torch.zeros(idx.numel(), 2, dtype=gy.dtype)
        g[torch.arange(idx.numel()), idx] = gy
        return g.reshape(ctx.shape)


def _kinked(name, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(8)
    if name == "maxpool ties":
        x[1::2] = x[0::2]                   # every window a tie
        x[2:4] += 1.0                       # and one window without
    else:
        x[rng.choice(8, 3, replace=False)] = 0.0
    return x


KINKED = {"relu at 0": ReLU, "abs at 0": Abs, "maxpool ties": MaxPool1d}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(KINKED))
def test_a_right_function_with_kinks_passes_where_torch_gradcheck_fails(name, seed):
    fn, x = KINKED[name], _kinked(name, seed)
    report = gradcheck(fn, x)
    assert report.passed and len(report.entries[0].kinks) >= 2
    tx = torch.tensor(x, requires_grad=True)
    assert not torch.autograd.gradcheck(fn.apply, (tx,), raise_exception=False)
    # the same functions with a wrong value at the kinks are still caught
    wrong_at_kink = type(f"Bad{fn.__name__}", (fn,), {"backward": staticmethod(
        lambda ctx, gy: fn.backward(ctx, gy) + 1.5 * gy * (torch.tensor(x) == 0).to(gy.dtype))})
    if name != "maxpool ties":
        with pytest.raises(GradcheckError, match="a kink.*must lie between them"):
            gradcheck(wrong_at_kink, x)


# -- JAX custom_vjp -------------------------------------------------------------------------

def _jax():
    jax = pytest.importorskip("jax", reason="the JAX bridge of gradcheck needs jax (pip install jax)")
    return jax, jax.numpy


def _vjp(jax, f, fwd, bwd):
    g = jax.custom_vjp(f)
    g.defvjp(fwd, bwd)
    return g


def jax_mistakes():
    jax, jnp = _jax()

    def square(x):
        return x * x
    square = _vjp(jax, square, lambda x: (x * x, x), lambda x, g: (g * x,))

    def matmul(x, W):
        return x @ W
    matmul = _vjp(jax, matmul, lambda x, W: (x @ W, (x, W)),
                  lambda r, g: (g @ r[1].T, (r[0].T @ g).T))

    def tanh(x):
        return jnp.tanh(x)
    tanh = _vjp(jax, tanh, lambda x: (jnp.tanh(x), jnp.tanh(x)), lambda y, g: (-g * (1 - y * y),))

    def relu(x):
        return jnp.maximum(x, 0)
    relu = _vjp(jax, relu, lambda x: (jnp.maximum(x, 0), x),
                lambda x, g: (g * jnp.where(x > 0, 1.0, jnp.where(x == 0, 2.0, 0.0)),))

    def affine(x, W, b):
        return x @ W + b
    affine = _vjp(jax, affine, lambda x, W, b: (x @ W + b, (x, W)),
                  lambda r, g: (g @ r[1].T, r[0].T @ g, g.sum(1)))

    def sigmoid(x):
        return jax.nn.sigmoid(x)
    sigmoid = _vjp(jax, sigmoid, lambda x: (jax.nn.sigmoid(x), jax.nn.sigmoid(x)),
                   lambda y, g: (y * (1 - y),))

    def softmax(x):
        return jax.nn.softmax(x, axis=-1)
    softmax = _vjp(jax, softmax, lambda x: (jax.nn.softmax(x, axis=-1),) * 2,
                   lambda y, g: (g * y * (1 - y),))
    torch_ones = dict(MISTAKES)
    return {k: (f,) + torch_ones[k][1:] for k, f in zip(MISTAKES, (square, matmul, tanh, relu, affine,
                                                                      sigmoid, softmax))}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_planted_mistake_in_a_jax_custom_vjp_is_caught_and_named(mistake, seed):
    fn, make, name, hint = jax_mistakes()[mistake]
    with pytest.raises(GradcheckError) as info:
        gradcheck(fn, *make(seed))
    msg = str(info.value)
    assert f"gradient of {name} is wrong at element" in msg or f"non-zero gradient for {name}" in msg
    assert hint in msg
    assert [e.name for e in info.value.report.entries if not e.passed] == [name]


@pytest.mark.parametrize("seed", SEEDS)
def test_right_jax_functions_with_kinks_pass_where_jax_check_grads_fails(seed):
    jax, jnp = _jax()
    from jax.test_util import check_grads

    def relu(x):
        return jnp.maximum(x, 0)
    relu = _vjp(jax, relu, lambda x: (jnp.maximum(x, 0), x), lambda x, g: (g * (x > 0),))

    def maxpool(x):
        return x.reshape(-1, 2).max(axis=1)

    def maxpool_fwd(x):
        w = x.reshape(-1, 2)
        return w.max(axis=1), jnp.argmax(w, axis=1)      # the first maximum

    def maxpool_bwd(idx, g):
        return (jnp.zeros((idx.size, 2)).at[jnp.arange(idx.size), idx].set(g).reshape(-1),)
    maxpool = _vjp(jax, maxpool, maxpool_fwd, maxpool_bwd)
    for fn, x in ((relu, _kinked("relu at 0", seed)), (maxpool, _kinked("maxpool ties", seed))):
        report = gradcheck(fn, x)
        assert report.passed and len(report.entries[0].kinks) >= 2
        with jax.enable_x64(True), pytest.raises(AssertionError):
            check_grads(fn, (jnp.asarray(x),), order=1, modes=["rev"])
    # and a plain (jitted) JAX function, differentiated by JAX itself
    report = gradcheck(jax.jit(lambda x, W: jnp.tanh(x @ W)), *_inputs(seed, (2, 3), (3, 2)))
    assert report.passed and [e.name for e in report.entries] == ["input 0 (x)", "input 1 (W)"]


# -- what is not PyTorch or JAX code --------------------------------------------------------

def test_something_that_is_no_framework_code_is_a_type_error_saying_what_was_tried():
    with pytest.raises(TypeError, match="expected a Module.*got 'tanh'.*called with torch arrays"):
        gradcheck(np.tanh, np.ones(3))
    with pytest.raises(TypeError, match="expected a Module"):
        gradcheck(42, np.ones(3))
    with pytest.raises(ValueError, match="no floating NumPy array"):
        gradcheck(ReLU, np.arange(3))
    with pytest.raises(ValueError, match="complex-analytic"):
        gradcheck(ReLU, np.ones(3), method="complex-step")


def test_torch_is_not_imported_for_handydl_objects():
    """The dispatch asks sys.modules only: checking a handydl op imports no framework."""
    import subprocess
    import sys
    code = ("import sys, numpy as np; from handydl import gradcheck, ops; gradcheck(ops.tanh, np.ones(3)); "
            "print('torch' in sys.modules, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- handydl gradcheck FILE.py:NAME ---------------------------------------------------------

USER_FILE = '''
import torch

class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, gy):
        x, = ctx.saved_tensors
        return gy * x                   # the factor 2 is missing

class RightSquare(Square):
    @staticmethod
    def backward(ctx, gy):
        x, = ctx.saved_tensors
        return 2 * gy * x

def matmul(x, W):
    return torch.tanh(x @ W)
'''


def test_cli_gradcheck_of_a_function_in_the_users_file(tmp_path, capsys):
    from handydl.cli import main
    f = tmp_path / "myfns.py"
    f.write_text(USER_FILE)
    assert main(["gradcheck", f"{f}:Square", "--shape", "4,3"]) == 1
    out = capsys.readouterr().out
    assert "gradient of input 0 (x) is wrong at element" in out and "a missing factor of 2?" in out
    assert main(["gradcheck", f"{f}:RightSquare", "--shape", "4,3"]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert main(["gradcheck", f"{f}:matmul", "--shape", "2,3", "--shape", "3,2"]) == 0
    assert "input 1 (W)" in capsys.readouterr().out


@pytest.mark.parametrize("spec,message", [
    ("{dir}/missing.py:Square", "missing.py: no such file"),
    ("{dir}/myfns.py:Cube", "defines no 'Cube'; it defines RightSquare, Square, matmul"),
    ("{dir}/myfns.py", "expected FILE.py:NAME"),
    ("{dir}/broken.py:f", "loading .*broken.py raised ZeroDivisionError"),
])
def test_cli_gradcheck_refuses_a_missing_file_or_name_with_exit_2(tmp_path, capsys, spec, message):
    import re

    from handydl.cli import main
    (tmp_path / "myfns.py").write_text(USER_FILE)
    (tmp_path / "broken.py").write_text("1 / 0\n")
    assert main(["gradcheck", spec.format(dir=tmp_path), "--shape", "3"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err

"""PyTorch's own module tests, run against handydl.

``torch.testing._internal.common_modules.module_db`` holds, for every torch.nn
module, the constructor arguments and forward inputs that PyTorch's own suite
runs (``ModuleInfo.module_inputs_func``).  Nobody here wrote them, which is the
point.  For every ModuleInfo whose class name handydl.nn also has (so modules
added later, Conv2d, MaxPool2d, ..., are picked up without new code), and for
every sample input, in training mode (and in eval mode where the ModuleInfo
says the two differ), in float64 (rtol 1e-9) and again in float32 (rtol 1e-4,
the dtype kept) where the ModuleInfo lists float32:

1. torch's module and handydl's are built from the same constructor arguments
   (tensors as NumPy arrays); every parameter and buffer is copied from torch
   to handydl by name (``LAYOUTS``: handydl's Linear.weight is (in, out), the
   transpose of torch's), and the two name sets must be equal;
2. forward on the sample's forward input (args and kwargs, ``m(input=x)``):
   the outputs agree, and so do the buffers afterwards (running statistics);
3. backward with a random upstream gradient: dL/d(every float input) and
   dL/d(every parameter) agree with torch.autograd.

The one part not compared: ``NOT_COMPARED`` (loss targets, which handydl's
losses treat as data).  Every sample handydl deliberately does not support is
listed once, in ``NOT_SUPPORTED`` with its reason and the predicate
(``MATCHES``) that picks it; it is still run, reported as ``pytest.skip(reason)``
when it fails, and is a failure when it passes (the entry is stale).  Any
other failing sample is a failure.  Nothing is skipped silently.

``python tests/test_module_db.py --table`` prints the coverage table (module,
sample inputs, passing, not supported and why) for the README.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")               # torch's common_modules imports it
from torch.testing._internal.common_modules import module_db  # noqa: E402

from handydl import nn  # noqa: E402

RTOL = 1e-9                     # float64; float32 cases: TOLERANCES
SEED = 0
TOLERANCES = {torch.float64: RTOL, torch.float32: 1e-4}
NUMPY = {torch.float64: np.float64, torch.float32: np.float32}

# handydl's parameters stored in another layout than torch's: (module class, name) -> torch to handydl
LAYOUTS = {
    ("Linear", "weight"): lambda w: w.T,            # y = x W + b, W of shape (in, out)
}

# Gradients this test does not compare, and why (shown in the coverage table).
NOT_COMPARED = {
    "loss target": "handydl's losses take the target as data (backward(target_grad=True) "
                   "returns None for it); the gradients of the other inputs (input; input1 and "
                   "input2; GaussianNLLLoss's var) are compared",
}

# Samples handydl deliberately does not support: (module name, reason key) -> reason.
# The predicate MATCHES[reason key](case) says which samples of that module it covers.
NOT_SUPPORTED: dict[tuple[str, str], str] = {
    ("MaxPool2d", "return_indices"):
        "return_indices=True is refused: the winning offsets are kept for backward only, "
        "and handydl has no MaxUnpool2d to take them",
    ("MultiheadAttention", "add_bias_kv"):
        "add_bias_kv=True (learned key and value rows appended to every sequence) is refused",
    ("MultiheadAttention", "add_zero_attn"):
        "add_zero_attn=True (a zero key and value appended to every sequence) is refused",
}


def _constructed_with(key, value):
    """The sample's module is built with the keyword argument key=value."""
    return lambda case: case.sample.constructor_input.kwargs.get(key, not value) == value


MATCHES = {
    "return_indices": _constructed_with("return_indices", True),
    "add_bias_kv": _constructed_with("add_bias_kv", True),
    "add_zero_attn": lambda case: (case.sample.constructor_input.kwargs.get("add_zero_attn", False)
                                   and not case.sample.constructor_input.kwargs.get("add_bias_kv", False)),
}


# -- the cases ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    info: object            # the ModuleInfo
    training: bool
    index: int
    dtype: object = torch.float64

    @property
    def name(self):
        return self.info.module_cls.__name__

    @property
    def id(self):
        return (f"{self.name}-{self.index}" + ("" if self.training else "-eval")
                + ("" if self.dtype == torch.float64 else "-float32"))

    @property
    def sample(self):
        return samples(self.info, self.training, self.dtype)[self.index]

    @property
    def desc(self):
        return self.sample.desc


def handydl_class(name):
    cls = getattr(nn, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


@functools.lru_cache(maxsize=None)
def samples(info, training, dtype=torch.float64):
    """The ModuleInputs of ``info``, the same on every call (torch's generator seeded)."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return list(info.module_inputs_func(info, device="cpu", dtype=dtype,
                                            requires_grad=True, training=training))


def infos():
    """The ModuleInfos whose class name handydl.nn also has (a Module subclass)."""
    return [info for info in module_db if handydl_class(info.module_cls.__name__) is not None]


def cases():
    """Every sample in float64, then again in float32 where the ModuleInfo lists float32."""
    out = []
    for dtype in (torch.float64, torch.float32):
        for info in infos():
            if dtype not in info.dtypes:
                continue
            for training in ((True, False) if info.train_and_eval_differ else (True,)):
                out.extend(Case(info, training, i, dtype) for i in range(len(samples(info, training, dtype))))
    return out


def not_supported(case):
    """The reason handydl does not support ``case``, or None."""
    for (name, key), reason in NOT_SUPPORTED.items():
        if name == case.name and MATCHES[key](case):
            return reason
    return None


# -- conversion ---------------------------------------------------------------------------

def to_numpy(v):
    """Tensors (inside lists, tuples, dicts) as NumPy arrays; 0-d tensors stay 0-d arrays."""
    if isinstance(v, torch.Tensor):
        return v.detach().numpy().copy()
    if isinstance(v, (list, tuple)):
        return type(v)(to_numpy(a) for a in v)
    if isinstance(v, dict):
        return {k: to_numpy(a) for k, a in v.items()}
    return v


def fresh(v):
    """A copy of every tensor, leaves of their own (each test differentiates its own)."""
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    if isinstance(v, (list, tuple)):
        return type(v)(fresh(a) for a in v)
    if isinstance(v, dict):
        return {k: fresh(a) for k, a in v.items()}
    return v


def outputs_of(y):
    """The outputs as a flat tuple: LSTM's (output, (h_n, c_n)) is three."""
    return tuple(v for o in y for v in outputs_of(o)) if isinstance(y, (tuple, list)) else (y,)


def assert_close(actual, expected, what, rtol=RTOL, dtype=np.float64):
    """Equal to rtol, and of ``dtype`` (a float loss returned as a Python float passes)."""
    expected = np.asarray(expected)
    assert actual is not None, f"{what}: handydl gives None, torch {expected.shape}"
    if not isinstance(actual, float):
        actual = np.asarray(actual)
        assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, torch {np.dtype(dtype).name}"
    actual, expected = np.asarray(actual, np.float64), expected.astype(np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, torch {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected[np.isfinite(expected)]), initial=0.0)))
    atol = rtol * (1e-3 if rtol == RTOL else 1.0) * scale
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def layout(hm, pname):
    """torch -> handydl for parameter ``pname``, by the class of the module that holds it
    (a Linear inside MultiheadAttention, out_proj, is a Linear too)."""
    owner, _, attr = pname.rpartition(".")
    return LAYOUTS.get((type(hm.get_submodule(owner)).__name__, attr), lambda a: a)


def copy_state(tm, hm, name, dtype=np.float64):
    """torch's parameters and buffers into handydl's, by name; the name sets must agree."""
    tparams = dict(tm.named_parameters())
    hparams = dict(hm.named_parameters())
    assert set(hparams) == set(tparams), \
        f"{name}: parameters {sorted(hparams)}, torch {sorted(tparams)}"
    for pname, t in tparams.items():
        value = layout(hm, pname)(t.detach().numpy())
        p = hparams[pname]
        assert p.shape == value.shape, f"{name}.{pname}: shape {p.shape}, torch {value.shape}"
        p.data = np.array(value, dtype=dtype)
        p.grad = np.zeros_like(p.data)
    tbufs = {k: v for k, v in tm.named_buffers() if v is not None}
    hbufs = dict(hm._buffer_owners())
    # a loss's class weights are buffers in torch, constructor parameters of the op in handydl
    bound = {k: v for k, v in getattr(hm, "params", {}).items()
             if k in tbufs and k not in hbufs and isinstance(hm, nn.Loss)}
    assert set(hbufs) | set(bound) == set(tbufs), \
        f"{name}: buffers {sorted(hbufs)}, torch {sorted(tbufs)}"
    for bname, t in tbufs.items():
        if bname in bound:
            assert_close(np.asarray(bound[bname], dtype), t.numpy(), f"{name}.{bname}", dtype=dtype)
            continue
        mod, attr = hbufs[bname]
        setattr(mod, attr, t.detach().numpy().copy())


# -- one sample ---------------------------------------------------------------------------

def check(case):
    """Build both modules, forward, backward; AssertionError (or the error handydl raised)
    where they disagree."""
    name, sample = case.name, case.sample
    cin, fin = sample.constructor_input, sample.forward_input
    dtype, rtol = NUMPY[case.dtype], TOLERANCES[case.dtype]
    close = functools.partial(assert_close, rtol=rtol, dtype=dtype)
    tm = case.info.module_cls(*cin.args, **cin.kwargs).to(dtype=case.dtype)
    hm = handydl_class(name)(*to_numpy(cin.args), **to_numpy(cin.kwargs)).astype(dtype)
    tm.train(case.training)
    hm.train(case.training)
    copy_state(tm, hm, name, dtype)

    targs, tkwargs = fresh(fin.args), fresh(fin.kwargs)
    ty = outputs_of(tm(*targs, **tkwargs))
    hy = outputs_of(hm(*to_numpy(fin.args), **to_numpy(fin.kwargs)))
    assert len(hy) == len(ty), f"{name}: {len(hy)} outputs, torch {len(ty)}"
    for k, (h, t) in enumerate(zip(hy, ty)):
        close(h, t.detach().numpy(), f"{name} output {k}")
    hbufs = dict(hm._buffer_owners())
    for bname, t in tm.named_buffers():
        if bname in hbufs:
            mod, attr = hbufs[bname]
            if t.dtype.is_floating_point:
                close(getattr(mod, attr), t.numpy(), f"{name} buffer {bname} after forward")
            else:
                assert np.array_equal(getattr(mod, attr), t.numpy()), f"{name} buffer {bname} after forward"

    # backward with a random upstream gradient (not ones: that hides transposes)
    rng = np.random.default_rng(1)
    gys = [rng.standard_normal(t.shape).astype(dtype) for t in ty]
    # the positional order of handydl's grads; a tuple input (LSTM's hx) counts as its parts
    inputs = list(outputs_of(tuple(targs) + tuple(tkwargs.values())))
    wrt = [(i, t) for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    tparams = dict(tm.named_parameters())
    tgrads = torch.autograd.grad(ty, [t for _, t in wrt] + list(tparams.values()),
                                 [torch.from_numpy(g) for g in gys], allow_unused=True)
    if isinstance(hm, nn.Loss):
        hgrads = hm.backward(gys[0] if gys[0].ndim else float(gys[0]), target_grad=True)
    else:
        hgrads = hm.backward(*gys)
    hgrads = outputs_of(hgrads) if isinstance(hgrads, tuple) else (hgrads,)
    assert len(hgrads) == len(inputs), f"{name}: {len(hgrads)} input gradients for {len(inputs)} inputs"
    for (i, t), tg in zip(wrt, tgrads):
        if isinstance(hm, nn.Loss) and i == 1 and hgrads[i] is None:
            continue                                          # NOT_COMPARED["loss target"]
        expected = torch.zeros_like(t) if tg is None else tg
        close(hgrads[i], expected.numpy(), f"{name} dL/d(input {i})")
    hparams = dict(hm.named_parameters())
    for (pname, t), tg in zip(tparams.items(), tgrads[len(wrt):]):
        expected = (torch.zeros_like(t) if tg is None else tg).numpy()
        expected = layout(hm, pname)(expected)
        close(hparams[pname].grad, expected, f"{name} dL/d{pname}")


def run(case):
    """("pass" | "not supported" | "fail", detail) for one case, as the test sees it."""
    reason = not_supported(case)
    try:
        with np.errstate(all="ignore"):
            check(case)
    except Exception as e:                                    # noqa: BLE001 - reported, not hidden
        if reason is not None:
            return "not supported", reason
        return "fail", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if reason is not None:
        return "fail", f"listed as not supported ({reason!r}) but passes: remove the entry"
    return "pass", ""


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_module_matches_torch_on_module_db_sample(case):
    reason = not_supported(case)
    if reason is None:
        with np.errstate(all="ignore"):         # torch computes NaN and inf silently too
            check(case)
        return
    try:
        with np.errstate(all="ignore"):
            check(case)
    except Exception:                           # noqa: BLE001 - the listed limitation
        pytest.skip(f"{case.name} ({case.desc}): {reason}")
    pytest.fail(f"{case.id} is listed as not supported ({reason!r}) but passes: remove the entry")


def test_every_not_supported_entry_matches_a_sample():
    """A stale entry (its module gone from module_db or its samples changed) is an error."""
    for (name, key), reason in NOT_SUPPORTED.items():
        assert key in MATCHES, f"NOT_SUPPORTED[{name!r}, {key!r}] has no predicate in MATCHES"
        if handydl_class(name) is None:
            continue                            # its module is not (or not yet) in handydl.nn
        assert any(c.name == name and MATCHES[key](c) for c in CASES), \
            f"NOT_SUPPORTED[{name!r}, {key!r}] ({reason!r}) matches no sample"


# -- beyond module_db: what PyTorch's samples leave out ------------------------------------------
# Activations on 0-d and unbatched input (module_db has them for only some), cross-entropy
# and NLL on empty batches, all-ignored targets, every option at once on K dims, float32
# through the fused kernel, and the PyTorch 2.13 constructor keywords; each against torch.

from handydl import ops  # noqa: E402
from conftest import analytic_jacobian, numeric_jacobian  # noqa: E402

F = torch.nn.functional
ELEMENTWISE = [op for op in ops.REGISTRY.values()
               if op.kind in ("activation", "softmax") and op.module and op.inputs == ("x",)
               and op.reference is not None]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", [(), (4,), (2, 3, 4)], ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("op", ELEMENTWISE, ids=lambda op: op.module)
def test_activation_module_on_0d_and_unbatched_input_matches_torch(op, shape, dtype):
    x = np.random.default_rng(3).uniform(-3, 3, shape).astype(dtype)
    m = nn.activation(op.name) if op.name in nn.ACTIVATIONS else getattr(nn, op.module)()
    tx = torch.tensor(x, requires_grad=True)
    try:
        ty = op.reference(torch, tx, **op.params)
    except (RuntimeError, ValueError):          # torch refuses the shape (Softmax2d on 1-d): so must handydl
        with pytest.raises(ValueError, match=r"expected input of shape"):
            m(x)
        return
    y = m(x)
    gy = np.random.default_rng(4).standard_normal(np.shape(y)).astype(dtype)
    gx = m.backward(gy)
    tgx, = torch.autograd.grad(ty, tx, torch.tensor(gy))
    rtol = RTOL if dtype is np.float64 else 1e-5
    assert_close(y, ty.detach().numpy(), f"{op.module} on shape {shape}", rtol, dtype)
    # PyTorch 2.13's float64 hardsigmoid backward multiplies by 1/6 rounded to float32
    rtol = 1e-7 if op.name == "hardsigmoid" and dtype is np.float64 else rtol
    assert_close(gx, tgx.numpy(), f"{op.module} dL/dx on shape {shape}", rtol, dtype)


def _torch_loss(fn, x, t, gy, **kw):
    tx = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(t)
    loss = fn(tx, tt, **{k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})
    g, = torch.autograd.grad(loss, tx, torch.tensor(gy, dtype=loss.dtype))
    return loss.detach().numpy(), g.numpy()


def _handydl_loss(make, x, t, gy, **kw):
    loss_fn = make(**kw)
    loss = loss_fn(x, t)
    return loss, loss_fn.backward(gy if np.ndim(gy) else float(gy))


LOSSES = {"CrossEntropyLoss": (nn.CrossEntropyLoss, F.cross_entropy), "NLLLoss": (nn.NLLLoss, F.nll_loss)}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4)], ids=["N0", "N0xd"])
@pytest.mark.parametrize("name,target", [("CrossEntropyLoss", "indices"), ("CrossEntropyLoss", "probabilities"),
                                         ("NLLLoss", "indices")])
def test_empty_batch_is_treated_as_torch(name, target, shape, reduction):
    """N = 0: "mean" is NaN (0/0), "sum" 0, "none" empty; dL/dx is empty."""
    x = np.zeros(shape)
    t = np.zeros(shape, np.float64) if target == "probabilities" else np.zeros(shape[:1] + shape[2:], np.int64)
    make, fn = LOSSES[name]
    gy = np.ones(shape[:1] + shape[2:]) if reduction == "none" else np.array(1.0)
    expected = _torch_loss(fn, x, t, gy, reduction=reduction)
    with np.errstate(all="raise"):
        if reduction == "mean":
            with np.errstate(invalid="ignore"):         # 0/0: NaN, as torch's
                actual = _handydl_loss(make, x, t, gy, reduction=reduction)
        else:
            actual = _handydl_loss(make, x, t, gy, reduction=reduction)
    for a, e, what in zip(actual, expected, ("loss", "dL/dx")):
        assert_close(a, e, f"{name} on {shape} {target} {reduction}: {what}")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name,smoothing", [("CrossEntropyLoss", 0.0), ("CrossEntropyLoss", 0.2), ("NLLLoss", 0.0)])
def test_every_target_ignored_gives_nan_mean_and_zero_gradient_as_torch(name, smoothing, reduction):
    x = np.random.default_rng(5).standard_normal((2, 3, 4))
    t = np.full((2, 4), 1)
    kw = dict(ignore_index=1, reduction=reduction, **({"label_smoothing": smoothing} if smoothing else {}))
    make, fn = LOSSES[name]
    expected = _torch_loss(fn, x, t, np.array(0.7), **kw)
    with np.errstate(invalid="ignore"):
        actual = _handydl_loss(make, x, t, np.array(0.7), **kw)
    for a, e, what in zip(actual, expected, ("loss", "dL/dx")):
        assert_close(a, e, f"{name} all ignored, {reduction}: {what}")


W3 = np.array([0.5, 2.0, 1.0])
CLASS_OPTIONS = [(name, o) for name in LOSSES
                 for o in [dict(weight=W3), dict(ignore_index=2), dict(weight=W3, ignore_index=0),
                           dict(weight=W3, ignore_index=-1)]] + \
    [("CrossEntropyLoss", dict(weight=W3, ignore_index=1, label_smoothing=0.3)),
     ("CrossEntropyLoss", dict(label_smoothing=1.0))]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 3, 5), (2, 3, 2, 3)], ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("name,options", CLASS_OPTIONS,
                         ids=[f"{n}[{','.join(o)}]" for n, o in CLASS_OPTIONS])
def test_class_losses_on_any_layout_with_all_options_match_torch(name, options, shape, reduction):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape)
    t = rng.integers(0, 3, shape[:1] + shape[2:]) if len(shape) > 1 else np.array(1)
    make, fn = LOSSES[name]
    gy = rng.standard_normal(t.shape) if reduction == "none" else np.array(0.7)
    expected = _torch_loss(fn, x, t, gy, reduction=reduction, **options)
    with np.errstate(invalid="ignore"):             # an unbatched target may be the ignored one
        actual = _handydl_loss(make, x, t, gy, reduction=reduction, **options)
    for a, e, what in zip(actual, expected, ("loss", "dL/dx")):
        assert_close(a, e, f"{name} {shape} {options} {reduction}: {what}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(3,), (2, 3, 5), (2, 3, 2, 2)], ids=lambda s: f"{len(s)}d")
def test_cross_entropy_probability_targets_on_any_layout_match_torch(shape, reduction):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    t = np.moveaxis(rng.dirichlet(np.ones(3), size=(shape[:1] + shape[2:]) if len(shape) > 1 else ()),
                    -1, min(1, len(shape) - 1))
    gy = rng.standard_normal(shape[:1] + shape[2:] if len(shape) > 1 else ()) \
        if reduction == "none" else np.array(1.3)
    kw = dict(weight=np.array([0.5, 2.0, 1.0]), label_smoothing=0.1, reduction=reduction)
    expected = _torch_loss(F.cross_entropy, x, t, gy, **kw)
    actual = _handydl_loss(nn.CrossEntropyLoss, x, t, gy, **kw)
    for a, e, what in zip(actual, expected, ("loss", "dL/dx")):
        assert_close(a, e, f"cross_entropy {shape} probabilities {reduction}: {what}")


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_k_dim_class_loss_jacobian_matches_central_differences(name):
    """Independent of torch: the hand-derived backward on (N, C, d1, d2) input equals
    central differences of the forward (conftest's own finite differences)."""
    op = ops.get(name)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 2, 2))
    t = rng.integers(0, 3, (2, 2, 2))
    params = op.bind({"reduction": "none", "weight": np.array([0.5, 2.0, 1.0]), "ignore_index": 1})
    Ja = analytic_jacobian(op, [x, t], params, 0)
    Jn = numeric_jacobian(lambda *xs: op(*xs, **params), [x, t], 0)
    np.testing.assert_allclose(Ja, Jn, atol=1e-7)


def test_k_dim_cross_entropy_in_float32_takes_the_fused_rows_and_matches_torch():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 10, 8, 8)).astype(np.float32)       # 256 rows of 10 classes
    t = rng.integers(0, 10, (4, 8, 8))
    for reduction in ("mean", "none"):
        gy = rng.standard_normal(t.shape).astype(np.float32) if reduction == "none" else np.array(1.0)
        loss, saved = ops.cross_entropy.forward(x, t, reduction=reduction)
        gx = ops.cross_entropy.backward(saved, gy)[0]
        assert gx.dtype == np.float32 and np.asarray(loss).dtype == np.float32
        tl, tg = _torch_loss(F.cross_entropy, x, t, gy.astype(np.float32), reduction=reduction)
        np.testing.assert_allclose(loss, tl, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(gx, tg, rtol=2e-5, atol=2e-7)


@pytest.mark.parametrize("bad", [np.zeros((2, 3), np.int64), np.zeros(2, np.int64), np.zeros((3, 4))],
                         ids=["classes-not-positions", "no-positions", "no-batch"])
def test_class_targets_of_the_wrong_shape_name_both_shapes(bad):
    with pytest.raises(ValueError, match=r"class indices of shape \(2, 4\).*input of shape \(2, 3, 4\)"):
        nn.CrossEntropyLoss()(np.zeros((2, 3, 4)), bad)
    with pytest.raises(ValueError, match=r"got a scalar"):
        nn.NLLLoss()(np.zeros(()), np.zeros((), np.int64))


@pytest.mark.parametrize("make", [lambda **kw: nn.Linear(3, 2, **kw), lambda **kw: nn.LayerNorm(3, **kw),
                                  lambda **kw: nn.BatchNorm1d(3, **kw)], ids=["Linear", "LayerNorm", "BatchNorm1d"])
def test_factory_keywords_of_torch(make):
    """device None or "cpu" (torch.device("cpu") too); anything else is refused by name;
    dtype None is float32, a torch float dtype is the NumPy one of that name."""
    assert make().weight.dtype == np.float32
    assert make(device="cpu", dtype=np.float64).weight.dtype == np.float64
    assert make(device=torch.device("cpu"), dtype=torch.float64).weight.dtype == np.float64
    with pytest.raises(ValueError, match=r"device='cuda' is not available"):
        make(device="cuda")
    with pytest.raises(TypeError, match=r"dtype=.*int64.* is not valid"):
        make(dtype=torch.int64)


@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.BatchNorm1d])
def test_bias_false_has_no_bias_parameter_and_survives_a_checkpoint(cls, tmp_path):
    from handydl import checkpoint
    m = cls(3, bias=False)
    tm = getattr(torch.nn, cls.__name__)(3, bias=False)
    assert m.bias is None and tm.bias is None
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in tm.named_parameters()] == ["weight"]
    checkpoint.save(m, tmp_path / "m.npz")
    assert checkpoint.load(tmp_path / "m.npz").bias is None


# -- the coverage table --------------------------------------------------------------------

def coverage(cases_=None):
    """{module name: {dtype name: {"samples": n, "pass": n, "not supported": {reason: n},
    "fail": [(id, why)]}}}, running each case as the test does."""
    table = {}
    for case in CASES if cases_ is None else cases_:
        row = table.setdefault(case.name, {}).setdefault(
            str(case.dtype).replace("torch.", ""), {"samples": 0, "pass": 0, "not supported": {}, "fail": []})
        row["samples"] += 1
        status, detail = run(case)
        if status == "pass":
            row["pass"] += 1
        elif status == "not supported":
            row["not supported"][detail] = row["not supported"].get(detail, 0) + 1
        else:
            row["fail"].append((case.id, detail))
    return table


def coverage_table(table=None):
    """The coverage table as Markdown (the README's): per module, the sample inputs that
    agree with torch in float64 and in float32, and what is not supported and why."""
    table = coverage() if table is None else table
    dtypes = ("float64", "float32")
    empty = {"samples": 0, "pass": 0, "not supported": {}, "fail": []}
    lines = ["| module | float64: agree / samples | float32: agree / samples | not supported (why) |",
             "|---|---:|---:|---|"]
    totals = {d: [0, 0] for d in dtypes}
    n_unsupported = n_failing = 0
    for name in sorted(table):
        cells, notes, failing = [], {}, 0
        for d in dtypes:
            row = table[name].get(d, empty)
            totals[d][0] += row["pass"]
            totals[d][1] += row["samples"]
            cells.append(f"{row['pass']} / {row['samples']}" if row["samples"] else "-")
            for reason, n in row["not supported"].items():
                notes[reason] = notes.get(reason, 0) + n
            n_unsupported += sum(row["not supported"].values())
            n_failing += len(row["fail"])
            failing += len(row["fail"])
        why = "; ".join([f"{n}: {reason}" for reason, n in notes.items()]
                        + ([f"**{failing} failing**"] if failing else []))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {why} |")
    names = {info.module_cls.__name__ for info in module_db}
    lines.append(f"| **{len(table)} of {len(names)} module_db classes** | "
                 + " | ".join(f"**{p} / {n}**" for p, n in totals.values())
                 + f" | {n_unsupported} not supported, {n_failing} failing |")
    lines.append("")
    lines += [f"Not compared: {what}: {why}." for what, why in NOT_COMPARED.items()]
    return "\n".join(lines)


if __name__ == "__main__":         # the failing cases, if any, are listed on stderr
    if "--table" not in sys.argv[1:]:
        sys.exit(f"usage: python {sys.argv[0]} --table   (or run it with pytest)")
    t = coverage()
    print(coverage_table(t))
    for _, rows in sorted(t.items()):
        for row in rows.values():
            for cid, why in row["fail"]:
                print(f"FAIL {cid}: {why}", file=sys.stderr)

"""Embeddings, scaled dot-product attention, MultiheadAttention, TransformerEncoderLayer,
positional embeddings and the sequence cross-entropy, against PyTorch (forward and
every gradient) and central differences in float64."""
from __future__ import annotations

import numpy as np
import pytest

from handydl import checkpoint, nn, ops
from handydl.check import gradcheck

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(0)


def T(a, grad=False):
    t = torch.from_numpy(np.array(a))
    return t.requires_grad_(True) if grad else t


def close(a, b, tol=1e-10, what=""):
    a = np.asarray(a, dtype=np.float64)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    scale = max(1.0, float(np.max(np.abs(b), initial=0)))
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=what)


def central_grad(f, x, h=1e-6):
    """d f / d x of a scalar function by central differences, every element (float64)."""
    g = np.zeros_like(x)
    for j in range(x.size):
        old = x.flat[j]
        x.flat[j] = old + h
        fp = f()
        x.flat[j] = old - h
        fm = f()
        x.flat[j] = old
        g.flat[j] = (fp - fm) / (2 * h)
    return g


# -- embedding ----------------------------------------------------------------------------------

@pytest.mark.parametrize("padding_idx", [None, 0, 3, -2])
@pytest.mark.parametrize("shape", [(4, 5), (1, 1), (1, 7), (9,)])
def test_embedding_matches_torch_forward_and_backward(padding_idx, shape):
    idx = RNG.integers(0, 6, size=shape)
    idx.flat[0] = 3                              # the padding row is read too
    idx.flat[-1] = 3                             # and a repeated id: its gradients add
    m = nn.Embedding(6, 4, padding_idx=padding_idx, dtype=np.float64, rng=1)
    t = torch.nn.Embedding(6, 4, padding_idx=padding_idx, dtype=torch.float64)
    with torch.no_grad():
        t.weight.copy_(T(m.weight.data))
    y = m(idx)
    ty = t(T(idx))
    close(y, ty)
    gy = RNG.standard_normal(y.shape)
    assert m.backward(gy) is None                 # token ids have no gradient
    ty.backward(T(gy))
    close(m.weight.grad, t.weight.grad, what="dL/dweight")
    if padding_idx is not None:
        assert np.all(m.weight.grad[padding_idx] == 0)


def test_embedding_init_and_padding_row_like_torch():
    m = nn.Embedding(50, 8, padding_idx=-1, rng=0)
    assert m.padding_idx == 49 and m.weight.shape == (50, 8) and m.weight.dtype == np.float32
    assert np.all(m.weight.data[49] == 0)
    assert 0.8 < m.weight.data[:49].std() < 1.2           # N(0, 1), as torch.nn.Embedding


def test_embedding_gradient_is_a_scatter_add_by_central_differences():
    idx = np.array([[0, 2, 2], [4, 2, 1]])
    W = RNG.standard_normal((5, 3))
    G = RNG.standard_normal((2, 3, 3))
    y, saved = ops.embedding.forward(idx, W)
    _, gW = ops.embedding.backward(saved, G)
    gn = central_grad(lambda: float(np.sum(G * ops.embedding(idx, W))), W)
    close(gW, gn, 1e-8)
    assert np.all(gW[3] == 0)                      # row 3 is read by no id


def test_embedding_float32_stays_float32():
    m = nn.Embedding(7, 3)
    y = m(np.array([[1, 2]]))
    assert y.dtype == np.float32
    m.backward(np.ones_like(y))
    assert m.weight.grad.dtype == np.float32


@pytest.mark.parametrize("ids,match", [([[0, 6]], "token id 6 is out of range for 6 embeddings"),
                                       ([[-1, 2]], "token id -1 is out of range for 6 embeddings")])
def test_embedding_refuses_ids_out_of_range(ids, match):
    m = nn.Embedding(6, 2)
    with pytest.raises(ValueError, match=match):
        m(np.array(ids))
    assert m.saved_count == 0


def test_embedding_refuses_float_ids_and_bad_padding():
    with pytest.raises(TypeError, match="expected integer token ids, got dtype float64"):
        nn.Embedding(6, 2)(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="padding_idx=6 is out of range for 6 embeddings"):
        nn.Embedding(6, 2, padding_idx=6)
    with pytest.raises(ValueError, match="max_norm=1.0 is not supported"):
        nn.Embedding(6, 2, max_norm=1.0)


# -- scaled dot-product attention ------------------------------------------------------------------

def _qkv(B=(2, 3), L=4, S=5, E=6, Ev=3, dtype=np.float64):
    return (RNG.standard_normal(B + (L, E)).astype(dtype), RNG.standard_normal(B + (S, E)).astype(dtype),
            RNG.standard_normal(B + (S, Ev)).astype(dtype))


def _masks():
    bool_ls = RNG.random((4, 5)) > 0.3
    bool_ls[:, 0] = True                            # every row keeps a key
    full_row = bool_ls.copy()
    full_row[2] = False                             # a row with every key masked out
    return {
        "none": (None, {}),
        "bool (L, S)": (bool_ls, {}),
        "bool broadcast (B, 1, L, S)": (RNG.random((2, 1, 4, 5)) > 0.2, {}),
        "float (L, S)": (RNG.standard_normal((4, 5)), {}),
        "float with -inf": (np.where(bool_ls, 0.5, -np.inf), {}),
        "fully masked row": (full_row, {}),
        "causal": (None, {"is_causal": True}),
        "scale": (None, {"scale": 0.37}),
    }


@pytest.mark.parametrize("name", list(_masks()))
def test_sdpa_matches_torch(name):
    mask, kw = _masks()[name]
    q, k, v = _qkv()
    y, saved = ops.scaled_dot_product_attention.forward(q, k, v, mask, **kw)
    gy = RNG.standard_normal(y.shape)
    gq, gk, gv, gm = ops.scaled_dot_product_attention.backward(saved, gy)
    assert gm is None
    tq, tk, tv = T(q, True), T(k, True), T(v, True)
    ty = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=None if mask is None else T(mask), **kw)
    close(y, ty, what="forward")
    tg = torch.autograd.grad(ty, (tq, tk, tv), T(gy))
    for a, b, n in zip((gq, gk, gv), tg, "qkv"):
        close(a, b, what=f"d/d{n}")


@pytest.mark.parametrize("L,S,B", [(1, 1, ()), (1, 4, (1,)), (3, 7, (1, 1)), (5, 2, (3,))])
def test_sdpa_odd_lengths_batch_one_and_length_one(L, S, B):
    q, k, v = _qkv(B=B, L=L, S=S, E=5, Ev=2)
    for kw in ({}, {"is_causal": True}):
        y, saved = ops.scaled_dot_product_attention.forward(q, k, v, **kw)
        gy = RNG.standard_normal(y.shape)
        grads = ops.scaled_dot_product_attention.backward(saved, gy)[:3]
        tq, tk, tv = T(q, True), T(k, True), T(v, True)
        ty = F.scaled_dot_product_attention(tq, tk, tv, **kw)
        close(y, ty)
        for a, b in zip(grads, torch.autograd.grad(ty, (tq, tk, tv), T(gy))):
            close(a, b)


def test_sdpa_jacobians_equal_central_differences_with_dropout():
    """With dropout the function is fixed by its seed: backward must use the forward's mask."""
    q, k, v = _qkv(B=(2,), L=3, S=4, E=4, Ev=2)
    mask = np.where(RNG.random((3, 4)) > 0.3, 0.0, -2.0)
    G = RNG.standard_normal((2, 3, 2))
    kw = dict(dropout_p=0.4, seed=7)
    _, saved = ops.scaled_dot_product_attention.forward(q, k, v, mask, **kw)
    grads = ops.scaled_dot_product_attention.backward(saved, G)
    for i, x in enumerate((q, k, v)):
        f = lambda: float(np.sum(G * ops.scaled_dot_product_attention(q, k, v, mask, **kw)))  # noqa: E731
        close(grads[i], central_grad(f, x), 1e-7, what=f"input {i}")


def test_sdpa_dropout_keeps_the_expectation_and_is_off_at_zero():
    q, k, v = _qkv(B=(1,), L=2, S=3, E=2, Ev=1)
    v = np.ones_like(v)                             # every output is the sum of its weights: 1
    ys = [ops.scaled_dot_product_attention(q, k, v, dropout_p=0.25, seed=s) for s in range(400)]
    assert abs(np.mean(ys) - 1.0) < 0.05
    assert len({float(y.sum()) for y in ys[:10]}) > 1            # masks differ between seeds
    close(ops.scaled_dot_product_attention(q, k, v, dropout_p=0.0), np.ones((1, 2, 1)))


def test_sdpa_float32_stays_float32_with_a_float64_mask():
    q, k, v = _qkv(dtype=np.float32)
    y, saved = ops.scaled_dot_product_attention.forward(q, k, v, RNG.standard_normal((4, 5)))
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in ops.scaled_dot_product_attention.backward(saved, y)[:3])


def test_sdpa_extreme_scores_raise_no_floating_point_error():
    q, k, v = _qkv()
    q *= 1e3                                        # scores ~ 1e6: exp would overflow without the max
    mask = np.ones((4, 5), bool)
    mask[1] = False
    with np.errstate(all="raise"):
        y, saved = ops.scaled_dot_product_attention.forward(q, k, v, mask)
        grads = ops.scaled_dot_product_attention.backward(saved, np.ones_like(y))
    assert np.all(np.isfinite(y)) and all(np.all(np.isfinite(g)) for g in grads[:3])
    assert np.all(y[:, :, 1] == 0)


def test_sdpa_nan_propagates():
    q, k, v = _qkv()
    q[0, 0, 1, 2] = np.nan
    y = ops.scaled_dot_product_attention(q, k, v)
    ty = F.scaled_dot_product_attention(T(q), T(k), T(v))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ty.numpy()))


def test_sdpa_bad_input_names_the_sizes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 5\) does not broadcast .*L=4, S=5"):
        ops.scaled_dot_product_attention(q, k, v, np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="should not be set when is_causal=True"):
        ops.scaled_dot_product_attention(q, k, v, np.ones((4, 5), bool), is_causal=True)
    with pytest.raises(ValueError, match=r"query \(2, 3, 4, 6\), key \(2, 3, 5, 5\)"):
        ops.scaled_dot_product_attention(q, k[..., :5], v)
    with pytest.raises(TypeError, match="attn_mask must be boolean"):
        ops.scaled_dot_product_attention(q, k, v, np.ones((4, 5), np.int64))
    with pytest.raises(ValueError, match="dropout_p"):
        ops.scaled_dot_product_attention(q, k, v, dropout_p=1.0)


# -- MultiheadAttention -----------------------------------------------------------------------------

def _mha_pair(E=8, H=2, bias=True, batch_first=False, seed=0):
    m = nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first, dtype=np.float64, rng=seed)
    m.out_proj.weight.data[...] = np.random.default_rng(seed + 1).standard_normal((E, E)) / 3
    if bias:
        m.in_proj_bias.data[...] = np.random.default_rng(seed + 2).standard_normal(3 * E) / 3
        m.out_proj.bias.data[...] = np.random.default_rng(seed + 3).standard_normal(E) / 3
    t = torch.nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first, dtype=torch.float64)
    with torch.no_grad():
        t.in_proj_weight.copy_(T(m.in_proj_weight.data))
        t.out_proj.weight.copy_(T(m.out_proj.weight.data.T))
        if bias:
            t.in_proj_bias.copy_(T(m.in_proj_bias.data))
            t.out_proj.bias.copy_(T(m.out_proj.bias.data))
    return m, t


def _mha_grads_agree(m, t, ins, tins, g_out, ty, g_w=None, tw=None):
    grads = m.backward(g_out, g_w)
    outs, gs = [ty], [T(g_out)]
    if g_w is not None:
        outs.append(tw)
        gs.append(T(g_w))
    torch.autograd.backward(outs, gs)
    distinct = {id(a): tin for a, tin in zip(ins, tins)}
    summed = {}
    for a, g in zip(ins, grads):                    # one array passed twice: its gradients add
        summed[id(a)] = summed.get(id(a), 0) + g
    for i, tin in distinct.items():
        close(summed[i], tin.grad, what="dL/dinput")
    close(m.in_proj_weight.grad, t.in_proj_weight.grad, what="in_proj_weight")
    close(m.out_proj.weight.grad, t.out_proj.weight.grad.T, what="out_proj.weight")
    if m.in_proj_bias is not None:
        close(m.in_proj_bias.grad, t.in_proj_bias.grad, what="in_proj_bias")
        close(m.out_proj.bias.grad, t.out_proj.bias.grad, what="out_proj.bias")


MHA_CASES = {
    "self, plain": dict(),
    "self, batch_first": dict(batch_first=True),
    "self, no bias": dict(bias=False),
    "cross (S != L)": dict(cross=True),
    "cross, key is value, batch_first": dict(cross=True, kv_same=True, batch_first=True),
    "key_padding_mask": dict(kpm=True),
    "bool attn_mask (L, S)": dict(mask="bool2"),
    "float attn_mask (N*H, L, S)": dict(mask="float3"),
    "kpm and attn_mask": dict(kpm=True, mask="bool2", batch_first=True),
    "per-head weights": dict(average=False),
    "need_weights=False": dict(need_weights=False),
    "causal hint": dict(mask="causal", is_causal=True),
    "weights get a gradient": dict(g_w=True),
    "per-head weights get a gradient, cross": dict(g_w=True, average=False, cross=True),
    "unbatched": dict(unbatched=True),
    "unbatched, kpm, weights gradient": dict(unbatched=True, kpm=True, g_w=True),
    "batch 1, length 1": dict(N=1, L=1),
}


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multihead_attention_matches_torch(case):
    c = MHA_CASES[case]
    E, H, N, L = 8, 2, c.get("N", 3), c.get("L", 5)
    S = 4 if c.get("cross") else L
    bf, unb = c.get("batch_first", False), c.get("unbatched", False)
    m, t = _mha_pair(E, H, bias=c.get("bias", True), batch_first=bf)

    def seq(n):
        shape = (n, E) if unb else ((N, n, E) if bf else (n, N, E))
        return RNG.standard_normal(shape)
    x = seq(L)
    ins = (x, x, x)
    if c.get("cross"):
        kv = seq(S)
        ins = (x, kv, kv) if c.get("kv_same") else (x, kv, seq(S))
    kw = {}
    if c.get("kpm"):
        kpm = RNG.random((S,) if unb else (N, S)) > 0.6
        kpm[..., 0] = False
        kw["key_padding_mask"] = kpm
    mask = c.get("mask")
    if mask == "bool2":
        am = RNG.random((L, S)) > 0.6
        am[:, :2] = False                         # keys 0 and 1 stay: no row is fully masked
        kw["attn_mask"] = am
    elif mask == "float3":
        kw["attn_mask"] = RNG.standard_normal((N * H, L, S))
    elif mask == "causal":
        kw["attn_mask"] = ~np.tri(L, S, dtype=bool)
        kw["is_causal"] = True
    kw["need_weights"] = c.get("need_weights", True)
    kw["average_attn_weights"] = c.get("average", True)
    y, w = m(*ins, **kw)
    tins = {id(a): T(a, True) for a in ins}
    tkw = {k: (T(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    ty, tw = t(*(tins[id(a)] for a in ins), **tkw)
    close(y, ty, what="attn_output")
    if kw["need_weights"]:
        close(w, tw, what="attn_weights")
    else:
        assert w is None and tw is None
    g_w = RNG.standard_normal(w.shape) if c.get("g_w") else None
    _mha_grads_agree(m, t, ins, [tins[id(a)] for a in ins], RNG.standard_normal(y.shape), ty,
                     g_w, tw if g_w is not None else None)


def test_multihead_attention_fully_masked_row_follows_torch_without_weights():
    m, t = _mha_pair(batch_first=True)
    x = RNG.standard_normal((2, 3, 8))
    kpm = np.zeros((2, 3), bool)
    kpm[1] = True                                   # batch item 1 may attend to nothing
    y, w = m(x, x, x, key_padding_mask=kpm)
    ty, _ = t(T(x), T(x), T(x), key_padding_mask=T(kpm), need_weights=False)
    close(y, ty)
    assert np.all(w[1] == 0)


def test_multihead_attention_jacobians_equal_central_differences():
    m = nn.MultiheadAttention(4, 2, batch_first=True, dtype=np.float64, rng=3)
    m.in_proj_bias.data[...] = RNG.standard_normal(12)
    xq, xkv = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 2, 4))
    mask = np.array([[False, True], [False, False], [True, False]])
    G, Gw = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 3, 2))

    def loss():
        y, w = m(xq, xkv, xkv, attn_mask=mask)
        m.clear_saved()
        return float(np.sum(G * y) + np.sum(Gw * w))
    m.zero_grad()
    m(xq, xkv, xkv, attn_mask=mask)
    gq, gk, gv, g_mask = m.backward(G, Gw)         # one per argument: the mask's is None
    assert g_mask is None
    close(gq, central_grad(loss, xq), 1e-7, what="query")
    close(gk + gv, central_grad(loss, xkv), 1e-7, what="key = value")
    for name, p in m.named_parameters():
        close(p.grad, central_grad(loss, p.data), 1e-7, what=name)


def test_multihead_attention_under_the_tape_and_called_twice():
    m = nn.MultiheadAttention(4, 2, dtype=np.float64, rng=1)
    x = RNG.standard_normal((3, 2, 4))
    assert gradcheck(m, x, x, x, against="tape").passed
    # two calls, two saved states, consumed last in first out
    m.zero_grad()
    x2 = RNG.standard_normal((3, 2, 4))
    g1, g2 = RNG.standard_normal((3, 2, 4)), RNG.standard_normal((3, 2, 4))
    m(x, x, x)
    m(x2, x2, x2)
    b2, b1 = m.backward(g2), m.backward(g1)
    both = m.in_proj_weight.grad.copy()
    m.zero_grad()
    m(x, x, x)
    a1 = m.backward(g1)
    m(x2, x2, x2)
    a2 = m.backward(g2)
    for u, w in zip(a1 + a2, b1 + b2):
        close(u, w)
    close(m.in_proj_weight.grad, both)


def test_multihead_attention_float32_stays_float32():
    m = nn.MultiheadAttention(8, 4)
    x = RNG.standard_normal((5, 2, 8)).astype(np.float32)
    y, w = m(x, x, x, attn_mask=RNG.standard_normal((5, 5)))
    assert y.dtype == np.float32 and w.dtype == np.float32
    assert all(g.dtype == np.float32 for g in m.backward(np.ones_like(y))[:3])
    assert m.in_proj_weight.grad.dtype == np.float32


def test_multihead_attention_bad_input_names_the_sizes():
    with pytest.raises(ValueError, match="embed_dim=10 is not divisible by num_heads=3"):
        nn.MultiheadAttention(10, 3)
    m = nn.MultiheadAttention(8, 2)
    x = np.zeros((5, 2, 8), np.float32)
    with pytest.raises(ValueError, match=r"attn_mask has shape \(5, 4\); expected \(5, 5\) or .*\(4, 5, 5\)"):
        m(x, x, x, attn_mask=np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match=r"key_padding_mask has shape \(5, 2\); expected \(2, 5\)"):
        m(x, x, x, key_padding_mask=np.zeros((5, 2), bool))
    with pytest.raises(ValueError, match=r"expected query of shape \(L, N, 8\)"):
        m(x[..., :6], x[..., :6], x[..., :6])
    with pytest.raises(ValueError, match="pass attn_mask too"):
        m(x, x, x, is_causal=True)
    assert m.saved_count == 0 and m.out_proj.saved_count == 0


# -- TransformerEncoderLayer -------------------------------------------------------------------------

def _copy_encoder(m, t):
    with torch.no_grad():
        t.self_attn.in_proj_weight.copy_(T(m.self_attn.in_proj_weight.data))
        t.self_attn.in_proj_bias.copy_(T(m.self_attn.in_proj_bias.data))
        t.self_attn.out_proj.weight.copy_(T(m.self_attn.out_proj.weight.data.T))
        t.self_attn.out_proj.bias.copy_(T(m.self_attn.out_proj.bias.data))
        for name in ("linear1", "linear2"):
            getattr(t, name).weight.copy_(T(getattr(m, name).weight.data.T))
            getattr(t, name).bias.copy_(T(getattr(m, name).bias.data))
        for name in ("norm1", "norm2"):
            getattr(t, name).weight.copy_(T(getattr(m, name).weight.data))
            getattr(t, name).bias.copy_(T(getattr(m, name).bias.data))


def _torch_param(t, name):
    p = dict(t.named_parameters())[name]
    return p.grad.T if name.endswith("weight") and ("linear" in name or "out_proj" in name) else p.grad


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_encoder_layer_matches_torch(norm_first, activation, batch_first):
    d, nhead, ff = 8, 2, 12
    m = nn.TransformerEncoderLayer(d, nhead, ff, dropout=0.1, activation=activation, batch_first=batch_first,
                                   norm_first=norm_first, dtype=np.float64, rng=0)
    for p in m.parameters():                         # no parameter at its trivial init
        p.data[...] += RNG.standard_normal(p.shape) * 0.1
    t = torch.nn.TransformerEncoderLayer(d, nhead, ff, dropout=0.1, activation=activation,
                                         batch_first=batch_first, norm_first=norm_first, dtype=torch.float64)
    _copy_encoder(m, t)
    m.eval()
    t.eval()                                         # dropout off on both sides
    x = RNG.standard_normal((2, 5, d) if batch_first else (5, 2, d))
    kpm = np.zeros((2, 5), bool)
    kpm[1, 3:] = True
    y = m(x, src_key_padding_mask=kpm)
    tx = T(x, True)
    ty = t(tx, src_key_padding_mask=T(kpm))     # grad enabled: PyTorch's math path, not its fast path
    close(y, ty, 1e-9)
    gy = RNG.standard_normal(y.shape)
    gx, g_kpm = m.backward(gy)                      # one per argument: the mask's is None
    assert g_kpm is None
    ty.backward(T(gy))
    close(gx, tx.grad, 1e-9, what="dL/dsrc")
    for name, p in m.named_parameters():
        close(p.grad, _torch_param(t, name), 1e-9, what=name)


def test_transformer_encoder_layer_causal_and_training_dropout_zero():
    m = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, batch_first=True, dtype=np.float64, rng=2)
    t = torch.nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, batch_first=True, dtype=torch.float64)
    _copy_encoder(m, t)
    x = RNG.standard_normal((1, 3, 4))
    mask = ~np.tri(3, dtype=bool)
    y = m(x, src_mask=mask, is_causal=True)
    tx = T(x, True)
    ty = t(tx, src_mask=T(mask), is_causal=True)
    close(y, ty, 1e-9)
    gy = RNG.standard_normal(y.shape)
    close(m.backward(gy)[0], torch.autograd.grad(ty, tx, T(gy))[0], 1e-9)


def test_transformer_encoder_layer_gradcheck_and_tape():
    for norm_first in (False, True):
        m = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, norm_first=norm_first, activation="gelu",
                                       dtype=np.float64, rng=5)
        x = RNG.standard_normal((3, 2, 4))
        assert gradcheck(m, x).passed
        assert gradcheck(m, x, against="tape").passed


def test_transformer_encoder_layer_names_and_refusals():
    m = nn.TransformerEncoderLayer(8, 2)
    names = {n for n, _ in m.named_parameters()}
    t = torch.nn.TransformerEncoderLayer(8, 2)
    assert names == {n for n, _ in t.named_parameters()}
    for n, p in m.named_parameters():
        tp = dict(t.named_parameters())[n]
        expected = tuple(tp.shape[::-1]) if ("linear" in n or "out_proj" in n) and n.endswith("weight") \
            else tuple(tp.shape)
        assert p.shape == expected, n
    with pytest.raises(ValueError, match="activation='tanh' is not valid"):
        nn.TransformerEncoderLayer(8, 2, activation="tanh")
    with pytest.raises(ValueError, match="embed_dim=8 is not divisible by num_heads=3"):
        nn.TransformerEncoderLayer(8, 3)


# -- positional embeddings, the sequence cross-entropy, checkpoints ------------------------------------

def test_learned_positional_embedding_gradient_sums_over_the_batch():
    m = nn.LearnedPositionalEmbedding(6, 3, dtype=np.float64, rng=0)
    x = RNG.standard_normal((2, 4, 3))
    y = m(x)
    close(y, x + m.weight.data[:4])
    gy = RNG.standard_normal(y.shape)
    close(m.backward(gy), gy)
    tw = T(m.weight.data, True)
    (T(x) + tw[:4]).backward(T(gy))
    close(m.weight.grad, tw.grad)
    with pytest.raises(ValueError, match=r"T <= 6"):
        m(np.zeros((1, 7, 3)))


def test_sinusoidal_positional_embedding_known_values():
    m = nn.SinusoidalPositionalEmbedding(10, 4, dtype=np.float64)
    x = np.zeros((1, 3, 4))
    y = m(x)
    t = np.arange(3)
    expected = np.stack([np.sin(t), np.cos(t), np.sin(t / 100), np.cos(t / 100)], axis=1)
    close(y[0], expected, 1e-12)
    close(m.backward(np.ones_like(y)), np.ones_like(y))
    assert m.parameters() == []


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_sequence_cross_entropy_matches_torch(reduction, ignore_index):
    x = RNG.standard_normal((3, 5, 7))
    y = RNG.integers(0, 7, (3, 5))
    y[0, :2] = ignore_index if ignore_index >= 0 else -100
    loss_fn = nn.SequenceCrossEntropyLoss(ignore_index=ignore_index, reduction=reduction)
    loss = loss_fn(x, y)
    tx = T(x, True)
    tl = F.cross_entropy(tx.view(-1, 7), T(y).view(-1), ignore_index=ignore_index, reduction=reduction)
    if reduction == "none":
        tl = tl.view(3, 5)
    close(loss, tl)
    gy = RNG.standard_normal(np.shape(loss)) if reduction == "none" else 1.0
    gx = loss_fn.backward(gy)
    tl.backward(T(gy) if reduction == "none" else None)
    close(gx, tx.grad)
    assert gx.shape == x.shape


def test_sequence_cross_entropy_refuses_bad_shapes_and_ids():
    with pytest.raises(ValueError, match=r"logits of shape \(B, T, V\) and targets of shape \(B, T\)"):
        nn.SequenceCrossEntropyLoss()(np.zeros((2, 3, 4)), np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="target 9 is out of range for 4 classes"):
        nn.SequenceCrossEntropyLoss()(np.zeros((2, 3, 4)), np.full((2, 3), 9))


def test_the_modules_save_and_load(tmp_path):
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=True, rng=0),
                          nn.MultiheadAttention(8, 4, batch_first=True, rng=1).out_proj)
    emb = nn.Embedding(9, 8, padding_idx=0, rng=2)
    for m in (model, emb, nn.LearnedPositionalEmbedding(5, 8, rng=3)):
        checkpoint.save(m, tmp_path / "m.npz")
        back = checkpoint.load(tmp_path / "m.npz")
        for (n, p), (n2, p2) in zip(m.named_parameters(), back.named_parameters()):
            assert n == n2
            np.testing.assert_array_equal(p.data, p2.data)
    back = checkpoint.load(tmp_path / "m.npz")
    assert isinstance(back, nn.LearnedPositionalEmbedding)
    checkpoint.save(emb, tmp_path / "e.npz")
    assert checkpoint.load(tmp_path / "e.npz").padding_idx == 0

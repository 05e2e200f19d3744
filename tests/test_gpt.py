"""nn.GPT against a PyTorch GPT written here (plain torch.nn, nanoGPT's equations), the way
llm.c's test_gpt2 checks its C code: the same weights and the same batches; in float64
the per-step losses and every parameter's gradient agree to 1e-8 relative for 10 AdamW
steps (handydl's AdamW, torch.optim.AdamW), in float32 the losses to 1e-4 for 50 steps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from handydl import checkpoint, nn, optim
from handydl.check import gradcheck

torch = pytest.importorskip("torch")

VOCAB, BLOCK, LAYERS, HEADS, EMBD, BATCH = 11, 8, 2, 2, 16, 4
HYPER = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


# -- the reference, in PyTorch -----------------------------------------------------------------

class TorchAttention(torch.nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = torch.nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = torch.nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = torch.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class TorchBlock(torch.nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(n_embd)
        self.attn = TorchAttention(n_embd, n_head)
        self.ln_2 = torch.nn.LayerNorm(n_embd)
        self.mlp = torch.nn.Module()
        self.mlp.c_fc = torch.nn.Linear(n_embd, 4 * n_embd)
        self.mlp.c_proj = torch.nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        h = torch.nn.functional.gelu(self.mlp.c_fc(self.ln_2(x)))
        return x + self.mlp.c_proj(h)


class TorchGPT(torch.nn.Module):
    def __init__(self, vocab, block, n_layer, n_head, n_embd, tie=True):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, n_embd)
        self.wpe = torch.nn.Embedding(block, n_embd)
        self.h = torch.nn.ModuleList([TorchBlock(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = torch.nn.LayerNorm(n_embd)
        self.lm_head = torch.nn.Linear(n_embd, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def pair(dtype, tie=True, seed=0):
    """handydl's GPT and the reference with the same weights (handydl's init, copied over)."""
    model = nn.GPT(VOCAB, BLOCK, LAYERS, HEADS, EMBD, tie_weights=tie, dtype=dtype, rng=seed)
    ref = TorchGPT(VOCAB, BLOCK, LAYERS, HEADS, EMBD, tie).to(torch.float64 if dtype == np.float64
                                                              else torch.float32)
    tparams = dict(ref.named_parameters())
    assert set(tparams) == {n for n, _ in model.named_parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = p.data.T if is_linear_weight(model, name) else p.data
            tparams[name].copy_(torch.from_numpy(np.array(value)))
    return model, ref


def is_linear_weight(model, name):
    owner, _, attr = name.rpartition(".")
    return attr == "weight" and isinstance(model.get_submodule(owner), nn.Linear)


def batches(steps, seed=1):
    """Sequences (a + b t) mod VOCAB, each target the next term: learnable from the context."""
    rng = np.random.default_rng(seed)
    t = np.arange(BLOCK + 1)
    for _ in range(steps):
        a, b = rng.integers(0, VOCAB, (BATCH, 1)), rng.integers(1, 3, (BATCH, 1))
        data = (a + b * t) % VOCAB
        yield np.ascontiguousarray(data[:, :-1]), np.ascontiguousarray(data[:, 1:])


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def train_both(model, ref, steps, compare_grads):
    loss_fn = nn.SequenceCrossEntropyLoss()
    opt = optim.AdamW(model.parameters(), **HYPER)
    topt = torch.optim.AdamW(ref.parameters(), **HYPER)
    tparams = dict(ref.named_parameters())
    losses = []
    for x, y in batches(steps):
        model.zero_grad()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        topt.zero_grad()
        logits = ref(torch.from_numpy(x))
        tloss = torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), torch.from_numpy(y).view(-1))
        tloss.backward()
        losses.append((loss, tloss.item()))
        if compare_grads:
            for name, p in model.named_parameters():
                tg = tparams[name].grad.numpy()
                tg = tg.T if is_linear_weight(model, name) else tg
                err = rel_err(p.grad, tg)
                assert err < 1e-8, f"step {len(losses)}: gradient of {name}: relative error {err:.2e}"
        opt.step()
        topt.step()
    return losses


def test_float64_losses_and_every_gradient_equal_pytorch_for_10_adamw_steps():
    model, ref = pair(np.float64)
    losses = train_both(model, ref, 10, compare_grads=True)
    for step, (a, b) in enumerate(losses, start=1):
        assert abs(a - b) <= 1e-8 * abs(b), f"step {step}: loss {a!r} vs PyTorch {b!r}"
    assert losses[-1][0] < losses[0][0] - 0.1       # it learns
    tparams = dict(ref.named_parameters())
    for name, p in model.named_parameters():       # and the weights after 10 updates agree too
        tw = tparams[name].detach().numpy()
        assert rel_err(p.data, tw.T if is_linear_weight(model, name) else tw) < 1e-8, name


def test_float32_losses_equal_pytorch_for_50_adamw_steps():
    model, ref = pair(np.float32)
    losses = train_both(model, ref, 50, compare_grads=False)
    for step, (a, b) in enumerate(losses, start=1):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {step}: loss {a!r} vs PyTorch {b!r}"
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for p in model.parameters())


def test_untied_head_equals_pytorch():
    model, ref = pair(np.float64, tie=False)
    assert "lm_head.weight" in dict(model.named_parameters())
    losses = train_both(model, ref, 3, compare_grads=True)
    for a, b in losses:
        assert abs(a - b) <= 1e-8 * abs(b)


def test_tied_weight_gradient_is_the_sum_of_both_uses():
    model = nn.GPT(5, 4, 1, 2, 4, dtype=np.float64, rng=3)
    assert len([n for n, _ in model.named_parameters() if "wte" in n]) == 1
    x = np.random.default_rng(0).integers(0, 5, (2, 3))
    report = gradcheck(model, x, raise_exception=False)          # central differences, float64
    assert report.passed, str(report)
    assert gradcheck(model, x, against="tape").passed            # and the tape of its ops


def test_init_is_nanogpts():
    model = nn.GPT(50, 32, n_layer=3, n_head=2, n_embd=64, rng=0)
    std = {n: float(p.data.std()) for n, p in model.named_parameters()}
    assert abs(std["wte.weight"] - 0.02) < 0.002 and abs(std["h.0.attn.c_attn.weight"] - 0.02) < 0.002
    assert abs(std["h.1.mlp.c_proj.weight"] - 0.02 / math.sqrt(6)) < 0.001
    assert std["h.0.attn.c_attn.bias"] == 0 and np.all(model.ln_f.weight.data == 1)


def test_per_call_state_two_forwards_then_two_backwards():
    model = nn.GPT(VOCAB, BLOCK, 1, 2, 8, dtype=np.float64, rng=4)
    rng = np.random.default_rng(2)
    x1, x2 = rng.integers(0, VOCAB, (2, 6)), rng.integers(0, VOCAB, (3, 4))
    g1, g2 = rng.standard_normal((2, 6, VOCAB)), rng.standard_normal((3, 4, VOCAB))
    model.zero_grad()
    model(x1)
    model.backward(g1)
    model(x2)
    model.backward(g2)
    expected = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    model(x1)
    model(x2)
    model.backward(g2)                               # last in, first out
    model.backward(g1)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, expected[n], rtol=1e-12, atol=1e-15, err_msg=n)


def test_generate_crops_the_context_and_samples_reproducibly():
    model = nn.GPT(VOCAB, 4, 1, 2, 8, rng=5).eval()
    start = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    out = model.generate(start, 6, rng=0)
    assert out.shape == (2, 10) and out.dtype == np.int64
    assert np.array_equal(out[:, :4], start) and out.min() >= 0 and out.max() < VOCAB
    assert np.array_equal(out, model.generate(start, 6, rng=0))
    greedy = model.generate(start, 3, top_k=1, rng=1)
    assert model.saved_count == 0 and model.wte.saved_count == 0          # nothing kept (no_grad)
    ctx = start
    with nn.no_grad():
        for _ in range(3):                           # top_k=1 is the argmax of the last position
            nxt = model(ctx[:, -4:])[:, -1].argmax(axis=1)
            ctx = np.concatenate([ctx, nxt[:, None]], axis=1)
    assert np.array_equal(greedy, ctx)


def test_bad_input_names_the_sizes():
    model = nn.GPT(VOCAB, 4, 1, 2, 8)
    with pytest.raises(ValueError, match=r"T=5 does not fit; expected 1 <= T <= block_size=4"):
        model(np.zeros((1, 5), int))
    with pytest.raises(ValueError, match="token id 11 is out of range for 11 embeddings"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="integer array of shape"):
        model(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="n_embd=10 is not divisible by n_head=4"):
        nn.GPT(VOCAB, 4, n_head=4, n_embd=10)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(np.zeros((1, 2), int), 2, temperature=0.0)
    assert model.saved_count == 0 and model.wte.saved_count == 0


@pytest.mark.parametrize("tie", [True, False])
def test_a_trained_gpt_saves_and_loads(tmp_path, tie):
    model = nn.GPT(VOCAB, BLOCK, 2, 2, 8, tie_weights=tie, rng=6)
    x, y = next(batches(1))
    loss_fn = nn.SequenceCrossEntropyLoss()
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    checkpoint.save(model, tmp_path / "gpt.npz")
    back = checkpoint.load(tmp_path / "gpt.npz")
    assert isinstance(back, nn.GPT) and back.tie_weights == tie
    np.testing.assert_array_equal(back.eval()(x), model.eval()(x))
    if tie:                                          # still one Parameter in both uses
        assert "lm_head" not in dict(back.named_children())
        back.train().zero_grad()
        back(x)
        back.backward(np.ones((BATCH, BLOCK, VOCAB), np.float32))
        assert np.abs(back.wte.weight.grad).sum() > 0

"""Derivations: every step checked, a broken step caught, docs kept in sync;
plots: valid images with one panel per activation."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from handydl import derivations, ops

pytest.importorskip("sympy")

ROOT = Path(__file__).resolve().parents[1]
COVERED = {"sigmoid", "tanh", "relu", "softplus", "softmax", "cross_entropy", "mse_loss",
           "half_squared_error", "lp_norm", "linear", "sum_normalize", "batch_norm"}


def test_the_derivations_cover_what_people_derive():
    assert COVERED <= {d.op for d in derivations.DERIVATIONS}
    linear = {d.title for d in derivations.for_op("linear")}
    assert {"the linear layer: dL/dx", "the linear layer: dL/dW", "the linear layer: dL/db"} == linear


@pytest.mark.parametrize("d", derivations.DERIVATIONS, ids=lambda d: d.title)
def test_every_step_follows_and_the_code_matches_the_result(d):
    for step, verdict in derivations.check(d):
        assert verdict.correct, f"{d.title}: step {step} does not follow ({verdict.method})\n{verdict}"


@pytest.mark.parametrize("index", [0, 1])
def test_a_wrong_step_fails(index):
    """A derivation whose steps do not follow fails: flip a sign in one step."""
    for d in (derivations.for_op("sigmoid")[0], derivations.for_op("linear")[1]):
        broken = copy.deepcopy(d)
        step = broken.steps[index]
        step.expr = f"-({step.expr})"
        results = dict(derivations.check(broken))
        assert not results[index + 1].correct


def test_the_code_check_catches_a_backward_that_differs():
    d = copy.deepcopy(derivations.for_op("tanh")[0])
    d.code = lambda env: 1 + ops.tanh(env["x"]) ** 2
    assert not dict(derivations.check(d))["code"].correct


def test_docs_are_generated_from_the_derivations_and_up_to_date():
    text = (ROOT / "docs" / "derivations.md").read_text()
    assert text == derivations.render_all("markdown"), \
        "docs/derivations.md is stale: python -m handydl explain --all --format markdown > docs/derivations.md"


@pytest.mark.parametrize("fmt", ["text", "markdown", "latex"])
def test_explain_every_op_in_every_format(fmt):
    for name in ops.names():
        out = derivations.explain(name, fmt)
        assert name.replace("_", r"\_") in out or name in out
        assert ops.get(name).formula in out


def test_explain_cli():
    r = subprocess.run([sys.executable, "-m", "handydl", "explain", "cross_entropy"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "p - y" in r.stdout and "chain rule" in r.stdout
    r = subprocess.run([sys.executable, "-m", "handydl", "explain", "swish2"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "unknown op 'swish2'" in r.stderr


# -- plots -------------------------------------------------------------------------------------

def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_cli_writes_one_panel_per_activation(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "act.png"
    r = subprocess.run([sys.executable, "-m", "handydl", "plot", "--out", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    w, h = png_size(out)
    assert 1000 < w < 4000 and 800 < h < 4000
    from handydl import plot
    fig = plot.activations()
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titled) == len(ops.names("activation"))
    assert [t.split("(")[0] for t in titled] == ops.names("activation")


def test_plot_softmax_jacobian_and_formats(tmp_path):
    pytest.importorskip("matplotlib")
    for name in ("jac.png", "jac.svg", "jac.pdf"):
        r = subprocess.run([sys.executable, "-m", "handydl", "plot", "softmax", "--logits", "2,1,0.1",
                            "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "jac.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "jac.pdf").read_bytes()[:4] == b"%PDF"
    from handydl import plot
    fig = plot.softmax_jacobian([2, 1, 0.1])
    assert len(fig.axes[0].texts) == 9                       # every entry annotated


def test_plot_bad_input(tmp_path):
    for args, msg in ((["swish2"], "unknown activation 'swish2'"),
                      (["--out", str(tmp_path / "a.gif")], "unsupported image format 'gif'"),
                      (["softmax", "--logits", "a,b"], "--logits expects numbers")):
        r = subprocess.run([sys.executable, "-m", "handydl", "plot", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and msg in r.stderr, r.stderr

"""Derivations: every step checked, a broken step caught, docs kept in sync;
plots: valid images with one panel per activation, a CNN's filters and feature maps."""
from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    from handydl.mathtext import to_unicode
    for name in ops.names():
        out = derivations.explain(name, fmt, check=False)
        assert name.replace("_", r"\_") in out or name in out
        formula = ops.get(name).formula
        assert (to_unicode(formula) if fmt == "text" else formula) in out


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


# -- what a CNN learned: first-layer filters and feature maps -----------------------------------

def image_axes(fig):
    """The panels that show an image (colorbars hold none)."""
    return [ax for ax in fig.axes if ax.images]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "handydl", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A LeNet-style CNN on the digits, one epoch, as handydl train writes it."""
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("cnn")
    r = run_cli("train", "--model", "cnn", "--epochs", "1", "--no-progress", "--out", out)
    assert r.returncode == 0, r.stderr
    return out / "model.npz"


def test_conv_filters_and_feature_maps_from_python(cnn_run):
    from handydl import checkpoint, nn, plot
    from handydl.data import load_dataset
    model, meta = checkpoint.load(cnn_run, return_meta=True)
    assert meta["dataset"] == "digits"
    fig = plot.conv_filters(model)
    assert len(image_axes(fig)) == 32                        # lenet's first conv: 1 -> 32, 3x3
    assert all(ax.images[0].get_array().shape == (3, 3) for ax in image_axes(fig))
    im = image_axes(fig)[0].images[0]
    assert im.get_clim()[0] == -im.get_clim()[1]             # diverging, centred at 0
    assert "one input channel" in fig._suptitle.get_text()
    assert len(image_axes(plot.conv_filters(model, max_filters=10))) == 10
    conv = model[1][1][0]
    assert len(image_axes(plot.conv_filters(conv))) == 32    # a Conv2d itself

    x = load_dataset("digits", seed=0).X_test[3]
    model.train()
    states = [len(m._states) for m in model.modules()]
    fig = plot.feature_maps(model, x, label="digits test sample 3")
    assert all(m.training for m in model.modules())         # the mode it had, restored
    assert [len(m._states) for m in model.modules()] == states   # nothing saved for a backward
    panels = image_axes(fig)
    assert len(panels) == 1 + 32 and panels[0].get_title() == "input"
    assert panels[0].images[0].get_array().shape == (8, 8)
    assert {ax.images[0].get_array().shape for ax in panels[1:]} == {(8, 8)}
    assert min(ax.images[0].get_array().min() for ax in panels[1:]) >= 0    # after the ReLU
    assert "layer 1.1.1 (ReLU)" in fig._suptitle.get_text()
    with nn.no_grad():                                       # the maps are the ReLU's output
        expected = model[1][1][1](conv(model[1][0](model[0](x[None]))))[0]
    for k in (0, 5, 31):                                     # panel 0 is the input
        np.testing.assert_allclose(panels[1 + k].images[0].get_array(), expected[k])
    fig = plot.feature_maps(model, x, layer="1.1.3")         # the second conv, by name: 64 4x4 maps
    assert len(image_axes(fig)) == 1 + 64 and image_axes(fig)[1].images[0].get_array().shape == (4, 4)
    leaves = [n for n, m in model.named_modules() if not m._modules]
    fig = plot.feature_maps(model, x, layer=leaves.index("1.1.2"))   # by index: the first pool
    assert len(image_axes(fig)) == 1 + 32 and "1.1.2 (MaxPool2d)" in fig._suptitle.get_text()
    for layer, msg in (("1.1.7", "not feature maps"), ("nope", "unknown layer 'nope'"),
                       (99, "layer 99 is out of range")):
        with pytest.raises(plot.PlotInputError, match=msg):
            plot.feature_maps(model, x, layer=layer)


def test_several_input_channels_and_an_image_input():
    pytest.importorskip("matplotlib")
    from handydl import nn, plot
    from handydl.nn import models
    model = models.lenet((3, 8, 8), 4, channels=(5, 6), rng=0)
    fig = plot.conv_filters(model)
    assert len(image_axes(fig)) == 5 and "summed over its 3 input channels" in fig._suptitle.get_text()
    w = model[0].weight.data
    np.testing.assert_allclose(image_axes(fig)[2].images[0].get_array(), w[2].sum(0), rtol=1e-6)
    fig = plot.conv_filters(model, channel=1)
    assert "input channel 1 of 3" in fig._suptitle.get_text()
    np.testing.assert_allclose(image_axes(fig)[2].images[0].get_array(), w[2, 1], rtol=1e-6)
    fig = plot.feature_maps(model, np.random.default_rng(0).random((3, 8, 8)))
    panels = image_axes(fig)
    assert len(panels) == 1 + 5 and panels[0].images[0].get_array().shape == (8, 8, 3)   # RGB
    with pytest.raises(plot.PlotInputError, match="has no Conv2d"):
        plot.conv_filters(nn.MLP([4, 3, 2]))


def test_plot_filters_and_feature_maps_cli(cnn_run, tmp_path):
    out = tmp_path / "filters.png"
    r = run_cli("plot", "--model", cnn_run, "--filters", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "32 filters of layer 1.1.0" in r.stdout
    w, h = png_size(out)
    assert w > 600 and h > 300 and out.stat().st_size > 10_000
    out = tmp_path / "maps.png"
    r = run_cli("plot", "--model", cnn_run, "--feature-maps", "--index", 7, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "digits test sample 7 (class " in r.stdout
    w, h = png_size(out)
    assert w > 600 and h > 300 and out.stat().st_size > 10_000


def test_plot_feature_maps_of_a_csv_row_and_the_errors(cnn_run, tmp_path, capsys):
    from handydl import checkpoint, cli, nn
    from handydl.data import load_dataset
    _, meta = checkpoint.load(cnn_run, return_meta=True)
    X = load_dataset("digits", seed=0).X_test[:2]
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(meta["feature_names"]) + "\n"
                    + "\n".join(",".join(f"{v:g}" for v in r) for r in X))
    out = tmp_path / "row.png"
    args = ["plot", "--model", str(cnn_run), "--feature-maps", "--data", str(rows), "--out", str(out)]
    assert cli.main(args) == 0
    assert f"{rows} row 0" in capsys.readouterr().out and png_size(out)[0] > 600
    mlp = tmp_path / "mlp.npz"
    checkpoint.save(nn.MLP([64, 8, 10]), mlp, meta={"dataset": "digits"})
    m = str(cnn_run)
    for args, msg in (
            (["--model", str(mlp), "--filters"], "has no Conv2d layer"),
            (["--model", str(mlp), "--feature-maps"], "has no Conv2d layer"),
            (["--model", m, "--feature-maps", "--index", "359"], "--index 359 is out of range: digits has 359"),
            (["--model", m, "--feature-maps", "--data", str(rows), "--index", "2"], "rows.csv has 2 rows"),
            (["--model", str(tmp_path / "none.npz"), "--filters"], "none.npz: no such checkpoint file"),
            (["--model", m, "--feature-maps", "--data", str(tmp_path / "none.csv")],
             "none.csv: no such data file"),
            (["--model", m, "--feature-maps", "--layer", "1.1.7"], "not feature maps"),
            (["--model", m, "--filters", "--out", str(tmp_path / "f.gif")], "unsupported image format 'gif'"),
            (["--model", m, "--filters", "--out", str(tmp_path / "no" / "f.png")], "does not exist"),
            (["--model", m], "--filters or --feature-maps"),
            (["--model", m, "--filters", "--feature-maps"], "--filters or --feature-maps"),
            (["--model", m, "--filters", "--index", "1"], "--index goes with --feature-maps"),
            (["--filters"], "--filters needs --model FILE"),
            (["tanh", "--model", m, "--filters"], "does not go with --model"),
            (["--index", "1"], "--index goes with"),
            (["--model", m, "--feature-maps", "--index", "-1"], "--index must be >= 0")):
        with pytest.raises(SystemExit) if "must be" in msg else contextlib.nullcontext():
            status = cli.main(["plot", *args])
            assert status == 2, args
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (args, err)


# -- the CNN ops ---------------------------------------------------------------------------------

CNN = {"conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
       "batch_norm2d", "group_norm"}


def test_the_cnn_ops_have_derivations():
    assert CNN <= {d.op for d in derivations.DERIVATIONS}
    conv1d = [d for d in derivations.for_op("conv1d")]
    assert {d.wrt for d in conv1d} == {"X", "W", "b"}
    titles = " ".join(d.title for d in conv1d)
    assert "stride 2" in titles and "dilation 2" in titles
    assert all(d.code is not None for n in CNN for d in derivations.for_op(n))


def test_max_pool_routing_line_is_the_ops_tie_rule():
    """Random draws have no ties, so the steps cannot tell the tie rules apart; on tied
    inputs the last line (first maximum in scan order) must still equal the op's backward,
    and the plain argmax mask (every maximum) must not."""
    import numpy as np
    from handydl.check.expr import parse
    from handydl.check.verify import parse_let
    d = derivations.for_op("max_pool2d")[0]
    rng = np.random.default_rng(1)
    env = {"X": rng.integers(0, 2, size=(2, 2, 4, 4)).astype(float),       # ties in most windows
           "G": rng.standard_normal((2, 2, 2, 2))}
    for name, e in (parse_let(t) for t in d.let):
        env[name] = e.evaluate(env)
    code = d.code(env)
    assert np.array_equal(parse(d.steps[-1].expr).evaluate(env), code)
    assert not np.allclose(parse(d.steps[0].expr).evaluate(env), code)


def test_explain_cli_shows_the_convolution():
    r = subprocess.run([sys.executable, "-m", "handydl", "explain", "conv1d"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "col2im" in r.stdout and "flip(W)" in r.stdout and "dilate(G, 2)" in r.stdout

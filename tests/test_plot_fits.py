"""Every figure the CLI draws fits its text: no title, label, tick label, legend entry or
annotation falls outside the canvas (a single op's figure used to clip its title and legend,
being sized for the grid of all ops)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from handydl import ops

pytest.importorskip("matplotlib")


def _drawn_tick_labels_hidden(fig):
    """ids of the tick labels matplotlib does not draw (ticks outside the view limits)."""
    hidden = set()
    for ax in fig.axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(lim)
            eps = 1e-9 * (hi - lo)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - eps <= tick.get_loc() <= hi + eps:
                    hidden |= {id(tick.label1), id(tick.label2)}
    return hidden


def text_outside(fig):
    """(text, its extent in pixels, canvas size) of every drawn text that leaves the canvas."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.canvas.get_width_height()
    hidden = _drawn_tick_labels_hidden(fig)
    bad, seen = [], 0
    for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if id(t) in hidden or not t.get_visible() or not t.get_text().strip():
            continue
        seen += 1
        box = t.get_window_extent(renderer)
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
            bad.append((t.get_text()[:50], [round(v) for v in box.extents], (width, height)))
    assert seen > 0, "no text found: the check would prove nothing"
    return bad


def test_the_check_sees_clipped_text():
    """The check itself: a title wider than its figure is reported."""
    from handydl import plot
    plt = plot._pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_title("a title far too long for a figure two inches wide, clipped at both ends")
    assert any("a title far too long" in t for t, *_ in text_outside(fig))
    plt.close(fig)


@pytest.mark.parametrize("name", ops.names("activation"))
def test_one_op_fits_its_title_and_legend(name):
    from handydl import plot
    fig = plot.activations([name])
    assert text_outside(fig) == []
    assert fig._suptitle.get_text().startswith(name)
    plot._pyplot().close(fig)


@pytest.mark.parametrize("names, second", [(None, False), (None, True), (["relu", "tanh"], True),
                                           (["gelu", "selu", "hardswish"], False)])
def test_grids_of_ops_fit(names, second):
    from handydl import plot
    fig = plot.activations(names, second=second)
    assert text_outside(fig) == []
    plot._pyplot().close(fig)


@pytest.mark.parametrize("logits", [[2, 1, 0.1], [2.5, -1.25, 0.001, 3, -7.75, 1, 0, 4.5]])
def test_the_softmax_jacobian_fits(logits):
    from handydl import plot
    fig = plot.softmax_jacobian(logits)
    assert text_outside(fig) == []
    plot._pyplot().close(fig)


def test_cnn_filters_feature_maps_and_training_curves_fit():
    from handydl import plot
    from handydl.nn import models
    model = models.lenet((1, 8, 8), 4, channels=(5, 6), rng=0)       # untrained: the layout is the point
    x = np.random.default_rng(0).random((1, 8, 8))
    for fig in (plot.conv_filters(model), plot.conv_filters(model, max_filters=2),
                plot.feature_maps(model, x, label="a random image"), plot.feature_maps(model, x, layer=0),
                plot.training_curves({"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3],
                                      "val_loss": [1.1, 0.7, 0.5], "train_acc": [0.5, 0.7, 0.8],
                                      "val_acc": [0.4, 0.6, 0.7]})):
        assert text_outside(fig) == []
        plot._pyplot().close(fig)


def test_plot_cli_one_op_is_sized_for_one_panel(tmp_path):
    out = tmp_path / "gelu.png"
    r = subprocess.run([sys.executable, "-m", "handydl", "plot", "gelu", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (w, h) == (768, 624)                              # 6.4 x 5.2 in at 120 dpi

"""plotting: the loss curve (title, learning-rate panel, held-out markers) and the samples scatter
(axis labels with units, nothing cut off, no deprecation warnings from matplotlib)."""

from __future__ import annotations

import json
import warnings

import matplotlib.image
import matplotlib.pyplot as plt
import pytest
import torch

from sde_diffusion.app.plotting import (
    accuracy_figure,
    fit_titles,
    image_figure,
    image_grid,
    loss_curve,
    loss_figure,
    plot_samples,
    scatter_figure,
)


def _records(n: int = 20, lr: bool = True) -> list[dict]:
    """``metrics.jsonl`` records: a decaying positive loss every 10 steps, a linear warm-up of ``lr``."""
    out = []
    for i in range(1, n + 1):
        r = {"step": 10 * i, "loss": 2.0 / i, "grad_norm": 1.0, "steps_per_sec": 100.0, "elapsed_sec": 0.1 * i}
        if lr:
            r["lr"] = 1e-3 * min(1.0, i / 5)
        out.append(r)
    return out


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_loss_figure_has_title_lr_panel_and_held_out_markers_at_the_last_step():
    held_out = {"held-out loss, EMA weights": 0.12, "held-out loss, raw weights": 0.15}
    fig = loss_figure(_records(), held_out=held_out, title="vp on moons")
    loss_ax, lr_ax = fig.axes
    assert loss_ax.get_title() == "vp on moons"
    assert loss_ax.get_yscale() == "log"
    legend = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert legend == ["training loss (window mean)", *held_out]
    markers = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in loss_ax.get_lines()}
    assert markers["held-out loss, EMA weights"] == ([200], [0.12])
    assert markers["held-out loss, raw weights"] == ([200], [0.15])
    (lr_line,) = lr_ax.get_lines()
    assert list(lr_line.get_ydata()) == pytest.approx([r["lr"] for r in _records()])
    assert lr_ax.get_ylabel() == "learning rate" and lr_ax.get_xlabel() == "step"
    plt.close(fig)


def test_loss_figure_defaults_title_drops_lr_panel_without_lr_and_goes_linear_for_negative_loss():
    records = [dict(r, loss=r["loss"] - 1.0) for r in _records(lr=False)]  # some losses negative
    fig = loss_figure(records)
    (ax,) = fig.axes
    assert ax.get_title() == "training loss"
    assert ax.get_yscale() == "linear"
    plt.close(fig)


def test_loss_curve_writes_a_png_or_returns_none_for_empty_metrics(tmp_path):
    out = loss_curve(_write(tmp_path / "metrics.jsonl", _records(200)), tmp_path / "loss.png", held_out={"EMA": 0.01})
    assert out == tmp_path / "loss.png"
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width >= 700 and height >= 500  # 7 x 5.5 in at 120 dpi, cropped to its contents
    (tmp_path / "empty.jsonl").write_text("\n")
    assert loss_curve(tmp_path / "empty.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_loss_axis_tick_labels_are_plain_numbers():
    fig = loss_figure(_records())  # loss 0.1 .. 2: a bit over a decade
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels(which="both") if t.get_text()]
    assert labels and "1" in labels
    assert not any("10^" in s or "times" in s or "$" in s for s in labels), labels
    plt.close(fig)


@pytest.mark.parametrize(("dims", "names"), [(2, ("x", "y")), (5, ("coordinate 0", "coordinate 1"))])
def test_scatter_labels_both_axes_with_the_units(dims, names):
    x = torch.randn(300, dims, generator=torch.Generator().manual_seed(0))
    fig = scatter_figure(x, x, title="t", units="standardized units")
    left, right = fig.axes
    assert left.get_xlabel() == right.get_xlabel() == f"{names[0]} (standardized units)"
    assert left.get_ylabel() == f"{names[1]} (standardized units)"
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    plt.close(fig)


def test_scatter_without_units_names_the_coordinates_only():
    x = torch.randn(100, 2)
    fig = scatter_figure(x, x)
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("x", "y")
    plt.close(fig)


def _drawn_labels(ax):
    """The axis labels and the tick labels of ticks inside the view limits (the ones drawn)."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    ticks = [t for t in ax.xaxis.get_major_ticks() if x0 <= t.get_loc() <= x1]
    ticks += [t for t in ax.yaxis.get_major_ticks() if y0 <= t.get_loc() <= y1]
    labels = [t.label1 for t in ticks] + [ax.xaxis.label, ax.yaxis.label]
    return [lab for lab in labels if lab.get_visible() and lab.get_text()]


@pytest.mark.parametrize("stretch", [(1.0, 1.0), (4.0, 1.0), (1.0, 4.0)])
def test_scatter_keeps_every_tick_and_axis_label_inside_the_figure(stretch):
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(1)) * torch.tensor(stretch)
    fig = scatter_figure(x, x, title="title", units="standardized units")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    inside = fig.bbox  # the canvas, in display pixels
    for ax in fig.axes:
        labels = _drawn_labels(ax)
        assert len(labels) >= 4
        for label in labels:
            box = label.get_window_extent(renderer)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, (
                label.get_text()
            )
    plt.close(fig)


def test_plot_samples_writes_a_png_without_warnings(tmp_path):
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0-d tensors given to set_xlim once raised numpy DeprecationWarnings
        path = plot_samples(x, x, tmp_path / "samples.png", title="title", units="standardized units")
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > height > 300


LONG_TITLE = (
    "one sample per label 0..9, the same prior noise in every row; DPM-Solver++(2M), 50 steps; score model 1500 and "
    "noisy classifier 1500 training steps, classifier guidance at scales 0, 2 and 8 beside classifier-free guidance"
)


def _long_titles(fig):
    """The titles (of the axes, and the suptitle) holding LONG_TITLE, however wrapped."""
    texts = [ax.title for ax in fig.axes] + ([fig._suptitle] if fig._suptitle is not None else [])
    return [t for t in texts if t.get_text().replace("\n", " ") == LONG_TITLE]


@pytest.mark.parametrize(
    "make",
    [
        lambda title: scatter_figure(torch.randn(200, 2), torch.randn(200, 2), title=title),  # the suptitle
        lambda title: loss_figure(_records(), title=title),  # an axes title above two panels
        lambda title: accuracy_figure([0.1, 0.5, 0.9], [0.9, 0.6, 0.2], chance=0.1, title=title),
        lambda title: image_figure(torch.zeros(4, 1, 8, 8), title=title),  # a small grid: a narrow axes
    ],
    ids=["scatter", "loss", "accuracy", "image_grid"],
)
def test_a_long_title_wraps_inside_the_figure_and_leaves_the_axes_their_width(make):
    # issue 22: the classifier-guidance figure's title ran past the figure's edge
    short = make("t")
    short.draw_without_rendering()
    short_widths = [ax.get_window_extent().width for ax in short.axes]
    plt.close(short)
    fig = make(LONG_TITLE)
    fig.canvas.draw()
    (title,) = _long_titles(fig)
    assert title.get_text().count("\n") >= 1  # wrapped: every word kept, in order
    box, inside = title.get_window_extent(), fig.bbox
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, (box, inside)
    # the figure grew by the added lines: the axes are as wide as under a short title (not squeezed)
    assert [ax.get_window_extent().width for ax in fig.axes] == pytest.approx(short_widths, rel=0.02)
    plt.close(fig)


def test_fit_titles_keeps_a_title_that_fits_and_its_own_line_breaks():
    fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
    ax.set_title("short\ntwo lines")
    height = fig.get_figheight()
    assert fit_titles(fig) is fig and ax.get_title() == "short\ntwo lines" and fig.get_figheight() == height
    plt.close(fig)


def test_the_saved_png_holds_the_whole_wrapped_title(tmp_path):
    # bbox_inches="tight" crops to the contents: the wrapped title's lines make the image taller than
    # one line would, and no wider than the figure
    short = matplotlib.image.imread(image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "short.png", title="t")).shape
    long = matplotlib.image.imread(image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "long.png", title=LONG_TITLE)).shape
    assert long[1] == short[1] and long[0] > short[0] + 3 * 12  # several added lines of ~12 px each at 120 dpi

"""Figures written by the apps: samples beside data, image grids, and the training loss curve.

Matplotlib runs on the non-interactive Agg backend, so plots work on machines without a display.
``scatter_figure``, ``loss_figure``, ``accuracy_figure`` and ``image_figure`` return the open figure
(for notebooks and tests); the functions taking a ``path`` save it as a PNG and close it. Every title
goes through :func:`fit_titles`: a long one wraps onto more lines instead of running off the figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from .._checks import check_range


def scatter_samples(samples: torch.Tensor, data: torch.Tensor, path: str | Path, *, title: str = "", units: str | None = None) -> Path:
    """Save :func:`scatter_figure` as a PNG at ``path`` (cropped to its contents, nothing cut off)."""
    return _save_tight(scatter_figure(samples, data, title=title, units=units), Path(path))


def scatter_figure(samples: torch.Tensor, data: torch.Tensor, *, title: str = "", units: str | None = None) -> plt.Figure:
    """Side-by-side scatter of held-out ``data`` ``(N, *dims)`` and model ``samples`` ``(M, *dims)`` on
    shared, equal-aspect axes limited to the 0.1 %..99.9 % quantiles of both.

    Samples of more than two dimensions are shown by their first two coordinates (said in the labels).
    ``units`` (e.g. ``"standardized units"``) is appended to both axis labels.
    """
    s = samples.detach().reshape(samples.shape[0], -1)[:, :2].float().cpu()
    d = data.detach().reshape(data.shape[0], -1)[:, :2].float().cpu()
    both = torch.cat([s, d])
    lo, hi = both.quantile(0.001, dim=0), both.quantile(0.999, dim=0)
    pad = 0.05 * (hi - lo)
    xlim = (float(lo[0] - pad[0]), float(hi[0] + pad[0]))  # Python floats: matplotlib deprecates 0-d tensors
    ylim = (float(lo[1] - pad[1]), float(hi[1] + pad[1]))
    xlabel, ylabel = _axis_labels(samples[0].numel(), units)
    # equal aspect: size each panel to the data's height/width so the figure has little blank space
    aspect = min(max((ylim[1] - ylim[0]) / max(xlim[1] - xlim[0], 1e-12), 0.4), 2.0)
    panel = 4.2  # inches
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(2 * panel + 0.8, panel * aspect + (1.2 if title else 0.9)),
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    for ax, pts, name, color in zip(axes, (d, s), ("held-out data", "samples"), ("tab:blue", "tab:orange"), strict=True):
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1.5, alpha=0.5, color=color)
        ax.set_title(f"{name} ({pts.shape[0]})")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    return fit_titles(fig)


def _axis_labels(n_dims: int, units: str | None) -> tuple[str, str]:
    """Axis labels of a 2-D scatter: ``x``/``y`` for 2-D data, ``coordinate 0``/``coordinate 1`` for the
    first two coordinates of wider data; ``(units)`` appended when given."""
    x, y = ("x", "y") if n_dims == 2 else ("coordinate 0", "coordinate 1")
    return (f"{x} ({units})", f"{y} ({units})") if units else (x, y)


def fit_titles(fig: plt.Figure) -> plt.Figure:
    """Break every title of ``fig`` (each axes' centre title and the figure's suptitle) into lines at
    word boundaries so that each fits the width it is centred over: its axes, or the figure (less a
    2 % margin each side); grow the figure's height by the lines added, so the axes keep their size;
    return ``fig``.

    A title too wide for a figure would otherwise run off its edges (cut off in the PNG) or squeeze
    the axes. The breaks are written into the text once, measured with the figure's renderer, rather
    than left to matplotlib's ``wrap=True``, which re-wraps at save time to the cropped width of
    ``bbox_inches="tight"`` after the layout has made room for fewer lines. Line breaks already in a
    title are kept; a single word wider than the width gets a line of its own. Calling it again is
    harmless: a wrapped title already fits. Figures with ``layout="constrained"`` make the vertical
    room for the added lines.
    """
    # each title with the axes it is centred over (None: the suptitle, centred over the figure)
    titles: list[tuple[Text, plt.Axes | None]] = [(ax.title, ax) for ax in fig.axes if ax.title.get_text()]
    suptitle = getattr(fig, "_suptitle", None)  # matplotlib keeps fig.suptitle's Text here
    if suptitle is not None and suptitle.get_text():
        titles.append((suptitle, None))
    if not titles:
        return fig
    texts = [t.get_text() for t, _ in titles]
    for t, _ in titles:  # measure the axes as laid out without their titles, whose width could squeeze them
        t.set_text("")
    fig.draw_without_rendering()
    widths = [0.96 * fig.bbox.width if ax is None else ax.get_window_extent().width for _, ax in titles]
    grow = {"axes": 0.0, "figure": 0.0}  # inches: the tallest axes title's added lines, and the suptitle's
    for (t, ax), text, width in zip(titles, texts, widths, strict=True):
        wrapped = _wrap_text(t, text, width)
        t.set_text(text)
        before = t.get_window_extent().height
        t.set_text(wrapped)
        key = "figure" if ax is None else "axes"
        grow[key] = max(grow[key], (t.get_window_extent().height - before) / fig.dpi)
    if grow["axes"] + grow["figure"] > 0:
        fig.set_figheight(fig.get_figheight() + grow["axes"] + grow["figure"])
        # constrained layout places fixed-aspect axes (images, equal-aspect scatters) and their titles
        # over a few passes, one per draw: lay out once more so the first drawing fits too
        fig.draw_without_rendering()
    return fig


def _wrap_text(artist: Text, text: str, width: float) -> str:
    """``text`` with line breaks added between words so that each line of ``artist`` (its font as set)
    is at most ``width`` display pixels wide, existing breaks kept. Each paragraph takes the fewest
    lines a greedy fill gives, balanced: filled to the narrowest width that still needs no more
    lines (found by bisection), so a last line is not left with one word."""

    def line_width(line: str) -> float:
        artist.set_text(line)
        return artist.get_window_extent().width

    def greedy(words: list[str], limit: float) -> list[str]:
        lines, current = [], ""
        for word in words:
            candidate = f"{current} {word}" if current else word
            if current and line_width(candidate) > limit:
                lines.append(current)
                current = word
            else:
                current = candidate
        return [*lines, current]

    out = []
    for paragraph in text.split("\n"):
        words = paragraph.split(" ")
        lines = greedy(words, width)
        if len(lines) > 1:
            lo, hi = 0.0, width
            for _ in range(12):  # to width / 4096
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if len(greedy(words, mid)) <= len(lines) else (mid, hi)
            lines = greedy(words, hi)
        out += lines
    return "\n".join(out)


def _save_tight(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at 120 dpi cropped to its contents (``bbox_inches="tight"``), its titles
    wrapped to fit (:func:`fit_titles`), and close it."""
    fit_titles(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curve(metrics_path: str | Path, path: str | Path, *, held_out: dict[str, float] | None = None, title: str = "") -> Path | None:
    """Save :func:`loss_figure` of a ``metrics.jsonl`` file's records as a PNG at ``path``; None (and
    no file) when it holds no records."""
    lines = Path(metrics_path).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    if not records:
        return None
    return _save_tight(loss_figure(records, held_out=held_out, title=title), Path(path))


def loss_figure(records: list[dict], *, held_out: dict[str, float] | None = None, title: str = "") -> plt.Figure:
    """The training ``loss`` of ``records`` (``metrics.jsonl`` dicts with ``step``, ``loss`` and
    optionally ``lr``) against ``step``, with the learning rate in a second panel below when every
    record holds it.

    ``held_out`` maps a label (e.g. ``"held-out loss, EMA weights"``) to one loss value measured at the
    last step, drawn as a marker there and named in the legend. The loss axis is logarithmic when every
    value on it is positive. ``title`` defaults to ``"training loss"``.
    """
    held_out = {label: float(v) for label, v in (held_out or {}).items()}
    steps = [r["step"] for r in records]
    has_lr = all(r.get("lr") is not None for r in records)
    fig, axes = plt.subplots(
        2 if has_lr else 1,
        1,
        figsize=(7, 5.5 if has_lr else 4),
        sharex=True,
        squeeze=False,
        layout="constrained",
        gridspec_kw={"height_ratios": [3, 1]} if has_lr else None,
    )
    _draw_loss(axes[0, 0], steps, [r["loss"] for r in records], held_out)
    axes[0, 0].set_title(title or "training loss")
    if has_lr:
        _draw_lr(axes[1, 0], steps, [r["lr"] for r in records])
    bottom = axes[-1, 0]
    bottom.set_xlabel("step")
    bottom.xaxis.set_major_locator(ticker.MaxNLocator(8, integer=True))
    bottom.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))  # 20k, 1.5M
    return fit_titles(fig)


def _draw_loss(ax: plt.Axes, steps: list[int], loss: list[float], held_out: dict[str, float]) -> None:
    """The loss line, one marker per held-out value at the last step, and the legend; log scale when
    everything is positive."""
    ax.plot(steps, loss, color="tab:blue", label="training loss (window mean)")
    markers = iter("oDs^v<>P*X")
    for label, value in held_out.items():
        ax.plot([steps[-1]], [value], linestyle="none", marker=next(markers, "o"), markersize=8, label=label)
    ax.set_ylabel("loss")
    if all(v > 0 for v in loss) and all(v > 0 for v in held_out.values()):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PlainLogFormatter())  # 0.4, 0.6, 1 rather than 6x10^-1
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.6)))
    ax.grid(alpha=0.3, which="major")
    ax.grid(alpha=0.1, which="minor")
    ax.legend(loc="best", fontsize="small")


def _draw_lr(ax: plt.Axes, steps: list[int], lr: list[float]) -> None:
    """The learning rate against step, on a linear axis with at most a few scientific-notation ticks."""
    ax.plot(steps, lr, color="tab:green")
    ax.set_ylabel("learning rate")
    ax.yaxis.set_major_locator(ticker.MaxNLocator(3))
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(alpha=0.3)


class _PlainLogFormatter(ticker.LogFormatter):
    """Log-axis tick labels as plain numbers (``0.4``, ``20``, ``1e-05``); which ticks are labelled is
    matplotlib's choice (minor ticks too on an axis spanning under about a decade, powers of 10 only
    on a wide one)."""

    def __call__(self, x, pos=None):
        return f"{x:.4g}" if super().__call__(x, pos) else ""


def accuracy_curve(times, accuracy, path: str | Path, *, chance: float | None = None, title: str = "") -> Path:
    """Save :func:`accuracy_figure` as a PNG at ``path``."""
    return _save_tight(accuracy_figure(times, accuracy, chance=chance, title=title), Path(path))


def accuracy_figure(times, accuracy, *, chance: float | None = None, title: str = "") -> plt.Figure:
    """A classifier's held-out accuracy (``(M,)``) against the noise level ``t`` (``(M,)``), with the
    chance level as a dashed line when given."""
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot([float(t) for t in times], [float(a) for a in accuracy], marker="o", label="held-out accuracy")
    if chance is not None:
        ax.axhline(chance, linestyle="--", color="grey", label=f"chance {chance:.2f}")
    ax.set(xlabel="t (noise level)", ylabel="accuracy", ylim=(0, 1.02), title=title or "classifier accuracy on noised held-out data")
    ax.grid(alpha=0.3)
    ax.legend()
    return fit_titles(fig)


def _tile_images(images: torch.Tensor, n_cols: int, value_range: tuple[float, float], pad: int = 1) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` images row-major into one ``(C, rows (H + pad) + pad, n_cols (W + pad) + pad)``
    picture with values in ``[0, 1]``: ``(x - lo) / (hi - lo)`` clipped, on a white background."""
    lo, hi = value_range
    n, c, h, w = images.shape
    rows = -(-n // n_cols)
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0.0, 1.0)
    canvas = torch.ones(rows * n_cols, c, h + pad, w + pad)
    canvas[:n, :, pad:, pad:] = x
    canvas = canvas.reshape(rows, n_cols, c, h + pad, w + pad).permute(2, 0, 3, 1, 4)
    canvas = canvas.reshape(c, rows * (h + pad), n_cols * (w + pad))
    return torch.nn.functional.pad(canvas, (0, pad, 0, pad), value=1.0)


def image_grid(
    samples: torch.Tensor,
    path: str | Path,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    max_images: int = 64,
    title: str = "",
) -> Path:
    """Save :func:`image_figure`, the first ``max_images`` of ``samples`` ``(N, C, H, W)`` as a
    square-ish grid, as a PNG at ``path``."""
    return _save(image_figure(samples, value_range=value_range, max_images=max_images, title=title), Path(path))


def image_figure(
    samples: torch.Tensor, *, value_range: tuple[float, float] = (-1.0, 1.0), max_images: int = 64, title: str = ""
) -> plt.Figure:
    """The first ``max_images`` of ``samples`` ``(N, C, H, W)`` as a square-ish grid.

    Values are mapped linearly from ``value_range = (lo, hi)`` (data units; ``(-1, 1)`` for images
    scaled to that interval) to black..white and clipped outside it. ``C = 1`` is drawn in grey,
    ``C = 3`` as RGB; for any other ``C`` the first channel is drawn in grey (said in the title).
    """
    if samples.dim() != 4 or samples.shape[0] == 0:
        raise ValueError(f"image_grid needs a non-empty (N, C, H, W) tensor, got shape {tuple(samples.shape)}")
    lo, hi = (float(v) for v in value_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be two finite numbers lo < hi, got {value_range!r}")
    max_images = check_range("max_images", max_images, low=1, integer=True)
    images = samples[: int(max_images)]
    channels = images.shape[1]
    if channels not in (1, 3):
        images = images[:, :1]
        title = f"{title} (channel 0 of {channels})".strip()
    n_cols = math.ceil(math.sqrt(images.shape[0]))
    grid = _tile_images(images, n_cols, (lo, hi))
    height, width = grid.shape[1:]
    scale = 6.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(max(width * scale, 2.0), max(height * scale, 2.0) + (0.4 if title else 0.0)), layout="constrained")
    if grid.shape[0] == 1:
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fit_titles(fig)


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` (laid out by its layout engine, titles wrapped by :func:`fit_titles`) as a PNG at
    120 dpi, and close it."""
    fit_titles(fig)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_samples(
    samples: torch.Tensor, reference: torch.Tensor, path: str | Path, *, title: str = "", units: str | None = None
) -> Path | None:
    """The right picture for the data's shape: two coordinates, a scatter beside ``reference``
    (held-out data) with ``units`` (e.g. ``"standardized units"``) on both axis labels; ``(C, H, W)`` or
    ``(H, W)`` samples, an image grid over the reference's value range (``units`` unused); other shapes,
    the first two coordinates; None for 1-D samples."""
    dims = samples.shape[1:]
    if samples[0].numel() != 2 and len(dims) in (2, 3):
        images = samples if len(dims) == 3 else samples[:, None]
        lo, hi = float(reference.min()), float(reference.max())
        return image_grid(images, path, value_range=(lo, hi) if hi > lo else (lo - 1.0, hi + 1.0), title=title)
    if samples[0].numel() >= 2:
        return scatter_samples(samples, reference, path, title=title, units=units)
    return None

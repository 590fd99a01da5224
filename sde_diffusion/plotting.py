"""Figures written by the apps: samples beside data, image grids, and the training loss curve.

Matplotlib runs on the non-interactive Agg backend, so plots work on machines without a display.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def scatter_samples(samples: torch.Tensor, data: torch.Tensor, path: str | Path, *, title: str = "") -> Path:
    """Side-by-side scatter of held-out ``data`` and model ``samples`` on shared axes.

    Samples of more than two dimensions are shown by their first two coordinates (said in the labels).
    """
    path = Path(path)
    s = samples.detach().reshape(samples.shape[0], -1)[:, :2].float().cpu()
    d = data.detach().reshape(data.shape[0], -1)[:, :2].float().cpu()
    both = torch.cat([s, d])
    lo, hi = both.quantile(0.001, dim=0), both.quantile(0.999, dim=0)
    pad = 0.05 * (hi - lo)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
    for ax, pts, name in zip(axes, (d, s), ("held-out data", "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="tab:blue" if name != "samples" else "tab:orange")
        ax.set_title(f"{name} ({pts.shape[0]})")
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_aspect("equal", adjustable="box")
        if samples[0].numel() > 2:
            ax.set_xlabel("coordinate 0")
            ax.set_ylabel("coordinate 1")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curve(metrics_path: str | Path, path: str | Path) -> Path | None:
    """Plot ``loss`` against ``step`` from a ``metrics.jsonl`` file; None when it holds no records."""
    lines = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    if not lines:
        return None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in lines], [r["loss"] for r in lines])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (window mean)")
    if all(r["loss"] > 0 for r in lines):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    """Save the first ``max_images`` of ``samples`` ``(N, C, H, W)`` as a square-ish PNG grid.

    Values are mapped linearly from ``value_range = (lo, hi)`` (data units; ``(-1, 1)`` for images
    scaled to that interval) to black..white and clipped outside it. ``C = 1`` is drawn in grey,
    ``C = 3`` as RGB; for any other ``C`` the first channel is drawn in grey (said in the title).
    """
    if samples.dim() != 4 or samples.shape[0] == 0:
        raise ValueError(f"image_grid needs a non-empty (N, C, H, W) tensor, got shape {tuple(samples.shape)}")
    lo, hi = (float(v) for v in value_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be two finite numbers lo < hi, got {value_range!r}")
    if isinstance(max_images, bool) or int(max_images) != max_images or max_images < 1:
        raise ValueError(f"max_images must be a positive integer, got {max_images!r}")
    images = samples[: int(max_images)]
    channels = images.shape[1]
    if channels not in (1, 3):
        images = images[:, :1]
        title = f"{title} (channel 0 of {channels})".strip()
    n_cols = math.ceil(math.sqrt(images.shape[0]))
    grid = _tile_images(images, n_cols, (lo, hi))
    path = Path(path)
    height, width = grid.shape[1:]
    scale = 6.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(max(width * scale, 2.0), max(height * scale, 2.0) + (0.4 if title else 0.0)))
    if grid.shape[0] == 1:
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    """Lay out, write as PNG at 120 dpi, and close ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_samples(samples: torch.Tensor, reference: torch.Tensor, path: str | Path, *, title: str = "") -> Path | None:
    """The right picture for the data's shape: two coordinates, a scatter beside ``reference``
    (held-out data); ``(C, H, W)`` or ``(H, W)`` samples, an image grid over the reference's value
    range; other shapes, the first two coordinates; None for 1-D samples."""
    dims = samples.shape[1:]
    if samples[0].numel() != 2 and len(dims) in (2, 3):
        images = samples if len(dims) == 3 else samples[:, None]
        lo, hi = float(reference.min()), float(reference.max())
        return image_grid(images, path, value_range=(lo, hi) if hi > lo else (lo - 1.0, hi + 1.0), title=title)
    if samples[0].numel() >= 2:
        return scatter_samples(samples, reference, path, title=title)
    return None

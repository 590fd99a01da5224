"""Figures written by the apps: samples beside data, and the training loss curve.

Matplotlib runs on the non-interactive Agg backend, so plots work on machines without a display.
"""

from __future__ import annotations

import json
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

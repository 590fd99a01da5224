"""``sde-summarize``: one table of a sweep's runs: their overrides and final metrics.

    sde-summarize multirun/2026-11-22/12-00-00
    sde-summarize multirun/... --columns sde,seed,held_out_loss_ema     # or --columns all
    sde-summarize multirun/... --metric held_out_loss_ema --by sde

Every run directory below the given one (any depth) that holds ``.hydra/overrides.yaml`` becomes a
row: its command-line overrides (``key=value``), the numbers of its ``summary.json`` (written by
``sde-train``) and of the last record of its ``eval.json`` (written by ``sde-eval``), prefixed
``eval.``. ``summary.csv`` in the sweep directory keeps every column (``run``, the overrides that vary
across runs, every metric); the printed table and ``summary.md`` show the chosen ``--columns``, by
default ``run``, the varying overrides and the metrics that matter (:data:`DEFAULT_METRICS`, those
that at least one run has). ``--metric`` and ``--by`` add a plot of one metric across the values of
one override (``summary_<metric>_by_<override>.png``): every run as a point; for numeric values
(``lr=1e-4,1e-3``) the mean per value as a line, for categorical ones (``sde=vp,subvp,ve``) the mean
per category as a point with its standard error on a categorical axis.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from ._common import fail

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PROG = "sde-summarize"

DEFAULT_METRICS = (
    "steps",
    "held_out_loss_ema",
    "held_out_nll_nats_per_dim",
    "held_out_bpd",
    "sliced_w2_vs_held_out",
    "samples_outside_range",
    "samples_max_abs_ratio",
    "nfe",
    "train_seconds",
    "eval.bound",
    "eval.nll_nats_per_dim",
    "eval.bpd",
)
"""Metrics shown by default, in this order, when at least one run has them."""


def _overrides(run: Path) -> dict[str, str]:
    pairs = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml")) or []
    out = {}
    for item in pairs:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _numbers(record: dict, prefix: str = "") -> dict[str, float | str]:
    return {f"{prefix}{k}": v for k, v in record.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def collect_runs(root: str | Path) -> list[dict]:
    """One dict per run below ``root``: ``run`` (path relative to ``root``), overrides, metrics, and
    ``_overrides``, the set of keys that came from the command line."""
    root = Path(root)
    rows = []
    for marker in sorted(root.rglob(".hydra/overrides.yaml")):
        run = marker.parent.parent
        row: dict = {"run": str(run.relative_to(root)) or "."}
        overrides = _overrides(run)
        row.update(overrides)
        row["_overrides"] = set(overrides)
        summary = run / "summary.json"
        if summary.is_file():
            record = json.loads(summary.read_text())
            row.update(_numbers(record))
            if isinstance(record.get("sample_range"), dict) and record["sample_range"].get("material"):
                row["samples_out_of_range"] = "yes"
        evals = run / "eval.json"
        if evals.is_file():
            records = json.loads(evals.read_text())
            last = records[-1] if isinstance(records, list) and records else records
            if isinstance(last, dict):
                row.update(_numbers(last, "eval."))
        rows.append(row)
    return rows


def _columns(rows: list[dict], override_keys: set[str]) -> list[str]:
    """``run``, the overrides that vary across runs (those shared by all are left out), every metric."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    varies = {k for k in override_keys if len({str(r.get(k)) for r in rows}) > 1}
    return ["run"] + [k for k in keys if k in varies] + [k for k in keys if k != "run" and k not in override_keys]


def select_columns(all_columns: list[str], override_columns: set[str], spec: str | None = None) -> list[str]:
    """The columns to show: ``spec`` None gives ``run``, the varying overrides and the
    :data:`DEFAULT_METRICS` present in ``all_columns``; ``"all"`` gives ``all_columns``; otherwise
    ``spec`` is comma-separated names, kept in that order. Unknown names raise ValueError listing the
    available ones."""
    if spec is None:
        return [c for c in all_columns if c == "run" or c in override_columns] + [m for m in DEFAULT_METRICS if m in all_columns]
    if spec.strip() == "all":
        return list(all_columns)
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    unknown = [n for n in names if n not in all_columns]
    if unknown or not names:
        what = f"unknown column(s) {', '.join(unknown)}" if unknown else "no column named in --columns"
        raise ValueError(f"{what}; choose from: {', '.join(all_columns)} (or --columns all)")
    return names


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _points(rows: list[dict], metric: str, by: str) -> list[tuple[str, float]]:
    """``(value of override by, metric)`` of every run that has both; ValueError when none does."""
    points = [(str(r[by]), float(r[metric])) for r in rows if by in r and isinstance(r.get(metric), (int, float))]
    if not points:
        raise ValueError(f"no run has both the override '{by}' and the metric '{metric}'")
    return points


def metric_figure(rows: list[dict], metric: str, by: str) -> tuple[Figure, Axes]:
    """A matplotlib figure of every run's ``metric`` against its value of override ``by``.

    Numeric values (all parse as floats) are sorted and their means joined by a line; categorical
    values keep their order of first appearance, and each category's mean is a point with an error bar
    of one standard error (none for a single run), unconnected. Returns ``(figure, axes)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = _points(rows, metric, by)
    numeric = all(math.isfinite(_as_number(v)) for v, _ in points)
    values = list(dict.fromkeys(v for v, _ in points))
    if numeric:
        values.sort(key=_as_number)
    pos = {v: i for i, v in enumerate(values)}
    groups = [[y for v2, y in points if v2 == v] for v in values]
    means = [sum(g) / len(g) for g in groups]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(values)), 3.8), layout="constrained")
    shift = 0.0 if numeric else 0.12  # categorical: runs left of each tick, the mean right of it
    ax.scatter([pos[v] - shift for v, _ in points], [y for _, y in points], alpha=0.6, color="tab:blue", label="runs")
    if numeric:
        ax.plot(range(len(values)), means, color="tab:red", marker="_", markersize=20, label="mean")
    else:
        ax.errorbar(
            [i + shift for i in range(len(values))],
            means,
            yerr=[_stderr(g) for g in groups],
            fmt="D",
            linestyle="none",
            color="tab:red",
            capsize=6,
            markersize=7,
            label="mean ± s.e.",
        )
        ax.set_xlim(-0.6, len(values) - 0.4)
    ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(by)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize="small")
    return fig, ax


def _stderr(ys: list[float]) -> float:
    """Standard error of the mean of ``ys`` (sample std / sqrt(n)); 0 for fewer than two values."""
    n = len(ys)
    if n < 2:
        return 0.0
    mean = sum(ys) / n
    return math.sqrt(sum((y - mean) ** 2 for y in ys) / (n - 1) / n)


def plot_metric(rows: list[dict], metric: str, by: str, path: Path) -> Path:
    """Save :func:`metric_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig, _ = metric_figure(rows, metric, by)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _as_number(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.inf


def summarize(
    root: str | Path, metric: str | None = None, by: str | None = None, columns: str | None = None
) -> tuple[list[dict], list[str]]:
    """Collect the sweep's runs, save every column to ``summary.csv``, print and save (``summary.md``)
    the columns chosen by ``columns`` (see :func:`select_columns`), and plot ``metric`` by ``by`` when
    both are given. Returns the rows and the shown columns."""
    root = Path(root)
    rows = collect_runs(root)
    if not rows:
        raise FileNotFoundError(f"no runs below {root}: expected run directories holding .hydra/overrides.yaml")
    override_keys = set().union(*(r.pop("_overrides") for r in rows))
    all_columns = _columns(rows, override_keys)
    shown = select_columns(all_columns, override_keys, columns)
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=all_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows, shown)
    (root / "summary.md").write_text(f"# Sweep {root}\n\n{len(rows)} runs\n\n{table}")
    print(table, end="")
    strays = [r["run"] for r in rows if r.get("samples_out_of_range")]
    if strays:
        print(
            f"{PROG}: WARNING: the samples of {len(strays)} run(s) leave the data's range (samples_outside_range, "
            f"samples_max_abs_ratio; each run's train.log says why): {', '.join(strays)}"
        )
    if metric and by:
        plot_metric(rows, metric, by, root / f"summary_{metric}_by_{by}.png")
    return rows, shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Summarise a Hydra multirun of sde-train / sde-eval runs.")
    parser.add_argument("sweep_dir", help="the multirun directory (e.g. multirun/<date>/<time>)")
    parser.add_argument("--metric", help="metric to plot, e.g. held_out_loss_ema or eval.nll_nats_per_dim")
    parser.add_argument("--by", help="override to plot the metric across, e.g. sde")
    parser.add_argument(
        "--columns",
        help="comma-separated columns to print and put in summary.md (summary.csv keeps all), or 'all'; "
        "default: run, the varying overrides and the main metrics",
    )
    args = parser.parse_args(argv)
    if (args.metric is None) != (args.by is None):
        fail(PROG, "give --metric and --by together (e.g. --metric held_out_loss_ema --by sde)")
    try:
        summarize(args.sweep_dir, args.metric, args.by, args.columns)
    except (FileNotFoundError, ValueError) as err:
        fail(PROG, str(err))


if __name__ == "__main__":
    main(sys.argv[1:])

"""``sde-summarize``: one table of a sweep's runs: their overrides and final metrics.

    sde-summarize multirun/2026-11-22/12-00-00
    sde-summarize multirun/... --metric held_out_loss_ema --by sde

Every run directory below the given one (any depth) that holds ``.hydra/overrides.yaml`` becomes a
row: its command-line overrides (``key=value``), the numbers of its ``summary.json`` (written by
``sde-train``) and of the last record of its ``eval.json`` (written by ``sde-eval``), prefixed
``eval.``. The table is printed, and saved as ``summary.csv`` and ``summary.md`` in the sweep
directory; ``--metric`` and ``--by`` add a plot of one metric across the values of one override
(``summary_<metric>_by_<override>.png``: every run as a point, the mean per value as a line).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ._common import fail

PROG = "sde-summarize"


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
            row.update(_numbers(json.loads(summary.read_text())))
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


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_metric(rows: list[dict], metric: str, by: str, path: Path) -> Path:
    """Every run's ``metric`` against its value of override ``by``, with the mean per value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(str(r[by]), float(r[metric])) for r in rows if by in r and isinstance(r.get(metric), (int, float))]
    if not points:
        raise ValueError(f"no run has both the override '{by}' and the metric '{metric}'")
    values = sorted({v for v, _ in points}, key=lambda v: (_as_number(v), v))
    pos = {v: i for i, v in enumerate(values)}
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(values)), 3.5))
    ax.scatter([pos[v] for v, _ in points], [y for _, y in points], alpha=0.7, label="runs")
    means = [sum(y for v2, y in points if v2 == v) / sum(1 for v2, _ in points if v2 == v) for v in values]
    ax.plot(range(len(values)), means, color="tab:red", marker="_", markersize=20, label="mean")
    ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(by)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _as_number(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.inf


def summarize(root: str | Path, metric: str | None = None, by: str | None = None) -> tuple[list[dict], list[str]]:
    """Collect, print and save the sweep's table (and the plot when ``metric`` and ``by`` are given)."""
    root = Path(root)
    rows = collect_runs(root)
    if not rows:
        raise FileNotFoundError(f"no runs below {root}: expected run directories holding .hydra/overrides.yaml")
    override_keys = set().union(*(r.pop("_overrides") for r in rows))
    columns = _columns(rows, override_keys)
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows, columns)
    (root / "summary.md").write_text(f"# Sweep {root}\n\n{len(rows)} runs\n\n{table}")
    print(table, end="")
    if metric and by:
        plot_metric(rows, metric, by, root / f"summary_{metric}_by_{by}.png")
    return rows, columns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Summarise a Hydra multirun of sde-train / sde-eval runs.")
    parser.add_argument("sweep_dir", help="the multirun directory (e.g. multirun/<date>/<time>)")
    parser.add_argument("--metric", help="metric to plot, e.g. held_out_loss_ema or eval.nll_nats_per_dim")
    parser.add_argument("--by", help="override to plot the metric across, e.g. sde")
    args = parser.parse_args(argv)
    if (args.metric is None) != (args.by is None):
        fail(PROG, "give --metric and --by together (e.g. --metric held_out_loss_ema --by sde)")
    try:
        summarize(args.sweep_dir, args.metric, args.by)
    except (FileNotFoundError, ValueError) as err:
        fail(PROG, str(err))


if __name__ == "__main__":
    main(sys.argv[1:])

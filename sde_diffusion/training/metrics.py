"""Metrics as JSON lines: one object per logging step, appended and flushed as training runs."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """Append-only ``metrics.jsonl``. :meth:`truncate_after` drops lines past a resumed step, so a
    run killed between checkpoints and resumed holds each step once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        """All complete records; a last line cut short by a killed process is skipped."""
        if not self.path.exists():
            return []
        records = []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:
                    raise ValueError(f"{self.path} line {i + 1} is not JSON; the metrics file is damaged") from None
        return records

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

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
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

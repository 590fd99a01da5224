"""Checkpoints that are written atomically, load without running code, and prove their integrity.

A checkpoint is a plain ``torch.save`` file of a nested dict of tensors and Python scalars, so
``torch.load(path, weights_only=True)`` reads it anywhere. It carries a SHA-256 digest of its own
content (every key, tensor dtype, shape and byte); :func:`load_checkpoint` refuses a file that is
truncated, is not a checkpoint, or whose content no longer matches its digest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .._atomic import write_atomically

FORMAT = "sde-diffusion-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, truncated, altered or from another program."""


class UnreadableCheckpointError(CheckpointError):
    """The checkpoint file exists but cannot be used: truncated, corrupted, altered, or not ours.

    The message is short and names the file; what to do depends on who asks (resume or sample),
    so the apps append their own advice."""


def _feed(h: hashlib._Hash, obj: Any) -> None:
    """Hash a nested structure deterministically (dict keys sorted by their repr)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r}".encode())


def content_digest(payload: dict) -> str:
    """SHA-256 over everything in ``payload`` except its own ``sha256`` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "sha256"})
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (plus format tag and digest) to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file is
    renamed over ``path``: a crash at any moment leaves either the old checkpoint or the new one,
    never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "format": FORMAT}
    payload["sha256"] = content_digest(payload)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    return write_atomically(path, lambda f: torch.save(payload, f), binary=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (never executes code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises several types, with long internal messages, for broken zip archives and pickles
        raise UnreadableCheckpointError(f"checkpoint {path} cannot be read: it is truncated or corrupted") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UnreadableCheckpointError(f"{path} is not a sde-diffusion checkpoint (expected format {FORMAT!r})")
    recorded, actual = payload.get("sha256"), content_digest(payload)
    if recorded != actual:
        raise UnreadableCheckpointError(
            f"checkpoint {path} fails its integrity check (sha256 {actual[:12]}..., recorded {str(recorded)[:12]}...): it was altered after it was written"
        )
    return payload

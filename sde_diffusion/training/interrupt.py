"""Stop training cleanly on SIGINT (Ctrl-C) and SIGTERM (what Slurm and most schedulers send first)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
"""What ``signal.signal`` takes and returns: a function, ``SIG_DFL``/``SIG_IGN``, or None (not set from Python)."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after finishing a step; its checkpoint was written.

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        step: the step saved in ``checkpoint``.
        checkpoint: the checkpoint's path (None on processes other than the main one).
        exit_code: the shell's convention for a process ended by that signal, ``128 + signum``.
    """

    def __init__(self, signum: int, step: int, checkpoint):
        self.signal_name = signal.Signals(signum).name
        self.step, self.checkpoint, self.exit_code = step, checkpoint, 128 + int(signum)
        super().__init__(f"interrupted by {self.signal_name} at step {step}; checkpoint {checkpoint}")


class StopRequest:
    """A context that, while open, turns SIGINT and SIGTERM into a request the training loop reads
    after each step (``signum`` is the first signal received, else None), instead of an exception
    raised in the middle of a step. A second signal restores the previous handler and re-raises
    through it, so a user who presses Ctrl-C twice is not kept waiting. Outside the main thread
    (where Python cannot install handlers) or with ``enabled=False`` it does nothing."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, _Handler] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: give up waiting for the step to end
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        if self.enabled:
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

"""A progress line for long work, shown only on a terminal (never in pipes, logs or tests)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress("calibrate", total=64) as p: ... p.advance(8)``; silent unless ``stream`` is a TTY."""

    def __init__(self, label: str, total: int | None = None, unit: str = "samples", stream: TextIO | None = None,
                 enabled: bool | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or (self.total is not None and self.done >= self.total)):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "=" * int(frac * 30)
            text = f"\r{self.label}: [{bar:<30s}] {self.done}/{self.total} {self.unit} {elapsed:5.1f} s"
        else:
            text = f"\r{self.label}: {self.done} {self.unit} {elapsed:5.1f} s"
        self.stream.write(text)
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

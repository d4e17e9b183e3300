"""Progress of long work: a tqdm bar on a terminal, one log line per step everywhere.

Two forms:

- ``Progress`` counts units of work (samples, batches, kernels):
  ``with Progress("calibrate", total=64) as p: ... p.advance(8)``;
- ``stage`` times one step that has no count (``tvm.compile``, a pipeline of passes):
  ``with stage("tvm.compile"): ...``; on a terminal its bar shows the elapsed time, refreshed
  by a background thread, so a step of a minute does not look hung.

On a terminal (stderr is a TTY) the bar is drawn by tqdm, which also handles notebooks and
terminal width; anywhere else (a pipe, a log file, a test) nothing is drawn. Either way the
finished step is logged through the ``qgraph`` logger at INFO (``label: N units in T s``),
which ``qgraph -v`` shows: the clean log line of a step, with its time. Nothing here
configures logging.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Iterator, TextIO

log = logging.getLogger("qgraph")

#: seconds between redraws of a ``stage`` bar's elapsed time
_TICK = 0.5


def _on_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Units of work done out of ``total`` (None: unknown); see the module doc."""

    def __init__(self, label: str, total: int | None = None, unit: str = "samples", stream: TextIO | None = None,
                 enabled: bool | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = _on_terminal(self.stream) if enabled is None else enabled
        self.done = 0
        self.start = time.perf_counter()
        self._bar = None
        self._format: str | None = None  # tqdm's bar_format; None: its default bar

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def show(self, **values) -> None:
        """Show ``values`` (a training loss, a metric) beside the bar; nothing off a terminal."""
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __enter__(self) -> "Progress":
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.label, unit=f" {self.unit}" if self.unit else "it",
                             file=self.stream, leave=True, dynamic_ncols=True, mininterval=0.1,
                             bar_format=self._format)
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if exc_type is None:
            count = f"{self.done} {self.unit} " if self.unit else ""
            log.info("%s: %sin %.2f s", self.label, count, self.seconds)


class _Ticker(threading.Thread):
    """Redraws a stage bar every ``_TICK`` seconds until stopped."""

    def __init__(self, bar):
        super().__init__(daemon=True)
        self.bar, self.stopped = bar, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(_TICK):
            self.bar.refresh()


@contextlib.contextmanager
def stage(label: str, stream: TextIO | None = None, enabled: bool | None = None) -> Iterator[Progress]:
    """Time one step without a count (see the module doc); yields its ``Progress``."""
    progress = Progress(label, None, unit="", stream=stream, enabled=enabled)
    progress._format = "{desc}: {elapsed}"
    with progress:
        ticker = None
        if progress._bar is not None:
            ticker = _Ticker(progress._bar)
            ticker.start()
        try:
            yield progress
        finally:
            if ticker is not None:
                ticker.stopped.set()
                ticker.join()

"""Pass instruments: hooks the pass manager calls around every pass."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from qgraph.ir.core import Model
from qgraph.pm.base import Pass, PassResult


class Instrument:
    """Override any of the hooks."""

    def before_pass(self, pass_: Pass, model: Model) -> None:
        pass

    def after_pass(self, pass_: Pass, model: Model, result: PassResult, seconds: float) -> None:
        pass


@dataclass
class PassTiming:
    name: str
    seconds: float
    modified: bool


class PassTimings(Instrument):
    """Records wall time per pass run; ``report()`` sums them by pass name."""

    def __init__(self) -> None:
        self.runs: list[PassTiming] = []

    def after_pass(self, pass_: Pass, model: Model, result: PassResult, seconds: float) -> None:
        self.runs.append(PassTiming(pass_.name, seconds, result.modified))

    def report(self) -> str:
        totals: dict[str, list[float]] = {}
        for r in self.runs:
            t = totals.setdefault(r.name, [0.0, 0, 0])
            t[0] += r.seconds
            t[1] += 1
            t[2] += r.modified
        total = sum(t[0] for t in totals.values()) or 1e-12
        lines = [f"{'pass':32s} {'runs':>5s} {'changed':>8s} {'seconds':>9s} {'share':>6s}"]
        for name, (sec, runs, changed) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
            lines.append(f"{name:32s} {runs:5d} {changed:8d} {sec:9.4f} {100 * sec / total:5.1f}%")
        lines.append(f"{'total':32s} {len(self.runs):5d} {'':8s} {total:9.4f}")
        return "\n".join(lines)


class DumpIR(Instrument):
    """Writes the IR text before and after every pass: ``NNN-<pass>-before.txt`` / ``-after.txt``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.count = 0
        os.makedirs(directory, exist_ok=True)

    def _write(self, pass_: Pass, model: Model, when: str) -> None:
        from qgraph.ir.text import print_model

        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", pass_.name)
        path = os.path.join(self.directory, f"{self.count:03d}-{safe}-{when}.txt")
        with open(path, "w") as f:
            f.write(print_model(model) + "\n")

    def before_pass(self, pass_: Pass, model: Model) -> None:
        self.count += 1
        self._write(pass_, model, "before")

    def after_pass(self, pass_: Pass, model: Model, result: PassResult, seconds: float) -> None:
        self._write(pass_, model, "after")

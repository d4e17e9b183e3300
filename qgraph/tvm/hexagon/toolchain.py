"""The host tools a Hexagon build needs: clang (compile the driver, assemble the constants),
ld.lld (link a static ELF) and qemu-hexagon (run it, user mode, HVX). Debian packages them as
``clang``, ``lld`` and ``qemu-user-static``.

TVM's own ``export_library`` calls the host g++ and cannot link for Hexagon, so the kernels are
written as an object file and linked here.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from qgraph.errors import QGraphError
from qgraph.targets.hexagon import TOOLS as HEXAGON_TOOLS


class ToolchainError(QGraphError):
    """A Hexagon tool is missing, or a compile / link / run step failed (its output quoted)."""


#: Candidate names of each tool (``qgraph.targets.hexagon.TOOLS``).
TOOLS = HEXAGON_TOOLS

#: What to install where a tool is missing (Debian / Ubuntu).
PACKAGES = {"clang": "clang", "ld.lld": "lld", "qemu": "qemu-user-static"}

TRIPLE = "hexagon-unknown-linux-musl"


def find(tool: str) -> str | None:
    """The path of ``tool`` (a key of ``TOOLS``), or None."""
    for name in TOOLS[tool]:
        path = shutil.which(name)
        if path:
            return path
    return None


def require(tool: str) -> str:
    """The path of ``tool``; raises ``ToolchainError`` saying what to install when it is missing."""
    path = find(tool)
    if path is None:
        raise ToolchainError(f"{TOOLS[tool][0]} not found; install it (Debian: apt-get install {PACKAGES[tool]})")
    return path


def available() -> bool:
    """Whether every tool to build and run Hexagon programs here is installed."""
    return all(find(t) for t in TOOLS)


def _check(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, **kwargs)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else str(r.stderr)
        raise ToolchainError(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    return r


def compile_c(source: str, obj: str, mcpu: str) -> None:
    """Compile freestanding C (or assemble ``.S``) for Hexagon (``-G0``: no small-data
    section, whose GP-relative addressing a static link without a C runtime does not set up)."""
    _check([require("clang"), f"--target={TRIPLE}", f"-mcpu={mcpu}", "-O2", "-G0", "-ffreestanding",
            "-fno-builtin", "-nostdlib", "-fno-pic", "-c", source, "-o", obj], f"clang {os.path.basename(source)}")


def link(objects: list[str], elf: str) -> None:
    """Link ``objects`` into a static Hexagon ELF whose entry is ``_start``."""
    _check([require("ld.lld"), "-static", "-e", "_start", "-o", elf, *objects], "ld.lld")


#: ``-cpu`` options qemu-hexagon needs: none where it knows the ELF's CPU (its e_flags, e.g.
#: v68); Debian 12's qemu 7.2 knows only ``v67`` (whose HVX model runs v68 code) and refuses
#: the rest, so a refusal is retried once with ``-cpu v67`` and that choice kept.
_QEMU_CPU: list[list[str]] = [[]]


def run(elf: str, stdin: bytes, timeout: float | None = None) -> bytes:
    """Run ``elf`` under qemu-hexagon with ``stdin``; its standard output."""
    qemu = require("qemu")
    try:
        r = _check([qemu, *_QEMU_CPU[0], elf], f"qemu-hexagon {os.path.basename(elf)}", input=stdin, timeout=timeout)
    except ToolchainError as e:
        if _QEMU_CPU[0] or "unable to find CPU model" not in str(e):
            raise
        _QEMU_CPU[0] = ["-cpu", "v67"]
        r = _check([qemu, *_QEMU_CPU[0], elf], f"qemu-hexagon {os.path.basename(elf)}", input=stdin, timeout=timeout)
    return r.stdout

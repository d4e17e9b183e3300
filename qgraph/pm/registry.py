"""Pass registry and the text form of pipelines.

    canonicalize,fuse-conv-bn,calibrate(method=entropy),fixed-point(a,b)

A pass name, optionally with ``(key=value,...)`` options; ``fixed-point(...)`` wraps a
sub-pipeline that reruns until nothing changes. Aliases name whole pipelines. A registry
is an ordinary object: build one (``qgraph.passes.registry()`` returns the built-in
passes) and ``register`` your own passes on it; nothing global is written on import.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable

from qgraph.errors import PipelineError
from qgraph.pm.base import Pass
from qgraph.pm.pipeline import FixedPoint, Pipeline

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class PassRegistry:
    """Pass classes and pipeline aliases by kebab-case name."""

    def __init__(self, passes: Iterable[type[Pass]] = (), aliases: dict[str, tuple[str, str]] | None = None):
        self._passes: dict[str, type[Pass]] = {}
        self._aliases: dict[str, tuple[str, str]] = {}
        for p in passes:
            self.register(p)
        for name, (text, doc) in (aliases or {}).items():
            self.alias(name, text, doc)

    def register(self, cls: type[Pass], *, replace: bool = False) -> type[Pass]:
        """Add a pass class (usable as a decorator). Names are kebab-case and unique."""
        name = getattr(cls, "name", "")
        if not _NAME.match(name or ""):
            raise PipelineError(f"pass class {cls.__name__} needs a kebab-case 'name', got {name!r}")
        if name == FixedPoint.name:
            raise PipelineError(f"'{name}' is reserved for fixed-point groups")
        if not replace and (name in self._passes or name in self._aliases):
            raise PipelineError(f"a pass or alias named '{name}' is already registered")
        self._passes[name] = cls
        return cls

    def alias(self, name: str, pipeline: str, doc: str = "") -> None:
        """Name a pipeline, e.g. ``alias("cleanup", "fixed-point(eliminate-identity,dead-code-elimination)")``."""
        if name in self._passes or name in self._aliases:
            raise PipelineError(f"a pass or alias named '{name}' is already registered")
        self._aliases[name] = (pipeline, doc)
        self.parse(pipeline)  # fail now, not when used

    def names(self) -> list[str]:
        return sorted(self._passes)

    def get(self, name: str) -> type[Pass]:
        cls = self._passes.get(name)
        if cls is None:
            raise PipelineError(self._unknown(name))
        return cls

    def describe(self) -> list[tuple[str, str]]:
        """(name, one-line summary) for every pass and alias."""
        return [(n, s) for n, s, _ in self.describe_options()]

    def describe_options(self) -> list[tuple[str, str, list[str]]]:
        """(name, one-line summary, its options as ``name: type = default``) for every pass
        and alias (aliases and groups have no options of their own)."""
        rows = [(n, c.summary(), [o.describe() for o in c.option_specs().values()])
                for n, c in sorted(self._passes.items())]
        rows += [(n, s, []) for n, s in self._alias_rows()]
        return rows

    def _alias_rows(self) -> list[tuple[str, str]]:
        rows = [(n, f"alias for {text}" + (f": {doc}" if doc else "")) for n, (text, doc) in sorted(self._aliases.items())]
        rows.append((FixedPoint.name, "fixed-point(p1,p2,...) reruns its passes until none changes the IR"))
        return rows

    def _unknown(self, name: str) -> str:
        known = list(self._passes) + list(self._aliases) + [FixedPoint.name]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `qgraph passes` lists them"
        return f"unknown pass '{name}'{hint}"

    # -- text pipelines -------------------------------------------------------------------
    def parse(self, text: str) -> Pipeline:
        """Parse a pipeline string into a ``Pipeline`` (options converted and validated)."""
        return Pipeline(_Parser(text, self).items(depth=0))


class _Parser:
    def __init__(self, text: str, registry: PassRegistry, alias_stack: tuple[str, ...] = ()):
        self.text = text
        self.pos = 0
        self.reg = registry
        self.alias_stack = alias_stack

    def error(self, msg: str) -> PipelineError:
        return PipelineError(f"bad pipeline {self.text!r} at column {self.pos + 1}: {msg}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def word(self) -> str:
        self.skip_ws()
        m = re.compile(r"[A-Za-z0-9_.\-]+").match(self.text, self.pos)
        if not m:
            raise self.error("expected a pass name" if self.pos < len(self.text) else "unexpected end (trailing comma?)")
        self.pos = m.end()
        return m.group()

    def items(self, depth: int) -> list:
        out = []
        if not self.peek():
            raise self.error("empty pipeline")
        while True:
            out.extend(self.item(depth))
            c = self.peek()
            if c == ",":
                self.pos += 1
                continue
            if c == ")" and depth > 0:
                return out
            if c == "":
                if depth > 0:
                    raise self.error("missing ')'")
                return out
            raise self.error(f"unexpected {c!r}")

    def item(self, depth: int) -> list:
        name = self.word()
        if name == FixedPoint.name:
            if self.peek() != "(":
                raise self.error("fixed-point needs a parenthesized list of passes")
            self.pos += 1
            inner = self.items(depth + 1)
            self.pos += 1  # ')'
            return [FixedPoint(inner)]
        if name in self.reg._aliases:
            if name in self.alias_stack:
                raise self.error(f"alias '{name}' refers to itself")
            if self.peek() == "(":
                raise self.error(f"alias '{name}' takes no options")
            sub = _Parser(self.reg._aliases[name][0], self.reg, self.alias_stack + (name,))
            return sub.items(depth=0)
        if name not in self.reg._passes:
            raise PipelineError(self.reg._unknown(name))
        options: dict[str, str] = {}
        if self.peek() == "(":
            self.pos += 1
            while self.peek() != ")":
                key = self.word()
                if self.peek() != "=":
                    raise self.error(f"expected '=' after option '{key}' of pass '{name}'")
                self.pos += 1
                options[key] = self.value()
                if self.peek() == ",":
                    self.pos += 1
                elif self.peek() != ")":
                    raise self.error(f"expected ',' or ')' in the options of pass '{name}'")
            self.pos += 1
        return [self.reg._passes[name].from_options(options)]

    def value(self) -> str:
        self.skip_ws()
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            end = self.text.find('"', self.pos + 1)
            if end < 0:
                raise self.error("unterminated quoted value")
            val = self.text[self.pos + 1:end]
            self.pos = end + 1
            return val
        m = re.compile(r"[^,()\s]+").match(self.text, self.pos)
        if not m:
            raise self.error("expected an option value")
        self.pos = m.end()
        return m.group()

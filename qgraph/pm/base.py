"""Passes, their results and their options."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Union

from qgraph.errors import PipelineError
from qgraph.ir.core import Model


class _All:
    """Sentinel: every analysis is preserved."""

    def __repr__(self) -> str:
        return "ALL_ANALYSES"


ALL_ANALYSES: Any = _All()


class AllAnalysesExcept(frozenset):
    """``PassResult.preserved`` for a pass that invalidates only the listed analyses."""

    def __contains__(self, item: object) -> bool:
        return not frozenset.__contains__(self, item)

    def __repr__(self) -> str:
        return f"AllAnalysesExcept({', '.join(getattr(a, '__name__', str(a)) for a in frozenset.__iter__(self))})"


@dataclass(frozen=True)
class PassResult:
    """What a pass did.

    Attributes:
        modified: whether the IR changed.
        preserved: analysis classes still valid after the pass (``ALL_ANALYSES`` when
            nothing changed). Everything else is dropped from the cache.
        stats: counts worth reporting, e.g. ``{"removed": 3}``.
    """

    modified: bool
    preserved: Any = frozenset()
    stats: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def unchanged(cls) -> "PassResult":
        return cls(False, ALL_ANALYSES)

    @classmethod
    def changed(cls, preserved: Any = frozenset(), **stats: int) -> "PassResult":
        keep = preserved if preserved is ALL_ANALYSES or isinstance(preserved, AllAnalysesExcept) else frozenset(preserved)
        return cls(True, keep, stats)

    @classmethod
    def of(cls, modified: bool, preserved: Any = frozenset(), **stats: int) -> "PassResult":
        return cls.changed(preserved, **stats) if modified else cls(False, ALL_ANALYSES, stats)


@dataclass(frozen=True)
class OptionSpec:
    name: str  # python name (snake_case); the text form also accepts kebab-case
    type: Any
    default: Any

    def describe(self) -> str:
        return f"{self.name.replace('_', '-')}: {_type_name(self.type)} = {self.default!r}"


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is Literal:
        return "|".join(str(a) for a in typing.get_args(t))
    args = typing.get_args(t)
    if type(None) in args:  # Optional[X]: "X or unset"
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + " (optional)"
    return getattr(t, "__name__", str(t))


class Pass:
    """Base class of a pass.

    Subclasses set ``name`` (kebab-case, the CLI uses it), write a docstring whose first
    line is a one-line summary and which states ``before => after`` and preconditions,
    take their options as keyword arguments of ``__init__`` (with type annotations: int,
    float, bool, str or Literal[...]), and implement ``run``.
    """

    name: ClassVar[str] = ""
    #: names of passes that must run before this one: a pipeline that runs one of them only
    #: after this pass is refused. One the pipeline does not run at all is a precondition on
    #: the input (e.g. ``insert-qdq`` alone reads ``model.calibration`` set by the caller), which
    #: ``check_preconditions`` or the pass itself reports.
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, model: Model, analyses: "AnalysisManagerLike") -> PassResult:
        raise NotImplementedError

    def check_preconditions(self, model: Model) -> None:
        """Raise ``PassContractError`` if ``model`` is not a valid input for this pass."""

    # -- options --------------------------------------------------------------------------
    @classmethod
    def option_specs(cls) -> dict[str, OptionSpec]:
        init = cls.__init__
        if init is object.__init__:
            return {}
        hints = typing.get_type_hints(init)
        specs = {}
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            specs[p.name] = OptionSpec(p.name, hints.get(p.name, str),
                                       None if p.default is inspect.Parameter.empty else p.default)
        return specs

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> "Pass":
        """Build the pass from text options (as parsed from a pipeline string)."""
        specs = cls.option_specs()
        kwargs: dict[str, Any] = {}
        for key, text in options.items():
            spec = specs.get(key.replace("-", "_"))
            if spec is None:
                valid = ", ".join(s.describe() for s in specs.values()) or "none"
                raise PipelineError(f"pass '{cls.name}' has no option '{key}' (its options: {valid})")
            kwargs[spec.name] = _convert(cls.name, spec, text)
        missing = [s.name for s in specs.values() if s.default is None and s.name not in kwargs
                   and not _is_optional(s.type)]
        if missing:
            raise PipelineError(f"pass '{cls.name}' needs option(s): {', '.join(m.replace('_', '-') for m in missing)}")
        return cls(**kwargs)

    def options(self) -> dict[str, Any]:
        """Current option values (read from attributes of the same name)."""
        return {k: getattr(self, k) for k in self.option_specs() if hasattr(self, k)}

    @classmethod
    def summary(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.splitlines()[0] if doc else ""

    def __str__(self) -> str:
        specs = self.option_specs()
        opts = [f"{k.replace('_', '-')}={v}" for k, v in self.options().items() if v != specs[k].default]
        return self.name + (f"({','.join(opts)})" if opts else "")


AnalysisManagerLike = Any


def _is_optional(t: Any) -> bool:
    return typing.get_origin(t) is Union and type(None) in typing.get_args(t)


def _convert(pass_name: str, spec: OptionSpec, text: str) -> Any:
    t = spec.type
    if _is_optional(t):
        if text.lower() == "none":
            return None
        t = next(a for a in typing.get_args(t) if a is not type(None))
    where = f"pass '{pass_name}' option '{spec.name.replace('_', '-')}'"
    if typing.get_origin(t) is Literal:
        choices = typing.get_args(t)
        for c in choices:
            if str(c) == text:
                return c
        raise PipelineError(f"{where} must be one of {', '.join(map(str, choices))}; got '{text}'")
    if t is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise PipelineError(f"{where} must be true or false; got '{text}'")
    if t in (int, float):
        try:
            return t(text)
        except ValueError:
            raise PipelineError(f"{where} must be {'an integer' if t is int else 'a number'}; got '{text}'") from None
    return text

"""Typed errors a qgraph user can meet.

Every error names what was wrong, where (file, node, tensor) and, where there is
one, what to do. The CLI prints ``str(error)`` on one line; ``--debug`` shows the
chained traceback.
"""

from __future__ import annotations

import zipfile

#: what numpy's ``np.load`` raises for a file that is not a readable .npy / .npz: missing or
#: unreadable, not numpy's format, a pickled object, or a damaged zip (not a zip, a bad CRC,
#: truncated). Catch these, not ``Exception``, where a user's data file is read.
NPZ_READ_ERRORS = (OSError, ValueError, zipfile.BadZipFile, EOFError)


class QGraphError(Exception):
    """Base class of every error qgraph raises on purpose."""


class ModelLoadError(QGraphError):
    """The file or bytes could not be read as an ONNX model."""


class InvalidModelError(QGraphError):
    """The model parsed but breaks a structural rule (cycle, undefined value, unknown domain)."""


class ExternalDataError(ModelLoadError):
    """An external-data reference is unsafe (outside the model folder) or unreadable."""


class VerificationError(QGraphError):
    """``verify()`` found the IR inconsistent. ``problems`` lists every finding."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = problems[0] if problems else "unknown problem"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"IR verification failed: {head}{more}")


class ParseError(QGraphError):
    """The textual IR form could not be parsed."""


class PipelineError(QGraphError):
    """A pass pipeline is malformed: unknown pass, bad option, bad syntax."""


class PassError(QGraphError):
    """A pass failed while running; the cause is chained."""


class PassContractError(PassError):
    """A pass broke its own contract (claimed no change but mutated the IR, broke a precondition)."""


class RewriteCycleError(PassError):
    """A rewrite or fixed-point group kept changing the graph without converging."""

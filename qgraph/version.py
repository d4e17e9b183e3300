"""qgraph's version, read once from the installed package's metadata (pyproject.toml's
``version``), so that the report and ``qgraph.__version__`` cannot disagree with the install.
A module of its own, importing nothing of qgraph: the report reads it without importing the
package root (which imports the API, which imports the report)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("qgraph")
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"

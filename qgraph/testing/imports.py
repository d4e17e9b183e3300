"""The import graph of the qgraph package, read from the source with ``ast`` (nothing is imported).

Every ``import`` / ``from ... import`` counts, function-local and ``TYPE_CHECKING`` ones
included: a lazy import is still a dependency. A module belongs to a *unit*: the top-level
subpackage (``qgraph.ir``, ``qgraph.tvm``, ... and ``qgraph.passes``, which is the ``passes/``
folder: see ``package-dir`` in pyproject.toml) or top-level module (``qgraph.errors``,
``qgraph.api``) it lives in; ``qgraph/__init__.py`` is the unit ``qgraph``.

``python -m qgraph.testing.imports`` prints the unit-level graph (``a -> b  count``), the
count being the number of modules of ``b`` named by import statements of ``a`` (one per
statement and module: ``from qgraph.ir import l3, ops`` counts 2);
``--edges`` prints each of them with its file:line. ``tests/test_imports.py`` holds the rules.
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

#: The repository root (this file is qgraph/testing/imports.py).
ROOT = Path(__file__).resolve().parents[2]
#: package name -> the folder holding it, as pyproject.toml's ``package-dir`` maps them.
PACKAGE_DIRS = {"qgraph": ROOT / "qgraph", "qgraph.passes": ROOT / "passes"}


@dataclass(frozen=True)
class ImportEdge:
    """One import statement of module ``source`` naming module ``target`` (both qgraph's)."""

    source: str
    target: str
    path: Path
    line: int

    @property
    def where(self) -> str:
        """``file:line`` relative to the repository root."""
        try:
            return f"{self.path.relative_to(ROOT)}:{self.line}"
        except ValueError:
            return f"{self.path}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.source} -> {self.target}"


def modules(package_dirs: dict[str, Path] | None = None) -> dict[str, Path]:
    """Module name -> source file, for every ``.py`` file under the package folders
    (a folder mapped to its own package name is not also read as part of its parent)."""
    dirs = PACKAGE_DIRS if package_dirs is None else package_dirs
    claimed = {d.resolve() for d in dirs.values()}
    found: dict[str, Path] = {}
    for package, folder in dirs.items():
        folder = folder.resolve()
        for path in sorted(folder.rglob("*.py")):
            between = [d for d in path.parents if folder in d.parents]
            if any(d in claimed for d in between):
                continue  # in another package's folder inside this one
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_package(module: str, known: dict[str, Path]) -> bool:
    return module in known and known[module].name == "__init__.py"


def _resolve(source: str, known: dict[str, Path], node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = source.split(".")
    if not _is_package(source, known):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(source: str, known: dict[str, Path], node: ast.AST) -> Iterator[str]:
    """The qgraph modules an import statement names (``from pkg import mod`` names ``pkg.mod``
    when that is a module, else ``pkg``)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        module = _resolve(source, known, node)
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            yield sub if sub in known else module


def edges(package_dirs: dict[str, Path] | None = None) -> list[ImportEdge]:
    """Every import of a qgraph module by a qgraph module, in file and line order."""
    known = modules(package_dirs)
    found: list[ImportEdge] = []
    for source, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in dict.fromkeys(_targets(source, known, node)):
                if target == "qgraph" or target.startswith("qgraph."):
                    found.append(ImportEdge(source, target, path, node.lineno))
    return sorted(found, key=lambda e: (str(e.path), e.line, e.target))


def unit(module: str) -> str:
    """The top-level subpackage or module of ``module`` (``qgraph.ir.core`` -> ``qgraph.ir``)."""
    return ".".join(module.split(".")[:2])


def unit_edges(all_edges: Iterable[ImportEdge]) -> list[ImportEdge]:
    """The edges that cross from one unit to another."""
    return [e for e in all_edges if unit(e.source) != unit(e.target)]


def unit_graph(all_edges: Iterable[ImportEdge]):
    """A ``networkx.DiGraph`` of units; each edge has ``count`` and its ``imports`` (the ``ImportEdge``
    behind it)."""
    import networkx as nx

    g = nx.DiGraph()
    for e in unit_edges(all_edges):
        a, b = unit(e.source), unit(e.target)
        if not g.has_edge(a, b):
            g.add_edge(a, b, count=0, imports=[])
        g[a][b]["count"] += 1
        g[a][b]["imports"].append(e)
    return g


def module_graph(all_edges: Iterable[ImportEdge], within: str):
    """A ``networkx.DiGraph`` of the modules of package ``within`` (``qgraph.tvm``: it and its
    submodules) and the imports between them; each edge has its ``imports``."""
    import networkx as nx

    def inside(module: str) -> bool:
        return module == within or module.startswith(within + ".")

    g = nx.DiGraph()
    for e in all_edges:
        if inside(e.source) and inside(e.target) and e.source != e.target:
            if not g.has_edge(e.source, e.target):
                g.add_edge(e.source, e.target, imports=[])
            g[e.source][e.target]["imports"].append(e)
    return g


def cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one node (unit or module): each is a set
    that import one another, directly or not (sorted, largest first)."""
    import networkx as nx

    comps = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    return sorted(comps, key=lambda c: (-len(c), c))


def format_graph(graph) -> str:
    """``a -> b  count`` lines, sorted by source then target."""
    counts = Counter({(a, b): d["count"] for a, b, d in graph.edges(data=True)})
    width = max((len(f"{a} -> {b}") for a, b in counts), default=0)
    return "\n".join(f"{f'{a} -> {b}':<{width}}  {n}" for (a, b), n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    """Print the unit-level import graph (and, with ``--edges``, every import behind it)."""
    parser = argparse.ArgumentParser(prog="python -m qgraph.testing.imports", description=__doc__.split("\n")[0])
    parser.add_argument("--edges", action="store_true", help="also list each import with its file:line")
    args = parser.parse_args(argv)
    graph = unit_graph(edges())
    print(format_graph(graph))
    comps = cycles(graph)
    print(f"\n{graph.number_of_nodes()} units, {graph.number_of_edges()} edges, "
          f"{len(comps)} cycle{'s' if len(comps) != 1 else ''}" + "".join(f"\n  {' <-> '.join(c)}" for c in comps))
    if args.edges:
        for a, b, d in sorted(graph.edges(data=True)):
            print(f"\n{a} -> {b}")
            for e in d["imports"]:
                print(f"  {e.where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The import rules of the architecture, checked on the import graph read from the source
(``qgraph.testing.imports``: every import statement, function-local ones included).

The judged (qgraph.tvm) and the judge (qgraph.reference) never import each other: what both
need is the L3 contract (``qgraph.ir.l3``, ``qgraph.ir.l3_geometry``) and the numerics
(``qgraph.quant.fixedpoint``), so a bug in a shared helper cannot pass the bit-exact test on
both sides. The IR imports nothing above it, the numerics neither the IR nor the pass
manager, and no two packages import each other in a cycle. Inside qgraph.tvm the
target-independent lowering imports no kernel package (``qgraph.tvm.x86``) but through the one
mapping of ``qgraph.tvm.kernel_packages``, and no modules import one another in a cycle.
``python -m qgraph.testing.imports`` prints the graph.
"""

from __future__ import annotations

import pytest

from qgraph.testing import imports

EDGES = imports.edges()

#: The units the IR sits below: it may import none of them.
ABOVE_IR = ("qgraph.rewrite", "qgraph.pm", "qgraph.passes", "qgraph.calib", "qgraph.verify", "qgraph.api",
            "qgraph.tvm", "qgraph.reference", "qgraph.cli", "qgraph.testing", "qgraph.qat", "qgraph")


def _imports(sources: str | tuple[str, ...], targets: str | tuple[str, ...]) -> list[imports.ImportEdge]:
    """The imports by a module of unit(s) ``sources`` of a module of unit(s) ``targets``."""
    sources = (sources,) if isinstance(sources, str) else sources
    targets = (targets,) if isinstance(targets, str) else targets
    return [e for e in EDGES if imports.unit(e.source) in sources and imports.unit(e.target) in targets]


def _fail_if(found: list[imports.ImportEdge], message: str) -> None:
    """Fail with ``message`` and each import of ``found`` (file:line), if there is any."""
    if found:
        pytest.fail(message + "\n" + "\n".join(f"  {e}" for e in found), pytrace=False)


def test_tvm_never_imports_reference():
    found = _imports("qgraph.tvm", "qgraph.reference")
    _fail_if(found, "qgraph.tvm (the judged) imports qgraph.reference (the judge); move what both need into "
                    "the L3 contract (qgraph/ir/l3*.py) or qgraph.quant:")


def test_reference_never_imports_tvm():
    found = _imports("qgraph.reference", "qgraph.tvm")
    _fail_if(found, "qgraph.reference (the judge) imports qgraph.tvm (the judged):")


def test_ir_imports_nothing_above_it():
    found = _imports("qgraph.ir", ABOVE_IR)
    _fail_if(found, "qgraph.ir imports a package above it:")


def test_quant_imports_neither_ir_nor_pm():
    found = _imports("qgraph.quant", ("qgraph.ir", "qgraph.pm"))
    _fail_if(found, "qgraph.quant (the numerics) imports the IR or the pass manager:")


def test_qat_is_not_a_judge_and_nothing_needs_it():
    """qgraph.qat (fake-quant training, PyTorch optional) reads the IR, the L2 contract and the
    numerics like a backend: never the reference interpreter or TVM; and no package but the CLI
    imports it, so qgraph without the ``qat`` extra imports cleanly."""
    _fail_if(_imports("qgraph.qat", ("qgraph.reference", "qgraph.tvm")),
             "qgraph.qat imports the reference or TVM (read the L2 contract, qgraph/ir/l2.py):")
    below = ("qgraph.ir", "qgraph.quant", "qgraph.pm", "qgraph.passes", "qgraph.calib", "qgraph.verify",
             "qgraph.tvm", "qgraph.reference", "qgraph.rewrite", "qgraph.api", "qgraph.precision")
    _fail_if(_imports(below, "qgraph.qat"), "a package below qgraph.qat imports it (torch is an optional extra):")


def _fail_on_cycles(graph, what: str) -> None:
    """Fail naming every cycle of ``graph`` and the import statements that make it."""
    comps = imports.cycles(graph)
    lines = []
    for comp in comps:
        lines.append(f"cycle {' <-> '.join(comp)}:")
        lines += [f"  {e}" for a, b, d in sorted(graph.subgraph(comp).edges(data=True)) for e in d["imports"]]
    if comps:
        pytest.fail(f"{what} import one another in a cycle:\n" + "\n".join(lines), pytrace=False)


def test_no_cycle_between_packages():
    _fail_on_cycles(imports.unit_graph(EDGES), "the top-level packages")


# -- inside qgraph.tvm: target-independent lowering, per-target kernel packages ------------------
#: The one module that maps a target to its kernel package, and so the one outside the kernel
#: packages that imports one (lazily, when a target chooses it).
KERNEL_PACKAGE_MAP = "qgraph.tvm.kernel_packages"


def _kernel_packages() -> list[str]:
    """The kernel packages: the subpackages of qgraph.tvm (``qgraph.tvm.x86``)."""
    return sorted(m for m, path in imports.modules().items()
                  if m.startswith("qgraph.tvm.") and m.count(".") == 2 and path.name == "__init__.py")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_target_independent_tvm_never_imports_a_kernel_package():
    """The lowering of qgraph.tvm reaches a target's kernels only through the hook
    (``LowerContext.kernels``) that ``qgraph.tvm.kernel_packages`` fills in."""
    packages = _kernel_packages()
    assert "qgraph.tvm.x86" in packages, packages

    def in_a_package(module: str) -> bool:
        return any(_within(module, p) for p in packages)

    found = [e for e in EDGES if imports.unit(e.source) == "qgraph.tvm" and e.source != KERNEL_PACKAGE_MAP
             and not in_a_package(e.source) and in_a_package(e.target)]
    _fail_if(found, f"a target-independent module of qgraph.tvm imports a kernel package; give the kernels "
                    f"through the target's KernelPackage hook, chosen in {KERNEL_PACKAGE_MAP}:")
    assert any(e.source == KERNEL_PACKAGE_MAP and _within(e.target, "qgraph.tvm.x86") for e in EDGES), \
        f"{KERNEL_PACKAGE_MAP} no longer imports qgraph.tvm.x86: is the exemption above still where the mapping is?"


def test_kernel_packages_never_import_one_another():
    packages = _kernel_packages()
    found = [e for e in EDGES for p in packages for q in packages
             if p != q and _within(e.source, p) and _within(e.target, q)]
    _fail_if(found, "a kernel package imports another; share through the target-independent modules:")


def test_no_module_cycle_in_tvm():
    graph = imports.module_graph(EDGES, "qgraph.tvm")
    assert graph.has_edge("qgraph.tvm.x86.select", "qgraph.tvm.relax_integer")  # the graph is read
    _fail_on_cycles(graph, "modules of qgraph.tvm")


# -- the reader itself ---------------------------------------------------------------------------
def test_reader_sees_local_relative_and_mapped_imports(tmp_path):
    """Function-local and relative imports count, ``from pkg import module`` names the module,
    and a folder mapped to ``qgraph.passes`` is read under that name, not as its parent's."""
    pkg, passes = tmp_path / "pkg", tmp_path / "pkg" / "passes"
    (pkg / "ir").mkdir(parents=True)
    passes.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "ir" / "__init__.py").write_text("from .core import Node\nfrom . import text\n")
    (pkg / "ir" / "core.py").write_text("import os\n\ndef f():\n    from qgraph.passes.fold import Fold\n")
    (pkg / "ir" / "text.py").write_text("from ..errors import ParseError\n")
    (passes / "__init__.py").write_text("")
    (passes / "fold.py").write_text("from qgraph import errors\nimport qgraph.ir.core\n")
    found = imports.edges({"qgraph": pkg, "qgraph.passes": passes})
    got = {(e.source, e.target, e.line) for e in found}
    assert got == {
        ("qgraph.ir", "qgraph.ir.core", 1), ("qgraph.ir", "qgraph.ir.text", 2),
        ("qgraph.ir.core", "qgraph.passes.fold", 4),
        ("qgraph.ir.text", "qgraph.errors", 1),
        ("qgraph.passes.fold", "qgraph.errors", 1), ("qgraph.passes.fold", "qgraph.ir.core", 2),
    }, got
    graph = imports.unit_graph(found)
    assert imports.cycles(graph) == [["qgraph.ir", "qgraph.passes"]]
    assert "qgraph.ir -> qgraph.passes" in imports.format_graph(graph)


def test_the_real_graph_is_read():
    """The graph of this repository has the edges everyone knows (a reader that found nothing
    would pass every rule above)."""
    graph = imports.unit_graph(EDGES)
    assert graph.has_edge("qgraph.passes", "qgraph.ir") and graph.has_edge("qgraph.tvm", "qgraph.ir")
    assert graph.has_edge("qgraph.reference", "qgraph.quant")  # the one rounding rule
    local = [e for e in EDGES if e.path.name == "lower.py" and e.target == "qgraph.onnx.evaluate"]
    assert local, "the function-local import in qgraph/tvm/lower.py was not seen"

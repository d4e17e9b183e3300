"""Graph analyses the passes share."""

from __future__ import annotations

import networkx as nx

from qgraph.ir.core import Graph, Model, Node
from qgraph.pm.analysis import Analysis, AnalysisManager


class Dataflow:
    """The main graph's node-level dataflow as a networkx DiGraph.

    An edge p -> n means n reads an output of p, directly or from inside one of n's
    subgraphs. Used for fusion legality (reachability, dominance) and cycle reports.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        dag = nx.DiGraph()
        for n in graph:
            dag.add_node(n)
            for v in _reads(n):
                p = v.producer()
                if p is not None and p.graph is graph:
                    dag.add_edge(p, n)
        self.dag = dag

    def reaches(self, a: Node, b: Node) -> bool:
        """Whether some path leads from ``a`` to ``b``."""
        return a is not b and nx.has_path(self.dag, a, b)

    def descendants(self, n: Node) -> set[Node]:
        return nx.descendants(self.dag, n)


def _reads(n: Node):
    for v in n.inputs:
        if v is not None:
            yield v
    for sub in n.subgraphs():
        for inner in sub.all_nodes():
            for v in inner.inputs:
                if v is not None:
                    yield v


class DataflowAnalysis(Analysis):
    name = "dataflow"

    @classmethod
    def compute(cls, model: Model, analyses: AnalysisManager) -> Dataflow:
        return Dataflow(model.graph)

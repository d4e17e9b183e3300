"""Structural verifier: types of objects, topological order, use-def consistency, names, domains."""

from __future__ import annotations

from qgraph.errors import VerificationError
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.ops import normalize_domain

_MAX_PROBLEMS = 50


def verify(model: Model) -> None:
    """Raise ``VerificationError`` listing every inconsistency found (up to 50).

    Checks, per graph and subgraph: every node belongs to the graph it is listed in; every
    input is defined before it is read (inputs, initializers, earlier nodes, enclosing
    graphs); every use recorded on a value matches a live node's input slot and vice
    versa; producers and output indices agree; graph outputs are defined; value names
    are unique across the model; every node's domain is imported by the model.
    """
    problems: list[str] = []
    domains = {normalize_domain(d) for d in model.opset_imports}
    names: dict[str, Value] = {}
    _verify_graph(model.graph, set(), problems, domains, names)
    if problems:
        raise VerificationError(problems[:_MAX_PROBLEMS])


def _name_check(v: Value, names: dict[str, Value], problems: list[str], where: str) -> None:
    if not v.name:
        return  # the exporter names anonymous values
    other = names.get(v.name)
    if other is None:
        names[v.name] = v
    elif other is not v:
        problems.append(f"value name '{v.name}' is used by two different values ({where})")


def _verify_graph(g: Graph, outer: set[int], problems: list[str], domains: set[str],
                  names: dict[str, Value]) -> None:
    gname = g.name or "<unnamed>"
    defined: set[int] = set(outer)
    local: list[Value] = []
    for v in g.inputs:
        if v.producer() is not None:
            problems.append(f"graph '{gname}' input '{v.name}' has a producer")
        defined.add(id(v))
        local.append(v)
        _name_check(v, names, problems, f"input of graph '{gname}'")
    for name, v in g.initializers.items():
        if v.name != name:
            problems.append(f"graph '{gname}': initializer registered as '{name}' is named '{v.name}'")
        if v.const_value is None:
            problems.append(f"graph '{gname}': initializer '{name}' has no data")
        if not v.is_graph_input():
            defined.add(id(v))
            local.append(v)
            _name_check(v, names, problems, f"initializer of graph '{gname}'")
    count = 0
    for node in g:
        count += 1
        if node.graph is not g:
            problems.append(f"{node.describe()} is listed in graph '{gname}' but belongs elsewhere")
        if node.op.domain not in domains:
            problems.append(f"{node.describe()}: domain '{node.op.domain}' is not in the model's opset_imports")
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                problems.append(_undefined_message(g, node, v))
            if (node, i) not in v._uses:
                problems.append(f"{node.describe()} input {i} ('{v.name}') is not recorded as a use of that value")
        for k, o in enumerate(node.outputs):
            if o is None:
                continue
            if o.producer() is not node or o.index != k:
                problems.append(f"{node.describe()} output {k} ('{o.name}') names a different producer")
            if id(o) in defined:
                problems.append(f"value '{o.name}' is defined twice (again by {node.describe()})")
            defined.add(id(o))
            local.append(o)
            _name_check(o, names, problems, f"output of {node.describe()}")
        for sub in node.subgraphs():
            if sub.parent is not node:
                problems.append(f"subgraph '{sub.name}' of {node.describe()} has a stale parent link")
            _verify_graph(sub, defined, problems, domains, names)
        if len(problems) > _MAX_PROBLEMS:
            return
    if count != len(g):
        problems.append(f"graph '{gname}' counts {len(g)} nodes but lists {count}")
    for v in g.outputs:
        if id(v) not in defined:
            problems.append(f"graph '{gname}' output '{v.name}' is not defined in the graph or an enclosing one")
    for v in local:
        for user, i in v._uses:
            if user.graph is None:
                problems.append(f"value '{v.name}' is still recorded as read by removed {user.describe()}")
            elif i >= len(user.inputs) or user.inputs[i] is not v:
                problems.append(f"value '{v.name}' records a use by {user.describe()} input {i}, which reads something else")


def _undefined_message(g: Graph, node: Node, v: Value) -> str:
    producer = v.producer()
    if producer is None or producer.graph is None:
        return f"{node.describe()} reads '{v.name}', which is not defined in graph '{g.name}' or an enclosing graph"
    if producer.graph is g:
        cycle = _find_cycle(g)
        if cycle:
            return f"graph '{g.name}' has a cycle: {cycle}"
        return (f"{node.describe()} reads '{v.name}' before {producer.describe()} defines it "
                "(nodes are not in topological order)")
    return f"{node.describe()} reads '{v.name}' from graph '{producer.graph.name}', which does not enclose it"


def _find_cycle(g: Graph) -> str | None:
    import networkx as nx

    dag = nx.DiGraph()
    for n in g:
        for v in n.inputs:
            p = v.producer() if v is not None else None
            if p is not None and p.graph is g:
                dag.add_edge(p, n)
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        return None
    return " -> ".join(a.describe() for a, _ in cycle) + " -> " + cycle[0][0].describe()

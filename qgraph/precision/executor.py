"""Where the sensitivity probes run: in this process, or on a Ray cluster.

``make_executor(None | "local")`` runs them one after another here (ONNX Runtime uses every
core for each); ``make_executor("ray")`` starts a local Ray (one worker per core, one ORT
thread each), ``"ray=ADDRESS"`` joins a running cluster. Both call the same function on the
same inputs, so a sweep gives the same numbers either way; Ray returns results in task order.
"""

from __future__ import annotations

from typing import Callable, Sequence

from qgraph.errors import QGraphError


class LocalExecutor:
    """Runs every task in this process, in order."""

    name = "local"
    threads: int | None = None  # ORT's default: every core for each probe

    def map(self, fn: Callable, shared, tasks: Sequence, on_done: Callable[[int, object], None]) -> list:
        out = []
        for k, task in enumerate(tasks):
            r = fn(shared, task)
            on_done(k, r)
            out.append(r)
        return out

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs tasks as Ray remote calls; the shared inputs go to the object store once."""

    threads = 1  # one ORT thread per worker: the workers are the parallelism

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError as e:
            raise QGraphError("--executor ray needs Ray: pip install 'ray>=2.9' (or the qgraph extra 'ray')") from e
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            else:
                ray.init(log_to_driver=False, include_dashboard=False)
            self.started = True
        self.name = f"ray ({address})" if address else f"ray (local, {int(ray.cluster_resources().get('CPU', 1))} CPUs)"

    def map(self, fn: Callable, shared, tasks: Sequence, on_done: Callable[[int, object], None]) -> list:
        ray = self.ray
        remote = ray.remote(num_cpus=1)(fn)
        ref = ray.put(shared)
        pending = {remote.remote(ref, t): k for k, t in enumerate(tasks)}
        out: list = [None] * len(tasks)
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for d in done:
                k = pending[d]
                out[k] = ray.get(d)
                on_done(k, out[k])
        return out

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(spec: str | None):
    """``None`` / ``"local"``: this process; ``"ray"``: a local Ray; ``"ray=ADDRESS"``: a cluster."""
    if spec in (None, "", "local"):
        return LocalExecutor()
    if spec == "ray":
        return RayExecutor()
    if spec.startswith("ray="):
        return RayExecutor(spec[4:])
    raise QGraphError(f"unknown executor '{spec}'; use local, ray or ray=ADDRESS")

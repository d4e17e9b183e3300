"""Where the sensitivity probes run: in this process, or on a Ray cluster.

``make_executor(None | "local")`` runs them one after another here (ONNX Runtime uses every
core for each); ``make_executor("ray")`` starts a local Ray (one worker per core, one ORT
thread each), ``"ray=ADDRESS"`` joins a running cluster (``ray=auto``: the one ``ray start``
began on this machine). Both call the same function on the same inputs, so a sweep gives the
same numbers either way; Ray returns results in task order. The ORT thread count does not
change them: on the digits CNN (20 probes) and 10 probes of PP-OCRv4 rec, 1, 2 and the default
threads gave bit-identical damages, so the local executor keeps ORT's default.
"""

from __future__ import annotations

import logging
import os
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
    """Runs tasks as Ray remote calls; the shared inputs go to the object store once.

    Args:
        address: a running cluster to join (``ray.init(address=...)``; ``"auto"``: the one
            started on this machine); ``None``: start a local Ray for this executor, even when
            one is already running on the machine (``address="local"``), with ``workers`` CPUs.
        workers: the local Ray's CPUs, hence its worker processes (default: this process's
            cores); not allowed with ``address``, where the cluster has its own.

    When Ray is already initialized in this process (a caller started it), the executor uses
    that instance and leaves it running on ``close``.
    """

    threads = 1  # one ORT thread per worker: the workers are the parallelism

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError as e:
            raise QGraphError("--executor ray needs Ray: pip install 'ray>=2.9' (or the qgraph extra 'ray')") from e
        if address and workers:
            raise QGraphError(f"a worker count applies to a local Ray, not to the cluster at '{address}'")
        if workers is not None and workers < 1:
            raise QGraphError(f"a local Ray needs at least 1 worker, not {workers}")
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            # quiet: no dashboard, the workers' stdout/stderr stay in Ray's log files, and
            # Ray's own INFO/WARNING lines (instance started, token auth) are not printed
            quiet = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                         logging_level=logging.ERROR)
            try:
                if address:
                    ray.init(address=address, **quiet)
                else:
                    ray.init(address="local", num_cpus=workers or _cores(),
                             runtime_env=_runtime_env(), **quiet)
            except Exception as e:
                where = f"join the Ray cluster at '{address}'" if address else "start a local Ray"
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise QGraphError(f"--executor ray: cannot {where}: {why} (run the probes here with "
                                  "--executor local)") from e
            self.started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.name = f"ray ({address}, {cpus} CPUs)" if address else f"ray (local, {cpus} CPUs)"

    def map(self, fn: Callable, shared, tasks: Sequence, on_done: Callable[[int, object], None]) -> list:
        ray = self.ray
        remote = ray.remote(num_cpus=1)(fn)
        ref = ray.put(shared)
        pending = {remote.remote(ref, t): k for k, t in enumerate(tasks)}
        out: list = [None] * len(tasks)
        waiting = list(pending)
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                for d in done:
                    k = pending[d]
                    out[k] = ray.get(d)  # a task's exception is re-raised here, as its own type
                    on_done(k, out[k])
        except BaseException:
            for w in waiting:  # a failed probe (or Ctrl-C) stops the sweep: the rest would be thrown away
                ray.cancel(w)
            raise
        return out

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def _cores() -> int:
    """The cores this process may run on (its affinity, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _runtime_env() -> dict:
    """The local workers import the qgraph this process imported: a checkout on ``sys.path``
    (put there by pytest, say, not by PYTHONPATH) would otherwise lose to an installed or
    editable qgraph in the workers, and the probes would run other code than the driver's."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../qgraph (not `import qgraph`:
    root = os.path.dirname(package)  # the top package imports the api, which imports this one)
    if os.path.basename(root) in ("site-packages", "dist-packages"):
        return {}  # installed: the workers find the same one
    rest = os.environ.get("PYTHONPATH")
    return {"env_vars": {"PYTHONPATH": root + (os.pathsep + rest if rest else "")}}


def make_executor(spec: str | None, workers: int | None = None):
    """``None`` / ``"local"``: this process; ``"ray"``: a local Ray (``workers`` CPUs, default
    every core); ``"ray=ADDRESS"``: a cluster."""
    if spec in (None, "", "local"):
        return LocalExecutor()
    if spec == "ray":
        return RayExecutor(workers=workers)
    if spec.startswith("ray="):
        return RayExecutor(spec[4:], workers=workers)
    raise QGraphError(f"unknown executor '{spec}'; use local, ray or ray=ADDRESS")

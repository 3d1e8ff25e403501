"""The ``ray`` executor: profile items and tasks on a Ray cluster (``pip install onnxshrink[ray]``).

- A workload (for ``auto``: the simplified model and the calibration samples; for
  ``prune:allocation=sensitivity``: the model, its calibration feeds and reference outputs), and
  the files the tasks read (a trial's model, calibration and evaluation data), go into the object
  store once (``ray.put``); each node's object store pulls them at most once, whatever the number
  of workers there.
- Work runs on actors (``num_cpus=1`` each, spread over the nodes) that keep what they were given:
  an item worker builds the workload's state (an onnxruntime session and the data) once and keeps
  it between items; a trial worker writes the files to its node's disk once and runs each task
  there (a trial builds its candidate in a child process with the trial's time and memory limits,
  as on the local executor, with one onnxruntime thread: the actor's one CPU).
- Each actor also declares ``num_gpus``: 0 unless asked (``--gpus-per-worker``), or 1 when the
  provider is ``cuda`` and the cluster declares GPUs; then at most as many actors run as the
  cluster has GPUs for, and Ray sets each actor's ``CUDA_VISIBLE_DEVICES`` to its own GPU.
- Latency work (a timed workload, trials of ``--min-speedup``; ``auto``'s latency model is measured
  by the driver) runs on separate actors that ask for
  the custom resource ``latency_device`` (``ray start --resources='{"latency_device": 1}'``): one
  at a time per such node, so timings do not disturb each other. Without such a node they run on
  the ordinary workers (a warning says so).
- A worker or node that dies: the actor restarts (``max_restarts``) and the call is retried
  (``max_task_retries``); after the retries the item or trial is recorded as failed with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxshrink.errors import UsageError
from onnxshrink.executors.base import NodeProgress, PieceDone, Task, TaskDone, Workload, error_text

logger = logging.getLogger(__name__)

LATENCY_RESOURCE = "latency_device"
_POLL_SECONDS = 1.0


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'onnxshrink[ray]'") from None
    return ray


def check_address(address: str) -> None:
    """Checks the spelling of a Ray address (``auto``, ``local`` or ``HOST:PORT``) without connecting.

    Raises:
        UsageError: Anything else.
    """
    host, colon, port = address.rpartition(":")
    if address not in ("auto", "local") and not (colon and host and port.isdigit()):
        raise UsageError(f"--ray-address {address}: expected auto, local or HOST:PORT")


def _node_name() -> str:
    ray = _ray()
    node_id = ray.get_runtime_context().get_node_id()
    return f"{ray.util.get_node_ip_address()}/{node_id[:6]}"


def _assigned() -> dict[str, float]:
    """The resources Ray gave this actor (``CPU``, ``GPU``, custom ones)."""
    return {name: float(amount) for name, amount in _ray().get_runtime_context().get_assigned_resources().items()}


class _ItemWorker:
    """Keeps the workload's state (a session, the data) between the items it measures."""

    def __init__(self, work: Workload) -> None:
        from onnxshrink.runtime import cap_threads

        cap_threads(1)  # the actor's one declared CPU, not one thread per core of its node
        self.work = work
        self.state: Any = None
        self.started = False
        self.node = _node_name()

    def where(self) -> str:
        return self.node

    def resources(self) -> dict[str, float]:
        return _assigned()

    def item(self, item: Any) -> dict[str, Any]:
        fetched = not self.started
        if not self.started:
            self.state, self.started = self.work.start(), True
        started = time.perf_counter()
        result = self.work.measure(self.state, item)
        result.update(seconds=time.perf_counter() - started, node=self.node, fetched=fetched)
        return result


class _TrialWorker:
    """Writes the study's files to this node's disk once, then builds candidates in child processes."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.node = _node_name()
        self.local: dict[str, str] | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="onnxshrink-ray-"))

    def where(self) -> str:
        return self.node

    def resources(self) -> dict[str, float]:
        return _assigned()

    def _materialize(self) -> dict[str, str]:
        if self.local is None:
            self.local = {}
            for original, content in self.files.items():
                digest = hashlib.sha256(original.encode()).hexdigest()[:12]
                path = self.folder / f"{digest}-{Path(original).name}"
                path.write_bytes(content)
                self.local[original] = str(path)
        return self.local

    def trial(self, task: Task) -> dict[str, Any]:
        fetched = self.local is None
        local = self._materialize()
        output = self.folder / Path(task.output).name
        started = time.perf_counter()
        outcome = task.run(local, str(output), threads=1)  # the actor's one declared CPU
        outcome.update(seconds=time.perf_counter() - started, node=self.node, fetched=fetched)
        if output.is_file():
            outcome["model_bytes"] = output.read_bytes()
            output.unlink()
        return outcome

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _study_files(tasks: Sequence[Task]) -> dict[str, bytes]:
    """The regular files the tasks read, by path (``module:attribute`` sources stay as they are)."""
    files: dict[str, bytes] = {}
    for task in tasks:
        for path in task.files():
            if path and path not in files and Path(path).is_file():
                files[path] = Path(path).read_bytes()
    return files


def gpus_per_worker(requested: float | None, provider: str, cluster_gpus: float) -> float:
    """The GPUs each actor declares: ``requested``, or by default 1 for ``cuda`` on a cluster with GPUs, else 0.

    Raises:
        UsageError: A negative count, or more GPUs per worker than the cluster declares.
    """
    if requested is None:
        return 1.0 if provider == "cuda" and cluster_gpus >= 1 else 0.0
    if requested < 0:
        raise UsageError(f"--gpus-per-worker must be at least 0, got {requested:g}")
    if requested > cluster_gpus:
        raise UsageError(f"--gpus-per-worker {requested:g}: the Ray cluster declares {cluster_gpus:g} GPU(s)")
    return float(requested)


def actor_options(
    resources: Mapping[str, float], workers: int, retries: int, gpus: float, timed: bool
) -> tuple[dict[str, Any], int]:
    """The options of every actor of one pool, and how many actors it gets.

    Args:
        resources: The cluster's resources (``ray.cluster_resources()``).
        workers: The most actors.
        retries: Restarts of a dead actor and retries of its call.
        gpus: GPUs each actor declares (see :func:`gpus_per_worker`).
        timed: Latency work: one actor per ``latency_device`` slot when the cluster has such slots.
    """
    options: dict[str, Any] = {
        "num_cpus": 1,
        "num_gpus": gpus,
        "max_restarts": retries,
        "max_task_retries": retries,
        "scheduling_strategy": "SPREAD",
    }
    count = workers
    slots = int(resources.get(LATENCY_RESOURCE, 0))
    if timed and slots:
        options["resources"] = {LATENCY_RESOURCE: 1}
        count = slots
    if gpus > 0:  # actors that wait for a GPU that never frees would stall the pool
        count = min(count, max(1, int(resources.get("GPU", 0) // gpus)))
    return options, count


class RayExecutor:
    """A Ray cluster (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        address: str = "auto",
        retries: int = 2,
        gpus: float | None = None,
        provider: str = "cpu",
    ) -> None:
        check_address(address)
        ray = _ray()
        self.started_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise UsageError(f"--ray-address {address}: cannot connect to a Ray cluster: {error}") from None
            self.started_ray = True
        resources = ray.cluster_resources()
        cpus = max(1, int(resources.get("CPU", 1)))
        self.workers = min(workers, cpus) if workers else cpus
        self.resources = {name: float(amount) for name, amount in resources.items()}
        self.latency_slots = int(resources.get(LATENCY_RESOURCE, 0))
        self.retries = retries
        self._pools: dict[tuple[str, bool], list[Any]] = {}
        self._refs: dict[str, Any] = {}  # what was put into the object store, by role
        self.stats: dict[str, Any] = {"nodes": {}, "objects": {}}
        self._work: tuple[Workload, str] | None = None  # the workload item workers hold, and its role
        self._workloads = 0
        try:
            self.gpus = gpus_per_worker(gpus, provider, self.resources.get("GPU", 0.0))
        except UsageError:
            self.close()  # a Ray instance this executor started ends with the error
            raise

    def _actors(self, cls: type, data: Any, role: str, timed: bool) -> list[Any]:
        ray = _ray()
        key = (role, timed)
        if key in self._pools:
            return self._pools[key]
        if role not in self._refs:
            self._refs[role] = ray.put(data)
        options, count = actor_options(self.resources, self.workers, self.retries, self.gpus, timed)
        if timed and not self.latency_slots:
            logger.warning("no node declares '%s': latency is measured next to other work", LATENCY_RESOURCE)
        remote = ray.remote(cls).options(**options)
        self._pools[key] = [remote.remote(self._refs[role]) for _ in range(count)]
        return self._pools[key]

    def _dispatch(
        self,
        actors: list[Any],
        work: Sequence[Any],
        call: Callable[[Any, Any], Any],
        lost: Callable[[Any, str], dict[str, Any]],
        done: Callable[[Any, dict[str, Any]], None],
        label: str,
    ) -> None:
        """Hands ``work`` to idle actors, one call each at a time; ``done`` as each call returns."""
        ray = _ray()
        queue = deque(work)
        idle = deque(actors)
        nodes = dict(zip(actors, ray.get([a.where.remote() for a in actors]), strict=True)) if actors else {}
        running: dict[Any, tuple[Any, Any]] = {}
        with NodeProgress(label, len(work)) as shown:
            while queue or running:
                while queue and idle:
                    actor = idle.popleft()
                    piece = queue.popleft()
                    running[call(actor, piece)] = (actor, piece)
                    shown.start(nodes[actor])
                if not running:  # every actor is gone for good
                    while queue:
                        piece = queue.popleft()
                        done(piece, lost(piece, "no Ray worker left (every actor died after its restarts)"))
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_SECONDS)
                for ref in ready:
                    actor, piece = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayActorError as error:  # died after its restarts: not reused
                        result = lost(piece, f"ray: {error_text(error)} after {self.retries} retries")
                    except ray.exceptions.RayError as error:
                        result = lost(piece, f"ray: {error_text(error)}")
                        idle.append(actor)
                    else:
                        idle.append(actor)
                    node = result.get("node") or nodes[actor]
                    shown.finish(nodes[actor], node)
                    nodes[actor] = node
                    self._count(node, label, bool(result.get("fetched")))
                    done(piece, result)

    def _count(self, node: str, label: str, fetched: bool) -> None:
        entry = self.stats["nodes"].setdefault(node, {"profile items": 0, "trials": 0, "fetches": 0})
        entry[label] += 1
        entry["fetches"] += int(fetched)

    def profile_items(self, work: Workload, items: Sequence[Any], done: PieceDone) -> None:
        """Measures ``items`` on item workers holding the workload (put into the object store once).

        The workers of an earlier workload (another round of a pass) end first and give back their
        CPUs, and its object leaves the store (its size and copies stay in ``stats["objects"]``).
        """
        if self._work is not None and self._work[0] is not work:
            old = self._work[1]
            self._release(old, exact=True)
            self.stats["objects"].update(self.transfers([old]))
            self._refs.pop(old, None)
            self._work = None
        if self._work is None:
            self._workloads += 1
            self._work = (work, f"setup-{self._workloads}")
        actors = self._actors(_ItemWorker, work, self._work[1], work.timed)
        self._dispatch(actors, items, lambda actor, item: actor.item.remote(item), work.failed, done, "profile items")

    def trials(self, tasks: Sequence[Task], done: TaskDone) -> None:
        """Runs tasks on trial workers; each task's file comes back to ``task.output``."""
        if not tasks:
            return
        timed = any(task.timed for task in tasks)
        self._release("setup-")  # profiling is over: its workers give their CPUs to the trials
        actors = self._actors(_TrialWorker, _study_files(tasks), "files", timed)

        def finished(task: Task, outcome: dict[str, Any]) -> None:
            content = outcome.pop("model_bytes", None)
            if content is not None:
                Path(task.output).parent.mkdir(parents=True, exist_ok=True)
                Path(task.output).write_bytes(content)
            done(task, outcome)

        def lost(task: Task, reason: str) -> dict[str, Any]:
            return {"error": reason}

        self._dispatch(actors, tasks, lambda actor, task: actor.trial.remote(task), lost, finished, "trials")

    def _release(self, prefix: str, exact: bool = False) -> None:
        """Ends the actors of the pools whose role starts with ``prefix`` (is ``prefix`` when ``exact``)."""
        ray = _ray()
        for key in [k for k in self._pools if (k[0] == prefix if exact else k[0].startswith(prefix))]:
            actors = self._pools.pop(key)
            if key[0] == "files":  # trial workers remove their node-local copies first
                ray.wait([actor.close.remote() for actor in actors], num_returns=len(actors), timeout=10)
            for actor in actors:
                ray.kill(actor)

    def assigned(self) -> list[dict[str, float]]:
        """The resources Ray assigned to each live actor (``CPU``, ``GPU``, custom ones)."""
        ray = _ray()
        actors = [actor for pool in self._pools.values() for actor in pool]
        return list(ray.get([actor.resources.remote() for actor in actors])) if actors else []

    def transfers(self, roles: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per object put (of ``roles``, default all): its size and the nodes whose object store holds a copy."""
        ray = _ray()
        refs = {role: ref for role, ref in self._refs.items() if roles is None or role in roles}
        found = ray.experimental.get_object_locations(list(refs.values())) if refs else {}
        return {
            role: {"bytes": found[ref].get("object_size"), "nodes": len(found[ref].get("node_ids", []))}
            for role, ref in refs.items()
            if ref in found
        }

    def close(self) -> None:
        """Ends the actors (and the Ray instance this executor started)."""
        ray = _ray()
        if not ray.is_initialized():
            return
        self.stats["objects"].update(self.transfers())
        self._release("")
        self._refs.clear()
        self._work = None
        if self.started_ray:
            ray.shutdown()

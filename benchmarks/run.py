"""Run every workload against arcp_trio and the reference runtime, side by side.

    python -m benchmarks.run            # full run: 5 repetitions, scaling points
    python -m benchmarks.run --quick    # smoke run: 1 repetition, small sizes

For every (workload, repetition, runtime) a fresh runtime process is started
(``python -m arcp_trio serve`` or ``tests/interop/ref_server.py``, the same flags),
one warm-up echo job runs, then the workload (``benchmarks/loadgen.py``, its own
process) measures it; the runtime is stopped afterwards. Runtimes alternate within a
repetition so that drift on a shared machine hits both. The ``throughput`` workload
also runs against ``benchmarks/rawlimit.py``, the coalesced raw limit.

The ``cluster`` workload measures arcp_trio alone: nodes (``serve --redis URL --node-id
NAME``) on a ``redis-server`` of its own, started on a free port for every run
(``--save '' --appendonly no``) and stopped by its PID, against one in-memory process;
its own table follows the main one (``CLUSTER_ROWS``).
The ``cluster-soak`` workload runs the ``soak`` load on one node, then on two, the same
way (a fresh Redis per run): node RSS and Redis ``used_memory``, warm and at the end.

Prints a table of medians and ratios (arcp_trio / reference) with the issue's
targets, then the scaling points; writes everything to
``benchmarks/results/latest.json`` and the tables to ``benchmarks/results/latest.md``.
Nothing is asserted: a failed repetition or a failed count check is reported.
"""

# ruff: noqa: RUF001
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TOKEN = "bench-token"
OURS, REF, RAW = "arcp_trio", "reference", "rawlimit"
#: arcp_trio on its SQLite store (``serve --db``, a fresh file per run): throughput with
#: SQLite against in-memory (target ≥ 80 %), and the memory workloads on SQLite.
OURS_DB = "arcp_trio_sqlite"
#: A node of a cluster (``serve --redis``), for the ``cluster`` workload.
NODE = "arcp_trio_node"
CLUSTER = "cluster"
#: The soak on nodes on Redis: node RSS and Redis ``used_memory`` over many jobs.
CLUSTER_SOAK = "cluster-soak"

RUNTIME_CMDS = {
    OURS: [sys.executable, "-m", "arcp_trio", "serve", "--log-level", "WARNING"],
    REF: [
        sys.executable,
        str(ROOT / "tests" / "interop" / "ref_server.py"),
        "--log-level",
        "WARNING",
    ],
    RAW: [sys.executable, "-m", "benchmarks.rawlimit"],
}
RUNTIME_CMDS[OURS_DB] = RUNTIME_CMDS[NODE] = RUNTIME_CMDS[OURS]


@dataclass
class Workload:
    name: str
    full: dict[str, int | float]
    quick: dict[str, int | float]
    runtime_args: list[str] = field(default_factory=list)
    runtimes: tuple[str, ...] = (OURS, REF)
    timeout: float = 240.0
    #: Repetitions of a full run (``--reps`` overrides; None: the run's default).
    reps: int | None = None


WORKLOADS = [
    Workload("throughput", {"n": 20000}, {"n": 2000}, runtimes=(OURS, REF, RAW, OURS_DB)),
    Workload("fanout", {"sessions": 200, "n": 100}, {"sessions": 20, "n": 100}),
    Workload(
        "idle",
        {"sessions": 1000, "idle_sec": 15},
        {"sessions": 100, "idle_sec": 6},
        runtime_args=["--heartbeat-sec", "5"],
    ),
    Workload("backlog", {"n": 20000}, {"n": 2000}),
    Workload("echo", {"n": 500}, {"n": 100}),
    # Hostile input: a 1 s heartbeat, as in the issue's measurement (an honest client
    # must not be declared dead while others attack).
    Workload(
        "stall",
        {"attackers": 4, "duration": 10},
        {"attackers": 2, "duration": 4},
        runtime_args=["--heartbeat-sec", "1"],
    ),
    # Memory. soak: one acking session, many jobs in a row (1,000,000 events at full
    # size); RSS must level off once warm, SQLite store first. slow: consumers that read
    # in bursts and ack every 1,000 events; what they have not read is held bounded.
    Workload(
        "soak",
        {"jobs": 200, "n": 5000},
        {"jobs": 10, "n": 2000},
        runtimes=(OURS_DB, OURS, REF),
        timeout=600.0,
    ),
    Workload(
        "slow", {"consumers": 20, "n": 20000}, {"consumers": 5, "n": 2000}, runtimes=(OURS, OURS_DB)
    ),
    # Several nodes on one Redis (issue 16); its "runtimes" are the runs of CLUSTER_RUNS.
    # n: one session's chatty job; sessions * spread_n: the spread; resume_n: the events
    # a detached session is resumed with on the other node.
    Workload(
        CLUSTER,
        {"n": 50000, "sessions": 8, "spread_n": 10000, "resume_n": 50000},
        {"n": 10000, "sessions": 4, "spread_n": 2500, "resume_n": 10000},
        runtimes=(
            "memory",
            "redis_1node",
            "spread_1node",
            "spread_2nodes",
            "memory_resume",
            "handoff_2nodes",
        ),
        timeout=120.0,
        reps=3,
    ),
    # The soak (same sizes) on one node on Redis, then on two nodes with the jobs dealt
    # to a session on each in turn; node RSS from the warm point to the end, and Redis's
    # used_memory (which grows with the finished jobs' histories: kept for the
    # retention, 24 h by default). One run each.
    Workload(
        CLUSTER_SOAK,
        {"jobs": 200, "n": 5000},
        {"jobs": 10, "n": 2000},
        runtimes=("soak_1node", "soak_2nodes"),
        timeout=600.0,
        reps=1,
    ),
]

#: The cluster workload's runs, each on fresh processes and a fresh Redis: run name ->
#: (loadgen workload, nodes on Redis (0: one ``arcp_trio`` process, in memory unless
#: ``--durable``), the loadgen's parameters as names of the workload's).
CLUSTER_RUNS: dict[str, tuple[str, int, dict[str, str]]] = {
    "memory": ("throughput", 0, {"n": "n"}),
    "redis_1node": ("throughput", 1, {"n": "n"}),
    "spread_1node": ("spread", 1, {"sessions": "sessions", "n": "spread_n"}),
    "spread_2nodes": ("spread", 2, {"sessions": "sessions", "n": "spread_n"}),
    "memory_resume": ("handoff", 0, {"n": "resume_n"}),
    "handoff_2nodes": ("handoff", 2, {"n": "resume_n"}),
    "soak_1node": ("soak", 1, {"jobs": "jobs", "n": "n"}),
    "soak_2nodes": ("soak", 2, {"jobs": "jobs", "n": "n"}),
}

# (part, label, unit, (run, metric), baseline (run, metric) or None, target kind, target)
# target kinds: ">=" / "<=" the figure's absolute value, None (reported only).
CLUSTER_ROWS: list[
    tuple[str, str, str, tuple[str, str], tuple[str, str] | None, str | None, float]
] = [
    (
        "a",
        "events/s, one session",
        "",
        ("redis_1node", "events_per_s"),
        ("memory", "events_per_s"),
        ">=",
        25000,
    ),
    (
        "a",
        "time to first event",
        "ms",
        ("redis_1node", "first_event_ms"),
        ("memory", "first_event_ms"),
        "<=",
        10.0,
    ),
    (
        "a",
        "submit→accepted",
        "ms",
        ("redis_1node", "accepted_ms"),
        ("memory", "accepted_ms"),
        None,
        0,
    ),
    (
        "a",
        "node CPU per event",
        "µs",
        ("redis_1node", "cpu_us_per_event"),
        ("memory", "cpu_us_per_event"),
        None,
        0,
    ),
    ("a", "Redis CPU per event", "µs", ("redis_1node", "redis_cpu_us_per_event"), None, None, 0),
    (
        "a",
        "node + Redis CPU per event",
        "µs",
        ("redis_1node", "total_cpu_us_per_event"),
        ("memory", "cpu_us_per_event"),
        None,
        0,
    ),
    (
        "a",
        "node peak RSS",
        "MiB",
        ("redis_1node", "peak_rss_mib"),
        ("memory", "peak_rss_mib"),
        None,
        0,
    ),
    (
        "b",
        "aggregate events/s, sessions spread",
        "",
        ("spread_2nodes", "events_per_s"),
        ("spread_1node", "events_per_s"),
        None,
        0,
    ),
    (
        "b",
        "submit→accepted p99",
        "ms",
        ("spread_2nodes", "accepted_p99_ms"),
        ("spread_1node", "accepted_p99_ms"),
        None,
        0,
    ),
    (
        "b",
        "nodes' CPU per event (summed)",
        "µs",
        ("spread_2nodes", "cpu_us_per_event"),
        ("spread_1node", "cpu_us_per_event"),
        None,
        0,
    ),
    (
        "b",
        "Redis CPU per event",
        "µs",
        ("spread_2nodes", "redis_cpu_us_per_event"),
        ("spread_1node", "redis_cpu_us_per_event"),
        None,
        0,
    ),
    (
        "c",
        "replayed events/s, resume on the other node",
        "",
        ("handoff_2nodes", "replay_events_per_s"),
        ("memory_resume", "replay_events_per_s"),
        ">=",
        20000,
    ),
    (
        "c",
        "resuming node's CPU per replayed event",
        "µs",
        ("handoff_2nodes", "cpu_us_per_event"),
        ("memory_resume", "cpu_us_per_event"),
        None,
        0,
    ),
    (
        "c",
        "Redis CPU per replayed event",
        "µs",
        ("handoff_2nodes", "redis_cpu_us_per_event"),
        None,
        None,
        0,
    ),
    (
        "c",
        "events/s emitted into the detached session",
        "",
        ("handoff_2nodes", "detached_events_per_s"),
        ("memory_resume", "detached_events_per_s"),
        None,
        0,
    ),
]
CLUSTER_PARTS = {
    "a": "one node on Redis; baseline: one in-memory process, same load",
    "b": "two nodes on Redis, sessions dealt round-robin; baseline: one node",
    "c": "a session detached on node A while its job runs, resumed on node B "
    "(last_event_seq 0); baseline: the same on one in-memory process",
}

# Scaling points (1x / 10x / 100x), one repetition each, full run only.
SCALING = [
    ("events", "throughput", "n", [2000, 20000, 200000], {}),
    ("sessions", "fanout", "sessions", [2, 20, 200], {"n": 100}),
    ("subscribers", "subscribers", "k", [1, 10, 100], {"n": 2000}),
]

# (workload, metric key, label, unit, scale, target kind, target value)
# target kinds: "ratio>=" / "ratio<=" (arcp_trio / reference), "abs<=" (arcp_trio alone),
# "raw>=" (arcp_trio / raw limit), "sqlite>=" (arcp_trio on SQLite / arcp_trio in
# memory), None (reported only). A kind "sqlite KIND" (or "sqlite" for reported only) is
# KIND with arcp_trio on SQLite (OURS_DB) in the arcp_trio column instead of in memory.
ROWS: list[tuple[str, str, str, str, float, str | None, float]] = [
    ("throughput", "events_per_s", "events/s", "", 1, "ratio>=", 3.0),
    ("throughput", "events_per_s", "events/s vs raw limit", "", 1, "raw>=", 0.30),
    ("throughput", "events_per_s", "events/s, SQLite store", "", 1, "sqlite>=", 0.8),
    ("throughput", "first_event_ms", "time to first event", "ms", 1, "abs<=", 10.0),
    ("throughput", "accepted_ms", "submit→accepted", "ms", 1, None, 0),
    ("throughput", "cpu_us_per_event", "CPU per event", "µs", 1, None, 0),
    ("throughput", "peak_rss_mib", "peak RSS", "MiB", 1, None, 0),
    ("fanout", "events_per_s", "events/s", "", 1, None, 0),
    ("fanout", "accepted_p50_ms", "submit→accepted p50", "ms", 1, None, 0),
    ("fanout", "accepted_p99_ms", "submit→accepted p99", "ms", 1, "ratio<=", 0.25),
    ("fanout", "cpu_us_per_event", "CPU per event", "µs", 1, None, 0),
    ("fanout", "peak_rss_mib", "peak RSS", "MiB", 1, None, 0),
    ("idle", "rss_kib_per_session", "RSS per session", "KiB", 1, "ratio<=", 0.25),
    ("idle", "idle_cpu_pct", "idle CPU", "% core", 1, "ratio<=", 0.25),
    ("idle", "peak_rss_mib", "peak RSS", "MiB", 1, None, 0),
    ("backlog", "replay_events_per_s", "replayed events/s", "", 1, "ratio>=", 3.0),
    ("backlog", "cpu_us_per_event", "CPU per replayed event", "µs", 1, None, 0),
    ("backlog", "peak_rss_mib", "peak RSS", "MiB", 1, None, 0),
    ("echo", "rtt_p50_ms", "round trip p50", "ms", 1, None, 0),
    ("echo", "rtt_p99_ms", "round trip p99", "ms", 1, None, 0),
    ("echo", "cpu_us_per_job", "CPU per job", "µs", 1, None, 0),
    ("echo", "peak_rss_mib", "peak RSS", "MiB", 1, None, 0),
    ("stall", "max_gap_ms", "honest ticker's largest gap", "ms", 1, "abs<=", 250.0),
    ("stall", "gap_p99_ms", "honest ticker's gap p99", "ms", 1, None, 0),
    ("stall", "attack_frames_per_s", "hostile frames answered/s", "", 1, None, 0),
    ("stall", "runtime_cpu_pct", "runtime CPU", "% core", 1, None, 0),
    ("soak", "rss_growth_mib", "RSS growth, SQLite store", "MiB", 1, "sqlite abs<=", 48.0),
    ("soak", "rss_growth_mib", "RSS growth", "MiB", 1, "abs<=", 48.0),
    ("soak", "rss_end_mib", "RSS at the end, SQLite store", "MiB", 1, "sqlite", 0),
    ("soak", "rss_end_mib", "RSS at the end", "MiB", 1, None, 0),
    ("soak", "events_per_s", "events/s, SQLite store", "", 1, "sqlite", 0),
    ("soak", "events_per_s", "events/s", "", 1, None, 0),
    ("slow", "rss_growth_mib", "RSS growth", "MiB", 1, "abs<=", 128.0),
    ("slow", "rss_growth_mib", "RSS growth, SQLite store", "MiB", 1, "sqlite abs<=", 128.0),
    ("slow", "peak_growth_mib", "peak RSS growth", "MiB", 1, None, 0),
    ("slow", "peak_growth_mib", "peak RSS growth, SQLite store", "MiB", 1, "sqlite", 0),
    ("slow", "events_per_s", "events/s", "", 1, None, 0),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Runtime:
    """A runtime subprocess, started on a free port; always stopped on exit."""

    #: Where ``python -m arcp_trio`` is imported from (``--arcp-trio-src``).
    ours_src: Path = ROOT
    #: Extra arguments for ``arcp_trio serve`` (``--ours-arg``).
    ours_args: list[str] = []  # noqa: RUF012
    #: ``--durable``: a fresh database file per run in this directory.
    ours_db_dir: Path | None = None
    #: Where ``arcp_trio_sqlite`` keeps its fresh database files.
    sqlite_dir: Path | None = None
    #: ``serve`` has ``--memory`` (the reference keeps everything in memory too).
    ours_has_memory_flag = False

    def __init__(self, name: str, extra: list[str], stderr_path: Path) -> None:
        self.name = name
        cmd = [
            *RUNTIME_CMDS[name],
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--token",
            f"{TOKEN}=bench",
            "--max-seconds",
            "900",
            *extra,
        ]
        if name in (OURS, OURS_DB, NODE):
            cmd += self.ours_args
        if name in (OURS, OURS_DB):
            db_dir = self.sqlite_dir if name == OURS_DB else self.ours_db_dir
            if db_dir is not None:
                cmd += ["--db", str(db_dir / f"bench-{time.monotonic_ns()}.sqlite")]
            elif self.ours_has_memory_flag:
                cmd += ["--memory"]
        self._err = open(stderr_path, "a")  # noqa: SIM115 - closed in stop()
        self._err.write(f"\n=== {datetime.datetime.now().isoformat()} {' '.join(cmd)}\n")
        self._err.flush()
        cwd, env = ROOT, None
        if name in (OURS, OURS_DB, NODE) and self.ours_src != ROOT:
            cwd = self.ours_src
            env = {**os.environ, "PYTHONPATH": str(self.ours_src)}
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=self._err, text=True
        )
        self.url = self._wait_ready(30.0)

    def _wait_ready(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("READY "):
                    return line.split()[1]
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"{self.name} did not print READY (see {self._err.name})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


def loadgen(
    workload: str,
    rt: Runtime,
    params: dict[str, Any],
    timeout: float,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """One loadgen process against ``rt``: its JSON, or what went wrong."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        workload,
        "--url",
        rt.url,
        "--token",
        TOKEN,
        "--pid",
        str(rt.proc.pid),
        "--timeout",
        str(timeout),
        *(extra or []),
    ]
    for key, value in params.items():
        cmd += ["--param", f"{key}={value}"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        if out.returncode != 0:
            result["error"] = f"loadgen exit {out.returncode}: {out.stderr[-500:]}"
    except subprocess.TimeoutExpired:
        result = {"metrics": {}, "checks": {"ok": False}, "error": "loadgen timed out"}
    except (json.JSONDecodeError, IndexError):
        result = {
            "metrics": {},
            "checks": {"ok": False},
            "error": f"loadgen output unreadable: {out.stderr[-500:]}",
        }
    hwm = result.get("runtime_mem_kib", {}).get("VmHWM")
    if hwm and result.get("metrics") is not None:
        result["metrics"]["peak_rss_mib"] = hwm / 1024
    return result


def run_once(runtime: str, wl: Workload, params: dict[str, Any], logs: Path) -> dict[str, Any]:
    """One fresh runtime, one loadgen run against it."""
    started = time.monotonic()
    try:
        rt = Runtime(runtime, wl.runtime_args, logs / f"{runtime}.stderr.log")
    except Exception as exc:
        return {"metrics": {}, "checks": {"ok": False}, "error": f"start: {exc}"}
    try:
        result = loadgen(wl.name, rt, params, wl.timeout)
    finally:
        rt.stop()
    result["runtime"] = runtime
    result["total_s"] = time.monotonic() - started
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the benchmark's own (never the machine's shared one): a
    free port, no persistence, stopped by its PID (as ``tests/redis_server.py``)."""

    #: Where ``redis-server`` may keep files (it writes none: no persistence).
    directory: Path = Path(tempfile.gettempdir())

    def __init__(self, log_path: Path) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: install Redis 7 or Valkey (Debian/Ubuntu: "
                "`apt install redis-server`) to run the cluster workload"
            )
        self._log = open(log_path, "a")  # noqa: SIM115 - closed in stop()
        for _attempt in range(3):  # a free port may be taken between probe and bind
            self.port = free_port()
            cmd = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
            cmd += ["--appendonly", "no", "--dir", str(self.directory)]
            self._log.write(f"\n=== {datetime.datetime.now().isoformat()} {' '.join(cmd)}\n")
            self._log.flush()
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
            if self._wait_ready(10.0):
                return
            self._kill()
        self._log.close()
        raise RuntimeError(f"{binary} did not start (three ports tried; see {log_path})")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe,
            ):
                probe.sendall(b"PING\r\n")
                if probe.recv(64).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)
        return False

    def _kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def stop(self) -> None:
        self._kill()
        self._log.close()


def run_cluster_once(run: str, wl: Workload, params: dict[str, Any], logs: Path) -> dict[str, Any]:
    """One run of the cluster workload (``CLUSTER_RUNS``): a fresh Redis and fresh
    nodes on it (or one fresh in-memory process), one loadgen run, all stopped."""
    started = time.monotonic()
    workload, nodes, names = CLUSTER_RUNS[run]
    load_params = {key: params[name] for key, name in names.items()}
    redis: RedisServer | None = None
    runtimes: list[Runtime] = []
    try:
        if nodes == 0:
            runtimes.append(Runtime(OURS, [], logs / f"{OURS}.stderr.log"))
        else:
            redis = RedisServer(logs / "redis-server.log")
            for i in range(nodes):
                node_id = f"bench-{chr(ord('a') + i)}"
                args = ["--redis", redis.url, "--node-id", node_id]
                runtimes.append(Runtime(NODE, args, logs / f"{NODE}.stderr.log"))
    except Exception as exc:
        for rt in runtimes:
            rt.stop()
        if redis is not None:
            redis.stop()
        return {"metrics": {}, "checks": {"ok": False}, "error": f"start: {exc}"}
    try:
        extra = [arg for rt in runtimes[1:] for arg in ("--peer", f"{rt.url}={rt.proc.pid}")]
        if redis is not None:
            extra += ["--redis-port", str(redis.port)]
        result = loadgen(workload, runtimes[0], load_params, wl.timeout, extra)
    finally:
        for rt in runtimes:
            rt.stop()
        if redis is not None:
            redis.stop()
    metrics = result.get("metrics") or {}
    if "cpu_us_per_event" in metrics and "redis_cpu_us_per_event" in metrics:
        metrics["total_cpu_us_per_event"] = (
            metrics["cpu_us_per_event"] + metrics["redis_cpu_us_per_event"]
        )
    result["runtime"] = run
    result["nodes"] = nodes
    result["total_s"] = time.monotonic() - started
    return result


def summarize(result: dict[str, Any]) -> str:
    if result.get("error"):
        return f"ERROR {result['error']}"
    m = result["metrics"]
    text = ", ".join(f"{k}={v:.4g}" for k, v in m.items())
    if not result.get("checks", {}).get("ok"):
        text += f"  CHECK FAILED {result.get('checks')}"
    return text


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["metrics"][key] for r in runs if key in r.get("metrics", {})]
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def build_table(
    results: dict[str, dict[str, list[dict[str, Any]]]],
) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| workload | metric | arcp_trio | reference | ratio | target | met? |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    rows = []
    for wl, key, label, unit, _scale, row_kind, target in ROWS:
        if wl not in results:
            continue
        per = results[wl]
        kind, ours_rt = row_kind, OURS
        if kind is not None and kind.startswith("sqlite") and kind != "sqlite>=":
            kind, ours_rt = kind.removeprefix("sqlite").strip() or None, OURS_DB
        ours = median(per.get(ours_rt, []), key)
        ref = median(per.get(REF, []), key)
        name = f"{label} ({unit})" if unit else label
        other = ref
        # No ratio to a reference figure that is not positive (e.g. an RSS growth).
        ratio = ours / ref if ours is not None and ref and ref > 0 else None
        target_text, met = "", None
        if kind == "raw>=":
            raw = median(per.get(RAW, []), key)
            other, ratio = raw, (ours / raw if ours is not None and raw else None)
            name = f"{label} (raw limit in the reference column)"
            target_text = f"≥ {target:.0%} of raw"
            met = ratio is not None and ratio >= target
        elif kind == "sqlite>=":
            ours, other = median(per.get(OURS_DB, []), key), ours
            ratio = ours / other if ours is not None and other else None
            name = f"{label} (in-memory store in the reference column)"
            target_text = f"≥ {target:.0%} of in-memory"
            met = ratio is not None and ratio >= target
        elif kind == "ratio>=":
            target_text = f"≥ {target:g}× ref"
            met = ratio is not None and ratio >= target
        elif kind == "ratio<=":
            target_text = f"≤ {target:g}× ref"
            met = ratio is not None and ratio <= target
        elif kind == "abs<=":
            target_text = f"≤ {target:g} {unit}"
            met = ours is not None and ours <= target
        if kind is None:
            met_text = "—"
        elif (ratio is None and kind != "abs<=") or ours is None:
            met_text = "n/a (failed)"
        else:
            met_text = "**yes**" if met else "no"
        ratio_text = f"{ratio:.2f}×" if ratio is not None else "—"
        lines.append(
            f"| {wl} | {name} | {fmt(ours)} | {fmt(other)} | {ratio_text} | "
            f"{target_text or '—'} | {met_text} |"
        )
        rows.append(
            {
                "workload": wl,
                "metric": key,
                "runtime": ours_rt,
                "label": name,
                "arcp_trio": ours,
                "reference": other,
                "ratio": ratio,
                "target": target_text or None,
                "met": met,
            }
        )
    return "\n".join(lines), rows


def build_scaling(scaling: list[dict[str, Any]]) -> str:
    lines = [
        "| dimension | point | workload | arcp_trio events/s | reference events/s | ratio "
        "| arcp_trio CPU µs/event | reference CPU µs/event | arcp_trio peak RSS MiB "
        "| reference peak RSS MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in scaling:
        o, r = point[OURS]["metrics"], point[REF]["metrics"]
        key = "delivered_events_per_s" if point["workload"] == "subscribers" else "events_per_s"
        ratio = o.get(key) / r[key] if o.get(key) and r.get(key) else None
        extra = ""
        if point["workload"] == "fanout":
            extra = (
                f" (accepted p99 {fmt(o.get('accepted_p99_ms'))} / "
                f"{fmt(r.get('accepted_p99_ms'))} ms)"
            )
        flag = (
            ""
            if point[OURS].get("checks", {}).get("ok") and point[REF].get("checks", {}).get("ok")
            else " ⚠"
        )
        lines.append(
            f"| {point['dimension']} | {point['value']:,} | {point['workload']}{extra}{flag} "
            f"| {fmt(o.get(key))} | {fmt(r.get(key))} "
            f"| {f'{ratio:.2f}×' if ratio else '—'} "
            f"| {fmt(o.get('cpu_us_per_event'))} | {fmt(r.get('cpu_us_per_event'))} "
            f"| {fmt(o.get('peak_rss_mib'))} | {fmt(r.get('peak_rss_mib'))} |"
        )
    return "\n".join(lines)


def build_cluster_table(per: dict[str, list[dict[str, Any]]], baseline: str) -> str:
    """The cluster workload's table: each figure next to its baseline and target."""
    lines = [
        "| part | metric | cluster | baseline | ratio | target | met? |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for part, label, unit, (run, key), base, kind, target in CLUSTER_ROWS:
        figure = median(per.get(run, []), key)
        other = median(per.get(base[0], []), base[1]) if base is not None else None
        ratio = figure / other if figure is not None and other else None
        target_text, met_text = "—", "—"
        if kind is not None:
            target_text = (
                f"{'≥' if kind == '>=' else '≤'} {fmt(target)}{f' {unit}' if unit else ''}"
            )
            if figure is None:
                met_text = "n/a (failed)"
            else:
                met = figure >= target if kind == ">=" else figure <= target
                met_text = "**yes**" if met else "no"
        name = f"{label} ({unit})" if unit else label
        lines.append(
            f"| {part} | {name} | {fmt(figure)} | {fmt(other)} | "
            f"{f'{ratio:.2f}×' if ratio is not None else '—'} | {target_text} | {met_text} |"
        )
    lines.append("")
    for part, text in CLUSTER_PARTS.items():
        lines.append(f"- {part}: {text.replace('in-memory process', baseline)}")
    return "\n".join(lines)


def build_cluster_soak_table(per: dict[str, list[dict[str, Any]]]) -> str:
    """The cluster soak's figures, one line per node of each run, then Redis's."""
    lines = [
        "| run | node | events | events/s | RSS warm (MiB) | RSS end (MiB) "
        "| RSS growth (MiB) | target | met? |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    redis_lines = [
        "| run | Redis used_memory warm (MiB) | end (MiB) | growth (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for run, results in per.items():
        for res in results:
            m = res.get("metrics") or {}
            flag = "" if res.get("checks", {}).get("ok") and not res.get("error") else " ⚠"
            nodes = res.get("nodes_rss_mib") or [
                {
                    "warm": m.get("rss_warm_mib"),
                    "end": m.get("rss_end_mib"),
                    "growth": m.get("rss_growth_mib"),
                }
            ]
            for i, node in enumerate(nodes):
                growth = node["growth"]
                met = "n/a (failed)" if growth is None else ("**yes**" if growth <= 48 else "no")
                lines.append(
                    f"| {run}{flag} | bench-{chr(ord('a') + i)} | "
                    f"{fmt(m.get('events')) if i == 0 else '″'} | "
                    f"{fmt(m.get('events_per_s')) if i == 0 else '″'} | "
                    f"{fmt(node['warm'])} | {fmt(node['end'])} | {fmt(growth)} | ≤ 48 MiB | "
                    f"{met} |"
                )
            redis_lines.append(
                f"| {run}{flag} | {fmt(m.get('redis_used_memory_warm_mib'))} | "
                f"{fmt(m.get('redis_used_memory_end_mib'))} | "
                f"{fmt(m.get('redis_used_memory_growth_mib'))} |"
            )
    return "\n".join([*lines, "", *redis_lines])


def redis_version() -> str | None:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    dists = ("arcp-trio", "agentruntimecontrolprotocol", "trio", "wsproto", "websockets", "coredis")
    for dist in dists:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "arcp_trio"], capture_output=True, text=True
    )
    return {
        "git_head": head.stdout.strip() or None,
        "arcp_trio_tree_dirty": bool(dirty.stdout.strip()),
        "arcp_trio_src": str(Runtime.ours_src),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "versions": versions,
        "redis_server": redis_version(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="arcp_trio vs the reference runtime")
    p.add_argument("--quick", action="store_true", help="1 repetition, small sizes")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 1)")
    p.add_argument("--only", action="append", default=[], help="run only these workloads")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1x/10x/100x points")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `arcp_trio serve` (repeatable)",
    )
    p.add_argument(
        "--durable",
        action="store_true",
        help="run arcp_trio on a fresh SQLite database per run (`serve --db`) instead of "
        "its in-memory store",
    )
    p.add_argument(
        "--arcp-trio-src",
        type=Path,
        default=None,
        help="import arcp_trio from this directory (e.g. an exported commit) instead of "
        "the work tree",
    )
    args = p.parse_args(argv)
    if args.arcp_trio_src is not None:
        Runtime.ours_src = args.arcp_trio_src.resolve()
    Runtime.ours_args = list(args.ours_arg)
    serve_help = subprocess.run(
        [*RUNTIME_CMDS[OURS], "--help"],
        cwd=Runtime.ours_src,
        env={**os.environ, "PYTHONPATH": str(Runtime.ours_src)},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    # Like for like: the reference runtime keeps everything in memory, so arcp_trio runs
    # with its in-memory store when it has one; --durable measures the SQLite store
    # instead (a fresh database per run, removed at the end).
    Runtime.ours_has_memory_flag = "--memory" in serve_help
    db_dir = tempfile.TemporaryDirectory(prefix="arcp-bench-")
    Runtime.sqlite_dir = Path(db_dir.name)
    RedisServer.directory = Path(db_dir.name)
    if args.durable:
        Runtime.ours_db_dir = Path(db_dir.name)
    reps = args.reps or (1 if args.quick else 5)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # runtimes inherit it: 1,000 idle sessions need the descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_CMDS:
        (logs / f"{name}.stderr.log").write_text("")
    (logs / "redis-server.log").write_text("")

    started = time.monotonic()
    info = machine()
    log(
        f"machine: {info['nproc']} × {info['cpu_model']}, Python {info['python']}; "
        f"{'quick' if args.quick else 'full'} run, {reps} repetition(s)"
    )
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    failures: list[str] = []
    cluster_reps = 0
    for wl in WORKLOADS:
        if args.only and wl.name not in args.only:
            continue
        if wl.name in (CLUSTER, CLUSTER_SOAK) and info["redis_server"] is None:
            log(f"  {wl.name:<11} skipped: redis-server (or valkey-server) not found")
            failures.append(f"{wl.name}: skipped, redis-server (or valkey-server) not found")
            continue
        params = wl.quick if args.quick else wl.full
        per: dict[str, list[dict[str, Any]]] = {rt: [] for rt in wl.runtimes}
        wl_reps = args.reps or (1 if args.quick else wl.reps or reps)
        run = run_cluster_once if wl.name in (CLUSTER, CLUSTER_SOAK) else run_once
        for rep in range(wl_reps):
            order = list(wl.runtimes) if rep % 2 == 0 else list(reversed(wl.runtimes))
            for rt in order:
                res = run(rt, wl, params, logs)
                res["rep"] = rep
                per[rt].append(res)
                log(f"  {wl.name:<11} rep {rep + 1}/{wl_reps} {rt:<10} {summarize(res)}")
                if res.get("error") or not res.get("checks", {}).get("ok"):
                    failures.append(f"{wl.name} rep {rep + 1} {rt}: {summarize(res)}")
        results[wl.name] = per
        if wl.name == CLUSTER:
            cluster_reps = wl_reps

    scaling: list[dict[str, Any]] = []
    if not args.quick and not args.no_scaling and not args.only:
        for dimension, wl_name, key, values, fixed in SCALING:
            wl = next((w for w in WORKLOADS if w.name == wl_name), None) or Workload(
                wl_name, {}, {}
            )
            for value in values:
                params = {**fixed, key: value}
                point: dict[str, Any] = {
                    "dimension": dimension,
                    "workload": wl_name,
                    "param": key,
                    "value": value,
                    "params": params,
                }
                for rt in (OURS, REF):
                    res = run_once(rt, wl, params, logs)
                    point[rt] = res
                    log(f"  scaling {dimension}={value:<7} {rt:<10} {summarize(res)}")
                    if res.get("error") or not res.get("checks", {}).get("ok"):
                        failures.append(f"scaling {dimension}={value} {rt}: {summarize(res)}")
                scaling.append(point)

    table, rows = build_table(results)
    table = table if rows else ""
    scaling_table = build_scaling(scaling) if scaling else ""
    cluster_table = ""
    if CLUSTER in results:
        baseline = "SQLite process (--durable)" if args.durable else "in-memory process"
        cluster_table = (
            f"Cluster (median of {cluster_reps}; a fresh redis-server and fresh nodes per "
            f"run; {info['redis_server'] or 'redis-server: not found'}; load average at "
            f"the start {', '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}):\n\n"
            + build_cluster_table(results[CLUSTER], baseline)
        )
    if CLUSTER_SOAK in results:
        soak_wl = next(w for w in WORKLOADS if w.name == CLUSTER_SOAK)
        soak_params = soak_wl.quick if args.quick else soak_wl.full
        cluster_table += "\n\n" if cluster_table else ""
        cluster_table += (
            f"Cluster soak (one run each: "
            f"{soak_params['jobs']:,} chatty {soak_params['n']:,} jobs in a row, acked; a fresh "
            f"redis-server and fresh nodes per run; RSS after the first quarter of the jobs "
            f"and at the end, each after 1 s; "
            f"{info['redis_server'] or 'redis-server: not found'}):\n\n"
            + build_cluster_soak_table(results[CLUSTER_SOAK])
        )
    elapsed = time.monotonic() - started
    if Runtime.ours_src != ROOT:
        source = str(Runtime.ours_src)
    else:
        source = f"the work tree at {info['git_head']}"
        source += " (uncommitted changes)" if info["arcp_trio_tree_dirty"] else ""
    shown_reps = reps if rows else cluster_reps or 1
    header = (
        f"{'quick' if args.quick else 'full'} run, median of {shown_reps}; "
        f"{info['nproc']} × {info['cpu_model']}, Python {info['python']}; "
        f"{elapsed:.0f} s; arcp_trio from {source}"
    )
    print()
    print(header)
    if table:
        print()
        print(table)
    if cluster_table:
        print()
        print(cluster_table)
    if scaling_table:
        print()
        print("Scaling (one run per point):")
        print()
        print(scaling_table)
    if failures:
        print()
        print("Failed runs or checks:")
        for line in failures:
            print(f"- {line}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": datetime.datetime.now(datetime.UTC).isoformat(),
                "mode": "quick" if args.quick else "full",
                "reps": reps,
                "elapsed_s": elapsed,
                "machine": info,
                "table": rows,
                "results": results,
                "scaling": scaling,
                "failures": failures,
            },
            indent=1,
            default=str,
        )
    )
    md = f"{header}\n"
    if table:
        md += f"\n{table}\n"
    if cluster_table:
        md += f"\n{cluster_table}\n"
    if scaling_table:
        md += f"\nScaling (one run per point):\n\n{scaling_table}\n"
    args.out.with_suffix(".md").write_text(md)
    log(f"results: {args.out}")
    db_dir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Serve the REFERENCE ARCP runtime (``agentruntimecontrolprotocol`` 1.1.3) with the demo agents.

A standalone script, run as its own process by the interop tests and benchmarks::

    python tests/interop/ref_server.py --host 127.0.0.1 --port 0 --token TOKEN=PRINCIPAL \
        [--token T2=P2 ...] [--heartbeat-sec S] [--resume-window-sec S] [--max-seconds S]

It mirrors ``python -m arcp_trio serve``: the same flags, the same six demo agents
(echo 1.0.0/2.0.0, ticker, chunker, slow, spender, chatty, see ``arcp_trio/demo_agents.py``)
written against the reference SDK's agent API, and exactly one stdout line,
``READY ws://HOST:PORT/arcp``, once it listens (``--port 0`` prints the real port).
Logs go to stderr. It exits on SIGINT/SIGTERM or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from arcp import RuntimeInfo, serve_websocket
from arcp.runtime import ARCPRuntime, JobContext, StaticBearerVerifier

AgentFn = Callable[[Any, JobContext], Awaitable[Any]]


def _arg(input_: Any, name: str, default: Any) -> Any:
    if isinstance(input_, Mapping):
        return input_.get(name, default)
    return default


def _make_echo(version: str) -> AgentFn:
    async def echo(input_: Any, ctx: JobContext) -> Any:
        await ctx.log("info", f"echo {version}")
        return {"echo": input_, "version": version}

    return echo


async def ticker(input_: Any, ctx: JobContext) -> Any:
    count = int(_arg(input_, "count", 5))
    interval = float(_arg(input_, "interval", 0.1))
    for i in range(1, count + 1):
        await ctx.progress(i, total=count, units="ticks")
        await asyncio.sleep(interval)
    return {"ticks": count}


async def chunker(input_: Any, ctx: JobContext) -> Any:
    chunks = int(_arg(input_, "chunks", 4))
    size = int(_arg(input_, "size", 8))
    async with ctx.stream_result() as stream:
        for i in range(chunks):
            piece = chr(ord("a") + i % 26) * size
            # str pieces go out as utf8, bytes as base64.
            await stream.write(piece if i % 2 == 0 else piece.encode())
    return None


async def slow(input_: Any, ctx: JobContext) -> Any:
    seconds = _arg(input_, "seconds", 5)
    await ctx.status("started")
    await asyncio.sleep(float(seconds))
    return {"slept": seconds}


async def spender(input_: Any, ctx: JobContext) -> Any:
    steps = int(_arg(input_, "steps", 5))
    cost = _arg(input_, "cost", 0.4)
    for _ in range(steps):
        # Raises BUDGET_EXHAUSTED once a cost.budget counter is <= 0; deliberately uncaught.
        ctx.authorize("tool.call", "search")
        await ctx.metric({"name": "cost.inference", "value": cost, "unit": "USD"})
    return {"steps": steps}


async def chatty(input_: Any, ctx: JobContext) -> Any:
    n = int(_arg(input_, "n", 100))
    kind = str(_arg(input_, "kind", "log"))
    for i in range(n):
        if kind == "log":
            await ctx.log("info", f"line {i}")
        elif kind == "thought":
            await ctx.thought(f"thought {i}")
        elif kind == "progress":
            await ctx.progress(i + 1, total=n)
        elif kind == "status":
            await ctx.status(f"step-{i}")
        elif kind == "metric":
            await ctx.metric({"name": "chatty.count", "value": i})
        else:
            await ctx.job.emit_event(kind, {"i": i})
    return {"n": n}


def build_runtime(
    tokens: dict[str, str], *, heartbeat_sec: int, resume_window_sec: int
) -> ARCPRuntime:
    runtime = ARCPRuntime(
        runtime=RuntimeInfo(name="arcp-reference-interop", version="1.1.3"),
        bearer=StaticBearerVerifier(tokens),
        heartbeat_interval_sec=heartbeat_sec,
        resume_window_sec=resume_window_sec,
    )
    runtime.register_agent_version("echo", "1.0.0", _make_echo("1.0.0"))
    runtime.register_agent_version("echo", "2.0.0", _make_echo("2.0.0"))
    runtime.set_default_agent_version("echo", "2.0.0")
    runtime.register_agent_version("ticker", "1.0.0", ticker)
    runtime.register_agent_version("chunker", "1.0.0", chunker)
    runtime.register_agent_version("slow", "1.0.0", slow)
    runtime.register_agent_version("spender", "1.0.0", spender)
    runtime.register_agent_version("chatty", "1.0.0", chatty)
    return runtime


def _token(value: str) -> tuple[str, str]:
    token, sep, principal = value.partition("=")
    if not sep or not token or not principal:
        raise argparse.ArgumentTypeError(f"expected TOKEN=PRINCIPAL, got {value!r}")
    return token, principal


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return number


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Serve the reference ARCP runtime with demo agents.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", type=_token, action="append", default=[], metavar="TOKEN=PRINCIPAL")
    # The reference client rejects a fractional heartbeat_interval_sec: integers only.
    p.add_argument("--heartbeat-sec", type=_positive_int, default=30)
    p.add_argument("--resume-window-sec", type=_positive_int, default=600)
    p.add_argument("--max-seconds", type=float, default=None, help="exit after this long")
    p.add_argument("--log-level", default="WARNING")
    return p


async def _serve(args: argparse.Namespace) -> None:
    tokens = dict(args.token) or {"token": "local"}
    runtime = build_runtime(
        tokens, heartbeat_sec=args.heartbeat_sec, resume_window_sec=args.resume_window_sec
    )
    server = await serve_websocket(runtime.accept, host=args.host, port=args.port, path="/arcp")
    port = server.sockets[0].getsockname()[1]
    print(f"READY ws://{args.host}:{port}/arcp", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), timeout=2.0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.close(), timeout=2.0)


def main() -> int:
    args = _parser().parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

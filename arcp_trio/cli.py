"""The ``arcp-trio`` command. The only module that configures logging.

``arcp-trio serve`` hosts the demo agents over WebSocket (jobs, sessions and event
buffers in SQLite unless ``--memory``) and prints exactly one
line on stdout, ``READY ws://HOST:PORT/arcp``, once it listens (other tools wait
for it). Logs go to stderr. It exits cleanly on SIGINT/SIGTERM or after
``--max-seconds``. ``--stdio`` serves one session as NDJSON on stdin/stdout (§4).

Exit codes: 0 clean shutdown, 2 bad arguments, 3 the store's file was refused
(corrupt, or written by a newer arcp-trio).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import signal
import sys
from typing import TYPE_CHECKING

import trio

from ._version import __version__
from .demo_agents import demo_registry
from .runtime.config import RuntimeConfig
from .runtime.runtime import Runtime, open_runtime
from .runtime.serve import serve_websocket
from .store import MemoryStore, SQLiteStore, Store, StoreError
from .transport.stdio import open_stdio_transport

if TYPE_CHECKING:
    from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("arcp_trio.cli")


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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcp-trio", description="ARCP v1.1 runtime and client for Trio."
    )
    parser.add_argument("--version", action="version", version=f"arcp-trio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="host the demo agents",
        description="Host the demo agents over WebSocket (or --stdio).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one")
    serve.add_argument(
        "--token",
        type=_token,
        action="append",
        default=[],
        metavar="TOKEN=PRINCIPAL",
        help="accept bearer TOKEN as PRINCIPAL (repeatable; default: a random token, "
        "printed on stderr)",
    )
    serve.add_argument(
        "--heartbeat-sec", type=_positive_int, default=30, help="heartbeat interval (§6.4)"
    )
    serve.add_argument(
        "--resume-window-sec", type=_positive_int, default=600, help="resume window (§6.3)"
    )
    serve.add_argument(
        "--max-seconds", type=float, default=None, help="exit after this many seconds"
    )
    serve.add_argument(
        "--shutdown-grace-sec",
        type=float,
        default=5.0,
        help="how long running jobs get to finish at shutdown",
    )
    serve.add_argument("--stdio", action="store_true", help="serve one session on stdin/stdout")
    storage = serve.add_mutually_exclusive_group()
    storage.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help=f"SQLite file for jobs, sessions and event buffers (default: {_default_db()})",
    )
    storage.add_argument(
        "--memory", action="store_true", help="keep nothing on disk (a restart forgets all)"
    )
    serve.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    return parser


def _default_db() -> Path:
    """``$XDG_DATA_HOME/arcp-trio/runtime.sqlite3`` (``~/.local/share`` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "arcp-trio" / "runtime.sqlite3"


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "serve":
        try:
            trio.run(_serve, args)
        except StoreError as exc:
            print(f"arcp-trio: refusing to start: {exc.message}", file=sys.stderr)
            return 3
    return 0


async def _serve(args: argparse.Namespace) -> None:
    tokens = dict(args.token)
    if not tokens:
        generated = secrets.token_urlsafe(24)
        tokens = {generated: "local"}
        print(f"no --token given; accepting bearer token {generated} as 'local'", file=sys.stderr)
    config = RuntimeConfig(
        heartbeat_interval_sec=args.heartbeat_sec,
        resume_window_sec=args.resume_window_sec,
        shutdown_grace_sec=args.shutdown_grace_sec,
    )
    store: Store = MemoryStore() if args.memory else SQLiteStore(args.db or _default_db())
    async with (
        open_runtime(agents=demo_registry(), tokens=tokens, config=config, store=store) as runtime,
        trio.open_nursery() as nursery,
    ):
        if args.stdio:
            nursery.start_soon(_serve_stdio, runtime, nursery.cancel_scope)
        else:
            info = await nursery.start(serve_websocket, runtime, args.host, args.port)
            print(f"READY ws://{info.host}:{info.port}/arcp", flush=True)
        nursery.start_soon(_stop_on_signal, runtime, nursery.cancel_scope, args.max_seconds)


async def _serve_stdio(runtime: Runtime, scope: trio.CancelScope) -> None:
    transport = open_stdio_transport(max_message_size=runtime.config.max_message_size)
    await runtime.handle_transport(transport)
    await runtime.shutdown()
    scope.cancel()


async def _stop_on_signal(
    runtime: Runtime, scope: trio.CancelScope, max_seconds: float | None
) -> None:
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        trio.move_on_after(max_seconds if max_seconds is not None else math.inf),
    ):
        async for signum in signals:
            log.info("received signal %s, shutting down", signal.Signals(signum).name)
            break
    await runtime.shutdown()
    scope.cancel()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

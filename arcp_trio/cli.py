"""The ``arcp-trio`` command. The only module that configures logging.

Commands (``arcp-trio COMMAND --help`` for each)::

    serve        host agents over WebSocket (or --stdio)
    submit       submit a job; --follow shows its progress and writes its result
    watch        follow a job from a new session (subscribe with history, §7.6)
    jobs         list this principal's jobs (§6.6)
    cancel       cancel a job (§7.4)
    conformance  check a runtime against the spec, requirement by requirement

``arcp-trio serve`` hosts the demo agents (or ``--agents module:registry``), keeps jobs,
sessions and event buffers in SQLite unless ``--memory``, and prints exactly one line
on stdout, ``READY ws://HOST:PORT/arcp``, once it listens (other tools
wait for it). Logs go to stderr. It exits cleanly on SIGINT/SIGTERM or after
``--max-seconds``. ``--stdio`` serves one session as NDJSON on stdin/stdout (§4).

The client commands take ``--url`` and ``--token`` (defaults: ``$ARCP_URL``, else
``ws://127.0.0.1:8765/arcp``; ``$ARCP_TOKEN``) and ``--json`` for machine-readable
output on stdout. Progress, logs and connection status go to stderr.

Exit codes:
    0    success (the job succeeded, the command did what it was asked, every
         conformance requirement that ran passed)
    1    the job ended without success (error, cancelled, timed out), a cancel was
         not confirmed, or a conformance requirement FAILED
    2    bad arguments
    3    no session: the runtime is unreachable, refused the token, or the session
         was lost (resume window over); for ``serve``: the store's file was refused
         (corrupt, or written by a newer arcp-trio)
    4    the runtime refused the request (unknown agent or version, duplicate
         idempotency key, unknown job, permission denied, invalid request)
    130  interrupted (Ctrl-C): ``submit --follow`` / ``watch`` detach, the job keeps
         running
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import inspect
import json
import logging
import math
import os
import re
import secrets
import signal
import ssl
import sys
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import trio

from ._version import __version__
from .client import Event, JobOutcome, open_client
from .conformance import REQUIREMENTS, CheckResult, Outcome, Peer, PeerClosed, Report
from .conformance import run_conformance as _run_conformance
from .demo_agents import demo_registry
from .runtime.agents import AgentRegistry
from .runtime.config import LeaseExpiry, RuntimeConfig
from .runtime.credentials import InProcessProvisioner
from .runtime.runtime import Runtime, open_runtime
from .runtime.serve import serve_websocket
from .store import MemoryStore, SQLiteStore, Store, StoreError
from .transport.base import TransportError
from .transport.stdio import open_stdio_transport
from .transport.websocket import connect_websocket
from .wire.errors import (
    AgentNotAvailable,
    AgentVersionNotAvailable,
    ARCPError,
    DuplicateKey,
    InvalidRequest,
    JobNotFound,
    PermissionDenied,
)
from .wire.messages import JOB_STATUSES
from .wire.timestamps import format_timestamp, parse_timestamp

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from rich.console import Console
    from rich.progress import Progress, TaskID

    from .client import Client, Subscription
    from .client.handles import JobHandle
    from .runtime.auth import Authenticator
    from .transport.base import Transport

__all__ = ["main"]

log = logging.getLogger("arcp_trio.cli")

DEFAULT_URL = "ws://127.0.0.1:8765/arcp"

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_SESSION = 3
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130

_REFUSALS = (
    AgentNotAvailable,
    AgentVersionNotAvailable,
    DuplicateKey,
    InvalidRequest,
    JobNotFound,
    PermissionDenied,
)


class CommandError(Exception):
    """Ends a command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# == argument types =======================================================================


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


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or not math.isfinite(number):
        raise argparse.ArgumentTypeError("must be a positive number")
    return number


def _json_input(value: str) -> Any:
    """``JSON``, ``@file`` (its contents as JSON) or ``@-`` (JSON on stdin)."""
    text = value
    if value.startswith("@"):
        source = value[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {source}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _lease(value: str) -> dict[str, list[str]]:
    """``NAMESPACE=PATTERN[,PATTERN...]`` or a JSON object of namespace → patterns."""
    if value.lstrip().startswith("{"):
        parsed = json.loads(value)
        if not isinstance(parsed, dict) or not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in parsed.values()
        ):
            raise argparse.ArgumentTypeError("a JSON lease maps namespaces to lists of patterns")
        return {str(k): list(v) for k, v in parsed.items()}
    namespace, sep, patterns = value.partition("=")
    if not sep or not namespace or not patterns:
        raise argparse.ArgumentTypeError(
            f"expected NAMESPACE=PATTERN[,PATTERN...] (e.g. fs.read=/data/**), got {value!r}"
        )
    return {namespace: [p for p in patterns.split(",") if p]}


_DURATION = re.compile(r"\+?(\d+(?:\.\d+)?)(s|m|h|d)?")


def _expires_at(value: str) -> str:
    """An ISO 8601 UTC timestamp, or ``+DURATION`` from now (``+90s``, ``+5m``, ``+2h``)."""
    if value.startswith("+"):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise argparse.ArgumentTypeError(f"expected +N[s|m|h|d], got {value!r}")
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
        moment = datetime.now(UTC) + timedelta(seconds=float(match.group(1)) * scale)
        return format_timestamp(moment)
    try:
        parse_timestamp(value, require_utc=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _statuses(value: str) -> list[str]:
    statuses = [s for s in value.split(",") if s]
    unknown = [s for s in statuses if s not in JOB_STATUSES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown status {unknown[0]!r} (one of {', '.join(sorted(JOB_STATUSES))})"
        )
    return statuses


# == the parser ===========================================================================


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcp-trio",
        description="ARCP v1.1 runtime and client for Trio.",
        epilog="Exit codes: 0 ok, 1 job failed / requirement failed, 2 bad arguments, "
        "3 no session, 4 request refused, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"arcp-trio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    serve.add_argument(
        "--lease-expiry",
        choices=[mode.value for mode in LeaseExpiry],
        default=LeaseExpiry.TERMINATE.value,
        help="at a lease's expires_at: end the job with LEASE_EXPIRED and revoke its "
        "credentials (terminate, the default), or fail only its next operation (on-use); "
        "§9.5, docs/leases.md",
    )
    serve.add_argument(
        "--certfile",
        type=Path,
        default=None,
        metavar="PEM",
        help="serve wss:// (TLS) with this certificate chain (with --keyfile)",
    )
    serve.add_argument(
        "--keyfile",
        type=Path,
        default=None,
        metavar="PEM",
        help="the private key of --certfile (default: in the --certfile file)",
    )
    jwt_flags = serve.add_argument_group(
        "JWT bearer tokens (the jwt extra: pip install 'arcp-trio[jwt]'; docs/deploy.md)"
    )
    keys = jwt_flags.add_mutually_exclusive_group()
    keys.add_argument("--jwt-jwks-url", metavar="URL", help="verify JWTs with this JWKS URL")
    keys.add_argument(
        "--jwt-key-file",
        type=Path,
        metavar="FILE",
        help="verify JWTs with this PEM public key or JWKS JSON file",
    )
    keys.add_argument(
        "--jwt-secret-file",
        type=Path,
        metavar="FILE",
        help="verify HS256 JWTs with the secret in this file (at least 32 bytes)",
    )
    jwt_flags.add_argument(
        "--jwt-algorithm",
        action="append",
        default=[],
        metavar="ALG",
        help="an accepted algorithm (repeatable; default RS256 and ES256, or HS256 with "
        "--jwt-secret-file); never none",
    )
    jwt_flags.add_argument("--jwt-issuer", metavar="ISS", help="the required iss claim")
    jwt_flags.add_argument(
        "--jwt-audience",
        action="append",
        default=[],
        metavar="AUD",
        help="an accepted aud (repeatable)",
    )
    jwt_flags.add_argument(
        "--jwt-leeway-sec", type=float, default=30.0, metavar="SEC", help="exp/nbf leeway (30)"
    )
    jwt_flags.add_argument(
        "--jwt-principal-claim",
        default="sub",
        metavar="CLAIM",
        help="the claim that names the principal (default sub)",
    )
    serve.add_argument(
        "--no-reactor",
        action="store_true",
        help="each connection reads its own socket (the portable path macOS and Windows "
        "run) instead of one epoll reactor reading them all (Linux)",
    )
    serve.add_argument("--stdio", action="store_true", help="serve one session on stdin/stdout")
    serve.add_argument(
        "--demo-credentials",
        action="store_true",
        help="provision per-job demo credentials (§9.8) from an in-process example "
        "upstream; advertised only with the SQLite ledger (not with --memory)",
    )
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
    serve.add_argument(
        "--agents",
        metavar="MODULE:ATTR",
        default=None,
        help="host your own agents instead of the demo ones: ATTR of MODULE is an "
        "AgentRegistry, or a function returning one (e.g. myapp.agents:registry)",
    )

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url",
        default=os.environ.get("ARCP_URL") or DEFAULT_URL,
        help=f"runtime endpoint (default $ARCP_URL, else {DEFAULT_URL})",
    )
    client.add_argument(
        "--token",
        default=os.environ.get("ARCP_TOKEN"),
        help="bearer token (default $ARCP_TOKEN)",
    )
    client.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    client.add_argument("--log-level", default="WARNING", help="stderr log level")

    submit = commands.add_parser(
        "submit",
        parents=[client],
        help="submit a job",
        description="Submit a job (§7.1). Prints its id, or with --follow shows its "
        "progress and writes its result.",
    )
    submit.add_argument("agent", metavar="AGENT", help="agent name or name@version")
    submit.add_argument(
        "--input",
        type=_json_input,
        default=None,
        metavar="JSON|@FILE",
        help="the job's input: JSON, @file, or @- for stdin",
    )
    submit.add_argument(
        "--lease",
        type=_lease,
        action="append",
        default=[],
        metavar="NS=PATTERN[,...]",
        help="lease grant, repeatable (e.g. fs.read=/data/**, cost.budget=USD:1.00), or a "
        "JSON object",
    )
    submit.add_argument(
        "--expires-at",
        type=_expires_at,
        default=None,
        metavar="TIME|+DURATION",
        help="lease expiry (§9.5): ISO 8601 UTC, or +90s / +5m / +2h from now",
    )
    submit.add_argument(
        "--max-runtime", type=_positive_int, default=None, metavar="SEC", help="max_runtime_sec"
    )
    submit.add_argument("--idempotency-key", default=None, help="§7.2 idempotency key")
    submit.add_argument("--trace-id", default=None, help="32-hex W3C trace id")
    submit.add_argument(
        "--follow", "-f", action="store_true", help="show progress and events, write the result"
    )
    submit.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="write the result here (--follow)"
    )

    watch = commands.add_parser(
        "watch",
        parents=[client],
        help="follow a job from a new session",
        description="Subscribe to a job (§7.6) with its history: progress, events, result.",
    )
    watch.add_argument("job_id", metavar="JOB")
    watch.add_argument(
        "--from-seq", type=int, default=None, metavar="N", help="history after the job's Nth event"
    )
    watch.add_argument("--no-history", action="store_true", help="live events only")
    watch.add_argument("--out", type=Path, default=None, metavar="FILE", help="write the result")

    jobs = commands.add_parser(
        "jobs",
        parents=[client],
        help="list jobs",
        description="List this principal's jobs (§6.6), one page at a time.",
    )
    jobs.add_argument(
        "--status",
        type=_statuses,
        action="append",
        default=[],
        metavar="S[,S...]",
        help="pending, running, success, error, cancelled, timed_out (repeatable)",
    )
    jobs.add_argument("--agent", default=None, help="exact name@version")
    jobs.add_argument(
        "--created-after", type=_expires_at, default=None, metavar="TIME", help="ISO 8601 UTC"
    )
    jobs.add_argument("--limit", type=_positive_int, default=20, help="page size (default 20)")
    jobs.add_argument("--cursor", default=None, help="continue from a previous page")
    jobs.add_argument("--all", action="store_true", help="fetch every page")

    cancel = commands.add_parser(
        "cancel",
        parents=[client],
        help="cancel a job",
        description="Cancel a job (§7.4). Cancel authority belongs to the session that "
        "submitted it: for jobs submitted with this command line, that session is "
        "resumed (its resume token is kept in $ARCP_STATE_DIR); otherwise a new session "
        "asks.",
    )
    cancel.add_argument("job_id", metavar="JOB")
    cancel.add_argument("--reason", default="cancelled from the command line")
    cancel.add_argument(
        "--wait", type=_positive_float, default=5.0, help="seconds to wait for confirmation"
    )

    conformance = commands.add_parser(
        "conformance",
        parents=[client],
        help="check a runtime against the spec",
        description="Drive a runtime through the spec's requirements over WebSocket and "
        "report PASS/FAIL/SKIP per requirement, with the § and the dialect it speaks. The "
        "runtime must host the demo agents (docs/conformance.md).",
    )
    conformance.add_argument(
        "target", nargs="?", default=None, metavar="URL", help="the runtime (default --url)"
    )
    conformance.add_argument(
        "--other-token", default=None, help="a token of a different principal (scoping checks)"
    )
    conformance.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ID|§",
        help="only these requirements: id prefix or section, comma-separated, repeatable "
        "(e.g. resume,6.4,errors.not-json)",
    )
    conformance.add_argument(
        "--wait", type=_positive_float, default=5.0, help="seconds to wait for the runtime"
    )
    conformance.add_argument(
        "--max-timing",
        type=_positive_float,
        default=5.0,
        metavar="SEC",
        help="longest heartbeat interval / resume window to sit out (else SKIP)",
    )
    conformance.add_argument(
        "--concurrency", type=_positive_int, default=4, help="checks run at once"
    )
    conformance.add_argument(
        "--format",
        choices=["table", "json", "markdown"],
        default=None,
        help="report format (default table; --json is --format json)",
    )
    conformance.add_argument("--list", action="store_true", help="list the requirements and exit")
    return parser


def _default_db() -> Path:
    """``$XDG_DATA_HOME/arcp-trio/runtime.sqlite3`` (``~/.local/share`` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "arcp-trio" / "runtime.sqlite3"


# == main =================================================================================


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(
            stream=sys.stderr,
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        registry = _load_agents(parser, args.agents) if args.agents else demo_registry()
        ssl_context = _server_ssl_context(parser, args)
        authenticator = _jwt_authenticator(parser, args)
        try:
            trio.run(_serve, args, registry, ssl_context, authenticator)
        except StoreError as exc:
            print(f"arcp-trio: refusing to start: {exc.message}", file=sys.stderr)
            return EXIT_NO_SESSION
        return EXIT_OK
    _configure_client_logging(args.log_level)
    if args.command == "conformance" and args.list:
        return _list_requirements(args)
    if not args.token:
        parser.error(f"{args.command}: --token (or $ARCP_TOKEN) is required")
    if getattr(args, "out", None) is not None and args.command == "submit" and not args.follow:
        parser.error("submit: --out needs --follow")
    command = {
        "submit": _submit,
        "watch": _watch,
        "jobs": _jobs,
        "cancel": _cancel,
        "conformance": _conformance,
    }[args.command]
    try:
        code: int = trio.run(command, args)
    except BaseException as exc:
        error = _unwrap(exc)
        if isinstance(error, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if not isinstance(error, CommandError):
            raise
        _stderr().print(f"[bold red]error:[/] {_escape(str(error))}")
        return error.code
    return code


def _unwrap(exc: BaseException) -> BaseException:
    """``exc`` without the exception groups nurseries wrapped it in."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _configure_client_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level.upper(),
        format="%(name)s %(message)s",
        handlers=[RichHandler(console=_stderr(), show_path=False, rich_tracebacks=False)],
    )


_consoles: dict[str, Console] = {}


def _stderr() -> Console:
    """One console for everything on stderr: progress, logs, status lines."""
    if "err" not in _consoles:
        from rich.console import Console

        # Lines are not hard-wrapped when stderr is a file or a pipe.
        _consoles["err"] = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
    return _consoles["err"]


def _stdout() -> Console:
    if "out" not in _consoles:
        from rich.console import Console

        # Tables are not cut to 80 columns when stdout is a file or a pipe.
        _consoles["out"] = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    return _consoles["out"]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# == serve ================================================================================


def _load_agents(parser: argparse.ArgumentParser, spec: str) -> AgentRegistry:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        parser.error(f"--agents: expected MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules next to you import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        parser.error(f"--agents: cannot import {module_name!r}: {exc}")
    value = getattr(module, attribute, None)
    if value is None:
        parser.error(f"--agents: {module_name!r} has no attribute {attribute!r}")
    if inspect.iscoroutinefunction(value):
        parser.error(f"--agents: {spec} is an agent; pass the AgentRegistry it is registered in")
    if callable(value) and not isinstance(value, AgentRegistry):
        try:
            value = value()
        except TypeError as exc:
            parser.error(f"--agents: calling {spec}() failed: {exc}")
    if not isinstance(value, AgentRegistry):
        parser.error(f"--agents: {spec} is a {type(value).__name__}, not an AgentRegistry")
    return value


def _server_ssl_context(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> ssl.SSLContext | None:
    """The TLS context of ``--certfile``/``--keyfile`` (None: plain ``ws://``); a key
    without a certificate, or files that do not load, are usage errors (exit 2)."""
    if args.certfile is None:
        if args.keyfile is not None:
            parser.error("serve: --keyfile needs --certfile")
        return None
    if args.stdio:
        parser.error("serve: --certfile is for WebSocket, not --stdio")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"serve: cannot load --certfile/--keyfile: {exc}")
    return context


def _jwt_authenticator(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> Authenticator | None:
    """The ``--jwt-*`` flags as a ``JWTAuth`` (None without a key source)."""
    source = args.jwt_jwks_url or args.jwt_key_file or args.jwt_secret_file
    if source is None:
        if args.jwt_algorithm or args.jwt_issuer or args.jwt_audience:
            parser.error(
                "serve: --jwt-* flags need --jwt-jwks-url, --jwt-key-file or --jwt-secret-file"
            )
        return None
    try:
        from .runtime.jwt_auth import JWKSKeys, JWTAuth, StaticKeys
    except ImportError as exc:
        parser.error(f"serve: {exc}")
    keys: Any
    try:
        if args.jwt_jwks_url:
            keys = JWKSKeys(args.jwt_jwks_url)
        elif args.jwt_key_file:
            keys = StaticKeys.from_file(args.jwt_key_file)
        else:
            keys = StaticKeys.from_file(args.jwt_secret_file, secret=True)
        default = ["HS256"] if args.jwt_secret_file else ["RS256", "ES256"]
        audience = args.jwt_audience or None
        return JWTAuth(
            keys,
            algorithms=args.jwt_algorithm or default,
            issuer=args.jwt_issuer,
            audience=audience[0] if audience and len(audience) == 1 else audience,
            leeway_sec=args.jwt_leeway_sec,
            principal_claim=args.jwt_principal_claim,
        )
    except (OSError, ValueError) as exc:
        parser.error(f"serve: JWT: {exc}")


async def _serve(
    args: argparse.Namespace,
    registry: AgentRegistry,
    ssl_context: ssl.SSLContext | None,
    authenticator: Authenticator | None = None,
) -> None:
    tokens = dict(args.token)
    if not tokens and authenticator is None:
        generated = secrets.token_urlsafe(24)
        tokens = {generated: "local"}
        print(f"no --token given; accepting bearer token {generated} as 'local'", file=sys.stderr)
    config = RuntimeConfig(
        heartbeat_interval_sec=args.heartbeat_sec,
        resume_window_sec=args.resume_window_sec,
        shutdown_grace_sec=args.shutdown_grace_sec,
        lease_expiry=LeaseExpiry(args.lease_expiry),
    )
    store: Store = MemoryStore() if args.memory else SQLiteStore(args.db or _default_db())
    provisioner = InProcessProvisioner() if args.demo_credentials else None
    if provisioner is not None and not store.durable:
        log.warning("--demo-credentials needs the SQLite ledger: not advertised with --memory")
    async with (
        open_runtime(
            agents=registry,
            tokens=tokens,
            authenticator=authenticator,
            config=config,
            store=store,
            provisioner=provisioner,
        ) as runtime,
        trio.open_nursery() as nursery,
    ):
        if args.stdio:
            nursery.start_soon(_serve_stdio, runtime, nursery.cancel_scope)
        else:
            info = await nursery.start(
                partial(serve_websocket, use_reactor=not args.no_reactor, ssl_context=ssl_context),
                runtime,
                args.host,
                args.port,
            )
            print(f"READY {info.url}", flush=True)
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


# == sessions the command line can come back to (cancel authority) ========================


def _state_file() -> Path:
    base = os.environ.get("ARCP_STATE_DIR")
    if not base:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = str(Path(xdg) / "arcp-trio")
    return Path(base) / "sessions.json"


def _load_state() -> dict[str, Any]:
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {"jobs": {}}
    return data if isinstance(data, dict) and isinstance(data.get("jobs"), dict) else {"jobs": {}}


def _remember(job_id: str, url: str, session_id: str, resume_token: str, last_seq: int) -> None:
    """Keep what ``cancel`` needs to resume the submitting session (§7.4)."""
    state = _load_state()
    jobs: dict[str, Any] = state["jobs"]
    jobs[job_id] = {
        "url": url,
        "session_id": session_id,
        "resume_token": resume_token,
        "last_event_seq": last_seq,
        "saved_at": format_timestamp(datetime.now(UTC)),
    }
    for old in sorted(jobs, key=lambda j: str(jobs[j].get("saved_at")))[:-200]:
        del jobs[old]
    path = _state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        # Resume tokens carry the session's authority: owner-only file.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=1)
        temporary.replace(path)
    except OSError as exc:
        log.warning("cannot save session state to %s: %s", path, exc)


class _TokenRecorder:
    """A connector that notes each ``session.welcome``'s resume token as it passes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.resume_token: str | None = None

    async def connect(self) -> Transport:
        return _RecordingTransport(await connect_websocket(self.url), self)


class _RecordingTransport:
    def __init__(self, inner: Transport, recorder: _TokenRecorder) -> None:
        self._inner = inner
        self._recorder = recorder

    async def send_message(self, message: str) -> None:
        await self._inner.send_message(message)

    async def send_messages(self, messages: Sequence[str]) -> None:
        await self._inner.send_messages(messages)

    async def receive_message(self) -> str:
        text = await self._inner.receive_message()
        if '"session.welcome"' in text:
            with contextlib.suppress(ValueError, AttributeError):
                token = json.loads(text)["payload"].get("resume_token")
                if isinstance(token, str):
                    self._recorder.resume_token = token
        return text

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def description(self) -> str:
        return self._inner.description


# == submit / watch =======================================================================


@contextlib.asynccontextmanager
async def _client_session(url: str, token: str, recorder: _TokenRecorder | None = None) -> Any:
    """``open_client`` with command-line error mapping."""
    try:
        async with open_client(
            url, token=token, connect=recorder.connect if recorder is not None else None
        ) as client:
            yield client
    except* (TransportError, OSError) as group:
        raise CommandError(f"cannot reach {url}: {group.exceptions[0]}", EXIT_NO_SESSION) from None
    except* ARCPError as group:
        raise _command_error(group.exceptions[0]) from None


def _command_error(exc: BaseException) -> CommandError:
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, _REFUSALS):
        return CommandError(f"refused: {exc.code}: {exc.message}", EXIT_REFUSED)
    if isinstance(exc, ARCPError):
        return CommandError(f"{exc.code}: {exc.message}", EXIT_NO_SESSION)
    return CommandError(str(exc), EXIT_NO_SESSION)


async def _submit(args: argparse.Namespace) -> int:
    lease: dict[str, list[str]] = {}
    for grant in args.lease:
        for namespace, patterns in grant.items():
            lease.setdefault(namespace, []).extend(patterns)
    constraints = {"expires_at": args.expires_at} if args.expires_at else None
    recorder = _TokenRecorder(args.url)
    async with _client_session(args.url, args.token, recorder) as client:
        try:
            handle = await client.submit(
                args.agent,
                input=args.input,
                lease_request=lease or None,
                lease_constraints=constraints,
                idempotency_key=args.idempotency_key,
                max_runtime_sec=args.max_runtime,
                trace_id=args.trace_id,
            )
        except ARCPError as exc:
            raise _command_error(exc) from None
        job_id = handle.job_id

        def remember() -> None:
            if client.session_id and recorder.resume_token:
                _remember(
                    job_id,
                    args.url,
                    client.session_id,
                    recorder.resume_token,
                    client.last_event_seq,
                )

        remember()
        if not args.follow:
            if args.json:
                _print_json({"job_id": job_id, "accepted": handle.accepted})
            else:
                print(job_id)
                _stderr().print(
                    f"[dim]accepted as {_escape(handle.agent)}; follow it with "
                    f"`arcp-trio watch {job_id}`[/]"
                )
            return EXIT_OK
        follower = _Follower(args, client, job_id, handle.agent)
        try:
            return await follower.run(handle)
        finally:
            remember()


async def _watch(args: argparse.Namespace) -> int:
    async with _client_session(args.url, args.token) as client:
        try:
            async with client.subscribe(
                args.job_id,
                history=not args.no_history,
                from_event_seq=args.from_seq,
            ) as subscription:
                agent = str(subscription.subscribed.get("agent") or "")
                return await _Follower(args, client, args.job_id, agent).run(subscription)
        except ARCPError as exc:
            raise _command_error(exc) from None


class _Follower:
    """Renders one job's events: a progress bar (terminal), plain lines, or NDJSON."""

    def __init__(self, args: argparse.Namespace, client: Client, job_id: str, agent: str) -> None:
        self.client = client
        self.job_id = job_id
        self.agent = agent
        self.json = bool(args.json)
        self.err = _stderr()
        self.rich = not self.json and self.err.is_terminal
        self.out_path: Path | None = args.out
        self._sink: IO[bytes] | None = None
        self._held = bytearray()  # result bytes kept until the display stops
        self._streamed = 0
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._state = "connected"
        self._reconnects = 0
        self._detached = False

    # -- the run --------------------------------------------------------------------------

    async def run(self, source: JobHandle | Subscription) -> int:
        outcome: JobOutcome | None = None
        error: ARCPError | None = None
        with contextlib.ExitStack() as stack:
            if self.out_path is not None:
                try:
                    self._sink = stack.enter_context(self.out_path.open("wb"))
                except OSError as exc:
                    raise CommandError(f"cannot write {self.out_path}: {exc}", EXIT_USAGE) from None
            elif not self.json and not sys.stdout.isatty():
                self._sink = sys.stdout.buffer
            if self.rich:
                self.progress = stack.enter_context(self._make_progress())
                self.task = self.progress.add_task(
                    self.agent or self.job_id, total=None, count="", units="", note="", link=""
                )
            self._line(f"[bold]{self.job_id}[/] {_escape(self.agent)}")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_connection)
                await nursery.start(self._detach_on_interrupt, nursery.cancel_scope)
                try:
                    async for event in source.events():
                        self._on_event(event)
                    outcome = await source.result()
                except ARCPError as exc:
                    error = exc
                nursery.cancel_scope.cancel()
            if self.progress is not None:
                if self.task is not None and outcome is not None:
                    total = self.progress.tasks[0].total
                    if total is not None:
                        self.progress.update(self.task, completed=total)
                self.progress.refresh()
                self.progress.stop()
            return self._finish(outcome, error)

    def _make_progress(self) -> Progress:
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        return Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]} {task.fields[units]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            TextColumn("[yellow]{task.fields[link]}"),
            console=self.err,
            auto_refresh=False,
            transient=False,
        )

    async def _detach_on_interrupt(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                self._detached = True
                scope.cancel()
                return

    async def _watch_connection(self) -> None:
        """The client's reconnects as a status line, never an error."""
        while True:
            self._check_connection()
            if self.progress is not None:
                self.progress.refresh()
            await trio.sleep(0.1)

    def _check_connection(self) -> None:
        stats = self.client.statistics()
        if stats.state == "reconnecting" and self._state != "reconnecting":
            self._status("connection lost; reconnecting…", "reconnecting")
        if stats.reconnects > self._reconnects:
            self._reconnects = stats.reconnects
            self._status(
                f"reconnected: session resumed (reconnects: {stats.reconnects})", "connected"
            )
        self._state = stats.state if stats.state != "connecting" else self._state

    # -- output ---------------------------------------------------------------------------

    def _status(self, text: str, state: str) -> None:
        if self.json:
            _print_json({"type": "connection", "state": state, "message": text})
            return
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, link="" if state == "connected" else "reconnecting…")
        self.err.print(f"[yellow]⟳ {_escape(text)}[/]")

    def _line(self, markup: str) -> None:
        if self.json:
            return
        self.err.print(markup)

    def _on_event(self, event: Event) -> None:
        self._check_connection()  # a resume's replay comes after its status line
        body = event.body if isinstance(event.body, dict) else {"value": event.body}
        if self.json:
            _print_json(
                {
                    "type": "event",
                    "job_id": event.job_id,
                    "event_seq": event.event_seq,
                    "kind": event.kind,
                    "ts": event.ts,
                    "body": event.body,
                }
            )
        if event.kind == "result_chunk":
            self._on_chunk(body)
            return
        if event.kind == "progress":
            self._on_progress(body)
            return
        if self.json:
            return
        self._line(_describe(event.kind, body))

    def _on_progress(self, body: dict[str, Any]) -> None:
        current = body.get("current")
        total = body.get("total")
        units = str(body.get("units") or "")
        message = str(body.get("message") or "")
        count = _number(current) + (f"/{_number(total)}" if total is not None else "")
        if self.progress is not None and self.task is not None:
            self.progress.update(
                self.task,
                completed=float(current) if isinstance(current, int | float) else 0,
                total=float(total) if isinstance(total, int | float) else None,
                count=count,
                units=units,
                note=_escape(message),
            )
            self.progress.refresh()
        elif not self.json:
            note = f" {message}" if message else ""
            self.err.print(f"progress {count} {_escape(units)}{_escape(note)}".rstrip())

    def _on_chunk(self, body: dict[str, Any]) -> None:
        data = body.get("data", "")
        if body.get("encoding") == "base64":
            piece = base64.b64decode(str(data))
        else:
            piece = str(data).encode()
        self._streamed += len(piece)
        if self._sink is not None:
            self._sink.write(piece)
            self._sink.flush()
        elif not self.json:
            self._held += piece
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, note=f"result: {self._streamed} bytes")

    def _finish(self, outcome: JobOutcome | None, error: ARCPError | None) -> int:
        if self._detached or (outcome is None and error is None):
            if self.json:
                _print_json({"type": "detached", "job_id": self.job_id})
            else:
                self.err.print(
                    f"[yellow]detached; {self.job_id} keeps running.[/] Follow it with "
                    f"`arcp-trio watch {self.job_id}`, stop it with "
                    f"`arcp-trio cancel {self.job_id}`."
                )
            return EXIT_INTERRUPTED
        if error is not None:
            status = {"CANCELLED": "cancelled", "TIMEOUT": "timed_out"}.get(str(error.code))
            if self.json:
                _print_json(
                    {
                        "type": "error",
                        "job_id": self.job_id,
                        "final_status": status or "error",
                        "code": str(error.code),
                        "message": error.message,
                        "retryable": error.retryable,
                    }
                )
            else:
                self.err.print(
                    f"[bold red]✗ {self.job_id} {status or 'error'}:[/] "
                    f"{error.code}: {_escape(error.message)}"
                )
            session_codes = {"RESUME_WINDOW_EXPIRED", "UNAUTHENTICATED"}
            if str(error.code) in session_codes or isinstance(error, TransportError):
                return EXIT_NO_SESSION
            return EXIT_JOB_FAILED
        assert outcome is not None
        self._write_result(outcome)
        if not self.json:
            size = f" ({self._streamed} bytes streamed)" if outcome.result_id else ""
            where = f" → {self.out_path}" if self.out_path is not None else ""
            self.err.print(f"[bold green]✓ {self.job_id} success[/]{size}{where}")
        return EXIT_OK

    def _write_result(self, outcome: JobOutcome) -> None:
        result = outcome.result
        if self.json:
            line: dict[str, Any] = {
                "type": "result",
                "job_id": self.job_id,
                "final_status": outcome.final_status,
                "result_id": outcome.result_id,
                "summary": outcome.summary,
            }
            if isinstance(result, bytes):
                line["result"] = base64.b64encode(result).decode()
                line["encoding"] = "base64"
            else:
                line["result"] = result
            _print_json(line)
            if self.out_path is not None and self._sink is not None and not outcome.result_id:
                self._sink.write(_result_bytes(result))
            return
        if outcome.result_id:
            if self._held:
                sys.stdout.buffer.write(bytes(self._held))
                if not self._held.endswith(b"\n"):
                    sys.stdout.buffer.write(b"\n")
                sys.stdout.buffer.flush()
            return
        data = _result_bytes(result)
        if self._sink is not None:
            self._sink.write(data)
            self._sink.flush()
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()


def _result_bytes(result: Any) -> bytes:
    """An inline result as output: text as is, anything else as indented JSON."""
    if isinstance(result, bytes):
        return result
    text = result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False)
    return (text if text.endswith("\n") else text + "\n").encode()


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if value is not None else "?"


def _describe(kind: str, body: dict[str, Any]) -> str:
    """One line of markup for an event above the progress bar."""
    if kind == "log":
        level = str(body.get("level", "info")).upper()
        colour = {"ERROR": "red", "WARN": "yellow", "WARNING": "yellow", "DEBUG": "dim"}.get(
            level, "cyan"
        )
        return f"[{colour}]{level:5}[/] {_escape(str(body.get('message', '')))}"
    if kind == "status":
        message = f" {body['message']}" if body.get("message") else ""
        return f"[magenta]status[/] {_escape(str(body.get('phase')))}{_escape(message)}"
    if kind == "thought":
        return f"[dim italic]thought {_escape(str(body.get('text', '')))}[/]"
    if kind == "metric":
        unit = f" {body['unit']}" if body.get("unit") else ""
        return f"[blue]metric[/] {_escape(str(body.get('name')))} = {body.get('value')}{unit}"
    return f"[blue]{_escape(kind)}[/] {_escape(json.dumps(body, ensure_ascii=False))}"


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# == jobs =================================================================================


async def _jobs(args: argparse.Namespace) -> int:
    statuses = [s for group in args.status for s in group] or None
    async with _client_session(args.url, args.token) as client:
        rows: list[dict[str, Any]] = []
        cursor = args.cursor
        while True:
            try:
                page = await client.list_jobs(
                    status=statuses,
                    agent=args.agent,
                    created_after=args.created_after,
                    limit=args.limit,
                    cursor=cursor,
                )
            except ARCPError as exc:
                raise _command_error(exc) from None
            for job in page.jobs:
                rows.append(
                    {
                        "job_id": job.job_id,
                        "agent": job.agent,
                        "status": job.status,
                        "submitted_at": job.submitted_at or job.created_at,
                        "last_event_seq": job.last_event_seq,
                        "parent_job_id": job.parent_job_id,
                    }
                )
            cursor = page.next_cursor
            if not args.all or not cursor:
                break
    if args.json:
        _print_json({"jobs": rows, "next_cursor": cursor})
        return EXIT_OK
    _print_jobs_table(rows, cursor)
    return EXIT_OK


_STATUS_STYLE = {
    "success": "green",
    "running": "cyan",
    "pending": "blue",
    "error": "red",
    "cancelled": "yellow",
    "timed_out": "yellow",
}


def _print_jobs_table(rows: list[dict[str, Any]], cursor: str | None) -> None:
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    table.add_column("JOB")
    table.add_column("AGENT")
    table.add_column("STATUS")
    table.add_column("SUBMITTED")
    table.add_column("EVENTS", justify="right")
    for row in rows:
        status = str(row["status"])
        table.add_row(
            row["job_id"],
            _escape(str(row["agent"])),
            f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]",
            str(row["submitted_at"] or ""),
            "" if row["last_event_seq"] is None else str(row["last_event_seq"]),
        )
    out = _stdout()
    if rows:
        out.print(table)
    else:
        out.print("no jobs")
    if cursor:
        _stderr().print(f"[dim]more: arcp-trio jobs --cursor {cursor}  (or --all)[/]")


# == cancel ===============================================================================


async def _cancel(args: argparse.Namespace) -> int:
    saved = _load_state()["jobs"].get(args.job_id)
    reply: str | None = None
    if isinstance(saved, dict) and saved.get("url") == args.url:
        reply = await _cancel_as_submitter(args, saved)
    if reply is None:
        reply = await _cancel_from_new_session(args)
    if args.json:
        _print_json({"job_id": args.job_id, "outcome": reply})
    elif reply in ("cancelled", "already ended"):
        _stderr().print(f"[bold]{args.job_id}[/] {reply}")
    else:
        _stderr().print(f"[yellow]{args.job_id}: {reply}[/]")
    return EXIT_OK if reply in ("cancelled", "already ended") else EXIT_JOB_FAILED


async def _raw_session(args: argparse.Namespace, **hello: Any) -> tuple[Peer, dict[str, Any]]:
    try:
        peer = await Peer.connect(args.url, label="cancel")
    except (OSError, TransportError, trio.TooSlowError) as exc:
        raise CommandError(f"cannot reach {args.url}: {exc}", EXIT_NO_SESSION) from None
    try:
        welcome = await peer.hello(args.token, within=args.wait, **hello)
    except (PeerClosed, trio.TooSlowError) as exc:
        await peer.aclose()
        raise CommandError(f"no welcome from {args.url}: {exc}", EXIT_NO_SESSION) from None
    return peer, welcome


async def _cancel_as_submitter(args: argparse.Namespace, saved: dict[str, Any]) -> str | None:
    """Resume the session that submitted the job, and cancel from it. None: cannot."""
    peer, welcome = await _raw_session(
        args,
        resume={
            "session_id": saved["session_id"],
            "resume_token": saved["resume_token"],
            "last_event_seq": int(saved.get("last_event_seq") or 0),
        },
    )
    try:
        if welcome.get("type") != "session.welcome":
            log.info("cannot resume the submitting session: %s", welcome.get("payload"))
            return None
        outcome = await _send_cancel(peer, args)
        if outcome == "no reply":
            # A runtime that routes the terminal elsewhere (the reference binds it to
            # the connection that submitted): ask list_jobs.
            outcome = await _status_after_cancel(peer, args)
        if peer.session_id and peer.resume_token:
            seqs = [f["event_seq"] for f in peer.received if isinstance(f.get("event_seq"), int)]
            _remember(
                args.job_id,
                args.url,
                peer.session_id,
                peer.resume_token,
                max([int(saved.get("last_event_seq") or 0), *seqs]),
            )
        await _close_raw(peer)
        return outcome
    finally:
        await peer.aclose()


async def _cancel_from_new_session(args: argparse.Namespace) -> str:
    peer, welcome = await _raw_session(args)
    try:
        if welcome.get("type") != "session.welcome":
            body = welcome.get("payload") or {}
            raise CommandError(f"{body.get('code')}: {body.get('message')}", EXIT_NO_SESSION)
        outcome = await _send_cancel(peer, args)
        if outcome == "no reply":
            outcome = await _status_after_cancel(peer, args)
        await _close_raw(peer)
        return outcome
    finally:
        await peer.aclose()


async def _send_cancel(peer: Peer, args: argparse.Namespace) -> str:
    job_id = args.job_id
    request_id = await peer.send(
        "job.cancel", {"job_id": job_id, "reason": args.reason}, job_id=job_id
    )
    # Confirmation comes at once from a runtime that gives it; others are asked after.
    wait = min(args.wait, 1.5)
    with trio.move_on_after(wait):
        while True:
            frame = await peer.recv(within=wait + 1)
            kind = frame.get("type")
            body = frame.get("payload") or {}
            if kind == "job.cancelled" and frame.get("job_id", body.get("job_id")) == job_id:
                return "cancelled"
            if kind in ("job.result", "job.error") and frame.get("job_id") == job_id:
                status = body.get("final_status")
                return "cancelled" if status == "cancelled" else "already ended"
            if kind == "session.error" and body.get("request_id") in (None, request_id):
                error = f"{body.get('code')}: {body.get('message')}"
                code = EXIT_REFUSED if body.get("code") != "INTERNAL_ERROR" else EXIT_NO_SESSION
                raise CommandError(f"cancel refused: {error}", code)
    return "no reply"


async def _status_after_cancel(peer: Peer, args: argparse.Namespace) -> str:
    """A runtime that confirms nothing to a non-submitter (the reference): ask list_jobs."""
    deadline = trio.current_time() + args.wait
    status: str | None = None
    while trio.current_time() < deadline:
        await peer.send("session.list_jobs", {"limit": 1000})
        reply = await peer.recv_type("session.jobs", "session.error", within=args.wait)
        jobs = (reply.get("payload") or {}).get("jobs") or []
        status = next((str(j.get("status")) for j in jobs if j.get("job_id") == args.job_id), None)
        if status in ("cancelled",):
            return "cancelled"
        if status in ("success", "error", "timed_out"):
            return "already ended"
        await trio.sleep(0.2)
    return f"cancel sent, not confirmed (status {status or 'unknown'})"


async def _close_raw(peer: Peer) -> None:
    with contextlib.suppress(PeerClosed, trio.TooSlowError):
        await peer.send("session.close", {"reason": "client.close"})
        await peer.recv_type("session.closed", "session.error", within=1)


# == conformance ==========================================================================


def _list_requirements(args: argparse.Namespace) -> int:
    if args.json:
        _print_json(
            [
                {"id": r.id, "section": f"§{r.section}", "level": r.level, "title": r.title}
                for r in REQUIREMENTS
            ]
        )
        return EXIT_OK
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for name in ("§", "REQUIREMENT", "LEVEL", "WHAT IS CHECKED"):
        table.add_column(name)
    for r in REQUIREMENTS:
        table.add_row(r.section, r.id, r.level, _escape(r.title))
    _stdout().print(table)
    return EXIT_OK


async def _conformance(args: argparse.Namespace) -> int:
    url = args.target or args.url
    fmt = args.format or ("json" if args.json else "table")
    only = [part for group in args.only for part in group.split(",") if part.strip()]
    err = _stderr()
    progress: Progress | None = None
    on_result: Callable[[CheckResult], None] | None = None
    if fmt == "table" and err.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(
            TextColumn("checking"), BarColumn(), MofNCompleteColumn(), console=err, transient=True
        )
        task = bar.add_task("conformance", total=None)

        def advance(_result: CheckResult) -> None:
            bar.advance(task)
            bar.refresh()

        progress, on_result = bar, advance

    with progress or contextlib.nullcontext():
        report = await _run_conformance(
            url,
            args.token,
            other_token=args.other_token,
            only=only,
            wait=args.wait,
            max_timing_sec=args.max_timing,
            concurrency=args.concurrency,
            on_result=on_result,
        )
    if fmt == "json":
        _print_json(report.to_json())
    elif fmt == "markdown":
        sys.stdout.write(conformance_markdown(report))
    else:
        _print_report(report)
    if report.fatal is not None:
        return EXIT_NO_SESSION
    return EXIT_OK if report.ok else EXIT_JOB_FAILED


_OUTCOME_STYLE = {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.SKIP: "yellow"}


def _print_report(report: Report) -> None:
    from rich.table import Table

    out = _stdout()
    runtime = report.runtime
    out.print(
        f"[bold]ARCP conformance[/] {_escape(report.url)}  runtime "
        f"[bold]{_escape(str(runtime.get('name', '?')))}[/] "
        f"{_escape(str(runtime.get('version', '')))}"
    )
    if report.fatal is not None:
        out.print(f"[bold red]cannot check:[/] {_escape(report.fatal)}")
        return
    out.print(f"dialect: [bold]{_escape(report.dialect)}[/]")
    for note in report.dialect_notes:
        out.print(f"  {_escape(note.item)}: {_escape(note.observed)} [dim]({note.side})[/]")
    table = Table(show_edge=False, header_style="bold", expand=False)
    table.add_column("RESULT")
    table.add_column("§", justify="right")
    table.add_column("REQUIREMENT")
    table.add_column("LEVEL")
    table.add_column("DETAIL", overflow="fold")
    for result in report.results:
        style = _OUTCOME_STYLE[result.outcome]
        table.add_row(
            f"[{style}]{result.outcome}[/]",
            result.section,
            result.id,
            result.level,
            _escape(result.detail),
        )
    out.print(table)
    colour = "green" if report.ok else "red"
    out.print(
        f"[bold {colour}]{len(report.results)} requirements: {report.passed} passed, "
        f"{report.failed} failed, {report.skipped} skipped[/] in {report.seconds:.1f} s"
    )


def conformance_markdown(report: Report) -> str:
    """The report as a Markdown table (what docs/conformance.md embeds)."""
    runtime = report.runtime
    lines = [
        f"Runtime: **{runtime.get('name', '?')} {runtime.get('version', '')}** — dialect: "
        f"**{report.dialect}** — {report.passed} passed, {report.failed} failed, "
        f"{report.skipped} skipped.",
        "",
        "| result | § | requirement | level | detail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in report.results:
        detail = result.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {result.outcome} | {result.section} | `{result.id}` | {result.level} | {detail} |"
        )
    if report.dialect_notes:
        lines += ["", "Dialect observed:", ""]
        lines += [f"- {n.item}: {n.observed} ({n.side})" for n in report.dialect_notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``arcp-trio serve``: host agents over WebSocket (or ``--stdio``).

Three steps, so a new flag touches one place each:

1. ``add_parser`` declares the flags, in groups.
2. ``prepare`` turns them into what the runtime takes (the agent registry, the TLS
   context, the authenticator), before Trio starts: anything wrong is a usage error
   (exit 2) with argparse's message.
3. ``serve`` runs under ``trio.run``: the runtime (``runtime_config``, ``open_store``),
   the listener (``listen``) and the shutdown trigger (``stop_on_signal``).

The ``READY ws://HOST:PORT/arcp`` line on stdout is a contract: exactly one line,
printed once the listener is bound (other tools wait for it). Logs go to stderr.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import secrets
import signal
import ssl
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..demo_agents import demo_registry
from ..runtime.agents import AgentRegistry
from ..runtime.config import LeaseExpiry, RuntimeConfig
from ..runtime.credentials import InProcessProvisioner
from ..runtime.runtime import Runtime, open_runtime
from ..runtime.serve import serve_websocket
from ..store import MemoryStore, SQLiteStore, Store
from ..transport.origin import OriginPolicy
from ..transport.stdio import open_stdio_transport
from ..wire.errors import InternalError
from . import argtypes
from .errors import EXIT_NO_SESSION, EXIT_OK

if TYPE_CHECKING:
    import argparse

    from ..runtime.auth import Authenticator
    from .argtypes import Commands

__all__ = ["ServePlan", "add_parser", "default_db", "prepare", "run", "serve"]

log = logging.getLogger("arcp_trio.cli")


def default_db() -> Path:
    """``$XDG_DATA_HOME/arcp-trio/runtime.sqlite3`` (``~/.local/share`` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "arcp-trio" / "runtime.sqlite3"


# == 1. the flags ==========================================================================


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve",
        help="host the demo agents",
        description="Host the demo agents over WebSocket (or --stdio).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one")
    serve.add_argument(
        "--token",
        type=argtypes.token_principal,
        action="append",
        default=[],
        metavar="TOKEN=PRINCIPAL",
        help="accept bearer TOKEN as PRINCIPAL (repeatable; default: a random token, "
        "printed on stderr)",
    )
    serve.add_argument(
        "--heartbeat-sec", type=argtypes.positive_int, default=30, help="heartbeat interval (§6.4)"
    )
    serve.add_argument(
        "--resume-window-sec",
        type=argtypes.positive_int,
        default=600,
        help="resume window (§6.3)",
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
    _add_jwt_flags(serve)
    serve.add_argument(
        "--no-reactor",
        action="store_true",
        help="each connection reads its own socket (the portable path macOS and Windows "
        "run) instead of one epoll reactor reading them all (Linux)",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser Origin (scheme://host[:port], or '*') allowed to connect; repeatable "
        "(default: requests without an Origin only; see docs/deploy.md)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz over HTTP on this port (0 picks one)",
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address for --metrics-port (default 127.0.0.1)",
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
        help=f"SQLite file for jobs, sessions and event buffers (default: {default_db()})",
    )
    storage.add_argument(
        "--memory", action="store_true", help="keep nothing on disk (a restart forgets all)"
    )
    serve.add_argument(
        "--redis",
        default=os.environ.get("ARCP_REDIS_URL") or None,
        metavar="URL",
        help="join the cluster on this Redis (redis://host:port/db; env ARCP_REDIS_URL): "
        "every node on it is one runtime; needs the 'redis' extra (docs/cluster.md)",
    )
    serve.add_argument(
        "--node-id",
        default=os.environ.get("ARCP_NODE_ID") or None,
        metavar="NAME",
        help="this node's name in the cluster (env ARCP_NODE_ID; default: host, pid "
        "and a random suffix)",
    )
    serve.add_argument(
        "--node-lease-sec",
        type=float,
        default=3.0,
        metavar="SEC",
        help="with --redis: a node silent this long is dead and its jobs are ended by "
        "the others (default 3; noticed within this plus 1 s)",
    )
    serve.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    serve.add_argument(
        "--agents",
        metavar="MODULE:ATTR",
        default=None,
        help="host your own agents instead of the demo ones: ATTR of MODULE is an "
        "AgentRegistry, or a function returning one (e.g. myapp.agents:registry)",
    )
    return serve


def _add_jwt_flags(serve: argparse.ArgumentParser) -> None:
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


# == 2. the flags, checked =================================================================


@attrs.frozen
class ServePlan:
    """What ``prepare`` made of the flags; ``serve`` takes it with the namespace."""

    registry: AgentRegistry
    ssl_context: ssl.SSLContext | None
    authenticator: Authenticator | None
    allow_origins: OriginPolicy | None = None
    cluster: Any = None


def prepare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ServePlan:
    """Everything that can be checked before Trio starts; ``parser.error`` (exit 2)
    on anything wrong."""
    return ServePlan(
        cluster=cluster_settings(parser, args),
        registry=load_agents(parser, args.agents) if args.agents else demo_registry(),
        ssl_context=server_ssl_context(parser, args),
        authenticator=jwt_authenticator(parser, args),
        allow_origins=origin_policy(parser, args),
    )


def cluster_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """``--redis``/``--node-id`` as ``ClusterSettings`` (None: a single process)."""
    if not args.redis:
        if args.node_id:
            parser.error("serve: --node-id needs --redis (or ARCP_REDIS_URL)")
        return None
    if args.db or args.memory:
        parser.error("serve: --redis keeps the state in Redis: not with --db or --memory")
    if args.demo_credentials:
        parser.error("serve: --demo-credentials needs the SQLite ledger, not --redis")
    try:
        from ..cluster.shared import ClusterSettings
    except ImportError:
        parser.error("serve: --redis needs the 'redis' extra: pip install 'arcp-trio[redis]'")
    options: dict[str, Any] = {"lease_sec": args.node_lease_sec}
    if args.node_id:
        options["node_id"] = args.node_id
    options["janitor_sec"] = min(1.0, args.node_lease_sec / 3)
    try:
        return ClusterSettings(**options)
    except ValueError as exc:
        parser.error(f"serve: {exc}")


def origin_policy(parser: argparse.ArgumentParser, args: argparse.Namespace) -> OriginPolicy | None:
    """``--allow-origin`` as a policy (None: the default, no browser Origin)."""
    if not args.allow_origin:
        return None
    try:
        return OriginPolicy(args.allow_origin)
    except ValueError as exc:
        parser.error(f"serve: --allow-origin: {exc}")


def load_agents(parser: argparse.ArgumentParser, spec: str) -> AgentRegistry:
    """``--agents MODULE:ATTR``: an ``AgentRegistry``, or a function returning one."""
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


def server_ssl_context(
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


def jwt_authenticator(
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
        from ..runtime.jwt_auth import JWKSKeys, JWTAuth, StaticKeys
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


# == 3. serving ============================================================================


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command: configure logging, check the flags, serve until told to stop."""
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    plan = prepare(parser, args)
    try:
        trio.run(serve, args, plan)
    except InternalError as exc:
        # A store that cannot open, or a Redis that does not answer (--redis).
        print(f"arcp-trio: refusing to start: {exc.message}", file=sys.stderr)
        return EXIT_NO_SESSION
    return EXIT_OK


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(
        heartbeat_interval_sec=args.heartbeat_sec,
        resume_window_sec=args.resume_window_sec,
        shutdown_grace_sec=args.shutdown_grace_sec,
        lease_expiry=LeaseExpiry(args.lease_expiry),
    )


def open_store(args: argparse.Namespace) -> Store:
    return MemoryStore() if args.memory else SQLiteStore(args.db or default_db())


def accepted_tokens(args: argparse.Namespace, plan: ServePlan) -> dict[str, str]:
    """``--token`` pairs; with neither tokens nor JWTs, one random token (on stderr)."""
    tokens = dict(args.token)
    if not tokens and plan.authenticator is None:
        generated = secrets.token_urlsafe(24)
        tokens = {generated: "local"}
        print(f"no --token given; accepting bearer token {generated} as 'local'", file=sys.stderr)
    return tokens


async def serve(args: argparse.Namespace, plan: ServePlan) -> None:
    """Run the runtime and its listener until a signal or ``--max-seconds``."""
    if plan.cluster is not None:
        await serve_cluster_node(args, plan)
        return
    store = open_store(args)
    provisioner = InProcessProvisioner() if args.demo_credentials else None
    if provisioner is not None and not store.durable:
        log.warning("--demo-credentials needs the SQLite ledger: not advertised with --memory")
    async with (
        open_runtime(
            agents=plan.registry,
            tokens=accepted_tokens(args, plan),
            authenticator=plan.authenticator,
            config=runtime_config(args),
            store=store,
            provisioner=provisioner,
        ) as runtime,
        trio.open_nursery() as nursery,
    ):
        await listen(args, plan, runtime, nursery)
        nursery.start_soon(stop_on_signal, runtime, nursery.cancel_scope, args.max_seconds)


async def serve_cluster_node(args: argparse.Namespace, plan: ServePlan) -> None:
    """``serve --redis``: a node of the cluster on that Redis (docs/cluster.md)."""
    from ..cluster.runtime import open_cluster_runtime

    log.info("joining the cluster redis=%s node=%s", args.redis, plan.cluster.node_id)
    async with (
        open_cluster_runtime(
            args.redis,
            settings=plan.cluster,
            agents=plan.registry,
            tokens=accepted_tokens(args, plan),
            authenticator=plan.authenticator,
            config=runtime_config(args),
        ) as runtime,
        trio.open_nursery() as nursery,
    ):
        await listen(args, plan, runtime, nursery)
        nursery.start_soon(stop_on_signal, runtime, nursery.cancel_scope, args.max_seconds)


async def listen(
    args: argparse.Namespace, plan: ServePlan, runtime: Runtime, nursery: trio.Nursery
) -> None:
    """Start the listener in ``nursery``; for WebSocket, print the READY line once bound."""
    if args.stdio:
        nursery.start_soon(serve_stdio, runtime, nursery.cancel_scope)
        return
    if args.metrics_port is not None:
        from ..runtime.metrics import serve_metrics

        metrics = await nursery.start(serve_metrics, runtime, args.metrics_host, args.metrics_port)
        print(f"metrics on {metrics.url}/metrics", file=sys.stderr, flush=True)
    info = await nursery.start(
        partial(
            serve_websocket,
            use_reactor=not args.no_reactor,
            ssl_context=plan.ssl_context,
            allow_origins=plan.allow_origins,
        ),
        runtime,
        args.host,
        args.port,
    )
    print(f"READY {info.url}", flush=True)


async def serve_stdio(runtime: Runtime, scope: trio.CancelScope) -> None:
    """One session on stdin/stdout (§4); its end is the runtime's end."""
    transport = open_stdio_transport(max_message_size=runtime.config.max_message_size)
    await runtime.handle_transport(transport)
    await runtime.shutdown()
    scope.cancel()


async def stop_on_signal(
    runtime: Runtime, scope: trio.CancelScope, max_seconds: float | None
) -> None:
    """Shut down on SIGINT/SIGTERM or after ``max_seconds``, then end ``scope``."""
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        trio.move_on_after(max_seconds if max_seconds is not None else math.inf),
    ):
        async for signum in signals:
            log.info("received signal %s, shutting down", signal.Signals(signum).name)
            break
    await runtime.shutdown()
    scope.cancel()

"""The ``arcp-trio`` command. The only package that configures logging.

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
output on stdout. Progress, logs and connection status go to stderr. They use the
public client (``arcp_trio.client``) and nothing else.

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

The modules: ``parser`` (the top-level parser; each command's module declares its own
flags), ``argtypes`` (flag value types), ``serve``, ``submit`` (submit and watch),
``follow`` (rendering a job), ``jobs``, ``cancel``, ``conformance``, ``state`` (the
saved sessions ``cancel`` resumes), ``session`` (``open_client`` with the commands'
error mapping), ``errors`` (exit codes) and ``output`` (stdout/stderr consoles).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from . import cancel, conformance, jobs, serve, submit
from .conformance import conformance_markdown as conformance_markdown
from .errors import EXIT_INTERRUPTED, CommandError, unwrap
from .output import configure_client_logging, escape, stderr
from .parser import build_parser

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["conformance_markdown", "main"]

#: The client commands: each runs under ``trio.run`` and returns its exit code.
COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "submit": submit.run_submit,
    "watch": submit.run_watch,
    "jobs": jobs.run,
    "cancel": cancel.run,
    "conformance": conformance.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``arcp-trio``'s entry point: the exit code (argparse exits 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve.run(parser, args)
    configure_client_logging(args.log_level)
    if args.command == "conformance" and args.list:
        return conformance.list_requirements(args)
    if not args.token:
        parser.error(f"{args.command}: --token (or $ARCP_TOKEN) is required")
    if args.command == "submit" and args.out is not None and not args.follow:
        parser.error("submit: --out needs --follow")
    try:
        code: int = trio.run(COMMANDS[args.command], args)
    except BaseException as exc:
        error = unwrap(exc)
        if isinstance(error, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if not isinstance(error, CommandError):
            raise
        stderr().print(f"[bold red]error:[/] {escape(str(error))}")
        return error.code
    return code

"""``arcp-trio submit`` (and ``--follow``) and ``arcp-trio watch``.

``submit`` submits one job (§7.1) and saves the submitting session's resume ticket
for ``cancel`` (``state``);
with ``--follow`` it renders the job to its end (``follow.Follower``). ``watch``
subscribes from a new session with the job's history (§7.6) and renders it the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..wire.errors import ARCPError
from . import argtypes, state
from .errors import EXIT_OK, command_error
from .follow import Follower
from .output import escape, print_json, stderr
from .session import client_session

if TYPE_CHECKING:
    import argparse

    from ..client import Client
    from .argtypes import Commands

__all__ = ["add_parsers", "run_submit", "run_watch"]

log = logging.getLogger("arcp_trio.cli")


def add_parsers(commands: Commands, client: argparse.ArgumentParser) -> None:
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
        type=argtypes.json_input,
        default=None,
        metavar="JSON|@FILE",
        help="the job's input: JSON, @file, or @- for stdin",
    )
    submit.add_argument(
        "--lease",
        type=argtypes.lease,
        action="append",
        default=[],
        metavar="NS=PATTERN[,...]",
        help="lease grant, repeatable (e.g. fs.read=/data/**, cost.budget=USD:1.00), or a "
        "JSON object",
    )
    submit.add_argument(
        "--expires-at",
        type=argtypes.expires_at,
        default=None,
        metavar="TIME|+DURATION",
        help="lease expiry (§9.5): ISO 8601 UTC, or +90s / +5m / +2h from now",
    )
    submit.add_argument(
        "--max-runtime",
        type=argtypes.positive_int,
        default=None,
        metavar="SEC",
        help="max_runtime_sec",
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


async def run_submit(args: argparse.Namespace) -> int:
    lease: dict[str, list[str]] = {}
    for grant in args.lease:
        for namespace, patterns in grant.items():
            lease.setdefault(namespace, []).extend(patterns)
    constraints = {"expires_at": args.expires_at} if args.expires_at else None
    client: Client | None = None
    job_id: str | None = None
    try:
        async with client_session(args.url, args.token) as client:
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
                raise command_error(exc) from None
            job_id = handle.job_id
            _save(job_id, client)  # at once: whatever happens next, cancel can resume it
            if not args.follow:
                if args.json:
                    print_json({"job_id": job_id, "accepted": handle.accepted})
                else:
                    print(job_id)
                    stderr().print(
                        f"[dim]accepted as {escape(handle.agent)}; follow it with "
                        f"`arcp-trio watch {job_id}`[/]"
                    )
                return EXIT_OK
            return await Follower(args, client, job_id, handle.agent).run(handle)
    finally:
        if client is not None and job_id is not None:
            # After the close: the final position, and whether the job is still open.
            _save(job_id, client)


def _save(job_id: str, client: Client) -> None:
    """Keep the session's ticket for ``cancel`` (§7.4); a lost session has none."""
    try:
        ticket = client.resume_ticket()
    except ARCPError as exc:
        log.info("no session to save for %s: %s", job_id, exc)
        return
    state.remember(job_id, ticket)


async def run_watch(args: argparse.Namespace) -> int:
    async with client_session(args.url, args.token) as client:
        try:
            async with client.subscribe(
                args.job_id,
                history=not args.no_history,
                from_event_seq=args.from_seq,
            ) as subscription:
                agent = str(subscription.subscribed.get("agent") or "")
                return await Follower(args, client, args.job_id, agent).run(subscription)
        except ARCPError as exc:
            raise command_error(exc) from None

"""``arcp-trio cancel``: cancel a job (§7.4) with the authority of the session that submitted it.

Only the submitting session may cancel (§7.4; a subscription carries no authority,
§7.7). So for a job that ``submit`` saved a resume ticket for (``state``), the command
resumes that session with ``open_client(resume=ticket)`` (§6.3) and cancels through
the job's handle (``client.job(job_id)``). The handle exists before the resume's
replay, so a job that ended while nobody was attached says how it ended. For any other
job, or when the ticket is stale, a new session asks, and a runtime that keeps the
rule (arcp_trio) refuses it with ``PERMISSION_DENIED`` (exit 4).

The outcomes: ``cancelled`` (acknowledged by ``job.cancelled``, or a ``cancelled``
terminal), ``already ended`` (exit 0 for both), or ``cancel sent, not confirmed`` when
nothing came within ``--wait`` seconds (exit 1). A runtime that lets every session of
the principal cancel (the reference SDK) tells only the submitting connection, so a new
session's cancel on it ends that way; ``arcp-trio jobs`` shows the status.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..transport.base import TransportError
from ..wire.errors import ARCPError, Cancelled, ErrorCode
from . import argtypes, state
from .errors import EXIT_JOB_FAILED, EXIT_OK, command_error
from .output import print_json, stderr
from .session import StaleTicket, client_session

if TYPE_CHECKING:
    import argparse

    from ..client import JobHandle, ResumeTicket
    from .argtypes import Commands

__all__ = ["add_parser", "run"]

log = logging.getLogger("arcp_trio.cli")


def add_parser(commands: Commands, client: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
        "--wait",
        type=argtypes.positive_float,
        default=5.0,
        help="seconds to wait for confirmation",
    )
    return cancel


async def run(args: argparse.Namespace) -> int:
    outcome: str | None = None
    ticket = state.saved_ticket(args.job_id, args.url)
    if ticket is not None:
        if args.job_id not in ticket.job_ids:
            # The submitting session received the job's terminal before it was saved.
            outcome = ALREADY_ENDED
        else:
            outcome = await _cancel_as_submitter(args, ticket)
    if outcome is None:
        outcome = await _cancel_from_new_session(args)
    confirmed = outcome in (CANCELLED, ALREADY_ENDED)
    if args.json:
        print_json({"job_id": args.job_id, "outcome": outcome})
    elif confirmed:
        stderr().print(f"[bold]{args.job_id}[/] {outcome}")
    else:
        stderr().print(f"[yellow]{args.job_id}: {outcome}[/]")
    return EXIT_OK if confirmed else EXIT_JOB_FAILED


CANCELLED = "cancelled"
ALREADY_ENDED = "already ended"


def _unconfirmed(args: argparse.Namespace) -> str:
    return f"cancel sent, not confirmed within {args.wait:g} s"


async def _cancel_as_submitter(args: argparse.Namespace, ticket: ResumeTicket) -> str | None:
    """Resume the session that submitted the job and cancel from it; None: it is gone."""
    outcome: str | None = None
    try:
        async with client_session(args.url, args.token, resume=ticket) as client:
            outcome = await _cancel_held(client.job(args.job_id), args)
    except* StaleTicket as group:
        log.info("cannot resume the submitting session: %s", group.exceptions[0])
    if outcome is None:
        return None
    try:
        state.remember(args.job_id, client.resume_ticket())  # the token rotated (§6.3)
    except ARCPError as exc:
        log.info("no session to save for %s: %s", args.job_id, exc)
    return outcome


async def _cancel_held(handle: JobHandle, args: argparse.Namespace) -> str:
    """Cancel through the job's own handle; wait (``--wait``) for the ack, then the terminal."""
    acknowledged = False
    with trio.move_on_after(args.wait):
        try:
            await handle.cancel(args.reason)  # job.cancelled, or the terminal
            acknowledged = True
            await handle.result()
        except Cancelled:
            return CANCELLED
        except ARCPError as exc:
            if not acknowledged:
                raise command_error(exc, prefix="cancel refused") from None
            if _session_lost(exc):
                raise command_error(exc) from None
        # A terminal that is not a cancel: the job ended before the cancel took.
        return ALREADY_ENDED
    return CANCELLED if acknowledged else _unconfirmed(args)


def _session_lost(exc: ARCPError) -> bool:
    """Raised by the handle because the session ended, not because the job did."""
    lost = (ErrorCode.RESUME_WINDOW_EXPIRED, ErrorCode.UNAUTHENTICATED)
    return isinstance(exc, TransportError) or exc.code in lost


async def _cancel_from_new_session(args: argparse.Namespace) -> str:
    """No session to resume: ask from a new one (refused where §7.4 is kept)."""
    async with client_session(args.url, args.token) as client:
        with trio.move_on_after(args.wait):
            try:
                await client.cancel(args.job_id, args.reason)
            except ARCPError as exc:
                raise command_error(exc, prefix="cancel refused") from None
            return CANCELLED
    return _unconfirmed(args)

"""``arcp-trio jobs``: this principal's jobs (§6.6), a page (or every page) at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..wire.errors import ARCPError
from . import argtypes
from .errors import EXIT_OK, command_error
from .output import escape, print_json, stderr, stdout
from .session import client_session

if TYPE_CHECKING:
    import argparse

    from .argtypes import Commands

__all__ = ["add_parser", "run"]


def add_parser(commands: Commands, client: argparse.ArgumentParser) -> argparse.ArgumentParser:
    jobs = commands.add_parser(
        "jobs",
        parents=[client],
        help="list jobs",
        description="List this principal's jobs (§6.6), one page at a time.",
    )
    jobs.add_argument(
        "--status",
        type=argtypes.statuses,
        action="append",
        default=[],
        metavar="S[,S...]",
        help="pending, running, success, error, cancelled, timed_out (repeatable)",
    )
    jobs.add_argument("--agent", default=None, help="exact name@version")
    jobs.add_argument(
        "--created-after",
        type=argtypes.expires_at,
        default=None,
        metavar="TIME",
        help="ISO 8601 UTC",
    )
    jobs.add_argument(
        "--limit", type=argtypes.positive_int, default=20, help="page size (default 20)"
    )
    jobs.add_argument("--cursor", default=None, help="continue from a previous page")
    jobs.add_argument("--all", action="store_true", help="fetch every page")
    return jobs


async def run(args: argparse.Namespace) -> int:
    statuses = [s for group in args.status for s in group] or None
    async with client_session(args.url, args.token) as client:
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
                raise command_error(exc) from None
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
        print_json({"jobs": rows, "next_cursor": cursor})
        return EXIT_OK
    _print_table(rows, cursor)
    return EXIT_OK


_STATUS_STYLE = {
    "success": "green",
    "running": "cyan",
    "pending": "blue",
    "error": "red",
    "cancelled": "yellow",
    "timed_out": "yellow",
}


def _print_table(rows: list[dict[str, Any]], cursor: str | None) -> None:
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
            escape(str(row["agent"])),
            f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]",
            str(row["submitted_at"] or ""),
            "" if row["last_event_seq"] is None else str(row["last_event_seq"]),
        )
    out = stdout()
    if rows:
        out.print(table)
    else:
        out.print("no jobs")
    if cursor:
        stderr().print(f"[dim]more: arcp-trio jobs --cursor {cursor}  (or --all)[/]")

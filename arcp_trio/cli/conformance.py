"""``arcp-trio conformance``: check a runtime against the spec, requirement by requirement.

The checker itself is ``arcp_trio.conformance`` (raw frames, never this package's
client); this module is its command: flags, a progress bar, and the report as a
table, JSON or Markdown (``conformance_markdown``, what docs/conformance.md embeds).
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

from ..conformance import REQUIREMENTS, CheckResult, Outcome, Report, run_conformance
from . import argtypes
from .errors import EXIT_JOB_FAILED, EXIT_NO_SESSION, EXIT_OK
from .output import escape, print_json, stderr, stdout

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from rich.progress import Progress

    from .argtypes import Commands

__all__ = ["add_parser", "conformance_markdown", "list_requirements", "run"]


def add_parser(commands: Commands, client: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
        "--wait", type=argtypes.positive_float, default=5.0, help="seconds to wait for the runtime"
    )
    conformance.add_argument(
        "--max-timing",
        type=argtypes.positive_float,
        default=5.0,
        metavar="SEC",
        help="longest heartbeat interval / resume window to sit out (else SKIP)",
    )
    conformance.add_argument(
        "--concurrency", type=argtypes.positive_int, default=4, help="checks run at once"
    )
    conformance.add_argument(
        "--format",
        choices=["table", "json", "markdown"],
        default=None,
        help="report format (default table; --json is --format json)",
    )
    conformance.add_argument("--list", action="store_true", help="list the requirements and exit")
    return conformance


def list_requirements(args: argparse.Namespace) -> int:
    """``--list``: the requirement table (no runtime needed)."""
    if args.json:
        print_json(
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
        table.add_row(r.section, r.id, r.level, escape(r.title))
    stdout().print(table)
    return EXIT_OK


async def run(args: argparse.Namespace) -> int:
    url = args.target or args.url
    fmt = args.format or ("json" if args.json else "table")
    only = [part for group in args.only for part in group.split(",") if part.strip()]
    err = stderr()
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
        report = await run_conformance(
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
        print_json(report.to_json())
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

    out = stdout()
    runtime = report.runtime
    out.print(
        f"[bold]ARCP conformance[/] {escape(report.url)}  runtime "
        f"[bold]{escape(str(runtime.get('name', '?')))}[/] "
        f"{escape(str(runtime.get('version', '')))}"
    )
    if report.fatal is not None:
        out.print(f"[bold red]cannot check:[/] {escape(report.fatal)}")
        return
    out.print(f"dialect: [bold]{escape(report.dialect)}[/]")
    for note in report.dialect_notes:
        out.print(f"  {escape(note.item)}: {escape(note.observed)} [dim]({note.side})[/]")
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
            escape(result.detail),
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

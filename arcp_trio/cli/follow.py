"""Rendering one job as it runs: a progress bar (terminal), plain lines, or NDJSON.

``Follower.run`` reads a ``JobHandle`` or a ``Subscription`` to its end and returns
the command's exit code. The result goes to stdout (or ``--out``); progress, events
and connection status go to stderr. Ctrl-C detaches (exit 130): the job keeps running.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import sys
from typing import IO, TYPE_CHECKING, Any

import trio

from ..transport.base import TransportError
from ..wire.errors import ARCPError
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_NO_SESSION,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
)
from .output import escape, print_json, stderr

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from rich.progress import Progress, TaskID

    from ..client import Client, Event, JobHandle, JobOutcome, Subscription

__all__ = ["Follower"]


class Follower:
    """Renders one job's events: a progress bar (terminal), plain lines, or NDJSON."""

    def __init__(self, args: argparse.Namespace, client: Client, job_id: str, agent: str) -> None:
        self.client = client
        self.job_id = job_id
        self.agent = agent
        self.json = bool(args.json)
        self.err = stderr()
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
            self._line(f"[bold]{self.job_id}[/] {escape(self.agent)}")
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
        """The client's reconnects as a status line, never an error (and the spinner)."""
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
            print_json({"type": "connection", "state": state, "message": text})
            return
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, link="" if state == "connected" else "reconnecting…")
        self.err.print(f"[yellow]⟳ {escape(text)}[/]")

    def _line(self, markup: str) -> None:
        if self.json:
            return
        self.err.print(markup)

    def _on_event(self, event: Event) -> None:
        self._check_connection()  # a resume's replay comes after its status line
        body = event.body if isinstance(event.body, dict) else {"value": event.body}
        if self.json:
            print_json(
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
        self._line(describe(event.kind, body))

    def _on_progress(self, body: dict[str, Any]) -> None:
        current = body.get("current")
        total = body.get("total")
        units = str(body.get("units") or "")
        message = str(body.get("message") or "")
        count = number(current) + (f"/{number(total)}" if total is not None else "")
        if self.progress is not None and self.task is not None:
            self.progress.update(
                self.task,
                completed=float(current) if isinstance(current, int | float) else 0,
                total=float(total) if isinstance(total, int | float) else None,
                count=count,
                units=units,
                note=escape(message),
            )
            self.progress.refresh()
        elif not self.json:
            note = f" {message}" if message else ""
            self.err.print(f"progress {count} {escape(units)}{escape(note)}".rstrip())

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
                print_json({"type": "detached", "job_id": self.job_id})
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
                print_json(
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
                    f"{error.code}: {escape(error.message)}"
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
            print_json(line)
            if self.out_path is not None and self._sink is not None and not outcome.result_id:
                self._sink.write(result_bytes(result))
            return
        if outcome.result_id:
            if self._held:
                sys.stdout.buffer.write(bytes(self._held))
                if not self._held.endswith(b"\n"):
                    sys.stdout.buffer.write(b"\n")
                sys.stdout.buffer.flush()
            return
        data = result_bytes(result)
        if self._sink is not None:
            self._sink.write(data)
            self._sink.flush()
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()


def result_bytes(result: Any) -> bytes:
    """An inline result as output: text as is, anything else as indented JSON."""
    if isinstance(result, bytes):
        return result
    text = result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False)
    return (text if text.endswith("\n") else text + "\n").encode()


def number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if value is not None else "?"


def describe(kind: str, body: dict[str, Any]) -> str:
    """One line of markup for an event above the progress bar."""
    if kind == "log":
        level = str(body.get("level", "info")).upper()
        colour = {"ERROR": "red", "WARN": "yellow", "WARNING": "yellow", "DEBUG": "dim"}.get(
            level, "cyan"
        )
        return f"[{colour}]{level:5}[/] {escape(str(body.get('message', '')))}"
    if kind == "status":
        message = f" {body['message']}" if body.get("message") else ""
        return f"[magenta]status[/] {escape(str(body.get('phase')))}{escape(message)}"
    if kind == "thought":
        return f"[dim italic]thought {escape(str(body.get('text', '')))}[/]"
    if kind == "metric":
        unit = f" {body['unit']}" if body.get("unit") else ""
        return f"[blue]metric[/] {escape(str(body.get('name')))} = {body.get('value')}{unit}"
    return f"[blue]{escape(kind)}[/] {escape(json.dumps(body, ensure_ascii=False))}"

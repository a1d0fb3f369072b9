"""Nothing acknowledged is lost when ``arcp-trio serve`` is killed with SIGKILL.

A real process with a real SQLite file, a real WebSocket: a client submits, reads a
few events and acknowledges some; the process is killed mid-job and restarted on the
same file; the client resumes its session. Every event after its ``last_event_seq``
that the runtime had written is replayed once, in order, then the interrupted job's
restart terminal; idempotency and listings hold; nothing is duplicated.

Rules: real subprocesses and sockets on 127.0.0.1, the real clock, every wait
under ``trio.fail_after``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import trio

from arcp_trio.transport.websocket import connect_websocket
from tests.helpers import Peer

if TYPE_CHECKING:
    from pathlib import Path


async def start(db: Path) -> tuple[trio.Process, str]:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "arcp_trio",
            "serve",
            "--port",
            "0",
            "--db",
            str(db),
            "--token",
            "t1=alice",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        assert chunk, "serve exited before READY"
        line += chunk
    return process, line.decode().split()[1]


async def test_sigkill_mid_job_then_resume(tmp_path: Path) -> None:
    db = tmp_path / "runtime.sqlite3"
    with trio.fail_after(60):
        process, url = await start(db)
        try:
            peer = Peer(await connect_websocket(url))
            await peer.hello(token="t1")
            done = await peer.submit("echo", {"n": 1}, idempotency_key="first")
            await peer.recv_terminal(done["job_id"])
            ticker = await peer.submit("ticker", {"count": 1000, "interval": 0.01})
            frames = await peer.recv_until(lambda f: f.get("event_seq") == 12)
            await peer.send("session.ack", {"last_processed_seq": 5})
            await trio.sleep(0.3)  # the job goes on emitting; the writer commits
            seen = peer.last_event_seq
            session_id, token = peer.session_id, peer.resume_token
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        await peer.transport.aclose()
        assert process.returncode == -signal.SIGKILL
        assert [f["event_seq"] for f in frames if "event_seq" in f][-1] == 12

        process, url = await start(db)
        try:
            again = Peer(await connect_websocket(url))
            again.last_event_seq = seen  # Peer asserts seq continuity frame by frame
            welcome = await again.hello(
                token="t1",
                resume={"session_id": session_id, "resume_token": token, "last_event_seq": seen},
            )
            assert welcome["type"] == "session.welcome", welcome
            assert welcome["session_id"] == session_id
            replay = await again.recv_terminal(ticker["job_id"])
            ticks = [
                f["payload"]["body"]["current"]
                for f in replay
                if f["type"] == "job.event" and f["payload"]["kind"] == "progress"
            ]
            # The events after `seen` that were written before the kill, in order and
            # once (the Peer checked their seqs continue from `seen`; the writer had
            # 0.3 s to commit them), then the terminal.
            assert len(ticks) > 0
            assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))
            assert replay[0]["event_seq"] == seen + 1
            terminal = replay[-1]
            assert terminal["type"] == "job.error"
            assert terminal["payload"]["code"] == "INTERNAL_ERROR"
            assert terminal["payload"]["retryable"] is True
            assert terminal["payload"]["message"] == "runtime restarted"
            # A resume below the acknowledged point was freed, and says so.
            late = Peer(await connect_websocket(url))
            refused = await late.hello(
                token="t1",
                resume={
                    "session_id": session_id,
                    "resume_token": welcome["payload"]["resume_token"],
                    "last_event_seq": 2,
                },
            )
            assert refused["payload"]["code"] == "RESUME_WINDOW_EXPIRED"
            # Idempotency held across the kill: same job, its terminal replayed.
            replayed = await again.submit("echo", {"n": 1}, idempotency_key="first")
            assert replayed["payload"]["job_id"] == done["job_id"]
            await again.recv_terminal(done["job_id"])
            await again.send("session.list_jobs", {})
            listing = await again.recv_type("session.jobs")
            statuses = {j["job_id"]: j["status"] for j in listing["payload"]["jobs"]}
            assert statuses == {done["job_id"]: "success", ticker["job_id"]: "error"}
            await again.transport.aclose()
            await late.transport.aclose()
        finally:
            process.send_signal(signal.SIGTERM)
            await process.wait()

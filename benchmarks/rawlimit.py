"""The "coalesced raw limit": about the fastest a Python server can push ARCP events.

Not a runtime: a stand-in that speaks just enough ARCP for the ``throughput``
workload (hello → welcome, ``job.submit`` → accepted, n ``job.event`` log frames,
``job.result``) with no sessions, jobs, buffers, agents or validation. Each event is
still a distinct, well-formed frame of the same shape and size as a runtime's (a
fresh envelope id, timestamp and ``event_seq``), but built the cheapest way there is:
a string template, a hand-made WebSocket header, and up to 1024 frames joined into one
``send_all`` on a Trio socket stream (wsproto only does the opening handshake). So its
events/s is a ceiling for a Python runtime on this machine and load generator, and
the throughput target ("≥ 30 % of the coalesced raw limit") is measured against it.

    python -m benchmarks.rawlimit --port 0   # prints READY ws://HOST:PORT/arcp
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import math
import random
import signal
import struct
import time
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

BATCH = 1024
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())


def ulid() -> str:
    value = (time.time_ns() // 1_000_000) << 80 | random.getrandbits(80)
    return (
        base64.b32encode((value << 30).to_bytes(20, "big"))[:26].translate(_TO_CROCKFORD).decode()
    )


def now_iso() -> str:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now.isoformat(timespec="microseconds") + "Z"


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def text_frame(text: str) -> bytes:
    """An unmasked, final text frame (server to client)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


async def handle(stream: trio.SocketStream) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    session_id = "sess_" + ulid()
    seq = 0

    async def send(texts: list[str]) -> None:
        await stream.send_all(b"".join(ws.send(TextMessage(data=t)) for t in texts))

    async def run_job(env: dict[str, Any]) -> None:
        nonlocal seq
        job_id = "job_" + ulid()
        payload = env.get("payload", {})
        n = int((payload.get("input") or {}).get("n", 100))
        await send(
            [
                dumps(
                    {
                        "arcp": "1.1",
                        "id": ulid(),
                        "type": "job.accepted",
                        "session_id": session_id,
                        "job_id": job_id,
                        "payload": {
                            "job_id": job_id,
                            "agent": "chatty@1.0.0",
                            "accepted_at": now_iso(),
                            "lease": {},
                            "request_id": env["id"],
                        },
                    }
                )
            ]
        )
        head = '{"arcp":"1.1","id":"'
        mid = f'","type":"job.event","session_id":"{session_id}","job_id":"{job_id}","event_seq":'
        batch: list[bytes] = []
        for i in range(n):
            seq += 1
            batch.append(
                text_frame(
                    f'{head}{ulid()}{mid}{seq},"payload":{{"kind":"log","ts":"{now_iso()}",'
                    f'"body":{{"level":"info","message":"line {i}"}}}}}}'
                )
            )
            if len(batch) >= BATCH:
                await stream.send_all(b"".join(batch))
                batch = []
        seq += 1
        batch.append(
            text_frame(
                dumps(
                    {
                        "arcp": "1.1",
                        "id": ulid(),
                        "type": "job.result",
                        "session_id": session_id,
                        "job_id": job_id,
                        "event_seq": seq,
                        "payload": {
                            "final_status": "success",
                            "completed_at": now_iso(),
                            "result": {"n": n},
                        },
                    }
                )
            )
        )
        await stream.send_all(b"".join(batch))

    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(ws.send(event.response()))
                    return
                elif isinstance(event, TextMessage | BytesMessage):
                    text = event.data if isinstance(event.data, str) else event.data.decode()
                    env = json.loads(text)
                    if env.get("type") == "session.hello":
                        await send(
                            [
                                dumps(
                                    {
                                        "arcp": "1.1",
                                        "id": ulid(),
                                        "type": "session.welcome",
                                        "session_id": session_id,
                                        "payload": {
                                            "runtime": {"name": "rawlimit", "version": "0"},
                                            "session_id": session_id,
                                            "resume_token": "rtk_" + ulid(),
                                            "resume_window_sec": 600,
                                            "capabilities": {
                                                "encodings": ["json"],
                                                "features": [],
                                                "agents": [],
                                            },
                                            "accepted_at": now_iso(),
                                        },
                                    }
                                )
                            ]
                        )
                    elif env.get("type") == "job.submit":
                        await run_job(env)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


async def serve(host: str, port: int, max_seconds: float | None) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    real_port = listeners[0].socket.getsockname()[1]
    print(f"READY ws://{host}:{real_port}/arcp", flush=True)
    with trio.move_on_after(max_seconds if max_seconds is not None else math.inf):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()


def main() -> int:
    p = argparse.ArgumentParser(description="coalesced raw-limit ARCP event source")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token", action="append", default=[], help="accepted and ignored")
    p.add_argument("--max-seconds", type=float, default=None)
    args = p.parse_args()
    trio.run(serve, args.host, args.port, args.max_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""NDJSON stream transport: framing details, coalescing, cancellation, real stdio.

Rules: byte-level tests drive one side by hand over ``trio.testing`` memory streams;
timeout tests use the autojump clock; the stdio test runs a child process under a
``fail_after`` guard on the real clock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from arcp_trio.transport.base import MessageRefused, MessageTooLarge, TransportBroken
from arcp_trio.transport.stdio import StreamTransport
from tests.transport.streams import InstrumentedStream, assert_aclose_bounded_by_a_stuck_write

REPO_ROOT = Path(__file__).resolve().parents[2]
GUARD = 10


def transport_and_raw(
    max_message_size: int = 1 << 20, close_timeout: float = 2.0
) -> tuple[StreamTransport, trio.abc.Stream, InstrumentedStream]:
    """Our transport on one end of a memory stream pair, raw bytes on the other."""
    ours, raw = trio.testing.memory_stream_pair()
    instrumented = InstrumentedStream(ours)
    transport = StreamTransport(
        instrumented,
        instrumented,
        max_message_size=max_message_size,
        close_timeout=close_timeout,
    )
    return transport, raw, instrumented


async def read_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk
        data += chunk
    return data


@pytest.mark.parametrize("bad", ["", '{"a":\n1}', "trailing\n"])
async def test_unframeable_messages_are_refused(bad: str) -> None:
    transport, raw, stream = transport_and_raw()
    with pytest.raises(ValueError, match="newline"):
        await transport.send_message(bad)
    with pytest.raises(ValueError):
        await transport.send_messages(["fine", bad])
    assert stream.send_all_calls == 0  # nothing of the batch went out
    await transport.send_message("ok")
    assert await read_exactly(raw, 3) == b"ok\n"
    await transport.aclose()
    await raw.aclose()


async def test_blank_lines_and_crlf() -> None:
    with trio.fail_after(GUARD):
        transport, raw, _ = transport_and_raw()
        await raw.send_all(b'\n\n{"a":1}\r\n  \r\n\t\n{"b":2}\n\r\n')
        assert await transport.receive_message() == '{"a":1}'
        assert await transport.receive_message() == '{"b":2}'
        await transport.aclose()
        await raw.aclose()


async def test_invalid_utf8_is_refused_with_its_readable_start() -> None:
    """Fail closed: U+FFFD is valid JSON, so a replaced byte would be taken as text
    the peer never sent. The line is refused (its start kept for the answer's id) and
    the next one is read as usual."""
    transport, raw, _ = transport_and_raw()
    await raw.send_all(b'{"id":"x","a":"\xff"}\n{"next":1}\n')
    with pytest.raises(MessageRefused) as caught:
        await transport.receive_message()
    assert caught.value.prefix == '{"id":"x","a":"'
    assert not caught.value.fatal
    assert await transport.receive_message() == '{"next":1}'
    await transport.aclose()
    await raw.aclose()


async def test_line_split_across_reads() -> None:
    with trio.fail_after(GUARD):
        transport, raw, _ = transport_and_raw()
        async with trio.open_nursery() as nursery:

            async def dribble() -> None:
                for byte in b'{"slow":true}\n{"next":1}\n':
                    await raw.send_all(bytes([byte]))
                    await trio.testing.wait_all_tasks_blocked()

            nursery.start_soon(dribble)
            assert await transport.receive_message() == '{"slow":true}'
            assert await transport.receive_message() == '{"next":1}'
        await transport.aclose()
        await raw.aclose()


async def test_oversized_lines_are_skipped_without_buffering() -> None:
    with trio.fail_after(GUARD):
        limit = 100
        transport, raw, _ = transport_and_raw(max_message_size=limit)
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await raw.send_all(b"x" * 101 + b"\n")  # complete line over the limit
                await raw.send_all(b"y" * limit + b"\r\n")  # at the limit, CRLF
                for _ in range(5):  # a long line in many pieces
                    await raw.send_all(b"z" * 70_000)
                    await trio.testing.wait_all_tasks_blocked()
                await raw.send_all(b"zz\nafter\n")

            nursery.start_soon(send)
            with pytest.raises(MessageTooLarge) as first:
                await transport.receive_message()
            assert (first.value.size, first.value.limit) == (101, limit)
            assert await transport.receive_message() == "y" * limit
            with pytest.raises(MessageTooLarge) as second:
                await transport.receive_message()
            assert second.value.size == 5 * 70_000 + 2
            assert len(transport._buffer) < 70_000 + limit  # never held the whole line
            assert await transport.receive_message() == "after"
        await transport.aclose()
        await raw.aclose()


async def test_eof_mid_line_is_broken() -> None:
    with trio.fail_after(GUARD):
        transport, raw, _ = transport_and_raw()
        await raw.send_all(b'{"complete":1}\n{"torn":')
        await raw.aclose()
        assert await transport.receive_message() == '{"complete":1}'
        with pytest.raises(TransportBroken, match="end of input"):
            await transport.receive_message()
        with pytest.raises(TransportBroken):
            await transport.send_message("x")
        await transport.aclose()


async def test_send_messages_is_one_write() -> None:
    transport, raw, stream = transport_and_raw()
    messages = [f'{{"seq":{n}}}' for n in range(100)]
    await transport.send_messages(messages)
    assert stream.send_all_calls == 1
    expected = "".join(message + "\n" for message in messages).encode()
    assert bytes(stream.sent) == expected
    assert await read_exactly(raw, len(expected)) == expected
    await transport.aclose()
    await raw.aclose()


async def test_cancel_before_writing_leaves_the_transport_usable() -> None:
    transport, raw, stream = transport_and_raw()
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.send_message("never")
    assert stream.send_all_calls == 0
    await transport.send_message("sent")
    assert await read_exactly(raw, 5) == b"sent\n"
    await transport.aclose()
    await raw.aclose()


async def test_cancel_during_a_write_breaks_the_transport(autojump_clock: object) -> None:
    with trio.fail_after(GUARD):
        transport, raw, stream = transport_and_raw()
        stream.stall = True
        with trio.move_on_after(1):
            await transport.send_messages(["a", "b"])
        with pytest.raises(TransportBroken, match="interrupted"):
            await transport.send_message("c")
        with pytest.raises(TransportBroken):
            await transport.receive_message()
        await transport.aclose()
        await raw.aclose()


async def test_aclose_waits_boundedly_for_a_stuck_write(autojump_clock: object) -> None:
    with trio.fail_after(GUARD):
        transport, raw, stream = transport_and_raw(close_timeout=3)
        await assert_aclose_bounded_by_a_stuck_write(transport, stream, 3)
        assert await raw.receive_some(100) == b""  # the peer sees end of input
        await raw.aclose()


STDIO_ECHO = """
import os
import trio
from arcp_trio.transport.base import TransportBroken
from arcp_trio.transport.stdio import open_stdio_transport

async def main():
    transport = open_stdio_transport(max_message_size=1000)
    assert transport.description == "stdio"
    try:
        while True:
            try:
                message = await transport.receive_message()
            except TransportBroken:
                break
            except Exception as exc:
                await transport.send_message(type(exc).__name__)
                continue
            await transport.send_messages([message, message.upper()])
    finally:
        await transport.aclose()
    os.fstat(0), os.fstat(1)  # closing the transport left the process's own fds open

trio.run(main)
"""


async def test_stdio_transport_in_a_child_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                _run_child, [sys.executable, "-c", STDIO_ECHO], env
            )
            assert process.stdin is not None
            assert process.stdout is not None
            transport = StreamTransport(process.stdout, process.stdin, description="child")
            await transport.send_messages(['{"a":"é"}', "x" * 1001, "b"])
            received = [await transport.receive_message() for _ in range(5)]
            assert received == ['{"a":"é"}', '{"A":"É"}', "MessageTooLarge", "b", "B"]
            await transport.aclose()  # the child sees EOF and exits
    assert process.returncode == 0


async def _run_child(
    command: list[str],
    env: dict[str, str],
    *,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.run_process(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=str(REPO_ROOT),
        task_status=task_status,
    )

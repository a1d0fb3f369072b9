"""The read reactor: one task reads every server socket (Linux).

Rules: real sockets on 127.0.0.1 under ``fail_after``. The runtime's use of it (idle
connections parked, pongs read in their own task, nothing of the runtime in the
reactor's task) is tested in ``tests/runtime/test_idle_connections.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

from arcp_trio.transport.base import IdleTransport, Transport, TransportBroken
from arcp_trio.transport.reactor import (
    DEFER_ROUNDS,
    PASS_BYTES,
    ReactorStatistics,
    ReadReactor,
    reactor_available,
)
from arcp_trio.transport.websocket import (
    WebSocketTransport,
    connect_websocket,
    websocket_server_handshake,
)
from tests.transport.test_websocket import running_server

pytestmark = pytest.mark.skipif(not reactor_available(), reason="the reactor needs epoll")

GUARD = 10


async def test_callbacks_run_only_while_resumed_and_once_more_at_close() -> None:
    reactor = ReadReactor()
    a, b = socket.socketpair()
    a.setblocking(False)
    calls: list[bool] = []
    called = trio.Event()

    def readable() -> None:
        calls.append(reactor.closed)
        called.set()
        if not reactor.closed:
            a.recv(100)

    with trio.fail_after(GUARD), a, b:
        async with trio.open_nursery() as nursery:
            reactor.register(a.fileno(), readable)
            nursery.start_soon(reactor.run)
            b.send(b"x")
            await trio.sleep(0.05)
            assert calls == []  # registered paused
            reactor.resume(a.fileno())
            await called.wait()
            assert calls == [False]
            reactor.pause(a.fileno())
            b.send(b"y")
            await trio.sleep(0.05)
            assert calls == [False]
            nursery.cancel_scope.cancel()
        assert calls == [False, True]  # close tells every transport to read for itself
        reactor.unregister(a.fileno())  # idempotent, also after close
        reactor.unregister(a.fileno())


async def test_a_paused_socket_that_hangs_up_does_not_wake_the_reactor() -> None:
    """epoll reports a hang-up whatever the mask: a paused socket must be out of the
    set, or its task's slow work would turn the reactor into a busy loop."""
    reactor = ReadReactor()
    a, b = socket.socketpair()
    with trio.fail_after(GUARD), a:
        async with trio.open_nursery() as nursery:
            reactor.register(a.fileno(), lambda: None)
            reactor.resume(a.fileno())
            reactor.pause(a.fileno())
            nursery.start_soon(reactor.run)
            b.close()  # the peer hangs up while the socket is paused
            await trio.sleep(0.2)
            assert reactor.statistics().wakeups == 0
            nursery.cancel_scope.cancel()


async def test_a_failing_callback_is_paused_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reactor = ReadReactor()
    bad, bad_peer = socket.socketpair()
    good, good_peer = socket.socketpair()
    good.setblocking(False)
    got: list[bytes] = []
    arrivals = [trio.Event(), trio.Event()]

    def explode() -> None:
        raise RuntimeError("boom")

    def collect() -> None:
        if not reactor.closed:  # the last call, at close, has nothing to read
            got.append(good.recv(100))
            arrivals[len(got) - 1].set()

    with trio.fail_after(GUARD), bad, bad_peer, good, good_peer:
        async with trio.open_nursery() as nursery:
            reactor.register(bad.fileno(), explode)
            reactor.register(good.fileno(), collect)
            reactor.resume(bad.fileno())
            reactor.resume(good.fileno())
            nursery.start_soon(reactor.run)
            bad_peer.send(b"x")
            good_peer.send(b"1")
            await arrivals[0].wait()
            good_peer.send(b"2")
            await arrivals[1].wait()
            nursery.cancel_scope.cancel()
    assert got == [b"1", b"2"]
    assert [r for r in caplog.records if "read callback failed" in r.message]


async def test_receive_nowait_takes_what_the_reactor_queued_in_order() -> None:
    """``IdleTransport`` through the reactor: the owner parks until its waker is
    called (from the reactor's task, the only thing of the owner's that runs there),
    then takes whole messages with ``receive_nowait``, in order; what needs more (a
    fragmented message) is left to ``receive_message``, and nothing overtakes it."""
    received: list[tuple[str, str]] = []
    waker_tasks: list[trio.lowlevel.Task] = []
    handler_tasks: list[trio.lowlevel.Task] = []
    wakeup = [trio.Event()]

    def waker() -> None:
        waker_tasks.append(trio.lowlevel.current_task())
        wakeup[0].set()

    async def handler(transport: Transport) -> None:
        assert isinstance(transport, IdleTransport)
        handler_tasks.append(trio.lowlevel.current_task())
        transport.set_receive_waker(waker)
        while True:
            text = transport.receive_nowait()
            how = "nowait"
            if text is None:
                wakeup[0] = trio.Event()
                if not transport.receive_ready():
                    await wakeup[0].wait()
                    continue
                text, how = await transport.receive_message(), "receive_message"
            received.append((how, text))
            if text == "last":
                transport.set_receive_waker(None)  # (closing calls it from this task)
                return

    with trio.fail_after(GUARD):
        async with running_server(handler) as info:
            client: Any = await connect_websocket(info.url)
            await client.send_message("one")
            await client.send_messages(["two", "three"])  # one write
            # A fragmented message, then a whole one, in one write.
            ws = client._ws
            await client._stream.send_all(
                ws.send(TextMessage(data="fr", message_finished=False))
                + ws.send(TextMessage(data="ag", message_finished=True))
                + ws.send(TextMessage(data="after"))
            )
            await client.send_message("last")
            with pytest.raises(TransportBroken):  # the server closes after "last"
                await client.receive_message()
            await client.aclose()
    assert received == [
        ("nowait", "one"),
        ("nowait", "two"),
        ("nowait", "three"),
        ("receive_message", "frag"),
        ("nowait", "after"),
        ("nowait", "last"),
    ]
    assert waker_tasks
    assert all(task.name.endswith("ReadReactor.run") for task in waker_tasks)
    assert handler_tasks[0] not in waker_tasks


async def test_a_fast_sender_is_read_one_chunk_at_a_time() -> None:
    """While the task has queued messages the socket is paused: memory stays bounded
    and nothing is lost or reordered."""
    most_queued = 0
    received: list[str] = []
    messages = [f"{i:06d}" + "x" * 1000 for i in range(2000)]  # about 2 MB
    release = trio.Event()
    all_received = trio.Event()

    async def handler(transport: Transport) -> None:
        nonlocal most_queued
        assert isinstance(transport, WebSocketTransport)
        received.append(await transport.receive_message())
        await release.wait()  # the client keeps sending meanwhile
        while len(received) < len(messages):
            most_queued = max(most_queued, len(transport._events))
            received.append(await transport.receive_message())
        all_received.set()

    with trio.fail_after(GUARD * 3):
        async with running_server(handler) as info:
            client = await connect_websocket(info.url)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_messages, messages)
                await trio.sleep(0.2)
                release.set()
            await all_received.wait()
            await client.aclose()
    assert received == messages
    assert most_queued <= 70  # one 64 KiB read holds at most ~64 of these frames


async def test_transports_read_for_themselves_once_the_reactor_is_gone() -> None:
    reactor = ReadReactor()
    received: list[str] = []
    reactor_gone, both = trio.Event(), trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        transport = await websocket_server_handshake(stream, reactor=reactor)
        assert transport is not None
        received.append(await transport.receive_message())
        reactor_scope.cancel()  # the reactor ends while this transport lives on
        received.append(await transport.receive_message())
        both.set()
        await transport.aclose()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            reactor_scope = trio.CancelScope()

            async def run_reactor() -> None:
                with reactor_scope:
                    await reactor.run()
                reactor_gone.set()

            nursery.start_soon(run_reactor)
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            client = await connect_websocket(f"ws://127.0.0.1:{port}/arcp")
            await client.send_message("through the reactor")
            await reactor_gone.wait()
            assert reactor.closed
            await client.send_message("read by the task itself")
            await both.wait()
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert received == ["through the reactor", "read by the task itself"]


class Recorder:
    """Callbacks that read their socket and note the reactor pass they ran in."""

    def __init__(self, reactor: ReadReactor) -> None:
        self.reactor = reactor
        self.got: list[tuple[str, bytes, int]] = []

    def callback(self, name: str, sock: socket.socket) -> partial[None]:
        return partial(self._read, name, sock)

    def _read(self, name: str, sock: socket.socket) -> None:
        if not self.reactor.closed:
            self.got.append((name, sock.recv(100), self.reactor.statistics().wakeups))


async def test_deferred_sockets_are_served_together_when_their_deferral_ends(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The pongs to one timer pass's pings (§6.4): deferred sockets are left alone
    until their time, then served in one pass; nothing that arrived is lost, and a
    socket that is not deferred is served at once."""
    reactor = ReadReactor()
    rec = Recorder(reactor)
    pairs = {name: socket.socketpair() for name in ("a", "b", "c")}
    for sock, _ in pairs.values():
        sock.setblocking(False)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for name, (sock, _) in pairs.items():
                reactor.register(sock.fileno(), rec.callback(name, sock))
                reactor.resume(sock.fileno())
            nursery.start_soon(reactor.run)
            now = trio.current_time()
            reactor.defer(pairs["a"][0].fileno(), now, 1)
            reactor.defer(pairs["b"][0].fileno(), now, 1)
            for name, (_, peer) in pairs.items():
                peer.send(name.encode())
            await trio.sleep(0.6)
            pairs["c"][1].send(b"cc")  # other sockets' passes leave deferrals alone
            await trio.sleep(0.3)
            assert [(name, data) for name, data, _ in rec.got] == [("c", b"c"), ("c", b"cc")]
            await trio.sleep(0.2)
            assert sorted((name, data) for name, data, _ in rec.got[2:]) == [
                ("a", b"a"),
                ("b", b"b"),
            ]
            assert rec.got[2][2] == rec.got[3][2]  # one pass for both
            # Served normally again from then on.
            pairs["a"][1].send(b"again")
            await trio.sleep(0.01)
            assert rec.got[-1][:2] == ("a", b"again")
            nursery.cancel_scope.cancel()
    for sock, peer in pairs.values():
        sock.close()
        peer.close()


async def test_pause_resume_and_unregister_end_a_deferral(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``resume`` serves a deferred socket at once; ``pause`` keeps it paused past its
    time (its task has queued input to take first); a socket that was not being
    served is not deferred (its deferral would resume it behind its task's back);
    and an unregistered one is forgotten (its number may be reused)."""
    reactor = ReadReactor()
    rec = Recorder(reactor)
    names = ("resumed", "paused", "never_active", "gone")
    pairs = {name: socket.socketpair() for name in names}
    for sock, _ in pairs.values():
        sock.setblocking(False)
    fd = {name: pair[0].fileno() for name, pair in pairs.items()}
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for name, (sock, _) in pairs.items():
                reactor.register(fd[name], rec.callback(name, sock))
                if name != "never_active":
                    reactor.resume(fd[name])
            nursery.start_soon(reactor.run)
            now = trio.current_time()
            for name in names:
                reactor.defer(fd[name], now, 1)
            reactor.resume(fd["resumed"])
            reactor.pause(fd["paused"])
            reactor.unregister(fd["gone"])
            for _, peer in pairs.values():
                peer.send(b"x")
            await trio.sleep(0.1)
            assert [name for name, _, _ in rec.got] == ["resumed"]
            await trio.sleep(2)
            assert [name for name, _, _ in rec.got] == ["resumed"]
            assert not reactor._deferred
            nursery.cancel_scope.cancel()
    for sock, peer in pairs.values():
        sock.close()
        peer.close()


async def test_a_deferred_socket_with_nothing_to_read_waits_another_window(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A slow peer's pong: a socket with nothing to read when its window ends is
    deferred for another window, ``DEFER_ROUNDS`` in all; input is noticed when the
    window it arrived in ends, never later, and after the last window the socket is
    served at once again."""
    reactor = ReadReactor()
    rec = Recorder(reactor)
    slow, slow_peer = socket.socketpair()
    silent, silent_peer = socket.socketpair()
    slow.setblocking(False)
    silent.setblocking(False)
    with trio.fail_after(GUARD), slow, slow_peer, silent, silent_peer:
        async with trio.open_nursery() as nursery:
            for name, sock in (("slow", slow), ("silent", silent)):
                reactor.register(sock.fileno(), rec.callback(name, sock))
                reactor.resume(sock.fileno())
            nursery.start_soon(reactor.run)
            start = trio.current_time()
            reactor.defer(slow.fileno(), start, 1)
            reactor.defer(silent.fileno(), start, 1)
            await trio.sleep(1.5)  # the first window ended with nothing to read
            assert slow.fileno() in reactor._deferred
            slow_peer.send(b"late pong")
            await trio.sleep(0.4)  # t = 1.9: still in the second window
            assert rec.got == []
            await trio.sleep(0.2)  # t = 2.1: served when that window ended
            assert rec.got[0][:2] == ("slow", b"late pong")
            assert slow.fileno() not in reactor._deferred
            # The silent one is deferred window after window, then served normally.
            await trio.sleep(DEFER_ROUNDS - 2.1 - 0.05)
            assert silent.fileno() in reactor._deferred
            await trio.sleep(0.1)
            assert silent.fileno() not in reactor._deferred
            silent_peer.send(b"x")
            await trio.sleep(0.01)
            assert rec.got[-1][:2] == ("silent", b"x")
            nursery.cancel_scope.cancel()


async def test_a_full_batch_defers_no_socket_again(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket a full pass did not get to may well be readable: it is served in the
    next pass, not deferred for another window."""
    monkeypatch.setattr("arcp_trio.transport.reactor._BATCH", 1)
    reactor = ReadReactor()
    rec = Recorder(reactor)
    pairs = [socket.socketpair() for _ in range(2)]
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            for i, (sock, peer) in enumerate(pairs):
                sock.setblocking(False)
                reactor.register(sock.fileno(), rec.callback(str(i), sock))
                reactor.resume(sock.fileno())
                reactor.defer(sock.fileno(), start, 1)
                peer.send(b"pong")
            nursery.start_soon(reactor.run)
            await trio.sleep(1.01)
            assert sorted(name for name, _, _ in rec.got) == ["0", "1"]
            nursery.cancel_scope.cancel()
    for sock, peer in pairs:
        sock.close()
        peer.close()


async def test_a_deferred_socket_closed_behind_the_reactors_back_costs_only_itself(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A socket closed while deferred without being unregistered cannot go back in
    the set: that is logged, and every other socket is still served."""
    reactor = ReadReactor()
    rec = Recorder(reactor)
    lost, lost_peer = socket.socketpair()
    kept, kept_peer = socket.socketpair()
    kept.setblocking(False)
    with trio.fail_after(GUARD), kept, kept_peer, lost_peer:
        async with trio.open_nursery() as nursery:
            for name, sock in (("lost", lost), ("kept", kept)):
                reactor.register(sock.fileno(), rec.callback(name, sock))
                reactor.resume(sock.fileno())
                reactor.defer(sock.fileno(), trio.current_time(), 1)
            nursery.start_soon(reactor.run)
            lost.close()  # its fd is gone, the reactor was not told
            kept_peer.send(b"pong")
            await trio.sleep(1.01)
            assert [(name, data) for name, data, _ in rec.got] == [("kept", b"pong")]
            kept_peer.send(b"more")
            await trio.sleep(0.01)
            assert rec.got[-1][:2] == ("kept", b"more")
            nursery.cancel_scope.cancel()
    assert any("cannot serve deferred" in r.message for r in caplog.records)


async def test_a_new_socket_on_a_reused_descriptor_is_read(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The kernel reuses descriptor numbers: a socket closed without ``unregister``
    left its number active (and deferred) in the reactor's books. The next socket
    given that number must still be read, and the old owner's later calls (it still
    holds its registration) must not touch the new one."""
    reactor = ReadReactor()
    rec = Recorder(reactor)
    old, old_peer = socket.socketpair()
    with trio.fail_after(GUARD), old_peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reactor.run)
            stale = reactor.register(old.fileno(), rec.callback("old", old))
            reactor.resume(stale)
            reactor.defer(stale, trio.current_time(), 5)
            number = old.fileno()
            old.close()  # behind the reactor's back
            new, new_peer = socket.socketpair()
            with new, new_peer:
                if new.fileno() != number:  # pragma: no cover - the kernel chose another
                    new.close()
                    new = socket.socket(fileno=os.dup2(new_peer.fileno(), number))
                new.setblocking(False)
                fresh = reactor.register(number, rec.callback("new", new))
                reactor.resume(fresh)
                reactor.pause(stale)  # the old owner, late: ignored
                reactor.defer(stale, trio.current_time(), 5)
                reactor.unregister(stale)
                new_peer.send(b"hello")
                await trio.sleep(0.01)
                assert [(name, data) for name, data, _ in rec.got] == [("new", b"hello")]
                reactor.unregister(fresh)
                nursery.cancel_scope.cancel()


async def test_one_pass_reads_a_bounded_number_of_bytes() -> None:
    """A pass stops serving sockets once ``PASS_BYTES`` have been read: the rest stay
    readable and are served after the reactor yields to other tasks."""
    reactor = ReadReactor()
    pairs = [socket.socketpair() for _ in range(3)]
    passes: list[tuple[int, int]] = []
    all_read = trio.Event()

    def reader(index: int, sock: socket.socket) -> int:
        if reactor.closed:
            return 0
        data = sock.recv(PASS_BYTES)
        passes.append((index, reactor.statistics().wakeups))
        if len({index for index, _ in passes}) == len(pairs):
            all_read.set()
        return len(data)

    try:
        for index, (sock, peer) in enumerate(pairs):
            sock.setblocking(False)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * PASS_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * PASS_BYTES)
            peer.sendall(b"x" * (PASS_BYTES // 2 + 1))
            reactor.register(sock.fileno(), partial(reader, index, sock))
            reactor.resume(sock.fileno())
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reactor.run)
                await all_read.wait()
                nursery.cancel_scope.cancel()
    finally:
        for sock, peer in pairs:
            sock.close()
            peer.close()
    first_pass = [index for index, wakeup in passes if wakeup == passes[0][1]]
    assert len(first_pass) == 2  # half a budget each: the third had to wait
    assert len({wakeup for _, wakeup in passes}) >= 2


def _pipe_killer() -> None:  # pragma: no cover - runs in a child process
    """Set SIGPIPE to its default (kill) *after* the transport exists, reset the peer,
    then write through ``send_nowait``: with MSG_NOSIGNAL the write fails, and the
    process lives to print OK."""
    import signal

    from arcp_trio.transport.wsframes import FrameConnection

    async def main() -> None:
        a, b = trio.socket.socketpair()
        stream = trio.SocketStream(a)
        transport = WebSocketTransport(stream, FrameConnection(client=False))
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        b.close()
        for _ in range(50):
            transport.send_nowait("x" * 1000)
        print("OK", flush=True)

    trio.run(main)


def test_a_write_to_a_reset_peer_never_raises_sigpipe() -> None:
    """The review: the SIGPIPE disposition was checked once, at construction; a later
    SIG_DFL let a peer reset kill the process. Writes now carry MSG_NOSIGNAL."""
    code = "from tests.transport.test_reactor import _pipe_killer; _pipe_killer()"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "OK"


async def test_statistics_count_registrations_and_deferrals() -> None:
    reactor = ReadReactor()
    a, b = socket.socketpair()
    with a, b:
        assert reactor.statistics() == ReactorStatistics(wakeups=0, registered=0, deferred=0)
        reactor.register(a.fileno(), lambda: None)
        reactor.register(b.fileno(), lambda: None)
        reactor.resume(a.fileno())
        reactor.defer(a.fileno(), trio.current_time(), 1.0)
        assert reactor.statistics() == ReactorStatistics(wakeups=0, registered=2, deferred=1)
        reactor.unregister(a.fileno())
        assert reactor.statistics().registered == 1
        assert reactor.statistics().deferred == 0
        reactor.unregister(b.fileno())

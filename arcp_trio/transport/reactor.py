"""One task that reads every server socket: idle connections cost no wake-ups.

Theory of operation
-------------------
Each WebSocket connection's task waits for its peer's next message. If that wait
were on the socket (``SocketStream.receive_some``), every inbound frame would cost
a scheduler wake-up of that task and two ``epoll_ctl`` calls — even a heartbeat's
``session.pong`` (§6.4), which needs nothing but a note that the peer is alive.
With a thousand idle sessions that is most of the runtime's idle CPU.

A ``ReadReactor`` keeps the server's sockets in an epoll set of its own (Linux) and
one task (``run``) sleeps on that set's descriptor. When sockets become readable it
wakes once for all of them and calls each one's callback synchronously; the
transport reads what is there, parses it, queues the messages and wakes its owner's
task (a waker that only reschedules it): the owner's own code, a heartbeat pong's
handling included, runs in that task, never in this one. A socket that is readable
again while its transport still has queued messages is *paused* (left out of the
set) until its task has taken them, so a fast sender is read one chunk at a time, as
with a per-task read, and memory stays bounded; a quiet peer's socket (a pong now and
then) just stays in the set.

Deferral: a socket whose next input needs no prompt handling (a heartbeat's pong,
§6.4, right after the ping went out) can be left out of the set for a moment, a
*window* (``defer``). When the window is over the reactor puts every such socket
back at once and serves those that are readable in the same pass: the pongs to one
timer pass's pings cost one wake-up between them, not one each. A socket with
nothing to read by then is deferred for another window, up to ``DEFER_ROUNDS`` in
all, so a peer that takes longer to answer a burst of pings still has its pongs read
in batches. Nothing is lost or reordered, and input is noticed at the latest when
the window it arrived in ends.

Identity: the kernel reuses descriptor numbers, so a registration, not a number, is
what the reactor serves. ``register`` returns a ``Registration``; a transport passes
it back to ``resume``, ``pause``, ``defer`` and ``unregister``, and the reactor ignores a
registration that is no longer the current one for its descriptor. Registering a
descriptor that already has an entry (its old socket was closed without
``unregister``) starts afresh: the new socket is never taken for the closed one's
state (active, deferred), and the old owner's later calls touch nothing.

A callback that raises is logged and its socket paused; the transport learns of it
through its callback's own error handling (see ``WebSocketTransport._on_readable``).
The reactor itself never dies of one connection. When ``run`` ends (the server is
cancelled), every callback runs once more with ``closed`` set, and transports read
their own sockets again, so closing handshakes still complete.
"""

from __future__ import annotations

import heapq
import logging
import math
import select
import sys
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ReactorStatistics", "ReadReactor", "Registration", "reactor_available"]

log = logging.getLogger(__name__)

#: Sockets served per wake-up at most (the rest stay ready for the next pass).
_BATCH = 512
#: Bytes read per wake-up at most (callbacks report what they read): one busy peer,
#: or many, cannot keep the reactor from yielding for longer than parsing this takes
#: (a few milliseconds); the sockets not served stay ready for the next pass.
PASS_BYTES = 1 << 20

#: Windows in a row a deferred socket with nothing to read stays deferred (``defer``).
DEFER_ROUNDS = 5


def reactor_available() -> bool:
    """Whether this platform has epoll (the reactor's only requirement)."""
    return sys.platform.startswith("linux") and hasattr(select, "epoll")


class Registration:
    """One socket's place in a ``ReadReactor`` (see "Identity" in the module docstring)."""

    __slots__ = ("callback", "fd")

    def __init__(self, fd: int, callback: Callable[[], int | None]) -> None:
        self.fd = fd
        self.callback = callback

    def __repr__(self) -> str:
        return f"Registration(fd={self.fd})"


@attrs.frozen
class ReactorStatistics:
    """A snapshot of a ``ReadReactor`` (``statistics()``)."""

    #: Passes in which at least one socket was ready (each is one wake-up of ``run``).
    wakeups: int
    #: Sockets registered, and how many of them are deferred right now.
    registered: int
    deferred: int


class ReadReactor:
    """Readiness callbacks for many sockets, served by one task (``run``)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._registrations: dict[int, Registration] = {}
        self._active: set[int] = set()
        #: Deferred sockets (out of the set until then): fd -> (Trio time it returns,
        #: window, windows left including this one).
        self._deferred: dict[int, tuple[float, float, int]] = {}
        #: The same as a heap of (time, fd); entries ``_deferred`` no longer has are stale.
        self._returns: list[tuple[float, int]] = []
        #: The scope ``run`` sleeps in, while it sleeps, and its deadline: moved earlier
        #: by ``defer``.
        self._sleep: trio.CancelScope | None = None
        self._wake_at = math.inf
        #: After ``run`` ended: transports read their sockets themselves again.
        self.closed = False
        self._wakeups = 0
        self.callbacks_run = 0

    def statistics(self) -> ReactorStatistics:
        return ReactorStatistics(
            wakeups=self._wakeups,
            registered=len(self._registrations),
            deferred=len(self._deferred),
        )

    def register(self, fd: int, callback: Callable[[], int | None]) -> Registration:
        """Know ``fd`` (paused until ``resume``); ``callback`` runs when it is readable
        and returns how many bytes it read (None: nothing to count).

        An entry left for ``fd`` by a socket that was closed without ``unregister`` is
        replaced, with its state: the new socket starts paused and not deferred.
        """
        if fd in self._registrations:
            self._deferred.pop(fd, None)
            self._leave_set(fd)
        registration = Registration(fd, callback)
        self._registrations[fd] = registration
        return registration

    def _current(self, which: int | Registration) -> int | None:
        """The descriptor to act on, or None for a registration that was replaced."""
        if isinstance(which, int):
            return which if which in self._registrations else None
        return which.fd if self._registrations.get(which.fd) is which else None

    def unregister(self, which: int | Registration) -> None:
        """Forget a socket (before it is closed). Idempotent; a stale registration
        (its descriptor registered again since) is ignored."""
        fd = self._current(which)
        if fd is not None:
            self.pause(fd)
            del self._registrations[fd]

    def resume(self, which: int | Registration) -> None:
        fd = self._current(which)
        if fd is None:
            return
        if self._deferred:
            self._deferred.pop(fd, None)
        if not self.closed and fd not in self._active:
            self._epoll.register(fd, select.EPOLLIN)
            self._active.add(fd)

    def pause(self, which: int | Registration) -> None:
        fd = self._current(which)
        if fd is None:
            return
        if self._deferred:
            self._deferred.pop(fd, None)
        self._leave_set(fd)

    def defer(
        self, which: int | Registration, start: float, window: float, rounds: int = DEFER_ROUNDS
    ) -> None:
        """Take an active ``fd`` out of the set for ``window`` seconds from Trio time
        ``start``, then serve it (with every other socket due by then) if it is
        readable; if it is not, defer it again for as long, ``rounds`` windows in all.

        ``pause`` and ``resume`` end a deferral early; a socket not being served is
        left alone.
        """
        fd = self._current(which)
        if self.closed or fd is None or fd not in self._active:
            return
        self._leave_set(fd)
        until = start + window
        self._deferred[fd] = (until, window, rounds)
        heapq.heappush(self._returns, (until, fd))
        if until < self._wake_at:
            self._wake_at = until
            if self._sleep is not None:
                self._sleep.deadline = until

    def _leave_set(self, fd: int) -> None:
        # Out of the set, not just masked: epoll reports a hang-up whatever the mask,
        # and a paused socket's hang-up would wake this task over and over.
        if not self.closed and fd in self._active:
            self._active.discard(fd)
            try:  # noqa: SIM105 - a with-statement costs more, once per heartbeat
                self._epoll.unregister(fd)
            except OSError:
                pass  # closed already: the kernel dropped it

    def _return_deferred(self, now: float) -> list[tuple[int, float, int]]:
        """Put the sockets whose window is over back in the set; returns them (with
        their window and the windows they had left, this one included)."""
        returns, deferred = self._returns, self._deferred
        returned = []
        while returns and returns[0][0] <= now:
            until, fd = heapq.heappop(returns)
            entry = deferred.get(fd)
            if entry is not None and entry[0] == until:
                try:
                    self.resume(fd)
                except OSError:
                    # Closed without unregistering: that socket's loss, not the reactor's.
                    log.error("cannot serve deferred fd=%s again", fd, exc_info=True)
                    continue
                returned.append((fd, entry[1], entry[2]))
        if not deferred:
            returns.clear()  # only stale entries left
        return returned

    def _defer_again(
        self, now: float, returned: list[tuple[int, float, int]], served: list[tuple[int, int]]
    ) -> None:
        """Defer once more the returned sockets that had nothing to read (``served``
        is this pass's whole poll: a socket not in it was not readable)."""
        ready = {fd for fd, _mask in served}
        active = self._active
        for fd, window, rounds in returned:
            if rounds > 1 and fd not in ready and fd in active:
                self.defer(fd, now, window, rounds - 1)

    def close(self) -> None:
        """Stop serving: every callback runs once more (seeing ``closed``), so a
        transport waiting for data goes back to reading its socket itself."""
        if self.closed:
            return
        self.closed = True
        callbacks = [registration.callback for registration in self._registrations.values()]
        self._registrations.clear()
        self._active.clear()
        self._deferred.clear()
        self._returns.clear()
        self._epoll.close()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.error("read callback failed at close", exc_info=True)

    async def run(self) -> None:
        """Serve readiness until cancelled; closes the epoll set on the way out."""
        try:
            while True:
                returns = self._returns
                self._wake_at = returns[0][0] if returns else math.inf
                with trio.CancelScope(deadline=self._wake_at) as sleep:
                    self._sleep = sleep
                    try:
                        await trio.lowlevel.wait_readable(self._epoll.fileno())
                    finally:
                        self._sleep = None
                self._wakeups += 1
                returned = None
                if self._returns:
                    now = trio.current_time()
                    returned = self._return_deferred(now)
                served = self._epoll.poll(0, _BATCH)
                budget = PASS_BYTES
                for fd, _mask in served:
                    if budget <= 0:
                        break  # the rest are still readable: served after a yield
                    registration = self._registrations.get(fd)
                    if registration is None or fd not in self._active:
                        continue
                    self.callbacks_run += 1
                    try:
                        budget -= registration.callback() or 0
                    except Exception:
                        log.error("read callback failed fd=%s", fd, exc_info=True)
                        self.pause(fd)
                if returned and budget > 0 and len(served) < _BATCH:
                    # (a full batch, or a spent budget, may have left some unread)
                    self._defer_again(now, returned, served)
                # Ready sockets beyond the batch wait for the next pass; other tasks run
                # first, since waiting on the set yields to them even when it is ready.
        finally:
            self.close()

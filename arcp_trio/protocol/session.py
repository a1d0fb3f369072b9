"""Session bookkeeping that needs no I/O: features, dialect, heartbeats, resume window.

Theory of operation
-------------------
A *session* is logical: it is created by a welcome and lives until its resume
window runs out while no connection is attached (§6.3, §6.7). A *connection* is
one transport attach. This module holds the parts of both that are pure
functions of their inputs and of ``now`` (Trio time, passed in), so they can be
driven synchronously by hypothesis:

* ``negotiate_features``: §6.2 intersection, in the runtime's order.
* ``Dialect``: which frame shapes a session gets where the reference SDK and the
  spec disagree (WIRE.md "Decisions").
* ``HeartbeatMonitor``: §6.4 liveness. Any inbound frame counts; after one quiet
  interval we ping (so an idle peer has something to answer), after two we declare
  the connection dead. Death ends only the connection, never a job (§6.4). A pong
  answers a ping: it proves the peer alive but does not postpone the next ping, so
  an idle peer is pinged at a steady cadence.
* ``ResumeWindow``: when a detached session may be forgotten.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "ALL_FEATURES",
    "CREDENTIALS_FEATURE",
    "SPEC_SHAPES_FEATURE",
    "Dialect",
    "HeartbeatAction",
    "HeartbeatMonitor",
    "ResumeWindow",
    "negotiate_features",
]

#: §9.8: advertised only with a credential provisioner and a durable ledger.
CREDENTIALS_FEATURE = "provisioned_credentials"

#: The feature a client lists to receive the spec's exact frame shapes (WIRE.md).
SPEC_SHAPES_FEATURE = "x-vendor.arcp-trio.spec-shapes"

#: Features this runtime implements, in the order it advertises them (§6.2).
ALL_FEATURES: tuple[str, ...] = (
    "heartbeat",
    "ack",
    "list_jobs",
    "subscribe",
    "lease_expires_at",
    "cost.budget",
    "model.use",
    "progress",
    "result_chunk",
    "agent_versions",
    SPEC_SHAPES_FEATURE,
)


#: Every distinct negotiated set, shared by the sessions that negotiated it (a few
#: hundred bytes a session otherwise). Bounded: each is a subset of what we offer.
_FEATURE_SETS: dict[frozenset[str], frozenset[str]] = {}


def negotiate_features(ours: Sequence[str], theirs: Iterable[str]) -> frozenset[str]:
    """§6.2: "The effective feature set is the intersection"."""
    wanted = set(theirs)
    features = frozenset(feature for feature in ours if feature in wanted)
    return _FEATURE_SETS.setdefault(features, features)


class Dialect(enum.Enum):
    """Frame shapes for the points where the reference SDK and the spec conflict.

    ``REFERENCE``: what the reference 1.1.3 client parses — ``job.result
    cancelled``/``timed_out`` terminals, ``"USD:1.00"`` budget strings, integer
    ``replayed``. ``SPEC``: §7.1/§7.3/§7.4/§7.6 exactly. A session is ``SPEC`` when it
    negotiates ``SPEC_SHAPES_FEATURE`` or speaks a spec-only message
    (``session.resume``, ``session.close``).
    """

    REFERENCE = "reference"
    SPEC = "spec"

    @classmethod
    def for_features(cls, features: frozenset[str]) -> Dialect:
        return cls.SPEC if SPEC_SHAPES_FEATURE in features else cls.REFERENCE


class HeartbeatAction(enum.Enum):
    NONE = "none"
    SEND_PING = "send_ping"
    DEAD = "dead"


@attrs.define
class HeartbeatMonitor:
    """§6.4 liveness for one connection, driven by ``now`` (Trio seconds).

    ``interval`` is ``heartbeat_interval_sec``. Call ``received(now)`` for every
    inbound frame (``answered(now)`` for a pong, if the caller tells it apart) and
    ``poll(now)`` when ``next_wakeup()`` arrives.

    ``slack``: how early a ping may go out. A timer that may wake up to ``slack``
    late (``Timers.granularity``) still pings within the interval this way; death is
    never declared early.
    """

    interval: float
    #: The last inbound frame of any kind: what death is measured from.
    last_received: float
    last_ping_sent: float = -math.inf
    slack: float = 0.0
    #: The last inbound frame that was not a pong: what pings are scheduled from.
    last_heard: float = attrs.field(
        default=attrs.Factory(lambda self: self.last_received, takes_self=True)
    )

    def received(self, now: float) -> None:
        self.last_received = self.last_heard = now

    def answered(self, now: float) -> None:
        """A pong arrived: the peer is alive; the next ping keeps its time.

        Were a pong to postpone the next ping, the ping's timer would wake to find
        it not yet due (by the round trip) and sleep again: one wasted wake-up per
        interval per idle session.
        """
        self.last_received = now

    def poll(self, now: float) -> HeartbeatAction:
        # Compared with exactly the deadlines ``next_wakeup`` computes (not with
        # differences, which float rounding can leave a hair short): woken at
        # ``next_wakeup()``, a poll always acts, so the loop can never spin.
        # §6.4: "no messages (of any kind) ... for two consecutive intervals".
        if now >= self.last_received + 2 * self.interval:
            return HeartbeatAction.DEAD
        # An idle counterpart gets a ping to answer, once per interval of silence.
        if now >= max(self.last_heard, self.last_ping_sent) + self.interval - self.slack:
            self.last_ping_sent = now
            return HeartbeatAction.SEND_PING
        return HeartbeatAction.NONE

    def next_wakeup(self) -> float:
        """The earliest Trio time at which ``poll`` may return something new."""
        ping_due = max(self.last_heard, self.last_ping_sent) + self.interval - self.slack
        return min(ping_due, self.last_received + 2 * self.interval)


@attrs.define
class ResumeWindow:
    """When a detached session may be forgotten (§6.3)."""

    window_sec: float
    detached_at: float | None = None

    def detach(self, now: float) -> None:
        self.detached_at = now

    def attach(self) -> None:
        self.detached_at = None

    @property
    def deadline(self) -> float | None:
        return None if self.detached_at is None else self.detached_at + self.window_sec

    def expired(self, now: float) -> bool:
        deadline = self.deadline
        return deadline is not None and now >= deadline

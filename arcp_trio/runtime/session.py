"""Logical sessions: identity, negotiated features, event buffer, resume token.

A ``Session`` outlives its connections (DESIGN.md): it is created by a welcome,
survives drops, closes and heartbeat loss, and is forgotten only when its resume
window ends while detached (§6.3, §6.7). It holds job *ids*, never a job's cancel
scope, so nothing it does can end a job.

``deliver`` is the per-session half of the flow of one event: stamp the next
``event_seq``, keep the frame in the buffer for resume, and hand it to the
attached connection's outbox if there is one (and it is not still catching up on
a replay read from the store, which ends by sending what arrived meanwhile). It
is synchronous, so the order in which the runtime routes events is the order
every session sees them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import attrs

from ..wire.codec import encode_job_frame
from ..wire.ids import new_id

if TYPE_CHECKING:
    from ..protocol.eventlog import EventBuffer
    from ..protocol.session import Dialect, ResumeWindow
    from ..wire.messages import MessageType
    from .connection import Connection

__all__ = ["Session", "hash_token"]

#: Tokens kept valid while the client has not answered a welcome.
_MAX_UNCONFIRMED = 8


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@attrs.define(eq=False, kw_only=True)
class Session:
    session_id: str
    principal: str
    features: frozenset[str]
    dialect: Dialect
    buffer: EventBuffer
    window: ResumeWindow
    #: The latest resume token issued (hashed).
    token_hash: str = ""
    #: The token the client is known to hold: the one whose welcome it answered.
    confirmed_token_hash: str = ""
    #: Tokens issued since then, newest last. A welcome can be lost in transit, and a
    #: duplicate handshake (a retried dial) can rotate past the token the client got;
    #: until the client answers a welcome, every one of them still resumes — except
    #: those older than a token the client has presented in a resume (``presented``).
    unconfirmed_token_hashes: list[str] = attrs.field(factory=list)
    client_name: str = ""
    connection: Connection | None = None
    #: Jobs this session submitted: it alone may cancel them (§7.4, §7.6).
    submitted: set[str] = attrs.field(factory=set)
    #: Jobs this session subscribed to (§7.6).
    subscribed: set[str] = attrs.field(factory=set)
    #: Bumped on every detach, so a stale window timer can tell it is stale.
    detach_generation: int = 0
    forgotten: bool = False
    #: The attached connection is still being sent a replay read from the store: new
    #: frames wait in the buffer, and the replay sends them when it catches up.
    catching_up: bool = False

    def rotate_token(self) -> str:
        """§6.3: "The resume token rotates on every successful welcome"."""
        token = new_id("rtk")
        self.token_hash = hash_token(token)
        self.unconfirmed_token_hashes.append(self.token_hash)
        del self.unconfirmed_token_hashes[:-_MAX_UNCONFIRMED]
        return token

    def confirm_token(self, token_hash: str) -> None:
        """The client answered the welcome that carried ``token_hash``: from now on
        only that token (and later ones) resume."""
        self.confirmed_token_hash = token_hash
        self.unconfirmed_token_hashes.clear()

    def presented(self, token_hash: str) -> None:
        """A resume presented ``token_hash``: the client holds it, so every token
        issued before it is retired (§6.3: tokens rotate). Tokens issued after it
        stay valid until a welcome is answered: a retried dial may have rotated past
        what the client received."""
        unconfirmed = self.unconfirmed_token_hashes
        if token_hash in unconfirmed:
            self.confirmed_token_hash = token_hash
            del unconfirmed[: unconfirmed.index(token_hash) + 1]

    def valid_token_hashes(self) -> set[str]:
        valid = {self.token_hash, self.confirmed_token_hash, *self.unconfirmed_token_hashes}
        valid.discard("")
        return valid

    def token_matches(self, token: str) -> bool:
        presented = hash_token(token)
        # Every candidate is compared (no early exit), so timing says nothing.
        matches = [hmac.compare_digest(presented, h) for h in self.valid_token_hashes()]
        return any(matches)

    @property
    def watching(self) -> set[str]:
        return self.submitted | self.subscribed

    def deliver(
        self,
        message_type: MessageType,
        *,
        job_id: str,
        trace_id: str | None,
        frame_id: str,
        payload_json: str,
    ) -> str:
        """Stamp, buffer and (if attached) queue one seq-bearing frame (§8.3).

        Returns the frame as stamped. The buffer may have evicted events the client
        had not acknowledged: the caller asks it (``take_overflow_notice``) and tells
        the client (§6.5).
        """
        buffer = self.buffer
        seq = buffer.next_seq()
        frame = encode_job_frame(
            message_type,
            frame_id=frame_id,
            session_id=self.session_id,
            job_id=job_id,
            event_seq=seq,
            trace_id=trace_id,
            payload_json=payload_json,
        )
        buffer.append(seq, job_id, frame)
        connection = self.connection
        if connection is not None and not self.catching_up:
            connection.enqueue(frame)
        return frame

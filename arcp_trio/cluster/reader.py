"""One reader per node: every attached session's stream and the node's control
stream, in one blocking ``XREAD`` (docs/cluster.md).

Events are stamped into session streams inside Redis by whichever node runs the job
(``scripts.emit``); the node a session is attached to learns of them here and hands
them to the session's connection. One read serves a batch for the whole node.

The read is never cancelled to change what it reads (a cancelled blocking read is
how coredis loses pool slots, and a cancel would race with the reply): ``watch`` and
``unwatch`` change the cursors and append a wake-up to the node's own control
stream, which the blocked read is also reading, so it returns at once and the next
read has the new set. Other nodes write to the same control stream (a cancel for a
job this node runs, a session that moved away); those entries go to ``on_control``.

Back-pressure: the reader reads at most ``count`` entries per stream per read; a
session whose connection cannot keep up is ``unwatch``-ed by its owner and watched
again from its last delivered seq once writable, so nothing piles up here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio
from coredis.tokens import PureToken

from . import keys
from .redis import RedisError, unavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .redis import Redis

__all__ = ["NodeReader", "StampedFrame", "frames_of"]

log = logging.getLogger(__name__)

#: A control entry that only wakes the read.
WAKE = "wake"


@attrs.frozen
class StampedFrame:
    """One entry of a session's stream: what ``encode_job_frame`` needs."""

    seq: int
    message_type: str
    frame_id: str
    job_id: str
    number: int
    trace_id: str | None
    payload_json: str


def frames_of(entries: object) -> list[StampedFrame]:
    """Session-stream entries (``XREAD``/``XRANGE`` replies) as frames, in order."""
    frames = []
    for entry in entries:  # type: ignore[attr-defined]
        fields: Mapping[str, str] = entry.field_values
        frames.append(
            StampedFrame(
                seq=int(str(entry.identifier).partition("-")[2]),
                message_type=fields["t"],
                frame_id=fields["f"],
                job_id=fields["j"],
                number=int(fields["n"]),
                trace_id=fields["r"] or None,
                payload_json=fields["p"],
            )
        )
    return frames


class NodeReader:
    """Reads for one node until cancelled (``run``)."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        *,
        on_frames: Callable[[str, list[StampedFrame]], None],
        on_control: Callable[[dict[str, str]], None],
        block_ms: int = 1_000,
        count: int = 256,
        retry_sec: float = 0.5,
        control_cap: int = 10_000,
    ) -> None:
        self._redis = redis
        self.node_id = node_id
        self._on_frames = on_frames
        self._on_control = on_control
        self._block_ms = block_ms
        self._count = count
        self._retry_sec = retry_sec
        self._control_cap = control_cap
        self._control = keys.node_control(node_id)
        #: session id -> the stream id read through (``0-<seq>``).
        self._cursors: dict[str, str] = {}
        self._control_cursor = "0-0"
        #: False while Redis does not answer (the reader retries every ``retry_sec``).
        self.healthy = False

    @property
    def watching(self) -> int:
        return len(self._cursors)

    async def watch(self, session_id: str, after_seq: int) -> None:
        """Deliver the session's frames with ``seq > after_seq`` from the next read."""
        self._cursors[session_id] = f"0-{after_seq}"
        await self._wake()

    def unwatch(self, session_id: str) -> None:
        """Stop delivering the session's frames (it detached, moved or is congested).
        Frames already read in the current batch for it are dropped by the caller's
        ``on_frames`` (it no longer has the session attached); none is lost: the
        stream keeps them."""
        self._cursors.pop(session_id, None)

    async def send_control(self, node_id: str, fields: dict[str, str]) -> None:
        """Append ``fields`` to ``node_id``'s control stream (capped, approximately)."""
        await self._redis.xadd(
            keys.node_control(node_id),
            fields,
            trim_strategy=PureToken.MAXLEN,
            threshold=self._control_cap,
            trim_operator=PureToken.APPROXIMATELY,
        )

    async def _wake(self) -> None:
        await self.send_control(self.node_id, {"kind": WAKE})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        latest = await self._redis.xrevrange(self._control, "+", "-", count=1)
        self._control_cursor = str(latest[0].identifier) if latest else "0-0"
        self.healthy = True
        task_status.started()
        while True:
            try:
                await self._read_once()
            except (RedisError, OSError, TimeoutError) as exc:
                if self.healthy:
                    log.warning(
                        "node reader lost redis node=%s: %s", self.node_id, unavailable(exc)
                    )
                self.healthy = False
                await trio.sleep(self._retry_sec)
            else:
                self.healthy = True

    async def _read_once(self) -> None:
        streams = {self._control: self._control_cursor}
        session_of = {}
        for session_id, cursor in self._cursors.items():
            stream = keys.session_events(session_id)
            streams[stream] = cursor
            session_of[stream] = session_id
        replies = await self._redis.xread(streams, count=self._count, block=self._block_ms)
        for stream, entries in (replies or {}).items():
            if not entries:
                continue
            last = str(entries[-1].identifier)
            if stream == self._control:
                self._control_cursor = last
                for entry in entries:
                    fields = {str(k): str(v) for k, v in entry.field_values.items()}
                    if fields.get("kind") != WAKE:
                        self._on_control(fields)
                continue
            session_id = session_of[str(stream)]
            if session_id not in self._cursors:
                continue  # unwatched while the read was out
            self._cursors[session_id] = last
            self._on_frames(session_id, frames_of(entries))

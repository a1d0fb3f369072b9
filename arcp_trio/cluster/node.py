"""A node's lease on life, and how the others notice when it ends (docs/cluster.md).

Each node keeps ``arcp:{n:<id>}:alive`` set with a TTL (``lease_sec``), renewed every
``renew_sec``; a node that dies (SIGKILL) or stops (SIGSTOP, a long GC pause, a lost
network) stops renewing, and Redis lets the key expire on its own clock. Every node's
janitor looks for joined nodes without the key (``dead_nodes``) and takes their jobs
over (``scripts.take_over``, compare and set of owner and epoch), so a death is
noticed within ``lease_sec + janitor period + a round trip`` (defaults 3 + 1 s).

The renewal loop and the janitor sleep on Trio's clock; the expiry itself is Redis's
(a TTL is a duration, so the nodes' wall clocks need not agree).
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
    from .redis import Redis

__all__ = ["NodeLease", "Orphan", "dead_nodes", "orphans"]

log = logging.getLogger(__name__)


@attrs.define
class NodeLease:
    """Keeps ``node_id`` alive in Redis while ``run`` runs.

    ``held`` is False from the moment a renewal finds the key gone (the node was
    away past its lease: its jobs may have been taken over; fencing refuses its
    writes for those) or fails, until a renewal succeeds again.
    """

    redis: Redis
    node_id: str
    lease_sec: float = 3.0
    renew_sec: float = 1.0
    held: bool = False
    #: Times the lease was found lapsed on renewal.
    lapses: int = 0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.renew_sec < self.lease_sec:
            raise ValueError("renew_sec must be positive and below lease_sec")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, then renew every ``renew_sec`` until cancelled; on cancellation the
        lease is left to expire (a node that stops cleanly calls ``leave``)."""
        await self.redis.sadd(keys.nodes(), [self.node_id])
        await self._renew()
        task_status.started()
        while True:
            await trio.sleep(self.renew_sec)
            await self._renew()

    async def _renew(self) -> None:
        alive = keys.node_alive(self.node_id)
        ttl_ms = int(self.lease_sec * 1000)
        try:
            with trio.fail_after(self.renew_sec):
                # XX: renew only a lease still held, so a lapse is seen, not papered over.
                renewed = await self.redis.set(alive, "1", px=ttl_ms, condition=PureToken.XX)
                if not renewed:
                    await self.redis.set(alive, "1", px=ttl_ms)
                    # A janitor may have struck a node it saw dead off the list: join
                    # again, so that this node's next death is noticed too.
                    await self.redis.sadd(keys.nodes(), [self.node_id])
        except (RedisError, OSError, trio.TooSlowError) as exc:
            if self.held:
                log.warning("node lease renewal failed node=%s: %s", self.node_id, unavailable(exc))
            self.held = False
            return
        if not renewed and self.held:
            self.lapses += 1
            log.warning("node lease had lapsed node=%s: jobs may be taken over", self.node_id)
        self.held = True

    async def leave(self) -> None:
        """Give the lease up now (a clean stop): the others take over at once."""
        await self.redis.delete([keys.node_alive(self.node_id)])
        self.held = False


async def dead_nodes(redis: Redis, *, me: str) -> list[str]:
    """The joined nodes, other than ``me``, whose lease has expired."""
    members = sorted(str(node) for node in await redis.smembers(keys.nodes()) if node != me)
    if not members:
        return []
    alive = await redis.exists([keys.node_alive(node) for node in members])
    if alive == len(members):
        return []
    dead = []
    for node in members:
        if not await redis.exists([keys.node_alive(node)]):
            dead.append(node)
    return dead


@attrs.frozen
class Orphan:
    """A job whose owner is gone, as it stood: what ``take_over`` compares against."""

    job_id: str
    owner: str
    epoch: int
    cancel_requested: bool


async def orphans(redis: Redis, node: str, *, limit: int = 1000) -> list[Orphan]:
    """Up to ``limit`` jobs of ``node``'s (bounded: a janitor pass takes a page)."""
    found: list[Orphan] = []
    cursor = 0
    while len(found) < limit:
        cursor, page = await redis.sscan(keys.node_jobs(node), cursor, count=100)
        for job_id in sorted(str(job) for job in page):
            owner, epoch, cancel = await redis.hmget(keys.job(job_id), ["owner", "epoch", "cancel"])
            if owner == node and epoch is not None:
                found.append(Orphan(str(job_id), str(owner), int(epoch), bool(cancel)))
        if cursor == 0:
            break
    return found[:limit]

"""Runtime settings, with the defaults `arcp-trio serve` uses."""

from __future__ import annotations

import enum
from typing import Any

import attrs

__all__ = ["LeaseExpiry", "RuntimeConfig"]


class LeaseExpiry(enum.StrEnum):
    """What the runtime does when a running job's lease reaches ``expires_at`` (§9.5).

    ``TERMINATE`` (the default): the job ends then with ``job.error LEASE_EXPIRED`` and
    its provisioned credentials (§9.8) are revoked at that moment, whatever the agent
    is doing. ``ON_USE``: only the spec's minimum: operations at or after the instant
    fail with ``LEASE_EXPIRED``, and a job that never uses its lease runs on, holding
    its credentials until it ends. docs/leases.md says why the default fails closed.
    """

    TERMINATE = "terminate"
    ON_USE = "on-use"


_MIB = 1 << 20


def _positive(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be > 0, got {value}")


def _at_most_mib(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    # §14: "Runtimes SHOULD cap individual chunk size (e.g., 1 MB)".
    if not 1 <= value <= _MIB:
        raise ValueError(f"{attr.name} must be between 1 and {_MIB}")


@attrs.frozen(kw_only=True)
class RuntimeConfig:
    """Tunable limits and timings. All durations are seconds of Trio time.

    Attributes:
        heartbeat_interval_sec: §6.4 interval advertised in the welcome (an integer on
            the wire, so this is an ``int``).
        resume_window_sec: how long a detached session stays resumable (§6.3).
        max_buffered_events: per-session cap on unacknowledged events; beyond it the
            oldest are evicted and the client is told (§6.5).
        job_history_limit: events kept per job for subscribe-with-history (§7.6).
        event_cache_events: with a durable store, how many of the newest events RAM
            keeps per attached session and per running job; the store has them all,
            and resumes and subscribes read older ones back a page at a time. A
            detached session and a finished job keep none in RAM.
        history_memory_events: job-history events RAM holds across all jobs. Without
            a durable store RAM is the only copy, so past this the oldest are dropped
            (a subscribe says how many with ``history_missing``).
        backpressure_high_water: frames queued on a live connection before emitting
            agents wait for the writer to catch up.
        max_message_size: largest inbound frame, in bytes.
        result_chunk_bytes: largest ``result_chunk`` data piece; larger writes are split.
        max_result_bytes: cap on one streamed result's total size (§14).
        handshake_timeout_sec: how long a new connection may take to say hello.
        shutdown_grace_sec: how long running jobs get to finish on shutdown before
            they are cancelled with a terminal.
        max_concurrent_jobs: jobs beyond this wait as ``pending`` (None: no limit).
        ping_reply_batch_sec: after a heartbeat ping, input from that peer may wait
            this long to be read, so that the pongs to the pings of one timer pass are
            read in one pass instead of one wake-up each (WebSocket servers on Linux;
            0 reads at once). The most a request sent just after a ping is delayed.
    """

    runtime_name: str = "arcp-trio"
    runtime_version: str = "0.1.0"
    heartbeat_interval_sec: int = attrs.field(default=30, validator=_positive)
    resume_window_sec: int = attrs.field(default=600, validator=_positive)
    max_buffered_events: int = attrs.field(default=100_000, validator=_positive)
    job_history_limit: int = attrs.field(default=100_000, validator=_positive)
    event_cache_events: int = attrs.field(default=1024, validator=_positive)
    history_memory_events: int = attrs.field(default=200_000, validator=_positive)
    backpressure_high_water: int = attrs.field(default=1024, validator=_positive)
    max_message_size: int = attrs.field(default=_MIB, validator=_positive)
    result_chunk_bytes: int = attrs.field(default=256 * 1024, validator=_at_most_mib)
    max_result_bytes: int = attrs.field(default=256 * _MIB, validator=_positive)
    handshake_timeout_sec: float = attrs.field(default=10.0, validator=_positive)
    shutdown_grace_sec: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    max_concurrent_jobs: int | None = None
    ping_reply_batch_sec: float = attrs.field(default=0.02, validator=attrs.validators.ge(0))
    #: Denial codes that end the job with ``job.error`` instead of only failing the
    #: operation (§9.6: "if the runtime treats exhaustion as fatal").
    fatal_denials: frozenset[str] = frozenset()
    #: §9.5: "MAY proactively terminate jobs whose leases have expired": by default it
    #: does (see ``LeaseExpiry``).
    lease_expiry: LeaseExpiry = attrs.field(default=LeaseExpiry.TERMINATE, converter=LeaseExpiry)
    #: §9.7: whether a lease without ``model.use`` may invoke any model.
    model_use_default_allow: bool = True
    #: Finished jobs (and their history and idempotency records) are forgotten this
    #: long after they ended, by a janitor that runs every ``janitor_interval_sec``.
    job_retention_sec: float = attrs.field(default=24 * 3600.0, validator=_positive)
    janitor_interval_sec: float = attrs.field(default=60.0, validator=_positive)

"""Limits on what a peer may send: every field the runtime processes is bounded.

Why: a runtime hosts many sessions on one event loop, so no single frame may cost it
more than a few milliseconds (§14 names the memory side of the same concern for
result chunks). Each limit below is checked while the frame is structured
(``codec.decode``), before any costly work (lease compilation, budget arithmetic,
cursor parsing), and a frame over a limit is answered ``INVALID_REQUEST`` with the
field path (``$.payload.lease_request['fs.read'][3]``) and the frame's id.

The values are generous for honest use: real leases hold a handful of short
patterns, real ids are ULIDs. ``docs/limits.md`` lists them with the reasons; a test
keeps that page and these constants in step.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ID_SCAN_CHARS",
    "MAX_AGENTS_ADVERTISED",
    "MAX_AMOUNT_FRACTION_DIGITS",
    "MAX_AMOUNT_INTEGER_DIGITS",
    "MAX_CODE_LEN",
    "MAX_CURSOR_LEN",
    "MAX_ENCODINGS",
    "MAX_FEATURES",
    "MAX_FEATURE_LEN",
    "MAX_IDEMPOTENCY_KEY_LEN",
    "MAX_ID_LEN",
    "MAX_INT",
    "MAX_LEASE_CHARS",
    "MAX_LEASE_NAMESPACES",
    "MAX_LEASE_WILDCARDS",
    "MAX_NAMESPACE_LEN",
    "MAX_NAME_LEN",
    "MAX_NESTING",
    "MAX_PATTERNS_PER_NAMESPACE",
    "MAX_PATTERN_LEN",
    "MAX_PATTERN_WILDCARDS",
    "MAX_REASON_LEN",
    "MAX_REF_LEN",
    "MAX_SCHEME_LEN",
    "MAX_STATUS_FILTER",
    "MAX_TIMESTAMP_LEN",
    "MAX_TOKEN_LEN",
    "MAX_TYPE_LEN",
    "MAX_UINT",
    "MIN_INT",
]

#: Integers on the wire are signed 64-bit (seqs, limits, counts): anything beyond is
#: refused, never rounded or wrapped.
MAX_INT: Final = (1 << 63) - 1
MIN_INT: Final = -(1 << 63)

#: Free-form values the runtime keeps (``job.submit.input``) are what its encoder can
#: write back (agents, results and fingerprints are made of them): integers up to
#: unsigned 64-bit, and arrays and objects nested at most this deep (orjson's limit).
MAX_UINT: Final = (1 << 64) - 1
MAX_NESTING: Final = 254

#: The first characters of a frame that cannot be parsed whole (too large, too deep,
#: not UTF-8 further on): read for its ``id`` so the refusal is correlated, and what
#: a transport keeps of a message it refuses.
ID_SCAN_CHARS: Final = 4096

#: An envelope ``id``: a ULID is 26 characters, ``prefix_ULID`` a few more.
MAX_ID_LEN: Final = 64
#: An envelope ``type`` (unknown types are answered, so they are read).
MAX_TYPE_LEN: Final = 64
#: Every other identifier a client echoes back: ``session_id``, ``job_id``, resume
#: tokens, ping nonces, ``parent_job_id``, ``delegate_id``.
MAX_REF_LEN: Final = 128
#: ``client.name`` and ``client.version``; each half of an agent reference
#: (``name@version``).
MAX_NAME_LEN: Final = 128
#: ``auth.token``: room for a JWT with a few claims.
MAX_TOKEN_LEN: Final = 8192
#: ``auth.scheme``.
MAX_SCHEME_LEN: Final = 32
#: Timestamps (``sent_at``, ``received_at``, ``created_after``, ``expires_at``).
MAX_TIMESTAMP_LEN: Final = 64
#: Free-text reasons (``session.close``, ``session.bye``, ``job.cancel``).
MAX_REASON_LEN: Final = 1024
#: Error-like codes a client may send (``session.bye.code``, ``job.cancel.code``).
MAX_CODE_LEN: Final = 64
#: ``capabilities.features``: entries, and characters per entry.
MAX_FEATURES: Final = 64
MAX_FEATURE_LEN: Final = 64
#: ``capabilities.encodings`` entries (each at most ``MAX_FEATURE_LEN``).
MAX_ENCODINGS: Final = 16
#: ``capabilities.agents`` entries a client advertises (the runtime ignores them).
MAX_AGENTS_ADVERTISED: Final = 64
#: ``job.submit.idempotency_key`` (WIRE.md §10: 1 to 256 characters).
MAX_IDEMPOTENCY_KEY_LEN: Final = 256
#: ``session.list_jobs.cursor``: a decimal ordinal of at most 19 digits (int64).
MAX_CURSOR_LEN: Final = 19
#: ``session.list_jobs.filter.status`` entries (there are six statuses).
MAX_STATUS_FILTER: Final = 6
#: ``lease_request``: namespaces, characters per namespace name, patterns per
#: namespace, characters per pattern, and characters over every pattern of the lease.
MAX_LEASE_NAMESPACES: Final = 16
MAX_NAMESPACE_LEN: Final = 64
MAX_PATTERNS_PER_NAMESPACE: Final = 64
MAX_PATTERN_LEN: Final = 1024
MAX_LEASE_CHARS: Final = 4096
#: Wildcards (each ``*``, ``?`` and ``[``) per pattern and over a whole lease: what
#: makes a glob costly to compile and to match is its wildcards, not its literal text.
MAX_PATTERN_WILDCARDS: Final = 32
MAX_LEASE_WILDCARDS: Final = 256
#: ``cost.budget`` amounts (§9.6): digits before and after the point, so budget
#: arithmetic stays exact in ``Decimal``'s default 28-digit precision.
MAX_AMOUNT_INTEGER_DIGITS: Final = 15
MAX_AMOUNT_FRACTION_DIGITS: Final = 12

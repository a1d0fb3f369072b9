"""Identifier formats (WIRE.md §2).

Envelope ids are bare ULIDs (26 chars, Crockford base32, uppercase); sessions, jobs,
results and resume tokens are ``prefix_ULID``; trace ids are 32 lowercase hex chars,
not all zeros (a bare W3C trace-id, which is what the reference SDK accepts).

Minting reads the system clock for the ULID's millisecond field: ULIDs only need to
sort roughly by creation, never to agree with Trio's clock, so this is the one place
outside the wall-clock module that reads ``time``.
"""

from __future__ import annotations

import base64
import os
import random
import re
import time

__all__ = [
    "is_envelope_id",
    "is_trace_id",
    "is_ulid",
    "new_frame_id",
    "new_id",
    "new_trace_id",
    "new_ulid",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_PREFIXED_RE = re.compile(r"[a-z]+_[0-7][0-9A-HJKMNP-TV-Z]{25}")
_UUID7_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_TRACE_RE = re.compile(r"[0-9a-f]{32}")


#: RFC 4648 base32 digits → Crockford's, so the C-speed ``b32encode`` does the work.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())


def new_ulid() -> str:
    """A fresh ULID: 48-bit milliseconds then 80 random bits, 26 base32 chars.

    The 130-bit value is shifted left by 30 bits to fill 20 bytes, whose base32
    encoding starts with the ULID's 26 digits (event ids are minted per event, so
    this is on the hot path).
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    encoded = base64.b32encode((value << 30).to_bytes(20, "big"))
    return encoded[:26].translate(_TO_CROCKFORD).decode("ascii")


#: Every 10-bit value as two Crockford digits (``new_frame_id`` encodes 13 pairs).
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]


#: The last two digit pairs of a frame id: a counter within the millisecond.
_LOW_MAX = (1 << 20) - 1

#: ``new_frame_id``'s state: the millisecond, the id's first 22 digits (that
#: millisecond's ten and the top 60 random bits), and the counter (the last 20 bits).
_frame_ids: list[tuple[int, str, int]] = [(-1, "", _LOW_MAX)]


def new_frame_id() -> str:
    """A ULID for an envelope id: same format, cheaper randomness and encoding.

    Envelope ids only need to be unique and well-formed, not unguessable. So each
    millisecond draws 80 bits from ``random`` (no syscall, unlike ``os.urandom``)
    and encodes them with the time from a table of digit pairs, once; the ids of the
    same millisecond count up from there in their last 20 bits, like the ULID spec's
    monotonic mode (should a millisecond mint a million, fresh bits are drawn). Every
    event gets one, so this is two table lookups on most calls. Anything that must
    not be guessed (session ids, resume tokens) uses ``new_ulid``/``new_id``.
    """
    ms = time.time_ns() // 1_000_000
    cached_ms, head, low = _frame_ids[0]
    low += 1
    if ms != cached_ms or low > _LOW_MAX:
        p = _PAIRS
        r = random.getrandbits(80)
        # The top two of the 130 encoded bits are zero: pairs 1-5 are the 48-bit time.
        head = (
            p[ms >> 40]
            + p[ms >> 30 & 1023]
            + p[ms >> 20 & 1023]
            + p[ms >> 10 & 1023]
            + p[ms & 1023]
            + p[r >> 70]
            + p[r >> 60 & 1023]
            + p[r >> 50 & 1023]
            + p[r >> 40 & 1023]
            + p[r >> 30 & 1023]
            + p[r >> 20 & 1023]
        )
        low = r & _LOW_MAX
    _frame_ids[0] = (ms, head, low)
    return head + _PAIRS[low >> 10] + _PAIRS[low & 1023]


def new_id(prefix: str) -> str:
    """``prefix_ULID``, e.g. ``new_id("job")`` → ``job_01J...``."""
    return f"{prefix}_{new_ulid()}"


def new_trace_id() -> str:
    """A random 32-hex W3C trace id (never all zeros)."""
    while True:
        trace = os.urandom(16).hex()
        if trace != "0" * 32:
            return trace


def is_ulid(value: str) -> bool:
    return _ULID_RE.fullmatch(value) is not None


def is_envelope_id(value: str) -> bool:
    """Accepted envelope ids: ULID, lowercase UUIDv7, or ``prefix_ULID`` (WIRE.md §2)."""
    return (
        _ULID_RE.fullmatch(value) is not None
        or _PREFIXED_RE.fullmatch(value) is not None
        or _UUID7_RE.fullmatch(value) is not None
    )


def is_trace_id(value: str) -> bool:
    """32 lowercase hex chars, not all zeros."""
    return _TRACE_RE.fullmatch(value) is not None and value != "0" * 32

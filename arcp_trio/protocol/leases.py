"""Leases (§9): grammar, matching, subsetting, expiry and budgets, given ``now``.

Theory of operation
===================

A lease (§9.1) maps namespaces to lists of patterns. ``parse_lease`` validates a
``lease_request`` (§9.2) and returns a `Lease` whose patterns are compiled once, at
parse time, into matchers; every pattern error is ``INVALID_REQUEST``
(`InvalidRequest`) with a message naming the namespace and the pattern.

The runtime calls `Lease.authorize` synchronously before dispatching any mediated
operation (§9.3). The order of checks is fixed: deny by default (``PERMISSION_DENIED``
unless some pattern of the namespace matches the target), then expiry (§9.5:
``LEASE_EXPIRED`` at or after ``expires_at``), then every budget counter (§9.6:
``BUDGET_EXHAUSTED`` when any counter is ≤ 0). `Lease.authorize_model` is the same for
``model.use`` (§9.7), except that a lease without ``model.use`` allows any model iff the
deployment says so (``default_allow``). A target that cannot be normalised (below) is
never matched, so it is denied.

Delegation (§9.4, §10) is `child_lease`: `check_subset` proves that the child's
grants are covered by the parent's, then the child inherits what it left out (the
parent's expiry, its remaining budget in currencies the child did not name, and its
``model.use``). Containment of one glob by another is decided
syntactically; the check is sound (it never accepts a child that can match something
its parent cannot) but incomplete, so a child that is only covered by the *union* of
several parent patterns, or by an equivalent pattern spelled differently (``?*`` vs
``*?``), is rejected with ``LEASE_SUBSET_VIOLATION``.

Nothing here reads a clock or does I/O: ``now`` is passed in.

Glob syntax shared by every namespace
-------------------------------------

- ``*`` matches any run of characters (see each namespace for whether it crosses
  ``/``); consecutive ``*`` are one ``*`` except where ``**`` has a meaning of its own.
- ``?`` matches exactly one character.
- ``[abc]``, ``[a-z]``, ``[!a-z]`` match one character in (or, with ``!``, not in) the
  set. A ``]`` right after ``[`` or ``[!`` is a member; ``-`` first or last is
  literal; ``^`` is an ordinary character. An unclosed ``[`` or a reversed range is a
  bad pattern. Classes are the only escape: ``[*]``, ``[?]`` and ``[[]`` match ``*``,
  ``?`` and ``[``.
- Every other character is literal, and matching is case-sensitive except for URL
  schemes and hosts. A pattern containing NUL is bad.

``fs.read`` / ``fs.write``: path globs
--------------------------------------

- A pattern is an absolute path (starts with ``/``). Repeated and trailing ``/`` are
  ignored; ``.`` and ``..`` segments are bad patterns.
- ``*`` and ``?`` never match ``/``: they stay within one segment. A class never
  matches ``/``, and a class naming ``/`` is a bad pattern.
- ``**`` as a whole segment matches zero or more whole segments: ``/data/**`` matches
  ``/data``, ``/data/a`` and ``/data/a/b``, and never ``/database`` or ``/data2/x``.
  ``**`` anywhere else (``/data**``, ``/a/**b``) is a bad pattern. ``/**`` matches
  every path; ``/`` matches only the root.
- Targets are normalised lexically before matching: repeated ``/`` collapse, ``.``
  segments go, ``..`` removes the previous segment, and a trailing ``/`` is dropped.
  A relative target, one containing NUL, or one whose ``..`` climbs above ``/`` is
  denied. So ``/data/../etc/passwd`` is ``/etc/passwd`` and never matches
  ``/data/**``. Symlinks are not resolved (that needs I/O): a tool that follows them
  should authorise the resolved path.
- A leading ``.`` is not special: ``/data/*`` matches ``/data/.env``.

``net.fetch``: URL globs
------------------------

- A pattern is ``scheme://host[:port][/path-glob]``. The scheme is ``http`` or
  ``https`` (§9.2: "Outbound HTTP/HTTPS"), compared case-insensitively. User info
  (``user@``) and fragments (``#``) are bad patterns.
- ``host`` is compared case-insensitively, without a trailing dot. It is one of: a DNS
  name; an IPv4 address; an IPv6 address in brackets; ``*.example.com``, which matches
  any name with at least one more label (``a.example.com``, ``a.b.example.com``) but
  never ``example.com`` itself nor ``evil-example.com``; or ``*``, any host. Any other
  ``*`` in the host is a bad pattern.
- ``port`` defaults to the scheme's (80 for http, 443 for https), so
  ``https://h/`` and ``https://h:443/`` are the same; ``:*`` is any port.
- The path glob follows the path rules above; an absent path means ``/`` only, so use
  ``https://h/**`` for a whole origin. In URL patterns ``?`` is the one-character
  wildcard, never a query separator, and ``%XX`` is the literal character it encodes.
- Targets: query and fragment are ignored (a lease grants paths, not queries).
  Targets are denied when the scheme is not http(s), they carry user info, contain a
  space, control character or backslash, have a bad host or port, or have a path
  with a malformed ``%`` escape, an encoded ``/``, ``\\`` or NUL (``%2F``, ``%5C``,
  ``%00``), or ``..`` climbing above ``/``. The path is percent-decoded once (UTF-8)
  and then normalised like an ``fs.*`` target.

``tool.call``, ``agent.delegate``, ``model.use``, ``x-vendor.*``: name globs
----------------------------------------------------------------------------

- Names are opaque strings (§9.7: "model-name globs opaque to the protocol"). ``*``
  matches any run of characters *including* ``/``, so ``tier-fast/*`` matches
  ``tier-fast/a/b`` and ``anthropic/claude-3-*`` matches
  ``anthropic/claude-3-haiku-20240307``; ``?`` and classes match any one character.
- An empty target is never matched. ``agent.delegate`` targets are whatever the
  runtime passes (typically the agent name, or ``name@version``).

``cost.budget``
---------------

Amounts ``currency:decimal`` (§9.6), parsed with `parse_amount`. Several amounts in
one currency add up. These patterns are never matched against targets; they seed
`Budget` counters.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote

import attrs

from ..wire.errors import (
    BudgetExhausted,
    InvalidRequest,
    LeaseExpired,
    LeaseSubsetViolation,
    PermissionDenied,
)
from ..wire.limits import MAX_AMOUNT_FRACTION_DIGITS, MAX_AMOUNT_INTEGER_DIGITS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import datetime

__all__ = [
    "LEASE_PATH",
    "RESERVED_NAMESPACES",
    "AmountPattern",
    "Budget",
    "Lease",
    "NameGlob",
    "PathGlob",
    "Pattern",
    "UrlGlob",
    "check_subset",
    "child_lease",
    "compile_pattern",
    "normalize_path",
    "parse_amount",
    "parse_lease",
    "pattern_covers",
]

#: §9.2 reserved top-level namespaces.
RESERVED_NAMESPACES: frozenset[str] = frozenset(
    {"fs.read", "fs.write", "net.fetch", "tool.call", "agent.delegate", "cost.budget", "model.use"}
)
_VENDOR_PREFIX: Final = "x-vendor."
_PATH_NAMESPACES: Final = frozenset({"fs.read", "fs.write"})
_AMOUNT_RE = re.compile(
    rf"(?P<currency>[A-Za-z][A-Za-z0-9]{{0,9}}):"
    rf"(?P<amount>[0-9]{{1,{MAX_AMOUNT_INTEGER_DIGITS}}}(?:\.[0-9]{{1,{MAX_AMOUNT_FRACTION_DIGITS}}})?)"
)
_SLASH: Final = 0x2F


class _BadPattern(ValueError):
    """Internal: why a pattern is malformed; becomes `InvalidRequest` at the edge."""


# ---------------------------------------------------------------------------------------
# Amounts and budgets (§9.6)
# ---------------------------------------------------------------------------------------


def parse_amount(pattern: str) -> tuple[str, Decimal]:
    """``"USD:5.00"`` → ``("USD", Decimal("5.00"))`` (§9.6 amount grammar).

    Raises:
        InvalidRequest: not ``currency:decimal``.
    """
    match = _AMOUNT_RE.fullmatch(pattern)
    if match is None:
        shown = pattern if len(pattern) <= 60 else pattern[:60] + "..."
        raise InvalidRequest(
            f"cost.budget pattern {shown!r} is not an amount like 'USD:5.00' (at most "
            f"{MAX_AMOUNT_INTEGER_DIGITS} digits before the point and "
            f"{MAX_AMOUNT_FRACTION_DIGITS} after it)"
        )
    try:
        return match["currency"], Decimal(match["amount"])
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise InvalidRequest(f"bad amount in {pattern!r}") from None


def _format_amount(currency: str, amount: Decimal) -> str:
    # Fixed-point, never exponent notation ("1E-7"), so it parses back (§9.6 grammar).
    return f"{currency}:{amount:f}"


@attrs.define
class Budget:
    """Per-currency counters, initialised from the lease at acceptance (§9.6).

    All arithmetic is `Decimal`, so repeated charges never drift.
    """

    initial: dict[str, Decimal]
    remaining: dict[str, Decimal]

    @classmethod
    def from_patterns(cls, patterns: Sequence[str]) -> Budget:
        """Counters from ``cost.budget`` patterns; amounts in one currency add up.

        Raises:
            InvalidRequest: a pattern is not an amount.
        """
        initial: dict[str, Decimal] = {}
        for pattern in patterns:
            currency, amount = parse_amount(pattern)
            # Several amounts in one currency add up (the reference does the same).
            initial[currency] = initial.get(currency, Decimal(0)) + amount
        return cls(initial=dict(initial), remaining=dict(initial))

    @classmethod
    def from_lease(cls, lease: Lease) -> Budget | None:
        """The lease's counters, or None when it has no ``cost.budget`` grant."""
        if "cost.budget" not in lease.grants:
            return None
        return cls.from_patterns(lease.grants["cost.budget"])

    def charge(self, currency: str, value: Decimal) -> Decimal | None:
        """Decrement ``currency`` by ``value``; None when it is not budgeted.

        Counters may go below zero: the operation that overspent has already
        happened, and the next `Lease.authorize` fails.

        Raises:
            InvalidRequest: ``value`` is negative or not finite (§9.6: "Negative
                values are rejected and produce no decrement").
        """
        if not value.is_finite():
            raise InvalidRequest(f"cost metric values must be finite, got {value}")
        if value < 0:
            raise InvalidRequest(f"cost metric values must be >= 0, got {value}")
        if currency not in self.remaining:
            return None
        self.remaining[currency] -= value
        return self.remaining[currency]

    def reserve(self, amounts: Mapping[str, Decimal]) -> None:
        """Set ``amounts`` aside for a delegated child (§9.4, §10).

        Each budgeted currency is decremented, so delegating the same remainder twice
        cannot multiply authority; other currencies are ignored. Give back what the
        child did not spend with `release`.

        Raises:
            InvalidRequest: an amount is negative or not finite.
        """
        for currency, amount in amounts.items():
            if not amount.is_finite() or amount < 0:
                raise InvalidRequest(f"cannot reserve {currency}:{amount}")
        for currency, amount in amounts.items():
            if currency in self.remaining:
                self.remaining[currency] -= amount

    def release(self, amounts: Mapping[str, Decimal]) -> None:
        """Return a child's leftover counters (its ``remaining``) after `reserve`.

        A negative leftover (the child overspent its reservation) is charged to this
        budget, so parent and child together never spend more than the parent had.
        Currencies this budget does not track are ignored.
        """
        for currency, amount in amounts.items():
            if currency in self.remaining and amount.is_finite():
                self.remaining[currency] += amount

    def exhausted(self) -> str | None:
        """The first currency whose counter is ≤ 0, if any (§9.6)."""
        for currency, left in self.remaining.items():
            if left <= 0:
                return currency
        return None

    def as_strings(self) -> dict[str, str]:
        """Reference dialect: ``{"USD": "USD:1.00"}`` (WIRE.md §10)."""
        return {cur: _format_amount(cur, amount) for cur, amount in self.remaining.items()}

    def as_numbers(self) -> dict[str, float]:
        """Spec dialect: ``{"USD": 1.0}`` (§7.1)."""
        return {cur: float(amount) for cur, amount in self.remaining.items()}


# ---------------------------------------------------------------------------------------
# Glob tokens: character sets and stars
# ---------------------------------------------------------------------------------------


@attrs.frozen
class _CharSet:
    """One character: in ``ranges`` (closed code-point intervals), or not in them."""

    negated: bool
    ranges: tuple[tuple[int, int], ...]

    def contains(self, ch: str, *, path: bool) -> bool:
        """Whether this set matches ``ch`` (as its ``regex`` would)."""
        if path and ch == "/":
            return False  # never within a path segment
        code = ord(ch)
        inside = any(lo <= code <= hi for lo, hi in self.ranges)
        return inside != self.negated

    def regex(self, *, path: bool) -> str:
        if not self.negated and len(self.ranges) == 1 and self.ranges[0][0] == self.ranges[0][1]:
            return re.escape(chr(self.ranges[0][0]))
        body = "".join(
            re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
            for lo, hi in self.ranges
        )
        if self.negated:
            if path:
                return f"[^/{body}]"
            return f"[^{body}]" if body else "."
        return f"[{body}]"


class _Star:
    """``*``: any run of characters (within one segment for paths)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STAR"


class _GlobStar:
    """``**`` as a whole path segment: zero or more segments."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "GLOBSTAR"


_STAR: Final = _Star()
_GLOBSTAR: Final = _GlobStar()
_ANY_CHAR: Final = _CharSet(negated=True, ranges=())
_Token = _CharSet | _Star


def _literal(ch: str) -> _CharSet:
    code = ord(ch)
    return _CharSet(negated=False, ranges=((code, code),))


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sort and merge overlapping or adjacent intervals."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _without_slash(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if lo <= _SLASH <= hi:
            if lo < _SLASH:
                out.append((lo, _SLASH - 1))
            if hi > _SLASH:
                out.append((_SLASH + 1, hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _ranges_subset(inner: tuple[tuple[int, int], ...], outer: tuple[tuple[int, int], ...]) -> bool:
    # ``outer`` is merged, so each inner interval must fit inside a single outer one.
    return all(any(olo <= lo and hi <= ohi for olo, ohi in outer) for lo, hi in inner)


def _ranges_disjoint(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> bool:
    return all(hi < blo or bhi < lo for lo, hi in a for blo, bhi in b)


def _charset_subset(child: _CharSet, parent: _CharSet) -> bool:
    """Whether every character ``child`` matches, ``parent`` matches."""
    if not child.negated and not parent.negated:
        return _ranges_subset(child.ranges, parent.ranges)
    if not child.negated:
        return _ranges_disjoint(child.ranges, parent.ranges)
    if parent.negated:
        return _ranges_subset(parent.ranges, child.ranges)
    return False  # a negated set is (nearly) the whole alphabet; a plain one is finite


class _Reader:
    """Reads glob characters, decoding ``%XX`` when ``percent`` (URL paths)."""

    def __init__(self, text: str, *, percent: bool) -> None:
        self.text = text
        self.pos = 0
        self.percent = percent

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos]

    def literal(self) -> str:
        """The next character as a literal (``%XX`` decoded in URL mode)."""
        ch = self.text[self.pos]
        if self.percent and ch == "%":
            escape = self.text[self.pos + 1 : self.pos + 3]
            if not re.fullmatch(r"[0-9A-Fa-f]{2}", escape):
                raise _BadPattern("'%' must start a %XX escape")
            decoded = chr(int(escape, 16))
            if decoded in "/\\\x00":
                raise _BadPattern(f"%{escape} (encoded {decoded!r}) is not allowed")
            self.pos += 3
            return decoded
        self.pos += 1
        return ch


def _parse_class(reader: _Reader, *, path: bool) -> _CharSet:
    reader.pos += 1  # the "["
    negated = False
    if not reader.at_end() and reader.peek() == "!":
        negated = True
        reader.pos += 1
    items: list[tuple[int, int]] = []
    first = True
    while True:
        if reader.at_end():
            raise _BadPattern("unclosed '['")
        if reader.peek() == "]" and not first:
            reader.pos += 1
            break
        first = False
        lo = reader.literal()
        hi = lo
        if (
            not reader.at_end()
            and reader.peek() == "-"
            and reader.pos + 1 < len(reader.text)
            and reader.text[reader.pos + 1] != "]"
        ):
            reader.pos += 1
            hi = reader.literal()
            if ord(hi) < ord(lo):
                raise _BadPattern(f"reversed range {lo}-{hi} in [...]")
        if path and "/" in (lo, hi):
            raise _BadPattern("'/' inside [...] can never match within a path segment")
        items.append((ord(lo), ord(hi)))
    ranges = _merge(items)
    if path:
        # A range spanning '/' (e.g. "!-0") still never matches it in a path.
        ranges = _without_slash(ranges)
    return _CharSet(negated=negated, ranges=ranges)


#: One element of a glob between stars: a run of literal text, or one character of a set.
_Element = str | _CharSet
#: A glob as the runs between its stars: ``a*b?c`` is ``(("a",), ("b", ANY, "c"))``.
_Chunks = tuple[tuple[_Element, ...], ...]

_SPECIAL: Final = re.compile(r"[*?\[]")
_SPECIAL_PERCENT: Final = re.compile(r"[*?\[%]")
#: The special characters but ``*``.
_NOT_STAR: Final = re.compile(r"[?\[]")
_NOT_STAR_PERCENT: Final = re.compile(r"[?\[%]")


def _parse_glob(text: str, *, path: bool, percent: bool = False) -> _Chunks:
    """Glob text (one path segment, or a whole name) → its star-separated chunks.

    Linear, and cheap per character: literal text between special characters is
    taken in one slice (a pattern is mostly literal), never one object per character.
    """
    special = _SPECIAL_PERCENT if percent else _SPECIAL
    other_specials = _NOT_STAR_PERCENT if percent else _NOT_STAR
    if other_specials.search(text) is None:
        # Literal runs and stars only (most patterns): one split.
        if path and "**" in text:
            raise _BadPattern("'**' is only allowed as a whole path segment")
        runs = text.split("*")
        if len(runs) == 1:
            return ((text,),)
        return tuple(
            (run,) if run else ()
            for index, run in enumerate(runs)
            if run or index == 0 or index == len(runs) - 1
        )
    chunks: list[tuple[_Element, ...]] = []
    chunk: list[_Element] = []
    run: list[str] = []
    pos, end = 0, len(text)
    reader = _Reader(text, percent=percent)

    def flush() -> None:
        if run:
            chunk.append("".join(run))
            run.clear()

    while pos < end:
        found = special.search(text, pos)
        stop = end if found is None else found.start()
        if stop > pos:
            run.append(text[pos:stop])
        if found is None:
            break
        mark = text[stop]
        if mark == "*":
            if path and text.startswith("*", stop + 1):
                raise _BadPattern("'**' is only allowed as a whole path segment")
            flush()
            if chunk or not chunks:
                # Consecutive stars are one star: no empty chunk between them.
                chunks.append(tuple(chunk))
                chunk = []
            pos = stop + 1
        elif mark == "?":
            flush()
            chunk.append(_ANY_CHAR)
            pos = stop + 1
        elif mark == "[":
            flush()
            reader.pos = stop
            chunk.append(_parse_class(reader, path=path))
            pos = reader.pos
        else:  # "%" in a URL path: the literal character it encodes
            reader.pos = stop
            run.append(reader.literal())
            pos = reader.pos
    flush()
    chunks.append(tuple(chunk))
    return tuple(chunks)


def _expand(chunks: _Chunks) -> tuple[_Token, ...]:
    """One token per character and star (what containment compares, §9.4)."""
    tokens: list[_Token] = []
    for index, chunk in enumerate(chunks):
        if index:
            tokens.append(_STAR)
        for element in chunk:
            if isinstance(element, str):
                tokens.extend(_literal(ch) for ch in element)
            else:
                tokens.append(element)
    return tuple(tokens)


class _LiteralGlob:
    """Literal runs joined by stars: matched with ``startswith``, ``find`` and
    ``endswith`` (leftmost placement of each middle run is always safe for globs),
    no regex to compile."""

    __slots__ = ("_first", "_last", "_middle", "_shortest")

    def __init__(self, runs: Sequence[str]) -> None:
        self._first = runs[0]
        self._last = runs[-1]
        self._middle = tuple(runs[1:-1])
        self._shortest = sum(len(run) for run in runs)

    def __call__(self, target: str) -> bool:
        if len(target) < self._shortest:
            return False
        if not target.startswith(self._first) or not target.endswith(self._last):
            return False
        pos, stop = len(self._first), len(target) - len(self._last)
        for run in self._middle:
            found = target.find(run, pos, stop)
            if found < 0:
                return False
            pos = found + len(run)
        return True


def _chunks_regex(chunks: _Chunks, *, path: bool) -> re.Pattern[str]:
    """Compile chunks for ``fullmatch``, without catastrophic backtracking.

    ``c0*c1*...*cn`` (each ``ci`` fixed-width) becomes ``c0(?>.*?c1)...(?>.*?cn-1).*cn``:
    taking the earliest occurrence of each middle chunk is always safe for globs, and
    the atomic groups stop the regex engine from trying the others (as fnmatch does).
    """

    def chunk(part: tuple[_Element, ...]) -> str:
        return "".join(
            re.escape(element) if isinstance(element, str) else element.regex(path=path)
            for element in part
        )

    any_run = "[^/]*" if path else ".*"
    out = chunk(chunks[0])
    if len(chunks) > 1:
        out += "".join(f"(?>{any_run}?{chunk(middle)})" for middle in chunks[1:-1])
        out += any_run + chunk(chunks[-1])
    return re.compile(out, re.DOTALL)


class _FixedGlob:
    """A glob without stars: fixed width, matched element by element (no regex)."""

    __slots__ = ("_elements", "_path", "_width")

    def __init__(self, elements: tuple[_Element, ...], *, path: bool) -> None:
        self._elements = elements
        self._path = path
        self._width = sum(len(e) if isinstance(e, str) else 1 for e in elements)

    def __call__(self, target: str) -> bool:
        if len(target) != self._width:
            return False
        pos = 0
        for element in self._elements:
            if isinstance(element, str):
                if not target.startswith(element, pos):
                    return False
                pos += len(element)
            else:
                if not element.contains(target[pos], path=self._path):
                    return False
                pos += 1
        return True


def _compile_glob(
    text: str, *, path: bool, percent: bool = False
) -> tuple[_Chunks, Callable[[str], bool]]:
    """A glob's chunks and its ``fullmatch``. Text without a special character (most
    path segments, many names) is its own matcher: no parse at all."""
    special = _SPECIAL_PERCENT if percent else _SPECIAL
    if special.search(text) is None:
        return ((text,),), text.__eq__
    chunks = _parse_glob(text, path=path, percent=percent)
    return chunks, _matcher(chunks, path=path)


def _matcher(chunks: _Chunks, *, path: bool) -> Callable[[str], bool]:
    """``fullmatch`` for a glob: string operations when it is literal between its
    stars (the common case), element by element when it has no star, and a regex
    only for sets and stars together; compiling stays cheap per character."""
    if all(isinstance(element, str) for part in chunks for element in part):
        runs = ["".join(part) for part in chunks]  # type: ignore[arg-type]
        if len(runs) == 1:
            literal = runs[0]
            return literal.__eq__
        return _LiteralGlob(runs)
    if len(chunks) == 1:
        return _FixedGlob(chunks[0], path=path)
    regex = _chunks_regex(chunks, path=path)
    return lambda target: regex.fullmatch(target) is not None


def _seq_cover(
    parent: Sequence[object],
    child: Sequence[object],
    *,
    is_star: Callable[[object], bool],
    item_subset: Callable[[object, object], bool],
) -> bool:
    """Sound containment of two star-patterns: L(child) ⊆ L(parent)?

    ``cover[i][j]`` holds when ``parent[i:]`` provably covers ``child[j:]``. A parent
    star either matches nothing more (``cover[i+1][j]``) or swallows the next child
    item, star or not (``cover[i][j+1]``); a child star is only ever swallowed by a
    parent star; other items pair up when ``item_subset(child_item, parent_item)``.
    Each rule is an inclusion argument, so a True answer is a proof. O(len * len).
    """
    n, m = len(parent), len(child)
    after: list[bool] = [j == m for j in range(m + 1)]  # cover[n][*]
    for i in range(n - 1, -1, -1):
        here = [False] * (m + 1)
        p = parent[i]
        for j in range(m, -1, -1):
            if is_star(p):
                here[j] = after[j] or (j < m and here[j + 1])
            else:
                here[j] = (
                    j < m and not is_star(child[j]) and after[j + 1] and item_subset(child[j], p)
                )
        after = here
    return after[0]


def _is_star(item: object) -> bool:
    return isinstance(item, _Star)


def _is_globstar(item: object) -> bool:
    return isinstance(item, _GlobStar)


def _charset_item_subset(child: object, parent: object) -> bool:
    assert isinstance(child, _CharSet)
    assert isinstance(parent, _CharSet)
    return _charset_subset(child, parent)


def _tokens_cover(parent: Sequence[_Token], child: Sequence[_Token]) -> bool:
    return _seq_cover(parent, child, is_star=_is_star, item_subset=_charset_item_subset)


# ---------------------------------------------------------------------------------------
# Path globs (fs.read, fs.write, and the path part of net.fetch)
# ---------------------------------------------------------------------------------------


class _Segment:
    """One path segment's glob (not ``**``); a plain class, as a pattern may have
    hundreds of segments and each one is built at compile time."""

    __slots__ = ("chunks", "match")

    def __init__(self, chunks: _Chunks, match: Callable[[str], bool]) -> None:
        self.chunks = chunks
        self.match = match

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Segment) and other.chunks == self.chunks

    def __hash__(self) -> int:
        return hash(self.chunks)

    def __repr__(self) -> str:
        return f"_Segment({self.chunks!r})"

    @property
    def tokens(self) -> tuple[_Token, ...]:
        return _expand(self.chunks)


_PathItem = _Segment | _GlobStar


def _segment_item_subset(child: object, parent: object) -> bool:
    assert isinstance(child, _Segment)
    assert isinstance(parent, _Segment)
    return parent.chunks == child.chunks or _tokens_cover(parent.tokens, child.tokens)


def _split_path_pattern(text: str, *, percent: bool) -> tuple[_PathItem, ...]:
    if not text.startswith("/"):
        raise _BadPattern("a path glob must be absolute (start with '/')")
    items: list[_PathItem] = []
    for raw in text.split("/"):
        if raw == "":
            continue  # "//" and a trailing "/" are ignored, as in targets
        if raw in (".", ".."):
            raise _BadPattern(f"{raw!r} segments are not allowed")
        if raw == "**":
            if not (items and isinstance(items[-1], _GlobStar)):
                items.append(_GLOBSTAR)
            continue
        items.append(_Segment(*_compile_glob(raw, path=True, percent=percent)))
    return tuple(items)


def _match_path_items(items: Sequence[_PathItem], segments: Sequence[str]) -> bool:
    """NFA walk over whole segments: O(len(items) * len(segments)) regex calls."""
    end = len(items)

    def closure(states: set[int]) -> set[int]:
        # A globstar may match zero segments: also be past it.
        todo = list(states)
        while todo:
            i = todo.pop()
            if i < end and isinstance(items[i], _GlobStar) and i + 1 not in states:
                states.add(i + 1)
                todo.append(i + 1)
        return states

    states = closure({0})
    for segment in segments:
        nxt: set[int] = set()
        for i in states:
            if i == end:
                continue
            item = items[i]
            if isinstance(item, _GlobStar):
                nxt.add(i)
            elif item.match(segment):
                nxt.add(i + 1)
        if not nxt:
            return False
        states = closure(nxt)
    return end in states


def _path_segments(target: str) -> list[str] | None:
    """Lexically normalised segments of an absolute path, or None when denied."""
    if not target.startswith("/") or "\x00" in target:
        return None
    segments: list[str] = []
    for raw in target.split("/"):
        if raw in ("", "."):
            continue
        if raw == "..":
            if not segments:
                return None  # climbs above the root
            segments.pop()
        else:
            segments.append(raw)
    return segments


def normalize_path(target: str) -> str | None:
    """The lexically normalised form of an absolute path, or None when it is denied.

    ``"/data//a/./b/../c/"`` → ``"/data/a/c"``; relative paths, NUL and ``..`` above
    the root give None. Tools can open the normalised path they were authorised for.
    """
    segments = _path_segments(target)
    return None if segments is None else "/" + "/".join(segments)


@attrs.frozen
class PathGlob:
    """A compiled ``fs.read`` / ``fs.write`` pattern (rules in the module docstring)."""

    source: str
    items: tuple[_PathItem, ...] = attrs.field(repr=False)

    @classmethod
    def compile(cls, pattern: str) -> PathGlob:
        if "\x00" in pattern:
            raise _BadPattern("NUL is not allowed")
        return cls(pattern, _split_path_pattern(pattern, percent=False))

    def matches(self, target: str) -> bool:
        segments = _path_segments(target)
        return segments is not None and _match_path_items(self.items, segments)

    def covers(self, child: PathGlob) -> bool:
        """Sound: True only if every path ``child`` matches, this matches too."""
        return _path_items_cover(self.items, child.items)


def _path_items_cover(parent: Sequence[_PathItem], child: Sequence[_PathItem]) -> bool:
    return _seq_cover(parent, child, is_star=_is_globstar, item_subset=_segment_item_subset)


# ---------------------------------------------------------------------------------------
# URL globs (net.fetch)
# ---------------------------------------------------------------------------------------

_DEFAULT_PORTS: Final[Mapping[str, int]] = {"http": 80, "https": 443}
_URL_PATTERN_RE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/]*)(?P<path>.*)"
)
_URL_TARGET_RE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)(?:[?#].*)?",
    re.DOTALL,
)
_AUTHORITY_RE = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[^:]*))?")
_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}")
_NUMERIC_LABEL_RE = re.compile(r"[0-9]+|0x[0-9a-f]*")
_FORBIDDEN_URL_CHARS_RE = re.compile(r"[\x00-\x20\x7f\\]")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})|%(?:2[Ff]|5[Cc]|00)")


def _normalize_host(host: str) -> str | None:
    """Lower-cased host without a trailing dot; canonical IP literals; None if bad."""
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        return None if address.scope_id else f"[{address.compressed}]"
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        return None
    labels = host.split(".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    if _NUMERIC_LABEL_RE.fullmatch(labels[-1]):
        # A numeric last label makes the host an IPv4 address (as browsers parse it);
        # accept only the plain dotted quad, never octal/hex/short forms.
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            return None
    return host


def _parse_port(text: str | None, scheme: str) -> int | None:
    """Port number, the scheme's default when absent or empty, or None if bad."""
    if not text:
        return _DEFAULT_PORTS[scheme]
    if not text.isascii() or not text.isdigit():
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


@attrs.frozen
class _UrlTarget:
    scheme: str
    host: str
    port: int
    segments: list[str]


def _parse_url_target(target: str) -> _UrlTarget | None:
    if _FORBIDDEN_URL_CHARS_RE.search(target):
        return None
    match = _URL_TARGET_RE.fullmatch(target)
    if match is None:
        return None
    scheme = match["scheme"].lower()
    if scheme not in _DEFAULT_PORTS or "@" in match["authority"]:
        return None  # §9.2: HTTP/HTTPS only; user info is a classic confusion vector
    authority = _AUTHORITY_RE.fullmatch(match["authority"])
    if authority is None:
        return None
    host = _normalize_host(authority["host"])
    port = _parse_port(authority["port"], scheme)
    raw_path = match["path"] or "/"
    if host is None or port is None or _BAD_ESCAPE_RE.search(raw_path):
        return None
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        return None
    segments = _path_segments(path)
    if segments is None:
        return None
    return _UrlTarget(scheme, host, port, segments)


@attrs.frozen
class UrlGlob:
    """A compiled ``net.fetch`` pattern (rules in the module docstring).

    ``host_kind`` is ``"exact"`` (``host`` is the name), ``"suffix"`` (``*.host``) or
    ``"any"`` (``*``); ``port`` None means any port.
    """

    source: str
    scheme: str
    host_kind: str
    host: str
    port: int | None
    path: tuple[_PathItem, ...] = attrs.field(repr=False)

    @classmethod
    def compile(cls, pattern: str) -> UrlGlob:
        if _FORBIDDEN_URL_CHARS_RE.search(pattern):
            raise _BadPattern("spaces, control characters and '\\' are not allowed")
        if "#" in pattern:
            raise _BadPattern("a fragment ('#') is not allowed")
        match = _URL_PATTERN_RE.fullmatch(pattern)
        if match is None:
            raise _BadPattern("expected scheme://host[:port][/path-glob]")
        scheme = match["scheme"].lower()
        if scheme not in _DEFAULT_PORTS:
            raise _BadPattern("the scheme must be http or https")  # §9.2: HTTP/HTTPS
        if "@" in match["authority"]:
            raise _BadPattern("user info ('user@') is not allowed")
        authority = _AUTHORITY_RE.fullmatch(match["authority"])
        if authority is None:
            raise _BadPattern("malformed host[:port]")
        host_text, port_text = authority["host"], authority["port"]
        host_kind, host = "exact", host_text
        if host_text == "*":
            host_kind, host = "any", ""
        elif host_text.startswith("*."):
            host_kind, host = "suffix", host_text[2:]
        if "*" in host:
            raise _BadPattern("'*' in a host must be the whole host or a leading '*.'")
        if host_kind != "any":
            normalized = _normalize_host(host)
            if normalized is None:
                raise _BadPattern(f"bad host {host!r}")
            if host_kind == "suffix" and (
                normalized.startswith("[") or not re.search(r"[a-z_-]", normalized.split(".")[-1])
            ):
                raise _BadPattern("'*.' must precede a DNS name, not an IP address")
            host = normalized
        port: int | None
        if port_text == "*":
            port = None
        else:
            port = _parse_port(port_text, scheme)
            if port is None:
                raise _BadPattern(f"bad port {port_text!r}")
        path = _split_path_pattern(match["path"] or "/", percent=True)
        return cls(pattern, scheme, host_kind, host, port, path)

    def _host_matches(self, host: str) -> bool:
        if self.host_kind == "any":
            return True
        if self.host_kind == "suffix":
            return host.endswith("." + self.host)
        return host == self.host

    def _matches_target(self, target: _UrlTarget) -> bool:
        return (
            target.scheme == self.scheme
            and (self.port is None or target.port == self.port)
            and self._host_matches(target.host)
            and _match_path_items(self.path, target.segments)
        )

    def matches(self, target: str) -> bool:
        parsed = _parse_url_target(target)
        return parsed is not None and self._matches_target(parsed)

    def covers(self, child: UrlGlob) -> bool:
        """Sound: True only if every URL ``child`` matches, this matches too."""
        if child.scheme != self.scheme:
            return False
        if self.port is not None and child.port != self.port:
            return False
        if self.host_kind == "exact" and not (
            child.host_kind == "exact" and child.host == self.host
        ):
            return False
        if self.host_kind == "suffix" and not (
            child.host.endswith("." + self.host)
            or (child.host_kind == "suffix" and child.host == self.host)
        ):
            return False  # child "any" has host "", which never ends with ".suffix"
        return _path_items_cover(self.path, child.path)


# ---------------------------------------------------------------------------------------
# Name globs (tool.call, agent.delegate, model.use, x-vendor.*)
# ---------------------------------------------------------------------------------------


@attrs.frozen
class NameGlob:
    """A compiled name pattern; ``*`` crosses ``/`` (rules in the module docstring)."""

    source: str
    chunks: _Chunks = attrs.field(repr=False)
    match: Callable[[str], bool] = attrs.field(repr=False, eq=False)

    @classmethod
    def compile(cls, pattern: str) -> NameGlob:
        if "\x00" in pattern:
            raise _BadPattern("NUL is not allowed")
        return cls(pattern, *_compile_glob(pattern, path=False))

    @property
    def tokens(self) -> tuple[_Token, ...]:
        return _expand(self.chunks)

    def matches(self, target: str) -> bool:
        return bool(target) and self.match(target)

    def covers(self, child: NameGlob) -> bool:
        """Sound: True only if every name ``child`` matches, this matches too."""
        return self.chunks == child.chunks or _tokens_cover(self.tokens, child.tokens)


@attrs.frozen
class AmountPattern:
    """A ``cost.budget`` amount (§9.6); it matches no target."""

    source: str
    currency: str
    amount: Decimal

    def matches(self, target: str) -> bool:
        return False


Pattern = PathGlob | UrlGlob | NameGlob | AmountPattern


#: Where a refused pattern sits in a submit (``details.errors`` paths, docs/limits.md).
LEASE_PATH: Final = "$.payload.lease_request"


def _check_namespace(namespace: str) -> None:
    # §9.2: the reserved namespaces, plus vendor extensions.
    if namespace in RESERVED_NAMESPACES:
        return
    if namespace.startswith(_VENDOR_PREFIX) and len(namespace) > len(_VENDOR_PREFIX):
        return
    raise InvalidRequest.at(
        f"{LEASE_PATH}[{namespace[:64]!r}]", f"unknown lease namespace {namespace[:64]!r}"
    )


def compile_pattern(namespace: str, pattern: str) -> Pattern:
    """Validate and compile one pattern of ``namespace`` (§9.2).

    Raises:
        InvalidRequest: an unknown namespace, or a bad pattern (the message names both).
    """
    _check_namespace(namespace)
    if not pattern:
        raise InvalidRequest(f"empty pattern in lease namespace {namespace!r}")
    if namespace == "cost.budget":
        currency, amount = parse_amount(pattern)
        return AmountPattern(pattern, currency, amount)
    try:
        if namespace in _PATH_NAMESPACES:
            return PathGlob.compile(pattern)
        if namespace == "net.fetch":
            return UrlGlob.compile(pattern)
        return NameGlob.compile(pattern)
    except _BadPattern as exc:
        raise InvalidRequest(f"bad {namespace} pattern {pattern!r}: {exc}") from None


def pattern_covers(parent: Pattern, child: Pattern) -> bool:
    """Whether ``parent`` provably matches everything ``child`` matches (same kind).

    Amounts are compared by `check_subset`, not here (always False). The same
    pattern text covers itself at once (a lease policy that grants what was asked).
    """
    if type(parent) is type(child) and parent.source == child.source:
        return not isinstance(parent, AmountPattern)
    if isinstance(parent, PathGlob) and isinstance(child, PathGlob):
        return parent.covers(child)
    if isinstance(parent, UrlGlob) and isinstance(child, UrlGlob):
        return parent.covers(child)
    if isinstance(parent, NameGlob) and isinstance(child, NameGlob):
        return parent.covers(child)
    return False


# ---------------------------------------------------------------------------------------
# Leases
# ---------------------------------------------------------------------------------------


def _freeze_grants(grants: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    frozen: dict[str, tuple[str, ...]] = {}
    for namespace, patterns in grants.items():
        if isinstance(patterns, str):
            raise InvalidRequest(f"lease namespace {namespace!r} needs a list of patterns")
        frozen[namespace] = tuple(patterns)
    return frozen


def _compile_grants(lease: Lease) -> dict[str, tuple[Pattern, ...]]:
    compiled: dict[str, tuple[Pattern, ...]] = {}
    for namespace, patterns in lease.grants.items():
        done: list[Pattern] = []
        for index, pattern in enumerate(patterns):
            try:
                done.append(compile_pattern(namespace, pattern))
            except InvalidRequest as exc:
                if exc.details is not None:
                    raise  # already placed (an unknown namespace)
                raise InvalidRequest.at(
                    f"{LEASE_PATH}[{namespace!r}][{index}]", exc.message
                ) from None
        compiled[namespace] = tuple(done)
    return compiled


@attrs.frozen
class Lease:
    """An effective lease: namespace → patterns, plus the optional expiry (§9.5).

    ``grants`` keeps the patterns verbatim (`as_wire` echoes them); the compiled
    matchers are built once, when the lease is made (also by ``attrs.evolve``).

    Raises:
        InvalidRequest: (on construction) an unknown namespace or a bad pattern.
    """

    grants: Mapping[str, tuple[str, ...]] = attrs.field(converter=_freeze_grants)
    expires_at: datetime | None = None
    _compiled: Mapping[str, tuple[Pattern, ...]] = attrs.field(
        init=False, repr=False, eq=False, default=attrs.Factory(_compile_grants, takes_self=True)
    )

    def as_wire(self) -> dict[str, list[str]]:
        return {namespace: list(patterns) for namespace, patterns in self.grants.items()}

    def patterns(self, namespace: str) -> tuple[Pattern, ...]:
        """The compiled patterns of ``namespace`` (empty when not granted)."""
        return self._compiled.get(namespace, ())

    def covers(self, namespace: str, target: str) -> bool:
        """Whether some pattern of ``namespace`` matches ``target`` (deny by default)."""
        compiled = self._compiled.get(namespace)
        if not compiled or not target:
            return False
        if namespace in _PATH_NAMESPACES:
            segments = _path_segments(target)
            return segments is not None and any(
                isinstance(p, PathGlob) and _match_path_items(p.items, segments) for p in compiled
            )
        if namespace == "net.fetch":
            url = _parse_url_target(target)
            return url is not None and any(
                isinstance(p, UrlGlob) and p._matches_target(url) for p in compiled
            )
        return any(p.matches(target) for p in compiled)

    def permits_model(self, model: str, *, default_allow: bool) -> bool:
        """§9.7: ``model.use`` decides; without it, ``default_allow`` does."""
        if "model.use" not in self.grants:
            return default_allow and bool(model)
        return self.covers("model.use", model)

    def authorize(
        self, namespace: str, target: str, *, now: datetime, budget: Budget | None
    ) -> None:
        """§9.3: check the lease, then expiry (§9.5), then budgets (§9.6).

        Raises:
            PermissionDenied: not covered by the lease.
            LeaseExpired: at or after ``expires_at``.
            BudgetExhausted: some counter is ≤ 0.
        """
        # §9.3: "An operation not covered by the lease MUST fail with PERMISSION_DENIED".
        if not self.covers(namespace, target):
            raise PermissionDenied(f"lease does not grant {namespace} on {target!r}")
        self._check_live(now, budget)

    def authorize_model(
        self, model: str, *, now: datetime, budget: Budget | None, default_allow: bool
    ) -> None:
        """§9.7: like `authorize` for ``model.use``, with a configurable default.

        A lease without ``model.use`` allows any model iff ``default_allow`` (§9.7:
        "Deployment policy decides which default applies").

        Raises:
            PermissionDenied: the model is not permitted (§9.7: MUST surface as
                PERMISSION_DENIED).
            LeaseExpired: at or after ``expires_at``.
            BudgetExhausted: some counter is ≤ 0.
        """
        if not self.permits_model(model, default_allow=default_allow):
            if "model.use" in self.grants:
                raise PermissionDenied(f"lease model.use does not cover model {model!r}")
            raise PermissionDenied(f"lease has no model.use grant for model {model!r}")
        self._check_live(now, budget)

    def _check_live(self, now: datetime, budget: Budget | None) -> None:
        # §9.5: "Operations attempted at or after expires_at MUST fail with LEASE_EXPIRED".
        if self.expires_at is not None and now >= self.expires_at:
            raise LeaseExpired(f"lease expired at {self.expires_at.isoformat()}")
        if budget is not None:
            # §9.6: "If any counter is ≤ 0, the operation MUST fail with BUDGET_EXHAUSTED".
            currency = budget.exhausted()
            if currency is not None:
                raise BudgetExhausted(f"{currency} budget exhausted")


def parse_lease(lease_request: Mapping[str, Sequence[str]]) -> Lease:
    """Validate a ``lease_request`` (§9.2) and compile its patterns.

    Raises:
        InvalidRequest: an unknown namespace, an empty or malformed pattern, or a bad
            ``cost.budget`` amount.
    """
    for namespace in lease_request:
        _check_namespace(namespace)
    return Lease(grants=lease_request)


# ---------------------------------------------------------------------------------------
# Delegation (§9.4, §10)
# ---------------------------------------------------------------------------------------


def _parent_remaining(parent: Lease, parent_budget: Budget | None) -> dict[str, Decimal]:
    if parent_budget is not None:
        return dict(parent_budget.remaining)
    return dict(Budget.from_patterns(parent.grants.get("cost.budget", ())).initial)


def check_subset(
    parent: Lease,
    child: Lease,
    *,
    parent_budget: Budget | None = None,
    model_default_allow: bool = False,
) -> None:
    """Check that ``child`` asks for no more than ``parent`` holds (§9.4).

    ``child`` is the lease as requested; what it leaves out is inherited by
    `child_lease`, so omissions are never violations here. The rules:

    - Every child pattern, in every namespace but ``cost.budget``, must be covered by
      one parent pattern of the same namespace (`pattern_covers`: sound, so an
      unprovable containment is a violation).
    - ``model.use`` (§9.4, §9.7): when the parent has no ``model.use`` grant, its
      permitted set is every model if ``model_default_allow``, else none.
    - ``cost.budget``: when the parent has budget counters, the child may only name
      those currencies, each at most the parent's remaining amount (from
      ``parent_budget`` when given, else the parent lease's initial amounts). A parent
      without counters is unbounded, so any child budget only narrows it.
    - ``expires_at``: the child's must not be later than the parent's.

    Raises:
        LeaseSubsetViolation: the first offending grant, named in the message.
    """
    for namespace, patterns in child.grants.items():
        if namespace == "cost.budget" or not patterns:
            continue
        if namespace not in parent.grants:
            if namespace == "model.use" and model_default_allow:
                continue  # the parent may use any model, so any model.use narrows it
            raise LeaseSubsetViolation(
                f"delegated {namespace} pattern {patterns[0]!r} is not covered: "
                f"the parent lease has no {namespace} grant"
            )
        parent_patterns = parent.patterns(namespace)
        for source, compiled in zip(patterns, child.patterns(namespace), strict=True):
            if not any(pattern_covers(p, compiled) for p in parent_patterns):
                raise LeaseSubsetViolation(
                    f"delegated {namespace} pattern {source!r} is not covered by the "
                    f"parent's {namespace} patterns {list(parent.grants[namespace])!r}"
                )

    # §9.4: "MUST NOT exceed the parent's remaining budget in any currency".
    remaining = _parent_remaining(parent, parent_budget)
    if remaining:
        asked = Budget.from_patterns(child.grants.get("cost.budget", ())).initial
        for currency, amount in asked.items():
            if currency not in remaining:
                raise LeaseSubsetViolation(
                    f"delegated cost.budget names {currency}, which the parent's budget "
                    f"does not ({sorted(remaining)!r})"
                )
            if amount > remaining[currency]:
                raise LeaseSubsetViolation(
                    f"delegated cost.budget {_format_amount(currency, amount)} exceeds the "
                    f"parent's remaining {currency}:{remaining[currency]}"
                )

    # §9.4: the child "MUST NOT have a later" expiration than its parent.
    if (
        child.expires_at is not None
        and parent.expires_at is not None
        and child.expires_at > parent.expires_at
    ):
        raise LeaseSubsetViolation(
            f"delegated expires_at {child.expires_at.isoformat()} is later than the "
            f"parent's {parent.expires_at.isoformat()}"
        )


def child_lease(
    parent: Lease,
    child: Lease,
    *,
    parent_budget: Budget | None = None,
    model_default_allow: bool = False,
) -> Lease:
    """`check_subset`, then the child's effective lease (§9.4, §10).

    The effective lease is ``child`` plus what it inherits:

    - ``expires_at`` = min(child's, parent's), either one absent counting as +∞ (§9.4:
      "the child's effective expiration is min(child expires_at, parent expires_at)").
    - ``cost.budget`` gains, for each parent currency the child did not name, the
      parent's remaining amount (floored at 0), so the child is never unbounded where
      the parent is bounded.
    - ``model.use``: a child without it inherits the parent's patterns, so it never
      falls back to a deployment default wider than its parent's grant (§9.7).

    Build the child's `Budget` from the result (`Budget.from_lease`).

    Raises:
        LeaseSubsetViolation: ``child`` asks for more than ``parent`` holds.
    """
    check_subset(
        parent, child, parent_budget=parent_budget, model_default_allow=model_default_allow
    )
    grants = dict(child.grants)
    remaining = _parent_remaining(parent, parent_budget)
    if remaining:
        named = Budget.from_patterns(grants.get("cost.budget", ())).initial
        inherited = tuple(
            _format_amount(currency, amount if amount > 0 else Decimal(0))
            for currency, amount in remaining.items()
            if currency not in named
        )
        if inherited:
            grants["cost.budget"] = (*grants.get("cost.budget", ()), *inherited)
    if "model.use" not in grants and "model.use" in parent.grants:
        grants["model.use"] = parent.grants["model.use"]
    expires_at = child.expires_at
    if parent.expires_at is not None and (expires_at is None or parent.expires_at < expires_at):
        expires_at = parent.expires_at
    return Lease(grants=grants, expires_at=expires_at)

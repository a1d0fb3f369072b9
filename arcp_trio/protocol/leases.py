"""Leases (§9): grammar, matching, expiry and budget counters, given ``now``.

This is the part the runtime core needs: parsing a ``lease_request`` (§9.2,
reserved namespaces plus ``x-vendor.*``), ``cost.budget`` amounts (§9.6), glob
matching of targets, expiry (§9.5) and per-currency ``Decimal`` counters. The
runtime checks ``authorize`` synchronously before dispatching any mediated
operation (§9.3): deny by default, then expiry, then every budget counter.
"""

from __future__ import annotations

import fnmatch
import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import attrs

from ..wire.errors import BudgetExhausted, InvalidRequest, LeaseExpired, PermissionDenied

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

__all__ = [
    "RESERVED_NAMESPACES",
    "Budget",
    "Lease",
    "parse_amount",
    "parse_lease",
]

#: §9.2 reserved top-level namespaces.
RESERVED_NAMESPACES: frozenset[str] = frozenset(
    {"fs.read", "fs.write", "net.fetch", "tool.call", "agent.delegate", "cost.budget", "model.use"}
)
_AMOUNT_RE = re.compile(r"(?P<currency>[A-Za-z][A-Za-z0-9]{0,9}):(?P<amount>[0-9]+(?:\.[0-9]+)?)")


def parse_amount(pattern: str) -> tuple[str, Decimal]:
    """``"USD:5.00"`` → ``("USD", Decimal("5.00"))`` (§9.6 amount grammar).

    Raises:
        InvalidRequest: not ``currency:decimal``.
    """
    match = _AMOUNT_RE.fullmatch(pattern)
    if match is None:
        raise InvalidRequest(f"cost.budget pattern {pattern!r} is not an amount like 'USD:5.00'")
    try:
        return match["currency"], Decimal(match["amount"])
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise InvalidRequest(f"bad amount in {pattern!r}") from None


@attrs.define
class Budget:
    """Per-currency counters, initialised from the lease at acceptance (§9.6)."""

    initial: dict[str, Decimal]
    remaining: dict[str, Decimal]

    @classmethod
    def from_patterns(cls, patterns: Sequence[str]) -> Budget:
        initial: dict[str, Decimal] = {}
        for pattern in patterns:
            currency, amount = parse_amount(pattern)
            # Several amounts in one currency add up (the reference does the same).
            initial[currency] = initial.get(currency, Decimal(0)) + amount
        return cls(initial=dict(initial), remaining=dict(initial))

    def charge(self, currency: str, value: Decimal) -> Decimal | None:
        """Decrement ``currency`` by ``value``; None when it is not budgeted.

        Raises:
            InvalidRequest: ``value`` is negative (§9.6: "Negative values are rejected
                and produce no decrement").
        """
        if value < 0:
            raise InvalidRequest(f"cost metric values must be >= 0, got {value}")
        if currency not in self.remaining:
            return None
        self.remaining[currency] -= value
        return self.remaining[currency]

    def exhausted(self) -> str | None:
        """The first currency whose counter is ≤ 0, if any (§9.6)."""
        for currency, left in self.remaining.items():
            if left <= 0:
                return currency
        return None

    def as_strings(self) -> dict[str, str]:
        """Reference dialect: ``{"USD": "USD:1.00"}`` (WIRE.md §10)."""
        return {cur: f"{cur}:{amount}" for cur, amount in self.remaining.items()}

    def as_numbers(self) -> dict[str, float]:
        """Spec dialect: ``{"USD": 1.0}`` (§7.1)."""
        return {cur: float(amount) for cur, amount in self.remaining.items()}


@attrs.frozen
class Lease:
    """An effective lease: namespace → patterns, plus the optional expiry."""

    grants: Mapping[str, tuple[str, ...]]
    expires_at: datetime | None = None

    def as_wire(self) -> dict[str, list[str]]:
        return {namespace: list(patterns) for namespace, patterns in self.grants.items()}

    def covers(self, namespace: str, target: str) -> bool:
        """Whether some pattern of ``namespace`` matches ``target`` (deny by default)."""
        return any(fnmatch.fnmatchcase(target, p) for p in self.grants.get(namespace, ()))

    def authorize(
        self, namespace: str, target: str, *, now: datetime, budget: Budget | None
    ) -> None:
        """§9.3: check the lease, then expiry (§9.5), then budgets (§9.6).

        Raises:
            PermissionDenied: not covered by the lease.
            LeaseExpired: at or after ``expires_at``.
            BudgetExhausted: some counter is ≤ 0.
        """
        if not self.covers(namespace, target):
            raise PermissionDenied(f"lease does not grant {namespace} on {target!r}")
        if self.expires_at is not None and now >= self.expires_at:
            raise LeaseExpired(f"lease expired at {self.expires_at.isoformat()}")
        if budget is not None:
            currency = budget.exhausted()
            if currency is not None:
                raise BudgetExhausted(f"{currency} budget exhausted")


def parse_lease(lease_request: Mapping[str, Sequence[str]]) -> Lease:
    """Validate a ``lease_request`` (§9.2).

    Raises:
        InvalidRequest: an unknown namespace, an empty or malformed pattern, or a bad
            ``cost.budget`` amount.
    """
    grants: dict[str, tuple[str, ...]] = {}
    for namespace, patterns in lease_request.items():
        if namespace not in RESERVED_NAMESPACES and not namespace.startswith("x-vendor."):
            raise InvalidRequest(f"unknown lease namespace {namespace!r}")
        for pattern in patterns:
            if not pattern:
                raise InvalidRequest(f"empty pattern in lease namespace {namespace!r}")
            if namespace == "cost.budget":
                parse_amount(pattern)
        grants[namespace] = tuple(patterns)
    return Lease(grants=grants)

"""Provisioned credentials (§9.8): issue at acceptance, rotate, revoke at every terminal.

A ``CredentialProvisioner`` talks to the upstream (an LLM gateway, a search API) and
mints short-lived credentials constrained to the job's lease. The runtime

* issues them before ``job.accepted`` and shows them to the submitting principal
  only (§14: redacted for every other observer, never in logs or event history);
* records each in the store's revocation ledger *before* acknowledging the job, so
  a crash can never leave one live and forgotten;
* revokes every credential when its job reaches any terminal state, retrying
  transient failures with backoff; permanent failures are logged at ERROR and kept
  for operators (``Runtime.statistics().unrevoked_credentials``); outstanding revocations are
  re-driven when the runtime restarts (§14 "Credential revocation reliability").

The runtime advertises ``provisioned_credentials`` only when a provisioner *and* a
durable store are configured (§14: "A runtime that cannot guarantee revocation MUST
NOT advertise provisioned_credentials").
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

import attrs
import trio

from ..wire.ids import new_id

__all__ = [
    "Credential",
    "CredentialProvisioner",
    "CredentialRequest",
    "InProcessProvisioner",
    "TransientRevocationError",
]


@attrs.frozen(kw_only=True)
class Credential:
    """§9.8.1 wire shape. ``value`` is a secret: its ``repr`` hides it."""

    id: str
    scheme: str
    value: str = attrs.field(repr=False)
    endpoint: str
    profile: str | None = None
    constraints: dict[str, Any] | None = None

    def as_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "scheme": self.scheme,
            "value": self.value,
            "endpoint": self.endpoint,
        }
        if self.profile is not None:
            wire["profile"] = self.profile
        if self.constraints is not None:
            wire["constraints"] = self.constraints
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Credential:
        return cls(
            id=data["id"],
            scheme=data["scheme"],
            value=data["value"],
            endpoint=data["endpoint"],
            profile=data.get("profile"),
            constraints=data.get("constraints"),
        )


@attrs.frozen(kw_only=True)
class CredentialRequest:
    """What a provisioner may bake into a credential (§9.8.3)."""

    job_id: str
    principal: str
    agent: str
    lease: dict[str, list[str]]
    expires_at: str | None
    budget_remaining: dict[str, str]


class TransientRevocationError(Exception):
    """A revocation failed in a way worth retrying (timeout, 5xx, ...)."""


class CredentialProvisioner(Protocol):
    """The upstream side. Implementations raise on failure."""

    async def issue(self, request: CredentialRequest) -> list[Credential]: ...

    async def rotate(self, credential: Credential) -> Credential: ...

    async def revoke(self, credential: Credential) -> None:
        """Revoke at the upstream. ``TransientRevocationError`` is retried; any
        other exception is a permanent failure."""
        ...


class InProcessProvisioner:
    """An example provisioner whose "upstream" is a dict of live keys.

    Useful for tests and demos: ``live`` shows what the upstream would accept, and
    ``transient_failures`` makes the next N revocations fail transiently.
    """

    def __init__(
        self, *, endpoint: str = "https://gateway.invalid/v1", profile: str = "openai"
    ) -> None:
        self.endpoint = endpoint
        self.profile = profile
        self.live: dict[str, str] = {}
        self.revoked: list[str] = []
        self.transient_failures = 0
        self.permanent_failure_ids: set[str] = set()
        self._revoked_event = trio.Event()

    async def issue(self, request: CredentialRequest) -> list[Credential]:
        constraints: dict[str, Any] = {}
        for namespace in ("cost.budget", "model.use"):
            if namespace in request.lease:
                constraints[namespace] = request.lease[namespace]
        if request.expires_at is not None:
            constraints["expires_at"] = request.expires_at
        credential = Credential(
            id=new_id("cred"),
            scheme="bearer",
            value=f"sk-virt-{secrets.token_urlsafe(24)}",
            endpoint=self.endpoint,
            profile=self.profile,
            constraints=constraints or None,
        )
        self.live[credential.value] = credential.id
        return [credential]

    async def rotate(self, credential: Credential) -> Credential:
        fresh = attrs.evolve(credential, value=f"sk-virt-{secrets.token_urlsafe(24)}")
        self.live[fresh.value] = fresh.id
        return fresh

    async def revoke(self, credential: Credential) -> None:
        if credential.id in self.permanent_failure_ids:
            raise RuntimeError("the upstream refuses to revoke this credential")
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientRevocationError("upstream unavailable")
        self.live.pop(credential.value, None)
        self.revoked.append(credential.value)
        self._revoked_event.set()
        self._revoked_event = trio.Event()

    async def wait_revoked(self, value: str) -> None:
        """Wait until ``value`` has been revoked (for tests and demos)."""
        while value not in self.revoked:
            await self._revoked_event.wait()

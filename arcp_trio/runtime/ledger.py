"""The runtime's side of provisioned credentials (§9.8): issue, rotate, revoke.

Every credential a job holds has a row in the store's revocation ledger, written
before the job is acknowledged (§14), keyed by its id *and* value (a rotation keeps
the id). A job's credentials are revoked when it ends, however it ends, each in a
task of its own (``revoke``) that retries transient failures with capped backoff and
gives up loudly: a permanent failure is logged at ERROR and kept for operators
(``unrevoked``). After a restart the outstanding rows are re-driven (``restore``).

Which job may still use its credentials (its lease, its liveness) is the runtime's
business; this room only talks to the provisioner and keeps the ledger.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import trio

from ..wire.errors import InternalError
from .credentials import Credential, CredentialRequest, TransientRevocationError

if TYPE_CHECKING:
    from ..protocol.job import JobRecord
    from ..store.base import Store
    from .credentials import CredentialProvisioner

__all__ = ["CredentialLedger"]

log = logging.getLogger(__name__)

#: Revocation attempts before a credential is reported as unrevocable.
_REVOKE_ATTEMPTS = 8


def ledger_key(credential: dict[str, Any]) -> str:
    """One ledger row per credential *value*: a rotation keeps the id, not the value."""
    digest = hashlib.sha256(str(credential["value"]).encode()).hexdigest()[:16]
    return f"{credential['id']}#{digest}"


class CredentialLedger:
    """Issues, rotates and revokes through ``provisioner``, recording each in ``store``.

    Revocations run in ``nursery`` (the runtime's session nursery: they outlive the
    job and its connection).
    """

    def __init__(
        self, provisioner: CredentialProvisioner | None, store: Store, nursery: trio.Nursery
    ) -> None:
        self._provisioner = provisioner
        self._store = store
        self._nursery = nursery
        self._unrevoked: list[str] = []

    @property
    def configured(self) -> bool:
        return self._provisioner is not None

    @property
    def unrevoked(self) -> tuple[str, ...]:
        """Ids of credentials whose revocation failed for good."""
        return tuple(self._unrevoked)

    async def issue(self, job: JobRecord) -> None:
        """Mint the job's credentials and record them as live (before ``job.accepted``).

        Raises:
            InternalError: the provisioner failed (the submit is refused, retryable).
        """
        assert self._provisioner is not None
        request = CredentialRequest(
            job_id=job.job_id,
            principal=job.principal,
            agent=job.agent,
            lease=job.lease.as_wire(),
            expires_at=(job.lease_constraints or {}).get("expires_at"),
            budget_remaining={} if job.budget is None else job.budget.as_strings(),
        )
        try:
            issued = await self._provisioner.issue(request)
        except Exception as exc:
            log.error("credential issue failed job_id=%s", job.job_id, exc_info=True)
            raise InternalError(f"could not provision credentials: {type(exc).__name__}") from exc
        for credential in issued:
            wire = credential.as_wire()
            job.credentials.append(wire)
            self.record_live(job.job_id, wire)

    async def rotate(self, credential: dict[str, Any]) -> dict[str, Any]:
        """The upstream's new value for ``credential`` (not yet recorded: the caller
        decides whether the job may still have it, then ``record_live`` or ``revoke``)."""
        assert self._provisioner is not None
        return (await self._provisioner.rotate(Credential.from_wire(credential))).as_wire()

    def record_live(self, job_id: str, credential: dict[str, Any]) -> None:
        self._store.save_credential(ledger_key(credential), job_id, "live", credential)

    def revoke(self, job_id: str, credential: dict[str, Any]) -> None:
        """Record the revocation as begun and run it in the background (§9.8.2)."""
        key = ledger_key(credential)
        self._store.save_credential(key, job_id, "revoking", credential)
        self._nursery.start_soon(self._revoke, key, job_id, credential)

    def restore(self, rows: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """After a restart: failed rows are reported again, outstanding ones re-driven."""
        for key, job_id, state, credential in rows:
            if state == "failed":
                self._unrevoked.append(credential.get("id", key))
            elif self._provisioner is not None:
                # Outstanding revocations are re-driven after a restart (§14).
                self._nursery.start_soon(self._revoke, key, job_id, credential)
            else:
                log.error("credential %s is outstanding but no provisioner is configured", key)

    async def _revoke(self, key: str, job_id: str, credential: dict[str, Any]) -> None:
        """Revoke with capped exponential backoff; give up loudly, never silently."""
        assert self._provisioner is not None
        delay = 0.5
        for attempt in range(1, _REVOKE_ATTEMPTS + 1):
            try:
                await self._provisioner.revoke(Credential.from_wire(credential))
            except TransientRevocationError as exc:
                log.warning(
                    "credential revocation failed, retrying credential_id=%s attempt=%s error=%s",
                    credential["id"],
                    attempt,
                    exc,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            except Exception:
                break
            self._store.save_credential(key, job_id, "revoked", {"id": credential["id"]})
            log.info("credential revoked credential_id=%s job_id=%s", credential["id"], job_id)
            return
        # §9.8.2: "MUST log permanent failures"; §14: surface them to operators.
        log.error(
            "credential revocation failed permanently credential_id=%s job_id=%s",
            credential["id"],
            job_id,
        )
        self._unrevoked.append(credential["id"])
        self._store.save_credential(key, job_id, "failed", credential)

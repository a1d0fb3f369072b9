"""Authentication (§6.1): a hello's ``auth`` to a principal, or ``UNAUTHENTICATED``.

An ``Authenticator`` is what the runtime asks; ``BearerAuth`` (static tokens) is the
default, ``jwt_auth.JWTAuth`` (OIDC/JWT, the ``jwt`` extra) the other one shipped,
and ``AnyOf`` tries several in turn. The call is async: a key set fetched over the
network must never block the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Protocol

from ..wire.errors import Unauthenticated

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AnyOf", "Authenticator", "BearerAuth"]


class Authenticator(Protocol):
    async def authenticate(self, scheme: str, token: str) -> str:
        """The principal ``token`` proves.

        Raises:
            Unauthenticated: the scheme or the token is not accepted (fail closed:
                anything this authenticator cannot check is refused).
        """
        ...


class BearerAuth:
    """Maps static bearer tokens to principal names.

    Comparison is constant-time with respect to the presented token: every
    configured token is compared (``hmac.compare_digest`` over SHA-256 digests, so
    lengths do not leak either) and no comparison short-circuits the loop.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ValueError("at least one token is required")
        self._digests = [(_digest(token), principal) for token, principal in tokens.items()]

    def principal_for(self, token: str) -> str | None:
        """The principal for ``token``, or None."""
        presented = _digest(token)
        found: str | None = None
        for digest, principal in self._digests:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found

    async def authenticate(self, scheme: str, token: str) -> str:
        principal = self.principal_for(token) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Unauthenticated("invalid bearer token")
        return principal


class AnyOf:
    """The first of several authenticators that accepts the token (e.g. static
    tokens for operators and JWTs for everyone else)."""

    def __init__(self, *authenticators: Authenticator) -> None:
        if not authenticators:
            raise ValueError("at least one authenticator is required")
        self._authenticators = authenticators

    async def authenticate(self, scheme: str, token: str) -> str:
        refusal: Unauthenticated | None = None
        for authenticator in self._authenticators:
            try:
                return await authenticator.authenticate(scheme, token)
            except Unauthenticated as exc:
                refusal = refusal or exc
        assert refusal is not None
        raise refusal


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

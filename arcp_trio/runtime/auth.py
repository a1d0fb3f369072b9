"""Bearer-token authentication (§6.1): tokens map to principals."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["BearerAuth"]


class BearerAuth:
    """Maps bearer tokens to principal names.

    Comparison is constant-time with respect to the presented token: every
    configured token is compared (``hmac.compare_digest`` over SHA-256 digests, so
    lengths do not leak either) and no comparison short-circuits the loop.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ValueError("at least one token is required")
        self._digests = [(_digest(token), principal) for token, principal in tokens.items()]

    def authenticate(self, token: str) -> str | None:
        """The principal for ``token``, or None."""
        presented = _digest(token)
        found: str | None = None
        for digest, principal in self._digests:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

"""JWT bearer tokens (OIDC access tokens, §6.1 ``auth.scheme: bearer``): the
``jwt`` extra (``pip install 'arcp-trio[jwt]'``, PyJWT with ``cryptography``).

``JWTAuth`` checks the signature (RS256, ES256, HS256 and their larger siblings;
never ``none``), ``exp`` and ``nbf`` with a leeway, the issuer and the audience it
is configured with, and takes the principal from one claim (``sub`` by default).
Anything it cannot check is refused: the hello gets ``UNAUTHENTICATED``.

Keys come from a ``KeySource``:

- ``StaticKeys``: a PEM public key, a JWKS document or an HMAC secret, from a
  file or in memory.
- ``JWKSKeys``: a JWKS URL, fetched in a worker thread (never on the event loop),
  cached for ``cache_sec`` and fetched again early when a token names a ``kid`` the
  cache does not have (key rotation), at most once every ``min_refresh_sec``, so a
  flood of made-up ``kid`` values costs one fetch, not one per hello.

PyJWT is the well-kept library for this; the key-family check (an HMAC algorithm
needs a secret, an RSA/EC one a public key) is PyJWT's own plus ours below.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Protocol

import trio

try:
    import jwt
    from jwt import PyJWK, PyJWKSet
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "JWT authentication needs the jwt extra: pip install 'arcp-trio[jwt]'"
    ) from exc

from ..wire.errors import Unauthenticated
from ..wire.timestamps import WallClock, system_wall_clock

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

__all__ = ["JWKSKeys", "JWTAuth", "KeySource", "StaticKeys"]

log = logging.getLogger(__name__)

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: A JWKS document larger than this is refused (a key set is a few KB).
MAX_JWKS_BYTES = 1 << 20


class KeySource(Protocol):
    async def key_for(self, kid: str | None, algorithm: str) -> Any:
        """The key that verifies a token with this header, or None if none does."""
        ...


class StaticKeys:
    """Keys fixed at start-up: a PEM public key, a JWKS document, or an HMAC secret."""

    def __init__(
        self,
        *,
        public_key_pem: bytes | None = None,
        jwks: dict[str, Any] | None = None,
        secret: bytes | None = None,
    ) -> None:
        if sum(x is not None for x in (public_key_pem, jwks, secret)) != 1:
            raise ValueError("give exactly one of public_key_pem, jwks, secret")
        self._pem = public_key_pem
        self._set = PyJWKSet.from_dict(jwks) if jwks is not None else None
        self._secret = secret
        if secret is not None and len(secret) < 32:
            # RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
            raise ValueError("an HMAC secret must be at least 32 bytes")

    @classmethod
    def from_file(cls, path: Path, *, secret: bool = False) -> StaticKeys:
        """A PEM public key or a JWKS JSON file; ``secret=True``: the file's bytes
        (trailing whitespace stripped) are an HMAC secret."""
        data = path.read_bytes()
        if secret:
            return cls(secret=data.strip())
        if data.lstrip().startswith(b"{"):
            return cls(jwks=json.loads(data))
        return cls(public_key_pem=data)

    @property
    def is_secret(self) -> bool:
        return self._secret is not None

    async def key_for(self, kid: str | None, algorithm: str) -> Any:
        if self._secret is not None:
            return self._secret if algorithm in HMAC_ALGORITHMS else None
        if algorithm in HMAC_ALGORITHMS:
            return None  # a public key is never an HMAC secret (key confusion)
        if self._pem is not None:
            return self._pem
        assert self._set is not None
        return _find(self._set, kid)


class JWKSKeys:
    """A JWKS URL's keys, cached, refreshed on rotation (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        cache_sec: float = 300.0,
        min_refresh_sec: float = 30.0,
        timeout_sec: float = 5.0,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"a JWKS URL must be http(s): {url!r}")
        self.url = url
        self._cache_sec = cache_sec
        self._min_refresh_sec = min_refresh_sec
        self._timeout_sec = timeout_sec
        self._set: PyJWKSet | None = None
        self._fetched_at = -float("inf")
        self._attempted_at = -float("inf")
        self._lock = trio.Lock()
        #: How many fetches were made (statistics, tests).
        self.fetches = 0

    async def key_for(self, kid: str | None, algorithm: str) -> Any:
        if algorithm in HMAC_ALGORITHMS:
            return None  # a key set's public keys are never HMAC secrets
        now = trio.current_time()
        if self._set is None or now - self._fetched_at >= self._cache_sec:
            await self._refresh(force=False)
        key = _find(self._set, kid) if self._set is not None else None
        if key is None and kid is not None:
            # An unknown kid: the issuer may have rotated its keys.
            await self._refresh(force=True)
            key = _find(self._set, kid) if self._set is not None else None
        return key

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            now = trio.current_time()
            if now - self._attempted_at < self._min_refresh_sec:
                return  # fetched (or tried) a moment ago: no fetch per hello
            if not force and self._set is not None and now - self._fetched_at < self._cache_sec:
                return  # another task refreshed it while this one waited
            self._attempted_at = now
            self.fetches += 1
            try:
                with trio.fail_after(self._timeout_sec + 1):
                    body = await trio.to_thread.run_sync(self._fetch, abandon_on_cancel=True)
                self._set = PyJWKSet.from_dict(json.loads(body))
                self._fetched_at = trio.current_time()
            except Exception:
                # Fail closed: keep the old keys (if any) and refuse what they cannot
                # verify; the next attempt comes after min_refresh_sec.
                log.warning("JWKS fetch failed url=%s", self.url, exc_info=True)

    def _fetch(self) -> bytes:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(
                request, timeout=self._timeout_sec
            ) as response:  # (the scheme is checked in __init__)
                body: bytes = response.read(MAX_JWKS_BYTES + 1)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket
            raise ValueError(f"JWKS fetch answered HTTP {exc.code}") from None
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS document over {MAX_JWKS_BYTES} bytes")
        return body


class JWTAuth:
    """An ``Authenticator`` for JWT bearer tokens (see the module docstring)."""

    def __init__(
        self,
        keys: KeySource,
        *,
        algorithms: Iterable[str] = ("RS256", "ES256"),
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        leeway_sec: float = 30.0,
        principal_claim: str = "sub",
        wall_clock: WallClock = system_wall_clock,
    ) -> None:
        allowed = frozenset(algorithms)
        unknown = allowed - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown or not allowed:
            # "none" lands here: an unsigned token is never accepted.
            raise ValueError(f"unsupported JWT algorithms: {sorted(unknown) or 'none given'}")
        if isinstance(keys, StaticKeys):
            if keys.is_secret and allowed - HMAC_ALGORITHMS:
                raise ValueError("an HMAC secret verifies HS* algorithms only")
            if not keys.is_secret and allowed & HMAC_ALGORITHMS:
                raise ValueError("HS* algorithms need a secret, not a public key")
        self._keys = keys
        self._algorithms = allowed
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_sec
        self._claim = principal_claim
        #: ``exp`` and ``nbf`` are checked here against the injected clock, not
        #: PyJWT's own (so tests run on Trio's clock: STYLE.md, time is injectable).
        self._wall_clock = wall_clock

    async def authenticate(self, scheme: str, token: str) -> str:
        if scheme.lower() != "bearer":
            raise Unauthenticated(f"unsupported auth scheme {scheme!r}")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise Unauthenticated(f"JWT algorithm {str(algorithm)[:20]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("JWT kid must be a string")
        key = await self._keys.key_for(kid, algorithm)
        if key is None:
            raise Unauthenticated("no key verifies this JWT")
        options: dict[str, Any] = {"require": ["exp"], "verify_exp": False, "verify_nbf": False}
        if self._issuer is not None:
            options["require"].append("iss")
        if self._audience is not None:
            options["require"].append("aud")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"JWT refused: {_reason(exc)}") from None
        self._check_times(claims)
        principal = claims.get(self._claim)
        if not isinstance(principal, str) or not principal:
            raise Unauthenticated(f"JWT has no {self._claim!r} claim to name the principal")
        return principal

    def _check_times(self, claims: dict[str, Any]) -> None:
        """RFC 7519 §4.1.4, §4.1.5: ``exp`` (required) and ``nbf``, with the leeway."""
        now = self._wall_clock().timestamp()
        for name in ("exp", "nbf"):
            value = claims.get(name)
            if name == "nbf" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Unauthenticated(f"JWT {name} must be a number")
            if name == "exp" and now > value + self._leeway:
                raise Unauthenticated("JWT refused: the token has expired")
            if name == "nbf" and now < value - self._leeway:
                raise Unauthenticated("JWT refused: the token is not valid yet")


def _find(keys: PyJWKSet | None, kid: str | None) -> PyJWK | None:
    if keys is None:
        return None
    if kid is None:
        # No kid: only a set of one key is unambiguous.
        return keys.keys[0] if len(keys.keys) == 1 else None
    return next((key for key in keys.keys if key.key_id == kid), None)


def _reason(exc: Exception) -> str:
    """A short, client-safe reason (PyJWT's messages name no secrets)."""
    return f"{type(exc).__name__}: {exc}"[:200]

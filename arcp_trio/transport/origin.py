"""Which web pages may open a WebSocket to the runtime: the ``Origin`` allowlist.

A browser puts the origin of the page that runs the script (``https://app.example``)
in the ``Origin`` header of every WebSocket upgrade, and a WebSocket is not bound by
the same-origin policy: any page a user opens may try to connect to any runtime the
user's machine can reach (cross-site WebSocket hijacking). RFC 6455 §10.2: a server
that is not meant to take input from any web page SHOULD check that the origin is one
it expects. Clients that are not browsers (the reference SDK, ``arcp_trio.client``,
scripts) send no ``Origin`` at all.

One :class:`OriginPolicy` decides for every way in: the native server
(``serve_websocket``), the ASGI app (``arcp_trio.asgi``) and the trio-websocket
adapter. Its rules, in order:

1. No ``Origin`` header: allowed (not a browser).
2. More than one ``Origin`` header: refused (ambiguous; browsers send one).
3. ``"*"`` in ``allow_origins``: every origin allowed.
4. The origin is in ``allow_origins``: allowed. Origins are compared as RFC 6454
   serializes them, ``scheme://host[:port]``: scheme and host case-insensitively, the
   default port (80 for http/ws, 443 for https/wss) the same as none. ``"null"`` (a
   sandboxed frame, a ``file:`` page) matches only a literal ``"null"`` entry.
5. Anything else: refused, with HTTP 403 before the upgrade (RFC 6455 §4.2.2).

The default, no ``allow_origins``, lets every non-browser client in and no page.

There is no ``Host`` allowlist, on purpose. DNS rebinding gets a page's requests to a
server under the attacker's name, but the browser still sends the attacker's page's
origin, which rule 5 refuses; and with ``"*"`` any page may connect to the real name
directly (a WebSocket needs no rebinding), so a ``Host`` check would stop nothing
the ``Origin`` check does not.

Note that ARCP's bearer token travels in ``session.hello``, not in a cookie, so a
hostile page cannot borrow a user's login; the allowlist keeps pages from reaching the
handshake at all (probing, guessing tokens from inside a network the browser can
reach).
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["DEFAULT_ORIGIN_POLICY", "OriginPolicy"]

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
#: Characters of a refused ``Origin`` value kept in the refusal (it goes to a log).
_SHOWN = 120


def _serialize(origin: str) -> str | None:
    """``origin`` as ``scheme://host[:port]`` (lower case, default port dropped), or
    None when it is not a tuple origin (``null``, a path, a user, garbage)."""
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if (
        not scheme
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return f"{scheme}://{netloc}"


class OriginPolicy:
    """The ``Origin`` allowlist of a WebSocket upgrade (rules in the module docstring).

    Args:
        allow_origins: origins whose pages may connect, as ``scheme://host[:port]``
            (``"https://app.example"``, ``"http://localhost:3000"``); ``"*"`` allows
            every origin, ``"null"`` the opaque origin. None or empty: no browser page.

    Raises:
        TypeError: ``allow_origins`` is a single string (pass a list).
        ValueError: an entry is not an origin (no scheme, a path, a query...).
    """

    __slots__ = ("_allowed", "_any", "_null")

    def __init__(self, allow_origins: Iterable[str] | None = None) -> None:
        if isinstance(allow_origins, (str, bytes)):
            raise TypeError(f"allow_origins is a list of origins, not {allow_origins!r}")
        allowed: set[str] = set()
        self._any = False
        self._null = False
        for entry in allow_origins or ():
            if entry == "*":
                self._any = True
            elif entry == "null":
                self._null = True
            else:
                origin = _serialize(entry)
                if origin is None:
                    raise ValueError(
                        f"not an origin: {entry!r} (expected scheme://host[:port], '*' or 'null')"
                    )
                allowed.add(origin)
        self._allowed = frozenset(allowed)

    @classmethod
    def of(cls, allow_origins: Sequence[str] | OriginPolicy | None) -> OriginPolicy:
        """A policy from what the serving functions accept as ``allow_origins``: a
        policy (returned as is), a list of origins, or None (the default)."""
        if isinstance(allow_origins, OriginPolicy):
            return allow_origins
        if not allow_origins:
            return DEFAULT_ORIGIN_POLICY
        return cls(allow_origins)

    @property
    def allow_origins(self) -> tuple[str, ...]:
        """The allowed origins, serialized and sorted (``"*"`` and ``"null"`` first)."""
        special = [name for name, on in (("*", self._any), ("null", self._null)) if on]
        return (*special, *sorted(self._allowed))

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Decide on an upgrade request by its headers (``(name, value)`` byte pairs,
        names in any case, as h11, ASGI and trio-websocket give them).

        Returns:
            None if it may go on; else why it is refused (for the log: the caller
            answers HTTP 403).
        """
        origins = [value for name, value in headers if name.lower() == b"origin"]
        if not origins:
            return None
        if len(origins) > 1:
            return f"{len(origins)} Origin headers"
        if self._any:
            return None
        value = origins[0].decode("latin-1").strip()
        if value == "null":
            return None if self._null else "origin 'null' is not allowed"
        origin = _serialize(value)
        if origin is not None and origin in self._allowed:
            return None
        return f"origin {value[:_SHOWN]!r} is not allowed"

    def __repr__(self) -> str:
        return f"OriginPolicy(allow_origins={list(self.allow_origins)!r})"


#: No browser page; every client that sends no ``Origin``.
DEFAULT_ORIGIN_POLICY = OriginPolicy()

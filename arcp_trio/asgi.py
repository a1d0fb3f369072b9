"""The ARCP WebSocket endpoint as an ASGI 3 application, for services that run one.

Mount it in an ASGI app that runs on Trio (Starlette or Quart-Trio under hypercorn's
trio worker, or hypercorn alone): ``websocket`` scopes become ARCP connections of a
runtime, ``http`` scopes go to another app (or get 404), and the ``lifespan`` scope can
own the runtime. Nothing to install: ASGI is a calling convention (docs/deploy.md has
the recipes).

Who owns the runtime, two ways:

- *You*: ``async with open_runtime(...) as runtime:`` then ``ARCPApp(runtime)``, and
  serve it (``await hypercorn.trio.serve(app, config)``) inside that block. The
  lifespan scope then does nothing but answer.
- *The app*: ``arcp_asgi_app(agents=..., tokens=...)`` (or
  :meth:`ARCPApp.from_factory`) opens the runtime when the server starts
  (``lifespan.startup``), in the lifespan's task, and shuts it down when the server
  stops (``lifespan.shutdown``: running jobs get their grace, every watcher its
  terminal). A framework that keeps the lifespan for itself runs
  :meth:`ARCPApp.lifespan` in its own: ``Starlette(lifespan=arcp.lifespan)``.

Lifetimes (docs/lifetimes.md): the server's task for a ``websocket`` scope checks the
upgrade, accepts it and reads the server's ``receive`` (the transport's pump,
:mod:`arcp_trio.transport.asgi`); the connection itself runs in the runtime's
connection nursery (``Runtime.handle_transport``), which that task waits on. A server
that cancels the scope's task ends the connection, never a job; the session stays
resumable (§6.3).
"""

from __future__ import annotations

import inspect
import logging
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from .runtime.runtime import open_runtime
from .transport.asgi import DEFAULT_CLOSE_TIMEOUT, reject_asgi_websocket, serve_asgi_websocket
from .transport.origin import OriginPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from .runtime.runtime import Runtime
    from .transport.asgi import Receive, Scope, Send

    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["ARCPApp", "arcp_asgi_app"]

log = logging.getLogger(__name__)

_NOT_FOUND = b"Not Found\n"


class ARCPApp:
    """An ASGI 3 application serving ARCP over WebSocket (see the module docstring).

    Args:
        runtime: the runtime its connections join; you keep it open while the app
            is served (or use :meth:`from_factory` / :func:`arcp_asgi_app`).
        path: the request path (below the ASGI ``root_path``) it accepts upgrades
            on; others get 404. None (the default): any path, for when the host app
            routes (a Starlette ``WebSocketRoute``).
        allow_origins: the browser pages that may connect, ``scheme://host[:port]``
            (``"*"``: any); others get 403 before the upgrade. Default: every client
            that sends no ``Origin`` header, no page (:mod:`arcp_trio.transport.origin`).
        http_app: the ASGI app for ``http`` scopes (health, metrics, a site); None
            answers them 404. It never sees the ``lifespan`` scope.
        close_timeout: seconds a closing WebSocket waits for the peer's close.

    Raises:
        ValueError: an ``allow_origins`` entry is not an origin.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        path: str | None = None,
        allow_origins: Sequence[str] | OriginPolicy | None = None,
        http_app: ASGIApp | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self._runtime: Runtime | None = runtime
        self._factory: Callable[[], AbstractAsyncContextManager[Runtime]] | None = None
        self._path = path
        self._policy = OriginPolicy.of(allow_origins)
        self._http_app = http_app
        self._close_timeout = close_timeout

    @classmethod
    def from_factory(
        cls,
        factory: Callable[[], AbstractAsyncContextManager[Runtime]],
        *,
        path: str | None = None,
        allow_origins: Sequence[str] | OriginPolicy | None = None,
        http_app: ASGIApp | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> ARCPApp:
        """An app that owns its runtime: ``factory()`` (``partial(open_runtime,
        ...)``) is entered at ``lifespan.startup`` (or :meth:`lifespan`) and left at
        shutdown. Until then, and after, upgrades are refused with 503.
        """
        app = cls.__new__(cls)
        app._runtime = None
        app._factory = factory
        app._path = path
        app._policy = OriginPolicy.of(allow_origins)
        app._http_app = http_app
        app._close_timeout = close_timeout
        return app

    @property
    def runtime(self) -> Runtime:
        """The runtime connections join.

        Raises:
            RuntimeError: the app owns its runtime and it is not open (before
                startup, after shutdown).
        """
        if self._runtime is None:
            raise RuntimeError("the ARCP app's runtime is not running (no lifespan startup)")
        return self._runtime

    @property
    def allow_origins(self) -> tuple[str, ...]:
        """The origins allowed to connect (``OriginPolicy.allow_origins``)."""
        return self._policy.allow_origins

    def lifespan(self, app: object = None) -> AbstractAsyncContextManager[None]:
        """Open the app's own runtime for the block, and shut it down after.

        For frameworks that run the lifespan themselves:
        ``Starlette(..., lifespan=arcp.lifespan)`` (``app``, the framework's app, is
        ignored). An app built around a runtime you own opens nothing.

        Raises:
            RuntimeError: the app's runtime is already open.

        Cancellation: the runtime shuts down as ``open_runtime``'s block does.
        """
        return self._lifespan()

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        factory = self._factory
        if factory is None:
            yield  # the caller owns the runtime
            return
        if self._runtime is not None:
            raise RuntimeError("the ARCP app's runtime is already running")
        async with factory() as runtime:
            self._runtime = runtime
            try:
                yield
            finally:
                # New upgrades get 503 while (and after) the runtime shuts down.
                self._runtime = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI 3 entry point."""
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            if self._http_app is not None:
                await self._http_app(scope, receive, send)
            else:
                await _not_found(send)
        elif kind == "lifespan":
            await self._run_lifespan(receive, send)
        else:
            raise ValueError(f"ARCPApp cannot serve an ASGI {kind!r} scope")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        _require_trio()
        runtime = self._runtime
        if runtime is None:
            log.info("refused upgrade: the runtime is not running status=503")
            await reject_asgi_websocket(scope, receive, send, 503)
            return
        await serve_asgi_websocket(
            runtime.handle_transport,
            scope,
            receive,
            send,
            path=self._path,
            allow_origins=self._policy,
            max_message_size=runtime.config.max_message_size,
            close_timeout=self._close_timeout,
        )

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, around :meth:`lifespan`."""
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        _require_trio()
        started = False
        try:
            async with self._lifespan():
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown, the only message that follows
        except Exception as exc:
            stage = "shutdown" if started else "startup"
            log.error("ARCP runtime %s failed", stage, exc_info=True)
            await send({"type": f"lifespan.{stage}.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


def arcp_asgi_app(
    *,
    path: str | None = None,
    allow_origins: Sequence[str] | OriginPolicy | None = None,
    http_app: ASGIApp | None = None,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    **runtime_options: Any,
) -> ARCPApp:
    """An :class:`ARCPApp` that opens ``open_runtime(**runtime_options)`` at ASGI
    startup and shuts it down at shutdown.

    ``runtime_options`` are :func:`~arcp_trio.runtime.runtime.open_runtime`'s
    (``agents=`` and ``tokens=`` or ``authenticator=``, ``config=``, ``store=``...),
    checked against its signature now; the other arguments are :class:`ARCPApp`'s.

    Raises:
        TypeError: ``runtime_options`` does not fit ``open_runtime``.
        ValueError: an ``allow_origins`` entry is not an origin.
    """
    inspect.signature(open_runtime).bind(**runtime_options)
    return ARCPApp.from_factory(
        partial(open_runtime, **runtime_options),
        path=path,
        allow_origins=allow_origins,
        http_app=http_app,
        close_timeout=close_timeout,
    )


def _require_trio() -> None:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise RuntimeError(
            "ARCPApp runs on Trio: serve it with hypercorn's trio worker "
            "(hypercorn --worker-class trio) or another server running on Trio"
        ) from None


async def _not_found(send: Send) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_NOT_FOUND)).encode("ascii")),
    ]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": _NOT_FOUND})

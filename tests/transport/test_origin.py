"""The ``Origin`` allowlist (``arcp_trio.transport.origin``) and the native server's use
of it.

Rules: the policy is pure and tested directly; the native upgrade over memory streams
(the handshake helper, on the autojump clock: nobody answers the close) and over a
real 127.0.0.1 socket (``serve_websocket`` with a runtime), on the real clock under a
``fail_after`` guard. The ASGI and trio-websocket
upgrades have their own refusal tests (``test_asgi.py``, ``test_trio_websocket.py``).
"""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from arcp_trio.client import open_client
from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.runtime.serve import serve_websocket
from arcp_trio.transport.origin import DEFAULT_ORIGIN_POLICY, OriginPolicy
from arcp_trio.transport.websocket import websocket_server_handshake
from tests.helpers import TOKENS
from tests.mounts import upgrade_status

GUARD = 10


def origin(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"runtime.example"), (b"Origin", value.encode("latin-1"))]


# == the policy =============================================================================


def test_no_origin_header_is_always_allowed() -> None:
    for policy in (DEFAULT_ORIGIN_POLICY, OriginPolicy(["https://app.example"])):
        assert policy.check([]) is None
        assert policy.check([(b"host", b"runtime.example")]) is None


def test_by_default_every_page_is_refused() -> None:
    assert DEFAULT_ORIGIN_POLICY.allow_origins == ()
    for value in ("https://app.example", "http://localhost", "null", "garbage"):
        refusal = DEFAULT_ORIGIN_POLICY.check(origin(value))
        assert refusal is not None
        assert repr(value) in refusal


@pytest.mark.parametrize(
    "value",
    [
        "https://app.example",
        "HTTPS://APP.EXAMPLE",
        "https://app.example:443",
        "https://app.example/",
        "http://localhost:3000",
        "http://[::1]:8080",
    ],
)
def test_listed_origins_match_as_rfc_6454_serializes_them(value: str) -> None:
    policy = OriginPolicy(["https://App.Example", "http://localhost:3000", "http://[::1]:8080"])
    assert policy.check(origin(value)) is None


@pytest.mark.parametrize(
    "value",
    [
        "http://app.example",  # another scheme
        "https://app.example:8443",  # another port
        "https://evil.app.example",  # a subdomain is another origin
        "https://app.example.evil",
        "https://user@app.example",
        "https://app.example/path",
        "null",
        "",
    ],
)
def test_anything_else_is_refused(value: str) -> None:
    policy = OriginPolicy(["https://app.example"])
    assert policy.check(origin(value)) is not None


def test_star_allows_every_origin_and_null_only_by_name() -> None:
    anyone = OriginPolicy(["*"])
    for value in ("https://evil.example", "null", "garbage"):
        assert anyone.check(origin(value)) is None
    null = OriginPolicy(["null"])
    assert null.check(origin("null")) is None
    assert null.check(origin("https://app.example")) is not None
    assert OriginPolicy(["null", "*", "https://b.example", "https://a.example"]).allow_origins == (
        "*",
        "null",
        "https://a.example",
        "https://b.example",
    )


def test_two_origin_headers_are_refused_even_with_star() -> None:
    headers = [(b"origin", b"https://app.example"), (b"origin", b"https://evil.example")]
    refusal = OriginPolicy(["*"]).check(headers)
    assert refusal == "2 Origin headers"


@pytest.mark.parametrize("entry", ["app.example", "https://", "https://a.example/x", "*.example"])
def test_an_entry_that_is_not_an_origin_is_a_value_error(entry: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy([entry])


def test_a_single_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="a list of origins"):
        OriginPolicy("https://app.example")


def test_of_accepts_a_policy_a_list_or_nothing() -> None:
    policy = OriginPolicy(["https://app.example"])
    assert OriginPolicy.of(policy) is policy
    assert OriginPolicy.of(None) is DEFAULT_ORIGIN_POLICY
    assert OriginPolicy.of([]) is DEFAULT_ORIGIN_POLICY
    assert OriginPolicy.of(["https://app.example"]).allow_origins == ("https://app.example",)
    assert repr(policy) == "OriginPolicy(allow_origins=['https://app.example'])"


# == the native upgrade =====================================================================


async def handshake_response(request_headers: str, **options: object) -> tuple[bytes, bool]:
    """Run the server handshake on a memory stream; (the response head, accepted)."""
    client, server = trio.testing.memory_stream_pair()
    request = (
        "GET /arcp HTTP/1.1\r\nHost: runtime.example\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{request_headers}\r\n"
    )
    await client.send_all(request.encode("latin-1"))
    transport = await websocket_server_handshake(server, **options)  # type: ignore[arg-type]
    head = await client.receive_some(4096)
    if transport is not None:
        await transport.aclose()
    return bytes(head), transport is not None


async def test_the_native_handshake_refuses_an_origin_with_403(autojump_clock: object) -> None:
    with trio.fail_after(GUARD):
        head, accepted = await handshake_response("Origin: https://evil.example\r\n")
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert not accepted
        head, accepted = await handshake_response(
            "Origin: https://app.example\r\n", allow_origins=["https://app.example"]
        )
        assert head.startswith(b"HTTP/1.1 101 ")
        assert accepted
        head, accepted = await handshake_response("")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert accepted


async def test_serve_websocket_allow_origins() -> None:
    with trio.fail_after(GUARD):
        async with (
            open_runtime(agents=demo_registry(), tokens=TOKENS) as runtime,
            trio.open_nursery() as nursery,
        ):
            info = await nursery.start(
                partial(serve_websocket, allow_origins=["https://app.example"]),
                runtime,
                "127.0.0.1",
                0,
            )
            status, _ = await upgrade_status(info.port, headers=[("Origin", "https://x.test")])
            assert status == 403
            status, _ = await upgrade_status(info.port, headers=[("Origin", "https://app.example")])
            assert status == 101
            # Our client sends no Origin: in.
            async with open_client(info.url, token="tok-alice") as client:
                handle = await client.submit("echo", input="hi")
                assert (await handle.result()).result == {"echo": "hi", "version": "2.0.0"}
            nursery.cancel_scope.cancel()


async def test_serve_websocket_checks_allow_origins_before_listening() -> None:
    with trio.fail_after(GUARD):
        async with open_runtime(agents=demo_registry(), tokens=TOKENS) as runtime:
            with pytest.raises(ValueError, match="not an origin"):
                await serve_websocket(runtime, "127.0.0.1", 0, allow_origins=["app.example"])

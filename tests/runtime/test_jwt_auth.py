"""JWT bearer tokens (runtime/jwt_auth.py): what is accepted, and everything that
is refused with ``UNAUTHENTICATED`` (§6.1, §12).

The tests mint their own keys (RSA, EC, an HMAC secret) and tokens; the JWKS tests
serve the key set from a real HTTP server on 127.0.0.1 and count its requests.
"""

from __future__ import annotations

import http.server
import json
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.auth import AnyOf, BearerAuth
from arcp_trio.runtime.jwt_auth import JWKSKeys, JWTAuth, StaticKeys
from arcp_trio.runtime.runtime import open_runtime
from arcp_trio.transport.memory import memory_transport_pair
from arcp_trio.wire.errors import Unauthenticated
from tests.helpers import Peer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ISSUER = "https://id.example"
AUDIENCE = "arcp"
SECRET = b"s" * 32
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())


def at_now() -> datetime:
    return NOW


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


RSA = rsa_key()
OTHER_RSA = rsa_key()
EC = ec.generate_private_key(ec.SECP256R1())


def mint(
    key: Any, algorithm: str = "RS256", headers: dict[str, Any] | None = None, **claims: Any
) -> str:
    body: dict[str, Any] = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": T + 300}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def rs256() -> JWTAuth:
    return JWTAuth(
        StaticKeys(public_key_pem=pem(RSA)), issuer=ISSUER, audience=AUDIENCE, wall_clock=at_now
    )


async def test_a_valid_token_names_its_principal() -> None:
    assert await rs256().authenticate("bearer", mint(RSA)) == "alice"
    es = JWTAuth(
        StaticKeys(public_key_pem=pem(EC)),
        algorithms=["ES256"],
        audience=AUDIENCE,
        wall_clock=at_now,
    )
    assert await es.authenticate("Bearer", mint(EC, "ES256", iss=None)) == "alice"
    hs = JWTAuth(
        StaticKeys(secret=SECRET), algorithms=["HS256"], principal_claim="email", wall_clock=at_now
    )
    token = mint(SECRET, "HS256", email="a@example", aud=None, iss=None)
    assert await hs.authenticate("bearer", token) == "a@example"


@pytest.mark.parametrize(
    ("why", "token"),
    [
        ("expired beyond the leeway", lambda: mint(RSA, exp=T - 31)),
        ("an exp that is not a number", lambda: mint(RSA, exp="tomorrow")),
        ("not valid yet", lambda: mint(RSA, nbf=T + 31)),
        ("wrong audience", lambda: mint(RSA, aud="someone-else")),
        ("wrong issuer", lambda: mint(RSA, iss="https://evil.example")),
        ("no audience", lambda: mint(RSA, aud=None)),
        ("no exp", lambda: mint(RSA, exp=None)),
        ("signed by another key", lambda: mint(OTHER_RSA)),
        ("alg none", lambda: jwt.encode({"sub": "alice", "exp": 9e9}, "", algorithm="none")),
        # Key confusion: the public key used as an HMAC secret.
        ("HS256 with the public key", lambda: forge({"alg": "HS256"}, pem(RSA))),
        ("an algorithm not allowed", lambda: mint(EC, "ES256")),
        ("no principal", lambda: mint(RSA, sub=None)),
        ("a principal that is not a string", lambda: mint(RSA, sub=7)),
        ("not a JWT at all", lambda: "tok-alice"),
        ("a kid that is not a string", lambda: forge({"alg": "RS256", "kid": 5}, b"x")),
    ],
)
async def test_everything_else_is_unauthenticated(why: str, token: Any) -> None:
    with pytest.raises(Unauthenticated):
        await rs256().authenticate("bearer", token())


async def test_another_scheme_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated, match="scheme"):
        await rs256().authenticate("basic", mint(RSA))


def forge(header: dict[str, Any], hmac_key: bytes) -> str:
    """A token PyJWT would not mint: any header, HMAC-SHA256 signed with ``hmac_key``."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": T + 300}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_misconfigurations_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="none"):
        JWTAuth(StaticKeys(public_key_pem=pem(RSA)), algorithms=["none"], wall_clock=at_now)
    with pytest.raises(ValueError, match="secret"):
        JWTAuth(StaticKeys(public_key_pem=pem(RSA)), algorithms=["HS256"], wall_clock=at_now)
    with pytest.raises(ValueError, match="HS"):
        JWTAuth(StaticKeys(secret=SECRET), algorithms=["RS256"], wall_clock=at_now)
    with pytest.raises(ValueError, match="32 bytes"):
        StaticKeys(secret=b"short")


def test_keys_load_from_files(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(pem(RSA))
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    jwks = {
        "keys": [json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA.public_key())) | {"kid": "k1"}]
    }
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))

    async def check() -> None:
        from_pem = JWTAuth(
            StaticKeys.from_file(tmp_path / "key.pem"), audience=AUDIENCE, wall_clock=at_now
        )
        assert await from_pem.authenticate("bearer", mint(RSA)) == "alice"
        from_set = JWTAuth(
            StaticKeys.from_file(tmp_path / "jwks.json"), audience=AUDIENCE, wall_clock=at_now
        )
        assert await from_set.authenticate("bearer", mint(RSA, headers={"kid": "k1"})) == "alice"
        with pytest.raises(Unauthenticated, match="no key"):
            await from_set.authenticate("bearer", mint(RSA, headers={"kid": "k2"}))
        secret = StaticKeys.from_file(tmp_path / "secret", secret=True)
        hs = JWTAuth(secret, algorithms=["HS256"], audience=AUDIENCE, wall_clock=at_now)
        assert await hs.authenticate("bearer", mint(SECRET, "HS256")) == "alice"

    trio.run(check)


# == JWKS over HTTP ===============================================================================


class KeySetServer:
    """A real HTTP server that serves ``self.document`` and counts the fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        self.fail = False
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                if owner.fail:
                    self.send_error(503)
                    return
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def publish(self, *keys: tuple[str, rsa.RSAPrivateKey]) -> None:
        self.document = {
            "keys": [
                json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                | {"kid": kid, "alg": "RS256", "use": "sig"}
                for kid, key in keys
            ]
        }


@pytest.fixture
def key_server() -> Iterator[KeySetServer]:
    server = KeySetServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join(timeout=5)


async def test_a_jwks_url_is_cached_and_refetched_on_an_unknown_kid(
    key_server: KeySetServer,
) -> None:
    key_server.publish(("k1", RSA))
    keys = JWKSKeys(key_server.url, min_refresh_sec=0.2)
    auth = JWTAuth(keys, issuer=ISSUER, audience=AUDIENCE, wall_clock=at_now)
    with trio.fail_after(10):
        for _ in range(5):
            assert await auth.authenticate("bearer", mint(RSA, headers={"kid": "k1"})) == "alice"
        assert key_server.requests == 1  # cached
        # The issuer rotates to k2; a token naming it triggers one early fetch.
        key_server.publish(("k1", RSA), ("k2", OTHER_RSA))
        await trio.sleep(0.25)
        assert await auth.authenticate("bearer", mint(OTHER_RSA, headers={"kid": "k2"})) == "alice"
        assert key_server.requests == 2


async def test_made_up_kids_cost_one_fetch_not_one_per_hello(key_server: KeySetServer) -> None:
    key_server.publish(("k1", RSA))
    keys = JWKSKeys(key_server.url, min_refresh_sec=60)
    auth = JWTAuth(keys, audience=AUDIENCE, wall_clock=at_now)
    with trio.fail_after(10):
        for n in range(50):
            with pytest.raises(Unauthenticated, match="no key"):
                await auth.authenticate("bearer", mint(OTHER_RSA, headers={"kid": f"made-up-{n}"}))
    # The first load only: an early refresh waits min_refresh_sec after any fetch.
    assert key_server.requests == 1


async def test_an_unreachable_jwks_fails_closed(key_server: KeySetServer) -> None:
    key_server.fail = True
    auth = JWTAuth(
        JWKSKeys(key_server.url, min_refresh_sec=60), audience=AUDIENCE, wall_clock=at_now
    )
    with trio.fail_after(10), pytest.raises(Unauthenticated, match="no key"):
        await auth.authenticate("bearer", mint(RSA, headers={"kid": "k1"}))
    with pytest.raises(ValueError, match="http"):
        JWKSKeys("file:///etc/passwd")


# == through the handshake ========================================================================


async def test_the_handshake_takes_jwts_and_static_tokens(autojump_clock: trio.abc.Clock) -> None:
    authenticator = AnyOf(BearerAuth({"tok-ops": "ops"}), rs256())
    async with open_runtime(agents=demo_registry(), authenticator=authenticator) as rt:
        for token, expected in [(mint(RSA), "alice"), ("tok-ops", "ops")]:
            client_side, runtime_side = memory_transport_pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rt.handle_transport, runtime_side)
                welcome = await Peer(client_side).hello(token=token)
                assert welcome["type"] == "session.welcome"
                session = rt.session(welcome["session_id"])
                assert session is not None
                assert session.principal == expected
                await client_side.aclose()
        client_side, runtime_side = memory_transport_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rt.handle_transport, runtime_side)
            refused = await Peer(client_side).hello(token=mint(RSA, aud="other"))
        assert refused["type"] == "session.error"
        assert refused["payload"]["code"] == "UNAUTHENTICATED"


async def test_a_runtime_needs_some_way_in() -> None:
    with pytest.raises(ValueError, match="token"):
        async with open_runtime(agents=demo_registry()):
            pass

"""DESIGN.md's layer arrows point one way; this keeps them so.

wire ← protocol ← runtime/client; wire ← transport ← runtime/client; store is used
by runtime; conformance uses wire/protocol/transport/client, never runtime; nothing
imports cli or testing. Checked on the AST of every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "arcp_trio"

#: Which arcp_trio subpackages each layer may import.
ALLOWED: dict[str, set[str]] = {
    "wire": {"wire"},
    "protocol": {"wire", "protocol"},
    "transport": {"wire", "transport"},
    "store": {"wire", "protocol", "store"},
    "runtime": {"wire", "protocol", "transport", "store", "runtime"},
    "client": {"wire", "protocol", "transport", "client"},
    "testing": {
        "wire",
        "protocol",
        "transport",
        "runtime",
        "client",
        "store",
        "testing",
        "demo_agents",
    },
    "demo_agents": {"runtime", "wire", "demo_agents"},
    # The conformance checker speaks raw frames: never the runtime it checks.
    "conformance": {"wire", "protocol", "transport", "client", "conformance"},
    "cli": {
        "conformance",
        "wire",
        "protocol",
        "transport",
        "runtime",
        "client",
        "store",
        "demo_agents",
        "cli",
        "__init__",
        # ``serve --redis`` (imported only then: the extra may be missing).
        "cluster",
    },
    # The cluster's Redis implementations of the runtime's state interfaces.
    "cluster": {"wire", "protocol", "store", "runtime", "cluster"},
    "__main__": {"cli"},
    # The ASGI app: a runtime's connections over the ASGI transport.
    "asgi": {"wire", "transport", "runtime", "asgi"},
    "__init__": {"wire", "protocol", "transport", "runtime", "client", "store", "_version"},
    "_version": set(),
    "_scopes": set(),
    "_util": set(),
}
#: Modules that import no I/O or scheduling library.
PURE = {"wire", "protocol"}
IMPURE_LIBRARIES = {"trio", "wsproto", "trio_websocket", "sqlite3", "socket", "asyncio"}


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute dotted module, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package_parts = ["arcp_trio", *path.relative_to(PACKAGE).parent.parts]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((module, node.lineno))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layer_arrows_point_one_way(path: Path) -> None:
    layer = _layer(path)
    allowed = ALLOWED[layer]
    for module, line in _imports(path):
        parts = module.split(".")
        if parts[0] == "arcp_trio":
            target = parts[1] if len(parts) > 1 else "__init__"
            assert target in allowed | {"_version", "_scopes", "_util"}, (
                f"{path}:{line}: {layer} must not import {module}"
            )
        elif layer in PURE:
            assert parts[0] not in IMPURE_LIBRARIES, f"{path}:{line}: {layer} imports {module}"


def test_the_job_nursery_is_pinned_to_jobs_py() -> None:
    """Only jobs.py starts jobs (STYLE.md: watch where a nursery is passed); the
    facade opens the nursery and hands it over, and does nothing else with it."""
    for path in MODULES:
        text = path.read_text()
        if path.name == "jobs.py" and path.parent.name == "runtime":
            assert text.count("self._job_nursery.start_soon(") == 1
            continue
        if path.name == "runtime.py" and path.parent.name == "runtime":
            # It opens the nursery and passes it on; it never keeps or calls it.
            assert "job_nursery." not in text
            assert "_job_nursery" not in text
            continue
        assert "job_nursery" not in text, path


def test_the_runtime_has_no_public_constructor() -> None:
    """``open_runtime`` is the way in: it owns the nurseries a Runtime needs."""
    import pytest

    from arcp_trio.runtime.runtime import Runtime

    with pytest.raises(TypeError, match="no public constructor"):
        Runtime()  # type: ignore[call-arg]


#: Inside runtime/: which sibling modules each room may import (the facade,
#: runtime.py, may import them all; nothing imports it back but serve and __init__).
ROOMS: dict[str, set[str]] = {
    "__init__": {"agents", "config", "context", "runtime", "serve"},
    "agents": {"context"},
    "auth": set(),
    "config": set(),
    "connection": {"session", "timers"},
    "context": set(),
    "credentials": set(),
    # The handshake opens sessions and hands their frames to the handlers.
    "handshake": {
        "agents",
        "auth",
        "config",
        "connection",
        "handlers",
        "routing",
        "session",
        "state",
        "timers",
    },
    "handlers": {
        "agents",
        "config",
        "connection",
        "jobs",
        "ledger",
        "routing",
        "session",
        "shapes",
        "state",
    },
    # Jobs publish through the router (never the handlers, never the handshake).
    "jwt_auth": set(),
    "jobs": {
        "agents",
        "config",
        "context",
        "ledger",
        "otel",
        "routing",
        "shapes",
        "state",
        "timers",
        "tools",
    },
    "ledger": {"credentials"},
    # Reads the facade's statistics at scrape time (the runtime never imports it).
    "metrics": {"runtime"},
    "otel": set(),
    "recovery": {"session"},
    # The router knows sessions and the state; never the jobs that publish. (The
    # shared-delivery protocol names a Connection, under TYPE_CHECKING only.)
    "routing": {"connection", "session", "shapes", "state"},
    # The state interfaces know records and rows, nothing that acts on them.
    "state": {"recovery", "session"},
    "serve": {"runtime"},
    # Only under TYPE_CHECKING (a Session holds its Connection): coupling, not a cycle.
    "session": {"connection"},
    "shapes": set(),
    "timers": set(),
    "tools": set(),
}


@pytest.mark.parametrize("path", sorted((PACKAGE / "runtime").glob("*.py")), ids=lambda p: p.stem)
def test_the_runtime_rooms_import_one_way(path: Path) -> None:
    if path.stem == "runtime":
        return  # the facade
    allowed = ROOMS[path.stem]  # a new room must say where its arrows point
    siblings: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:  # from . import x
                siblings += [(alias.name, node.lineno) for alias in node.names]
            else:
                siblings.append((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            parts = node.module.split(".")
            if parts[:2] == ["arcp_trio", "runtime"] and len(parts) > 2:
                siblings.append((parts[2], node.lineno))
    for sibling, line in siblings:
        assert sibling in allowed, f"{path}:{line}: runtime/{path.stem} imports {sibling}"


#: The CLI's client commands speak to a runtime through the public client only: no
#: raw frames (the conformance peer), no transport of their own (ARCHITECTURE-REVIEW §4).
CLI_CLIENT_IMPORTS = {"arcp_trio.client", "arcp_trio.wire", "arcp_trio.transport.base"}


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((PACKAGE / "cli").glob("*.py")) if p.stem not in ("serve", "conformance")],
    ids=lambda p: p.stem,
)
def test_the_cli_client_commands_use_the_public_client(path: Path) -> None:
    for module, line in _imports(path):
        if not module.startswith("arcp_trio.") or module.startswith("arcp_trio.cli"):
            continue
        if module == "arcp_trio._version":
            continue
        assert any(module == m or module.startswith(m + ".") for m in CLI_CLIENT_IMPORTS), (
            f"{path}:{line}: cli/{path.stem} imports {module}"
        )

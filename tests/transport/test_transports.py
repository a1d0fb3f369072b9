"""Every transport against the same conformance checks (see ``conformance.py``).

Network variants use real 127.0.0.1 sockets on the real clock; each check runs under a
``fail_after`` guard so a hang fails fast instead of stalling the suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import trio

from tests.transport.conformance import CHECKS, PAIRS, check_transport, memory_pair

GUARD_SECONDS = 10


@pytest.mark.parametrize("check_name", list(CHECKS))
@pytest.mark.parametrize("pair_name", list(PAIRS))
async def test_conformance(pair_name: str, check_name: str) -> None:
    with trio.fail_after(GUARD_SECONDS):
        await CHECKS[check_name](PAIRS[pair_name])


async def test_check_transport_runs_every_check() -> None:
    with trio.fail_after(GUARD_SECONDS):
        await check_transport(memory_pair)


TRANSPORT_DIR = Path(__file__).resolve().parents[2] / "arcp_trio" / "transport"
FORBIDDEN = ("arcp_trio.runtime", "arcp_trio.client", "arcp_trio.protocol", "trio_websocket")
#: The optional adapter to trio-websocket (the extra) is the one module that imports it.
ADAPTERS = {"trio_websocket.py": ("trio_websocket",)}


@pytest.mark.parametrize("path", sorted(TRANSPORT_DIR.glob("*.py")), ids=lambda p: p.name)
def test_transport_layering(path: Path) -> None:
    """transport/ depends only on wire/, trio and wsproto (DESIGN.md layers), and its
    trio-websocket adapter on trio-websocket."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Resolve "from .x" / "from ..x" against arcp_trio.transport.<module>.
                package = ["arcp_trio", "transport"][: 3 - node.level]
                imported.append(".".join([*package, *([node.module] if node.module else [])]))
            else:
                imported.append(node.module or "")
    for name in imported:
        if name.startswith(ADAPTERS.get(path.name, ())):
            continue
        assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
        if name.startswith("arcp_trio"):
            assert name.startswith(("arcp_trio.wire", "arcp_trio.transport")), name

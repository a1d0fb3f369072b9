"""The reference client (agentruntimecontrolprotocol 1.1.3) against our runtime mounted
in servers a Trio team already runs: an ASGI app under hypercorn's trio worker (alone,
and inside Starlette) and a trio-websocket server's handler (``tests.mounts``).

The runtime and its server run in this process, in the test's nursery, on 127.0.0.1
port 0; the reference client runs ``ref_driver.py`` in its own process (the
``run_driver`` harness of ``conftest.py``, in a worker thread so the server keeps
serving). The assertions are those of ``test_reference_client.py``: the reference
client sees the same runtime whichever way it is served.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio

from arcp_trio.demo_agents import demo_registry
from arcp_trio.runtime.config import RuntimeConfig
from arcp_trio.runtime.runtime import open_runtime
from tests.interop.conftest import HEARTBEAT_SEC, RESUME_WINDOW_SEC, TOKENS, run_driver
from tests.interop.test_reference_client import (
    Report,
    assert_resumed_exactly_once,
    check,
    job_frames,
    shape,
)
from tests.mounts import mounted

pytestmark = pytest.mark.interop

#: Beyond the driver's own bound (it gives up after DRIVER_TIMEOUT + 10 s).
GUARD = 45


async def drive(kind: str, scenario: str, **args: Any) -> Report:
    """Serve a runtime the ``kind`` way and run one reference-client scenario on it."""
    config = RuntimeConfig(
        heartbeat_interval_sec=HEARTBEAT_SEC, resume_window_sec=RESUME_WINDOW_SEC
    )
    with trio.fail_after(GUARD):
        async with (
            open_runtime(agents=demo_registry(), tokens=TOKENS, config=config) as runtime,
            mounted(kind, runtime) as port,
        ):
            url = f"ws://127.0.0.1:{port}/arcp"
            out = await trio.to_thread.run_sync(
                partial(run_driver, url, "tok-alice", scenario, args)
            )
    return check(out)


@pytest.mark.parametrize("kind", ["asgi", "starlette", "trio-websocket"])
async def test_ticker(kind: str) -> None:
    out = await drive(kind, "ticker", input={"count": 5, "interval": 0.05})
    assert [e["body"] for e in out["handle_events"]] == [
        {"current": i, "total": 5, "units": "ticks"} for i in range(1, 6)
    ]
    assert out["outcome"]["payload"]["result"] == {"ticks": 5}
    assert shape(job_frames(out, "main", out["job_id"])) == [
        *(("job.event", i, "progress") for i in range(1, 6)),
        ("job.result", 6, None),
    ]


@pytest.mark.parametrize("kind", ["asgi", "trio-websocket"])
async def test_drop_then_resume(kind: str) -> None:
    out = await drive(kind, "drop_resume")
    assert_resumed_exactly_once(out)


@pytest.mark.parametrize("kind", ["asgi", "trio-websocket"])
async def test_malformed_frames(kind: str) -> None:
    out = await drive(kind, "malformed")
    replies = {r["name"]: r for r in out["replies"]}
    assert list(replies) == ["unknown_type", "submit_missing_agent", "json_array", "not_json"]
    for name, reply in replies.items():
        assert not reply["closed"], f"session ended after {name}"
        assert reply["reply"] is not None, f"no session.error for {name}"
        assert reply["reply"]["code"] == "INVALID_REQUEST", name
    for name in ("unknown_type", "submit_missing_agent"):
        assert replies[name]["reply"]["request_id"] == replies[name]["sent_id"]
    terminal = out["echo_terminal"]
    assert terminal is not None
    assert terminal["payload"]["result"]["echo"] == {"still": "alive"}
    assert not out["closed"]

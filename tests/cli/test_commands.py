"""Every ``arcp-trio`` client command, end to end against a real ``serve`` process.

Rules: real subprocesses and sockets on 127.0.0.1, the real clock, every wait bounded.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from arcp_trio.cli import main
from arcp_trio.wire.timestamps import format_timestamp
from tests.cli.conftest import REPO, run_cli, start_serve, stop
from tests.interop.tcp_proxy import open_tcp_proxy
from tests.tls import make_tls


def ndjson(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_status(env: dict[str, str], job_id: str, wanted: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        listing = json.loads(run_cli(["jobs", "--json", "--limit", "1000"], env).stdout)
        status = next((j["status"] for j in listing["jobs"] if j["job_id"] == job_id), None)
        if status == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"{job_id} is {status!r}, never {wanted!r}")


# == arguments and help (in process: no runtime needed) =====================================


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["submit"], ["watch"], ["jobs"], ["cancel"], ["conformance"]]
)
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: arcp-trio")
    if not command:
        assert "Exit codes" in out
        for name in ("serve", "submit", "watch", "jobs", "cancel", "conformance"):
            assert name in out
    if command in (["submit"], ["jobs"]):
        assert "--url" in out
        assert "ARCP_TOKEN" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "echo", "--token", "t", "--input", "{not json"],
        ["submit", "echo", "--token", "t", "--lease", "nonsense"],
        ["submit", "echo", "--token", "t", "--expires-at", "tomorrow"],
        ["submit", "echo", "--token", "t", "--out", "x.bin"],  # --out needs --follow
        ["jobs", "--token", "t", "--status", "finished"],
        ["serve", "--agents", "no_colon_here"],
        ["serve", "--agents", "arcp_trio_no_such_module:registry"],
        ["serve", "--agents", "arcp_trio.demo_agents:ticker"],  # not a registry
    ],
)
def test_bad_arguments_exit_2(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARCP_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_client_commands_need_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARCP_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["jobs"])
    assert exit_.value.code == 2


# == submit ================================================================================


def test_submit_prints_the_job_id_and_jobs_lists_it(cli_env: dict[str, str]) -> None:
    done = run_cli(["submit", "echo@1.0.0", "--input", '{"hi": 1}'], cli_env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert job_id.startswith("job_")
    assert "arcp-trio watch" in done.stderr
    wait_status(cli_env, job_id, "success")
    table = run_cli(["jobs", "--agent", "echo@1.0.0"], cli_env)
    assert table.returncode == 0
    assert job_id in table.stdout
    assert "success" in table.stdout


def test_submit_follow_prints_progress_and_the_result(cli_env: dict[str, str]) -> None:
    done = run_cli(
        ["submit", "ticker", "--input", '{"count": 3, "interval": 0.05}', "--follow"], cli_env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ticks": 3}
    for i in (1, 2, 3):
        assert f"progress {i}/3 ticks" in done.stderr
    assert "success" in done.stderr


def test_submit_input_from_file_and_flags_over_env(
    cli_env: dict[str, str], serve_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "input.json"
    source.write_text('{"from": "file"}')
    env = {k: v for k, v in cli_env.items() if k not in ("ARCP_URL", "ARCP_TOKEN")}
    done = run_cli(
        [
            "submit",
            "echo",
            "--url",
            serve_url,
            "--token",
            "t-bob",
            "--input",
            f"@{source}",
            "--follow",
            "--json",
        ],
        env,
    )
    assert done.returncode == 0, done.stderr
    lines = ndjson(done.stdout)
    assert lines[0]["type"] == "event"
    assert lines[0]["kind"] == "log"
    assert lines[-1]["type"] == "result"
    assert lines[-1]["result"] == {"echo": {"from": "file"}, "version": "2.0.0"}


def test_submit_follow_writes_a_chunked_result_to_out(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "result.bin"
    done = run_cli(
        ["submit", "chunker", "--input", '{"chunks": 5, "size": 3}', "--follow", "--out", str(out)],
        cli_env,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"aaabbbcccdddeee"
    assert done.stdout == ""
    assert "15 bytes streamed" in done.stderr


def test_submit_follow_streams_chunks_to_stdout(cli_env: dict[str, str]) -> None:
    done = run_cli(["submit", "chunker", "--follow"], cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "aaaaaaaabbbbbbbbccccccccdddddddd"


def test_a_failed_job_exits_1(cli_env: dict[str, str]) -> None:
    done = run_cli(
        [
            "submit",
            "spender",
            "--input",
            '{"steps": 5, "cost": 0.4}',
            "--follow",
            "--lease",
            "tool.call=search",
            "--lease",
            "cost.budget=USD:1.00",
        ],
        cli_env,
    )
    assert done.returncode == 1, done.stderr
    assert "BUDGET_EXHAUSTED" in done.stderr
    assert done.stderr.count("metric cost.inference") == 3


def test_timeout_and_lease_flags(cli_env: dict[str, str]) -> None:
    done = run_cli(
        [
            "submit",
            "slow",
            "--input",
            '{"seconds": 10}',
            "--max-runtime",
            "1",
            "--follow",
            "--expires-at",
            "+1h",
            "--json",
        ],
        cli_env,
    )
    assert done.returncode == 1
    last = ndjson(done.stdout)[-1]
    assert last["type"] == "error"
    assert last["code"] == "TIMEOUT"
    assert last["final_status"] == "timed_out"


@pytest.mark.parametrize(
    ("argv", "env_change", "code", "message"),
    [
        (["submit", "no-such-agent"], {}, 4, "AGENT_NOT_AVAILABLE"),
        (["submit", "echo@9.9.9"], {}, 4, "AGENT_VERSION_NOT_AVAILABLE"),
        (["submit", "echo"], {"ARCP_TOKEN": "wrong"}, 3, "UNAUTHENTICATED"),
        (["jobs"], {"ARCP_URL": "ws://127.0.0.1:9/arcp"}, 3, "cannot reach"),
        (["watch", "job_01JZZZZZZZZZZZZZZZZZZZZZZZ"], {}, 4, "JOB_NOT_FOUND"),
    ],
)
def test_refusals_and_unreachable_runtimes(
    cli_env: dict[str, str], argv: list[str], env_change: dict[str, str], code: int, message: str
) -> None:
    done = run_cli(argv, {**cli_env, **env_change})
    assert done.returncode == code, done.stderr
    assert message in done.stderr


# == watch, jobs, cancel ===================================================================


def test_watch_replays_a_finished_job(cli_env: dict[str, str]) -> None:
    job_id = run_cli(
        ["submit", "ticker", "--input", '{"count": 4, "interval": 0.02}'], cli_env
    ).stdout.strip()
    wait_status(cli_env, job_id, "success")
    done = run_cli(["watch", job_id], cli_env)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("progress")] == [
        f"progress {i}/4 ticks" for i in (1, 2, 3, 4)
    ]
    assert json.loads(done.stdout) == {"ticks": 4}


def test_jobs_pages_and_filters(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "ARCP_TOKEN": "t-carol"}  # carol's jobs are only this test's
    ids = [run_cli(["submit", "echo", "--input", str(i)], env).stdout.strip() for i in range(3)]
    first = run_cli(["jobs", "--limit", "2"], env)
    assert first.returncode == 0
    assert sum(job_id in first.stdout for job_id in ids) == 2
    assert "--cursor" in first.stderr
    everything = json.loads(run_cli(["jobs", "--limit", "2", "--all", "--json"], env).stdout)
    assert [j["job_id"] for j in everything["jobs"]] == ids
    assert everything["next_cursor"] is None
    none = json.loads(run_cli(["jobs", "--status", "cancelled,error", "--json"], env).stdout)
    assert none["jobs"] == []


def test_cancel_resumes_the_submitting_session(cli_env: dict[str, str]) -> None:
    job_id = run_cli(["submit", "slow", "--input", '{"seconds": 30}'], cli_env).stdout.strip()
    done = run_cli(["cancel", job_id], cli_env)
    assert done.returncode == 0, done.stderr
    assert "cancelled" in done.stderr
    wait_status(cli_env, job_id, "cancelled")


def test_cancel_from_another_session_is_refused(cli_env: dict[str, str], tmp_path: Path) -> None:
    job_id = run_cli(["submit", "slow", "--input", '{"seconds": 30}'], cli_env).stdout.strip()
    # Without the submitting session's resume token, a new session has no cancel
    # authority on arcp_trio (§7.4): the runtime says PERMISSION_DENIED.
    stranger = {**cli_env, "ARCP_STATE_DIR": str(tmp_path / "elsewhere")}
    done = run_cli(["cancel", job_id, "--json"], stranger)
    assert done.returncode == 4
    assert "PERMISSION_DENIED" in done.stderr
    assert run_cli(["cancel", job_id], cli_env).returncode == 0


def test_interrupt_detaches_and_the_job_keeps_running(cli_env: dict[str, str]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "arcp_trio", "submit", "slow", "--input", '{"seconds": 30}', "-f"],
        env=cli_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # "job_... slow@1.0.0"
    job_id = first.split()[0]
    process.stderr.readline()  # "status started"
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert "detached" in err
    wait_status(cli_env, job_id, "running")
    assert run_cli(["cancel", job_id], cli_env).returncode == 0


def saved_sessions(env: dict[str, str]) -> dict[str, Any]:
    path = Path(env["ARCP_STATE_DIR"]) / "sessions.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tickets carry the session's authority
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_submit_saves_a_resume_ticket_without_the_bearer_token(cli_env: dict[str, str]) -> None:
    job_id = run_cli(["submit", "slow", "--input", '{"seconds": 30}'], cli_env).stdout.strip()
    entry = saved_sessions(cli_env)["jobs"][job_id]
    ticket = entry["ticket"]
    assert ticket["type"] == "arcp_trio.resume_ticket"
    assert ticket["version"] == 1
    assert ticket["url"] == cli_env["ARCP_URL"]
    assert [job["job_id"] for job in ticket["jobs"]] == [job_id]  # still running
    assert cli_env["ARCP_TOKEN"] not in json.dumps(entry)
    assert run_cli(["cancel", job_id], cli_env).returncode == 0


def test_cancel_twice_and_cancel_after_the_end_say_already_ended(
    cli_env: dict[str, str],
) -> None:
    job_id = run_cli(["submit", "slow", "--input", '{"seconds": 30}'], cli_env).stdout.strip()
    first = run_cli(["cancel", job_id, "--json"], cli_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"job_id": job_id, "outcome": "cancelled"}
    # The resumed session saw the terminal and saved that: nothing left to cancel.
    assert saved_sessions(cli_env)["jobs"][job_id]["ticket"]["jobs"] == []
    again = run_cli(["cancel", job_id, "--json"], cli_env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["outcome"] == "already ended"
    # A job that ended while nobody was attached: its terminal is in the resume's replay.
    short = run_cli(["submit", "slow", "--input", '{"seconds": 0.2}'], cli_env).stdout.strip()
    wait_status(cli_env, short, "success")
    ended = run_cli(["cancel", short, "--json"], cli_env)
    assert ended.returncode == 0, ended.stderr
    assert json.loads(ended.stdout)["outcome"] == "already ended"


def test_a_stale_ticket_falls_back_to_a_new_session_and_is_refused(
    cli_env: dict[str, str],
) -> None:
    job_id = run_cli(["submit", "slow", "--input", '{"seconds": 30}'], cli_env).stdout.strip()
    path = Path(cli_env["ARCP_STATE_DIR"]) / "sessions.json"
    saved = json.loads(path.read_text())
    good = saved["jobs"][job_id]["ticket"]["resume_token"]
    saved["jobs"][job_id]["ticket"]["resume_token"] = "rtk_01JZZZZZZZZZZZZZZZZZZZZZZZ"
    path.write_text(json.dumps(saved))
    done = run_cli(["cancel", job_id], cli_env)
    assert done.returncode == 4, done.stderr  # the new session has no authority (§7.4)
    assert "PERMISSION_DENIED" in done.stderr
    saved["jobs"][job_id]["ticket"]["resume_token"] = good
    path.write_text(json.dumps(saved))  # the refusals left the session resumable
    assert run_cli(["cancel", job_id], cli_env).returncode == 0


def test_cancel_reads_the_state_file_of_earlier_versions(cli_env: dict[str, str]) -> None:
    job_id = run_cli(["submit", "slow", "--input", '{"seconds": 30}'], cli_env).stdout.strip()
    path = Path(cli_env["ARCP_STATE_DIR"]) / "sessions.json"
    ticket = json.loads(path.read_text())["jobs"][job_id]["ticket"]
    legacy = {key: ticket[key] for key in ("url", "session_id", "resume_token", "last_event_seq")}
    path.write_text(json.dumps({"jobs": {job_id: {**legacy, "saved_at": "2026-01-01T00:00:00Z"}}}))
    done = run_cli(["cancel", job_id], cli_env)
    assert done.returncode == 0, done.stderr
    wait_status(cli_env, job_id, "cancelled")


# == the progress bar on a terminal =========================================================


def run_in_pty(argv: list[str], env: dict[str, str], timeout: float = 20) -> tuple[int, str]:
    """Run a command with stdin/stdout/stderr on a 100x30 pseudo-terminal."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "arcp_trio", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm-256color"},
        cwd=REPO,
        close_fds=True,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                output += data
            elif process.poll() is not None:
                break
        code = process.wait(timeout=5)
    finally:
        process.kill()
        os.close(master)
    return code, output.decode(errors="replace")


def test_follow_draws_a_progress_bar_on_a_terminal(cli_env: dict[str, str]) -> None:
    code, screen = run_in_pty(
        ["submit", "ticker", "--input", '{"count": 4, "interval": 0.1}', "--follow"], cli_env
    )
    assert code == 0, screen
    assert "\x1b[" in screen  # styled
    assert "━" in screen  # rich's bar
    assert "\r\x1b[2K" in screen  # redrawn in place
    for i in (1, 2, 3, 4):
        assert f"{i}/4 ticks" in screen
    assert '"ticks": 4' in screen
    assert "success" in screen


def test_logs_print_above_the_bar(cli_env: dict[str, str]) -> None:
    code, screen = run_in_pty(["submit", "chatty", "--input", '{"n": 3}', "--follow"], cli_env)
    assert code == 0, screen
    for i in range(3):
        assert f"line {i}" in screen


# == reconnects are a status line ===========================================================


async def test_follow_shows_reconnects_as_status_not_errors(
    cli_env: dict[str, str], serve_url: str
) -> None:
    host, port = serve_url.removeprefix("ws://").removesuffix("/arcp").split(":")
    with trio.fail_after(30):
        async with open_tcp_proxy(host, int(port)) as proxy:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "arcp_trio",
                    "submit",
                    "ticker",
                    "--follow",
                    "--input",
                    '{"count": 12, "interval": 0.1}',
                    "--url",
                    proxy.url(),
                ],
                env=cli_env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert process.stdout is not None
            assert process.stderr is not None
            err = b""
            cut = False
            while True:
                chunk = await process.stderr.receive_some(4096)
                if not chunk:
                    break
                err += chunk
                if not cut and b"progress 3/12" in err:
                    assert proxy.cut() == 1
                    cut = True
            out = b""
            while chunk := await process.stdout.receive_some(4096):
                out += chunk
            assert await process.wait() == 0, err.decode()
    text = err.decode()
    assert "reconnecting" in text
    assert "reconnected: session resumed (reconnects: 1)" in text
    assert "error" not in text.lower()
    progress = [line for line in text.splitlines() if line.startswith("progress")]
    assert progress == [f"progress {i}/12 ticks" for i in range(1, 13)]
    assert json.loads(out) == {"ticks": 12}


# == serve --agents ========================================================================


AGENTS_MODULE = """
from arcp_trio import AgentRegistry

registry = AgentRegistry()


@registry.agent("shout", version="1.0.0")
async def shout(input, ctx):
    await ctx.progress(1, 1, units="words")
    return str(input).upper()
"""


def test_serve_hosts_your_own_agents(tmp_path: Path) -> None:
    (tmp_path / "my_agents.py").write_text(AGENTS_MODULE)
    process, url = start_serve("--agents", "my_agents:registry", cwd=tmp_path)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "ARCP_STATE_DIR": str(tmp_path / "s")}
        done = run_cli(
            ["submit", "shout", "--input", '"hello"', "-f", "--url", url, "--token", "t-alice"],
            env,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "HELLO\n"
        demo = run_cli(["submit", "echo", "--url", url, "--token", "t-alice"], env)
        assert demo.returncode == 4  # the demo agents are not hosted
    finally:
        stop(process)


def test_the_slow_agent_with_a_short_lease_ends_lease_expired_at_expiry(
    cli_env: dict[str, str],
) -> None:
    """§9.5, `serve`'s default `--lease-expiry terminate`: `slow`, asked to sleep a
    minute under a lease that expires in about 2 s, ends with LEASE_EXPIRED within a
    second of the expiry (the command exits right after the terminal)."""
    expires = datetime.now(UTC) + timedelta(seconds=2.5)  # the CLI starts up first
    done = run_cli(
        ["submit", "slow", "--input", '{"seconds": 60}', "--expires-at",
         format_timestamp(expires), "--follow"],
        cli_env,
    )  # fmt: skip
    late = (datetime.now(UTC) - expires).total_seconds()
    assert done.returncode == 1, done.stderr  # the job failed
    assert "LEASE_EXPIRED" in done.stderr
    assert 0 <= late < 1.0, late


def test_serve_over_tls_prints_a_wss_ready_line_and_the_client_uses_it(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    tls = make_tls(tmp_path)
    process, url = start_serve("--certfile", str(tls.cert_file), "--keyfile", str(tls.key_file))
    try:
        assert url.startswith("wss://127.0.0.1:")
        assert url.endswith("/arcp")
        env = {**cli_env, "ARCP_URL": url, "SSL_CERT_FILE": str(tls.ca_file)}
        done = run_cli(["submit", "echo", "--input", '{"over": "tls"}', "--follow"], env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["echo"] == {"over": "tls"}
        untrusting = {k: v for k, v in env.items() if k != "SSL_CERT_FILE"}
        refused = run_cli(["submit", "echo"], untrusting)
        assert refused.returncode == 3, refused.stderr  # no session: the cert is not trusted
    finally:
        stop(process)


@pytest.mark.parametrize(
    "flags",
    [["--keyfile", "k.pem"], ["--certfile", "missing.pem"]],
    ids=["key-without-cert", "unreadable-cert"],
)
def test_serve_tls_flags_are_checked(flags: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "arcp_trio", "serve", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "--certfile" in done.stderr or "--keyfile" in done.stderr

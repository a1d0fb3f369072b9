"""§6.2 negotiation and §6.4 heartbeat bookkeeping, driven by explicit ``now``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from arcp_trio.protocol.session import (
    ALL_FEATURES,
    SPEC_SHAPES_FEATURE,
    Dialect,
    HeartbeatAction,
    HeartbeatMonitor,
    ResumeWindow,
    negotiate_features,
)


def test_negotiation_is_the_intersection() -> None:
    assert negotiate_features(ALL_FEATURES, ["ack", "bogus", "heartbeat"]) == {"ack", "heartbeat"}
    assert negotiate_features(ALL_FEATURES, []) == frozenset()


def test_dialect_follows_the_spec_shapes_feature() -> None:
    assert Dialect.for_features(frozenset({"ack"})) is Dialect.REFERENCE
    assert Dialect.for_features(frozenset({SPEC_SHAPES_FEATURE})) is Dialect.SPEC


def test_heartbeat_pings_after_one_quiet_interval_and_dies_after_two() -> None:
    monitor = HeartbeatMonitor(interval=10, last_received=0)
    assert monitor.next_wakeup() == 10
    assert monitor.poll(9.9) is HeartbeatAction.NONE
    assert monitor.poll(10) is HeartbeatAction.SEND_PING
    # Only one ping per quiet interval.
    assert monitor.poll(15) is HeartbeatAction.NONE
    assert monitor.next_wakeup() == 20
    # §6.4: two consecutive silent intervals.
    assert monitor.poll(20) is HeartbeatAction.DEAD


def test_any_inbound_frame_keeps_the_connection_alive() -> None:
    monitor = HeartbeatMonitor(interval=10, last_received=0)
    assert monitor.poll(10) is HeartbeatAction.SEND_PING
    monitor.received(12)
    assert monitor.poll(21) is HeartbeatAction.NONE
    assert monitor.next_wakeup() == 22
    assert monitor.poll(22) is HeartbeatAction.SEND_PING
    assert monitor.poll(32) is HeartbeatAction.DEAD


def test_a_pong_proves_the_peer_alive_without_postponing_the_next_ping() -> None:
    """§6.4 at a steady cadence: an idle peer answering each ping is pinged once per
    interval from the previous ping, not from its pong (which would make the timer
    wake once for nothing every interval)."""
    monitor = HeartbeatMonitor(interval=10, last_received=0)
    assert monitor.poll(10) is HeartbeatAction.SEND_PING
    monitor.answered(10.5)
    assert monitor.next_wakeup() == 20
    assert monitor.poll(20) is HeartbeatAction.SEND_PING
    # Death still counts from the pong: two silent intervals after 10.5.
    assert monitor.next_wakeup() == 30
    assert monitor.poll(30) is HeartbeatAction.SEND_PING
    assert monitor.poll(30.4) is HeartbeatAction.NONE
    assert monitor.poll(30.5) is HeartbeatAction.DEAD


def test_resume_window() -> None:
    window = ResumeWindow(window_sec=60)
    assert not window.expired(1e9)
    window.detach(100)
    assert window.deadline == 160
    assert not window.expired(159.9)
    assert window.expired(160)
    window.attach()
    assert not window.expired(1000)


@given(
    st.floats(0.001, 1e6, allow_nan=False, allow_infinity=False),
    st.floats(0, 1e9, allow_nan=False, allow_infinity=False),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
)
def test_a_poll_at_the_wakeup_always_acts(interval: float, start: float, ping_after: float) -> None:
    """Regression (fuzzing): with float rounding, poll(next_wakeup()) could return NONE
    without moving next_wakeup(), and the heartbeat loop spun."""
    monitor = HeartbeatMonitor(interval=interval, last_received=start)
    if ping_after:
        monitor.last_ping_sent = start + ping_after
    for _ in range(3):
        wake = monitor.next_wakeup()
        if monitor.poll(wake) is HeartbeatAction.DEAD:
            return
        assert monitor.next_wakeup() > wake

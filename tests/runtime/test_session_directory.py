"""SessionDirectory: sessions by id and by every token hash that resumes them.

The index must answer exactly what a scan of every session's valid tokens would
(§6.3: tokens rotate on every welcome; the ones not yet confirmed stay valid), so a
resume that names no session is one lookup.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from arcp_trio.protocol.eventlog import EventBuffer
from arcp_trio.protocol.session import Dialect, ResumeWindow
from arcp_trio.runtime.session import Session, hash_token
from arcp_trio.runtime.state import MemorySessionDirectory as SessionDirectory


def session(number: int) -> Session:
    return Session(
        session_id=f"sess_{number}",
        principal="alice",
        features=frozenset(),
        dialect=Dialect.SPEC,
        buffer=EventBuffer(max_events=8),
        window=ResumeWindow(window_sec=60),
    )


def scan(sessions: list[Session], token_hash: str) -> Session | None:
    return next((s for s in sessions if token_hash in s.valid_token_hashes()), None)


def test_a_rotated_token_resumes_until_a_welcome_is_answered() -> None:
    directory = SessionDirectory()
    one = session(1)
    directory.index(one)
    first = one.rotate_token()
    directory.tokens_changed(one)
    second = one.rotate_token()
    directory.tokens_changed(one)
    assert directory.find_by_token(hash_token(first)) is one
    assert directory.find_by_token(hash_token(second)) is one
    one.confirm_token(hash_token(second))
    directory.tokens_changed(one)
    assert directory.find_by_token(hash_token(first)) is None  # retired
    assert directory.find_by_token(hash_token(second)) is one
    directory.remove(one)
    assert directory.find_by_token(hash_token(second)) is None
    assert directory.get("sess_1") is None
    assert len(directory) == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "rotate", "confirm", "present", "remove"]),
            st.integers(0, 3),
            st.integers(0, 9),
        ),
        max_size=60,
    )
)
def test_the_index_answers_what_a_scan_would(steps: list[tuple[str, int, int]]) -> None:
    directory = SessionDirectory()
    sessions = [session(n) for n in range(4)]
    present: list[Session] = []
    issued: list[str] = []
    #: A session only ever confirms or presents a token it was issued (as the runtime).
    own: dict[int, list[str]] = {n: [] for n in range(4)}
    for op, which, pick in steps:
        target = sessions[which]
        if op == "add" and target not in present:
            directory.index(target)
            present.append(target)
        elif op == "remove" and target in present:
            directory.remove(target)
            present.remove(target)
        elif op == "rotate":
            issued.append(target.rotate_token())
            own[which].append(issued[-1])
            directory.tokens_changed(target)
        elif op in ("confirm", "present") and own[which]:
            token_hash = hash_token(own[which][pick % len(own[which])])
            if op == "confirm":
                target.confirm_token(token_hash)
            else:
                target.presented(token_hash)
            directory.tokens_changed(target)
        for token in issued:
            assert directory.find_by_token(hash_token(token)) is scan(present, hash_token(token))
        assert sorted(s.session_id for s in directory) == sorted(s.session_id for s in present)

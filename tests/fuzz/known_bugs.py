"""Runtime bugs the fuzzers found that are not fixed yet.

Each has a strict-xfail regression test in ``tests/fuzz/test_regressions.py``. While
a name is listed here, the fuzzers avoid or relax exactly that case so everything
else keeps being fuzzed; when the bug is fixed its regression test XPASSes (a strict
failure), and the fix removes both the xfail and the name here.

Fixed since they were found (each with a regression test of its own): a cancel of a
finished job answered INTERNAL_ERROR; the heartbeat loop could spin on float
rounding; an overflow notice could re-arm its own episode; a welcome lost in
transit lost the session; a late duplicate of a resume handshake took the session
over; a result nested a few hundred levels deep crashed the runtime; a deeply nested
frame closed the connection (wire); a string where the schema wants a list was split
into characters (wire).
"""

from __future__ import annotations

KNOWN_BUGS: frozenset[str] = frozenset()

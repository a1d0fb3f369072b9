"""The ARCP conformance checker: drives any runtime over WebSocket, requirement by requirement.

``arcp-trio conformance URL --token T`` is the command; ``run_conformance`` is the API.
It uses raw frames (``peer``), never ``arcp_trio.client``, so it can send exactly the
frame a requirement is about and see exactly what comes back. See
``docs/conformance.md`` for the requirement table and the demo-agent contract a
runtime must host to be checked.
"""

from __future__ import annotations

from . import checks as _checks  # noqa: F401  (registers the requirements)
from .checker import REQUIREMENTS as REQUIREMENTS
from .checker import Requirement as Requirement
from .checker import run_conformance as run_conformance
from .peer import SPEC_FEATURES as SPEC_FEATURES
from .peer import Peer as Peer
from .peer import PeerClosed as PeerClosed
from .report import CheckResult as CheckResult
from .report import DialectNote as DialectNote
from .report import Outcome as Outcome
from .report import Report as Report

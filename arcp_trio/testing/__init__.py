"""Testing and fuzzing toolkit for ARCP runtimes, clients and agents (public).

Importable without pytest or hypothesis. Those live in two submodules:

* ``arcp_trio.testing.plugin``: the pytest plugin (``arcp_*`` fixtures).
* ``arcp_trio.testing.strategies``: hypothesis strategies (envelopes, hostile
  frames, close/resume programs).

Everything else is here: in-process runtimes and clients (``open_test_runtime``,
``open_runtime_pair``, ``MemoryLink``, ``RawPeer``), a seeded chaos transport
(``ChaosTransport``, ``ChaosPlan``), virtual-time runners (``run_on_mock_clock``,
``MockClockPortal``), a scriptable agent (``PuppetBoard``) and the close/resume
program runner that checks the session invariants after every step
(``run_program``, ``ProgramRunner``). See docs/testing.md.
"""

from __future__ import annotations

from .chaos import ChaosPlan as ChaosPlan
from .chaos import ChaosTransport as ChaosTransport
from .pairs import REFERENCE_FEATURES as REFERENCE_FEATURES
from .pairs import SPEC_FEATURES as SPEC_FEATURES
from .pairs import TEST_TOKENS as TEST_TOKENS
from .pairs import MemoryLink as MemoryLink
from .pairs import MockClockPortal as MockClockPortal
from .pairs import RawPeer as RawPeer
from .pairs import RuntimePair as RuntimePair
from .pairs import SequenceViolation as SequenceViolation
from .pairs import config_for_tests as config_for_tests
from .pairs import connect_peer as connect_peer
from .pairs import no_jitter as no_jitter
from .pairs import open_runtime_pair as open_runtime_pair
from .pairs import open_test_client as open_test_client
from .pairs import open_test_runtime as open_test_runtime
from .pairs import run_on_mock_clock as run_on_mock_clock
from .pairs import trio_wall_clock as trio_wall_clock
from .program import Ack as Ack
from .program import Advance as Advance
from .program import Cancel as Cancel
from .program import Close as Close
from .program import Drop as Drop
from .program import Emit as Emit
from .program import Finish as Finish
from .program import HeartbeatStall as HeartbeatStall
from .program import InvariantViolation as InvariantViolation
from .program import ListJobs as ListJobs
from .program import Open as Open
from .program import ProgramReport as ProgramReport
from .program import ProgramRunner as ProgramRunner
from .program import Resume as Resume
from .program import Step as Step
from .program import Submit as Submit
from .program import Subscribe as Subscribe
from .program import Unsubscribe as Unsubscribe
from .program import program_config as program_config
from .program import run_program as run_program
from .puppet import PUPPET as PUPPET
from .puppet import TICK as TICK
from .puppet import PuppetBoard as PuppetBoard

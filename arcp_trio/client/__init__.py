"""The ARCP client: submit, observe, resume and cancel jobs through any disconnect."""

from __future__ import annotations

from .client import Backoff as Backoff
from .client import Client as Client
from .client import ClientClosed as ClientClosed
from .client import ClientStatistics as ClientStatistics
from .client import Connector as Connector
from .client import GapDetected as GapDetected
from .client import open_client as open_client
from .client import websocket_connector as websocket_connector
from .handles import Event as Event
from .handles import JobHandle as JobHandle
from .handles import JobInfo as JobInfo
from .handles import JobOutcome as JobOutcome
from .handles import JobPage as JobPage
from .handles import Subscription as Subscription
from .ticket import InvalidTicket as InvalidTicket
from .ticket import ResumeTicket as ResumeTicket
from .ticket import TicketJob as TicketJob

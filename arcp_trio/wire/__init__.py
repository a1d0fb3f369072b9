"""The ARCP wire format: envelopes, payloads, ids, timestamps and error codes.

Pure data and functions: no Trio, no I/O, no clock reads (ULID minting aside).
"""

from __future__ import annotations

from .codec import ARCP_VERSION as ARCP_VERSION
from .codec import Envelope as Envelope
from .codec import decode as decode
from .codec import dumps as dumps
from .codec import encode as encode
from .errors import ARCPError as ARCPError
from .errors import ErrorCode as ErrorCode
from .messages import MessageType as MessageType

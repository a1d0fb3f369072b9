"""Persistence for the runtime: job registry, idempotency, sessions, event buffers."""

from __future__ import annotations

from .base import MemoryStore as MemoryStore
from .base import Recovered as Recovered
from .base import Store as Store
from .base import StoreError as StoreError
from .sqlite import SQLiteStore as SQLiteStore

"""``python -m arcp_trio.cli`` (``python -m arcp_trio`` works too)."""

from __future__ import annotations

from . import main

raise SystemExit(main())

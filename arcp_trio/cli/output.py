"""Where output goes: results on stdout, everything else on stderr.

One rich console per stream, made on first use (``rich`` is imported only by the
commands that draw). ``print_json`` writes one line of JSON on stdout, unstyled.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["configure_client_logging", "escape", "print_json", "stderr", "stdout"]

_consoles: dict[str, Console] = {}


def stderr() -> Console:
    """One console for everything on stderr: progress, logs, status lines."""
    if "err" not in _consoles:
        from rich.console import Console

        # Lines are not hard-wrapped when stderr is a file or a pipe.
        _consoles["err"] = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
    return _consoles["err"]


def stdout() -> Console:
    if "out" not in _consoles:
        from rich.console import Console

        # Tables are not cut to 80 columns when stdout is a file or a pipe.
        _consoles["out"] = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    return _consoles["out"]


def escape(text: str) -> str:
    """``text`` with rich markup made literal."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def configure_client_logging(level: str) -> None:
    """The client commands' log: styled, on the stderr console (under the progress bar)."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level.upper(),
        format="%(name)s %(message)s",
        handlers=[RichHandler(console=stderr(), show_path=False, rich_tracebacks=False)],
    )

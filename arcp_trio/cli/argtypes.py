"""argparse ``type=`` functions: each turns one flag's text into its value or says why not."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..wire.messages import JOB_STATUSES
from ..wire.timestamps import format_timestamp, parse_timestamp, system_wall_clock

if TYPE_CHECKING:
    from typing import TypeAlias

    #: What ``add_subparsers`` returns: where each command's module adds its parser.
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "expires_at",
    "json_input",
    "lease",
    "positive_float",
    "positive_int",
    "statuses",
    "token_principal",
]


def token_principal(value: str) -> tuple[str, str]:
    """``TOKEN=PRINCIPAL`` (``serve --token``)."""
    token, sep, principal = value.partition("=")
    if not sep or not token or not principal:
        raise argparse.ArgumentTypeError(f"expected TOKEN=PRINCIPAL, got {value!r}")
    return token, principal


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or not math.isfinite(number):
        raise argparse.ArgumentTypeError("must be a positive number")
    return number


def json_input(value: str) -> Any:
    """``JSON``, ``@file`` (its contents as JSON) or ``@-`` (JSON on stdin)."""
    text = value
    if value.startswith("@"):
        source = value[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {source}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def lease(value: str) -> dict[str, list[str]]:
    """``NAMESPACE=PATTERN[,PATTERN...]`` or a JSON object of namespace → patterns."""
    if value.lstrip().startswith("{"):
        parsed = json.loads(value)
        if not isinstance(parsed, dict) or not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in parsed.values()
        ):
            raise argparse.ArgumentTypeError("a JSON lease maps namespaces to lists of patterns")
        return {str(k): list(v) for k, v in parsed.items()}
    namespace, sep, patterns = value.partition("=")
    if not sep or not namespace or not patterns:
        raise argparse.ArgumentTypeError(
            f"expected NAMESPACE=PATTERN[,PATTERN...] (e.g. fs.read=/data/**), got {value!r}"
        )
    return {namespace: [p for p in patterns.split(",") if p]}


_DURATION = re.compile(r"\+?(\d+(?:\.\d+)?)(s|m|h|d)?")


def expires_at(value: str) -> str:
    """An ISO 8601 UTC timestamp, or ``+DURATION`` from now (``+90s``, ``+5m``, ``+2h``)."""
    if value.startswith("+"):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise argparse.ArgumentTypeError(f"expected +N[s|m|h|d], got {value!r}")
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
        moment = system_wall_clock() + timedelta(seconds=float(match.group(1)) * scale)
        return format_timestamp(moment)
    try:
        parse_timestamp(value, require_utc=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def statuses(value: str) -> list[str]:
    """``S[,S...]``, each one of the job statuses (§6.6)."""
    found = [s for s in value.split(",") if s]
    unknown = [s for s in found if s not in JOB_STATUSES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown status {unknown[0]!r} (one of {', '.join(sorted(JOB_STATUSES))})"
        )
    return found

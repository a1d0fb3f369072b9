"""The argument parser: the top level, the client commands' shared options, and one
sub-parser per command, each declared by its command's module (``add_parser``)."""

from __future__ import annotations

import argparse
import os

from .._version import __version__
from . import cancel, conformance, jobs, serve, submit

__all__ = ["DEFAULT_URL", "build_parser", "client_options"]

DEFAULT_URL = "ws://127.0.0.1:8765/arcp"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcp-trio",
        description="ARCP v1.1 runtime and client for Trio.",
        epilog="Exit codes: 0 ok, 1 job failed / requirement failed, 2 bad arguments, "
        "3 no session, 4 request refused, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"arcp-trio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(commands)
    client = client_options()
    submit.add_parsers(commands, client)  # submit and watch
    jobs.add_parser(commands, client)
    cancel.add_parser(commands, client)
    conformance.add_parser(commands, client)
    return parser


def client_options() -> argparse.ArgumentParser:
    """``--url``, ``--token``, ``--json``, ``--log-level``: every client command's."""
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url",
        default=os.environ.get("ARCP_URL") or DEFAULT_URL,
        help=f"runtime endpoint (default $ARCP_URL, else {DEFAULT_URL})",
    )
    client.add_argument(
        "--token",
        default=os.environ.get("ARCP_TOKEN"),
        help="bearer token (default $ARCP_TOKEN)",
    )
    client.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    client.add_argument("--log-level", default="WARNING", help="stderr log level")
    return client

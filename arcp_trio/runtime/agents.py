"""The agent registry: names, versions and defaults (§7.5)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from ..wire.errors import AgentNotAvailable, AgentVersionNotAvailable
from ..wire.messages import AgentInfo, parse_agent_ref

if TYPE_CHECKING:
    from .context import JobContext

__all__ = ["Agent", "AgentRegistry", "ResolvedAgent"]

#: An agent is an async function of the job's input and its context.
Agent = Callable[[Any, "JobContext"], Awaitable[Any]]


@attrs.frozen
class ResolvedAgent:
    name: str
    version: str | None
    function: Agent
    #: May be run again from scratch on another node of a cluster when the node
    #: running it dies (at-least-once: its watchers may see events twice).
    restartable: bool = False

    @property
    def ref(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@attrs.define
class _Entry:
    versions: dict[str, Agent] = attrs.field(factory=dict)
    default: str | None = None
    unversioned: Agent | None = None


class AgentRegistry:
    """Agents the runtime hosts. Inventory order is registration order."""

    def __init__(self) -> None:
        self._agents: dict[str, _Entry] = {}
        self._restartable: set[tuple[str, str | None]] = set()

    def register(
        self,
        name: str,
        function: Agent,
        *,
        version: str | None = None,
        default: bool = False,
        restartable: bool = False,
    ) -> None:
        """Register ``function`` as ``name`` (or ``name@version``).

        The first version registered is the default unless ``default=True`` picks
        another. ``restartable``: on a cluster, a job of this agent whose node dies is
        run again from scratch on a surviving node instead of ending with
        ``INTERNAL_ERROR`` (at-least-once; docs/cluster.md). Only for agents whose
        work may safely be done twice.

        Raises:
            ValueError: a malformed name/version or a duplicate registration.
        """
        parse_agent_ref(name if version is None else f"{name}@{version}")
        entry = self._agents.setdefault(name, _Entry())
        if restartable:
            self._restartable.add((name, version))
        if version is None:
            if entry.unversioned is not None:
                raise ValueError(f"agent {name!r} is already registered")
            entry.unversioned = function
            return
        if version in entry.versions:
            raise ValueError(f"agent {name}@{version} is already registered")
        entry.versions[version] = function
        if entry.default is None or default:
            entry.default = version

    def agent(
        self,
        name: str,
        *,
        version: str | None = None,
        default: bool = False,
        restartable: bool = False,
    ) -> Callable[[Agent], Agent]:
        """Decorator form of ``register``."""

        def decorate(function: Agent) -> Agent:
            self.register(name, function, version=version, default=default, restartable=restartable)
            return function

        return decorate

    def resolve(self, ref: str) -> ResolvedAgent:
        """§7.5 resolution of ``name`` or ``name@version``.

        Raises:
            AgentNotAvailable: no agent of that name.
            AgentVersionNotAvailable: the name exists, the version does not.
        """
        name, version = parse_agent_ref(ref)
        entry = self._agents.get(name)
        if entry is None:
            raise AgentNotAvailable(f"agent {name!r} is not registered")
        if version is None:
            if entry.default is not None:
                version = entry.default
                return ResolvedAgent(
                    name, version, entry.versions[version], self._restarts(name, version)
                )
            assert entry.unversioned is not None
            return ResolvedAgent(name, None, entry.unversioned, self._restarts(name, None))
        function = entry.versions.get(version)
        if function is None:
            available = ", ".join(entry.versions) or "none"
            raise AgentVersionNotAvailable(
                f"agent {name!r} has no version {version!r} (available: {available})"
            )
        return ResolvedAgent(name, version, function, self._restarts(name, version))

    def _restarts(self, name: str, version: str | None) -> bool:
        return (name, version) in self._restartable

    def inventory(self) -> list[AgentInfo]:
        """§6.2 agent inventory with versions and defaults."""
        return [
            AgentInfo(name=name, versions=list(entry.versions), default=entry.default)
            for name, entry in self._agents.items()
        ]

    def names(self) -> list[str]:
        return list(self._agents)

"""Which ingest queues the workers read, and in what order.

Each agent queues its writes for the workers in a queue of its own per zone
(``ingest:<zone>:agent:<id>``), and versions before 2026-11-22 wrote one shared queue per zone
(``ingest:<zone>``). A zone's drain reads the shared queue and the queues of every registered
agent, and of every deregistered one until the workers have read its queues through and its
process no longer runs (:class:`IngestQueues`). Of a deregistered agent's queues they take what
it queued before its deregistration, unless it was deregistered with its writes discarded
(:class:`~hivemem.pool.adapters.redis_registry.Departure`). Finding the queues with something
to read costs one command whatever their number (:meth:`RedisBus.unread_queues`), after one
read of the registry per drain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hivemem.pool.adapters.redis_bus import RedisBus, ingest_topic, zone_queues
from hivemem.pool.adapters.redis_registry import AgentRegistry, Departure
from hivemem.pool.enums import Zone


@dataclass(frozen=True, slots=True)
class Owners:
    """Whose queues one drain reads: the registered agents, the deregistered ones not
    forgotten yet (both sorted), and the departures of those deregistered with their queued
    writes kept (by id)."""

    registered: Sequence[str]
    departed: Sequence[str]
    departures: Mapping[str, Departure] = field(default_factory=dict)

    def departure_of(self, topic: str) -> Departure | None:
        """The departure whose writes ``topic`` (an agent's ingest queue) holds, if any."""
        return next((d for d in self.departures.values() if topic in d.heads), None)


class IngestQueues:
    """The ingest queues of one pool, as the workers read them."""

    def __init__(self, bus: RedisBus, registry: AgentRegistry) -> None:
        self._bus = bus
        self._registry = registry
        #: Moves on at each call of :meth:`waiting`: no queue comes last every time.
        self._turn = 0

    def owners(self) -> Owners:
        """The agents whose queues one drain reads (the departures read only when someone
        departed)."""
        registered, departed = self._registry.queue_owners()
        departures = self._registry.departures() if departed else {}
        return Owners(registered, departed, departures)

    def waiting(self, zone: Zone, owners: Owners) -> list[str]:
        """``zone``'s queues (of ``owners``) holding messages the workers have not stored,
        starting from a place that moves on at each call."""
        found = self._unread(zone_queues(zone, [*owners.registered, *owners.departed]))
        self._turn += 1
        start = self._turn % len(found) if found else 0
        return found[start:] + found[:start]

    def read_through(self, owners: Owners) -> None:
        """Forget the deregistered agents (of ``owners``) whose queues in every zone the
        workers read through and that no longer run (no heartbeat: a process running on after
        its agent was deregistered, with no Redis user to stop it, may still queue writes).
        One registered again is forgotten once they read its queues through: they read them
        as a registered agent's from then on."""
        registered = set(owners.registered)
        if not owners.departed:
            return
        topics = {agent: [ingest_topic(zone, agent) for zone in Zone] for agent in owners.departed}
        unread = set(self._unread([t for queues in topics.values() for t in queues]))
        done = [
            agent
            for agent, queues in topics.items()
            if unread.isdisjoint(queues)
            and (agent in registered or self._registry.last_seen(agent) is None)
        ]
        self._registry.forget_departed(done)

    def _unread(self, topics: list[str]) -> list[str]:
        return [topic for topic, _ in self._bus.unread_queues(topics)]

"""Which ingest queues the workers read, and in what order.

Each agent queues its writes for the workers in a queue of its own per zone
(``ingest:<zone>:agent:<id>``), and versions before 2026-11-22 wrote one shared queue per zone
(``ingest:<zone>``). A zone's drain reads the shared queue and the queues of every registered
agent, and of every deregistered one until the workers have read its queues through and its
process no longer runs (:class:`IngestQueues`). Finding the queues with something to read
costs one command whatever their number (:meth:`RedisBus.unread_queues`), after one read of
the registry per drain.
"""

from __future__ import annotations

from collections.abc import Sequence

from hivemem.pool.adapters.redis_bus import RedisBus, ingest_topic, zone_queues
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.enums import Zone


class IngestQueues:
    """The ingest queues of one pool, as the workers read them."""

    def __init__(self, bus: RedisBus, registry: AgentRegistry) -> None:
        self._bus = bus
        self._registry = registry
        #: Moves on at each call of :meth:`waiting`: no queue comes last every time.
        self._turn = 0

    def owners(self) -> tuple[Sequence[str], Sequence[str]]:
        """The agents whose queues are read: (registered, departed), for one drain."""
        return self._registry.queue_owners()

    def waiting(self, zone: Zone, owners: tuple[Sequence[str], Sequence[str]]) -> list[str]:
        """``zone``'s queues (of ``owners``) holding messages the workers have not stored,
        starting from a place that moves on at each call."""
        found = self._unread(zone_queues(zone, [*owners[0], *owners[1]]))
        self._turn += 1
        start = self._turn % len(found) if found else 0
        return found[start:] + found[:start]

    def read_through(self, owners: tuple[Sequence[str], Sequence[str]]) -> None:
        """Forget the deregistered agents (of ``owners``) whose queues in every zone the
        workers read through and that no longer run (no heartbeat: a process running on after
        its agent was deregistered, with no Redis user to stop it, may still queue writes)."""
        gone = sorted(set(owners[1]) - set(owners[0]))
        if not gone:
            return
        topics = {agent: [ingest_topic(zone, agent) for zone in Zone] for agent in gone}
        unread = set(self._unread([t for queues in topics.values() for t in queues]))
        done = [
            agent
            for agent, queues in topics.items()
            if unread.isdisjoint(queues) and self._registry.last_seen(agent) is None
        ]
        self._registry.forget_departed(done)

    def _unread(self, topics: list[str]) -> list[str]:
        return [topic for topic, _ in self._bus.unread_queues(topics)]

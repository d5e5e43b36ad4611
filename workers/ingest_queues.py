"""Which ingest queues the workers read, and in what order.

Each agent queues its writes for the workers in a queue of its own per zone
(``ingest:<zone>:agent:<id>``), and versions before 2026-11-22 wrote one shared queue per zone
(``ingest:<zone>``). A zone's drain reads the shared queue; the queues of every registered
agent, and of every deregistered one until the workers have read them through and its process
no longer runs; and the queues of every departure, where a deregistration moved what the agent
had queued (:mod:`hivemem.pool.adapters.departures`), until read through
(:class:`IngestQueues`). Finding the queues with something to read costs one command whatever
their number (:meth:`RedisBus.unread_queues`), after one read of the registry per drain.
"""

from __future__ import annotations

from hivemem.pool.adapters.departures import Owners
from hivemem.pool.adapters.redis_bus import RedisBus, ingest_topic
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.enums import Zone


class IngestQueues:
    """The ingest queues of one pool, as the workers read them."""

    def __init__(self, bus: RedisBus, registry: AgentRegistry) -> None:
        self._bus = bus
        self._registry = registry
        #: Moves on at each call of :meth:`waiting`: no queue comes last every time.
        self._turn = 0

    def owners(self) -> Owners:
        """Whose queues one drain reads."""
        return self._registry.queue_owners()

    def waiting(self, zone: Zone, owners: Owners) -> list[str]:
        """``zone``'s queues (of ``owners``) holding messages the workers have not stored,
        starting from a place that moves on at each call."""
        found = self._unread(owners.queues(zone))
        self._turn += 1
        start = self._turn % len(found) if found else 0
        return found[start:] + found[:start]

    def read_through(self, owners: Owners) -> None:
        """Forget, of ``owners``:

        - the departures whose queues in every zone the workers read through (their keys go
          too: nothing can be added to them);
        - the deregistered agents whose own queues in every zone the workers read through and
          that no longer run (no heartbeat: a process running on after its agent was
          deregistered, with no Redis user to stop it, may still queue writes), with what is
          left of those queues; or that are registered again (their queues are read as a
          registered agent's from then on)."""
        if not owners.departed and not owners.departures:
            return
        own = {agent: [ingest_topic(zone, agent) for zone in Zone] for agent in owners.departed}
        left = {number: d.topics() for number, d in owners.departures.items()}
        every = [t for queues in (*own.values(), *left.values()) for t in queues]
        unread = set(self._unread(every))
        for number, queues in left.items():
            if unread.isdisjoint(queues):
                self._registry.departures.forget(owners.departures[number])
        # Checked again, with the heartbeat, where they are forgotten (in one step there).
        self._registry.forget_departed(
            [a for a, queues in own.items() if unread.isdisjoint(queues)]
        )

    def _unread(self, topics: list[str]) -> list[str]:
        return [topic for topic, _ in self._bus.unread_queues(topics)]

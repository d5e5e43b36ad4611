"""Which ingest queues the workers read, and in what order.

Each agent queues its writes for the workers in a queue of its own per zone
(``ingest:<zone>:agent:<id>``), and versions before 2026-11-22 wrote one shared queue per zone
(``ingest:<zone>``). A zone's drain reads the shared queue and the queues of every registered
agent, and of every deregistered one until the workers have read its queues through and its
process no longer runs (:class:`IngestQueues`). Finding the queues with something to read
costs two commands whatever their number (their heads, then the workers' cursors).
"""

from __future__ import annotations

from typing import cast

import redis

from hivemem.pool.adapters.redis_bus import RedisBus, ingest_cursor, ingest_topic, zone_queues
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.enums import Zone
from hivemem.workers.keys import WorkerKeys


class IngestQueues:
    """The ingest queues of one pool, as the workers read them."""

    def __init__(
        self, client: redis.Redis, bus: RedisBus, registry: AgentRegistry, keys: WorkerKeys
    ) -> None:
        self._client = client
        self._bus = bus
        self._registry = registry
        self._keys = keys
        #: Moves on at each call of :meth:`waiting`: no queue comes last every time.
        self._turn = 0

    def waiting(self, zone: Zone) -> list[str]:
        """``zone``'s queues holding messages the workers have not stored, starting from a
        place that moves on at each call."""
        registered, departed = self._registry.queue_owners()
        found = self._waiting(zone_queues(zone, [*registered, *departed]))
        self._turn += 1
        start = self._turn % len(found) if found else 0
        return found[start:] + found[:start]

    def read_through(self) -> None:
        """Forget the deregistered agents whose queues in every zone the workers read through
        and that no longer run (no heartbeat: a process running on after its agent was
        deregistered, with no Redis user to stop it, may still queue writes)."""
        registered, departed = self._registry.queue_owners()
        gone = sorted(set(departed) - set(registered))
        if not gone:
            return
        topics = {agent: [ingest_topic(zone, agent) for zone in Zone] for agent in gone}
        waiting = set(self._waiting([t for queues in topics.values() for t in queues]))
        done = [
            agent
            for agent, queues in topics.items()
            if waiting.isdisjoint(queues) and self._registry.last_seen(agent) is None
        ]
        self._registry.forget_departed(done)

    def _waiting(self, topics: list[str]) -> list[str]:
        """Those of ``topics`` holding messages the workers have not stored, in order."""
        if not topics:
            return []
        heads = self._bus.heads(topics)
        raw = self._client.mget([self._keys.ingest_cursor(t) for t in topics])
        stored = [ingest_cursor(c) for c in cast("list[bytes | None]", raw)]
        return [
            topic
            for topic, head, cursor in zip(topics, heads, stored, strict=True)
            if head[0] is not None and head != cursor
        ]

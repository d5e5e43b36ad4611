"""What a demo agent process can be asked to do: each method takes and returns plain data."""

from __future__ import annotations

from typing import Any

from hivemem.agents.agent import Agent
from hivemem.pool.errors import ClearanceDenied
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool

_CONNECT_TIMEOUT_S = 30.0


class Operations:
    """One registered agent, attached in this process."""

    def __init__(self, pool: SharedMemoryPool, agent: Agent) -> None:
        self._pool = pool
        self._agent = agent

    @classmethod
    def open(cls, settings: HivememSettings, spec: dict[str, Any]) -> Operations:
        pool = SharedMemoryPool.connect(settings)
        try:
            agent = pool.register_agent(
                spec["agent_id"], clearance=spec["clearance"], share_levels=spec["share_levels"]
            )
            agent.wait_connected(_CONNECT_TIMEOUT_S)
        except BaseException:
            pool.close()
            raise
        return cls(pool, agent)

    def add_many(self, items: list[dict[str, Any]]) -> list[str]:
        """Add the episodes (each with its own scope) and wait until Redis has them."""
        added = [self._agent.memory.add(**item) for item in items]
        self._agent.flush()
        return [record.id for record in added]

    def counts(self, user_id: str) -> dict[str, Any]:
        """The user's records here (every session): current ones, by level and by zone."""
        stats = self._agent.memory.stats(user_id=user_id)
        return {"current": stats.current, "by_level": stats.by_level, "by_zone": stats.by_zone}

    def search(self, query: str, user_id: str, session_id: str | None = None) -> list[list[str]]:
        hits = self._agent.memory.search(query, user_id=user_id, session_id=session_id, top_k=5)
        return [[h.record.content, h.record.level.value, h.record.zone.value] for h in hits]

    def find(self, user_id: str, level: str) -> list[dict[str, Any]]:
        """The user's current records of ``level`` (id, content, zone, received_from)."""
        found = self._agent.memory.list_memories(
            user_id=user_id, filter={"levels": [level]}, limit=1_000
        )
        return [
            {
                "id": r.id,
                "content": r.content,
                "zone": r.zone.value,
                "from": r.received_from,
                "sources": len(r.sources),
            }
            for r in found
        ]

    def supersede(self, record_id: str, content: str) -> str:
        new = self._agent.memory.supersede(record_id, content)
        self._agent.flush()
        return new.id

    def history(self, record_id: str) -> list[str]:
        return [r.content for r in self._agent.memory.get_history(record_id)]

    def hand_over(self, record_id: str, to_agent: str) -> str:
        """Hand a record to another agent; "refused" when its clearance is too low."""
        try:
            self._pool.share_knowledge(self._agent.agent_id, to_agent, record_id)
        except ClearanceDenied:
            return "refused"
        self._agent.flush()
        return "sent"

    def forget(self, user_id: str) -> int:
        deleted = self._agent.memory.forget(user_id=user_id)
        self._agent.flush()
        return deleted

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Operations:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Statistics of a memory: counts by level, tier, category, zone and scope, and its size."""

from __future__ import annotations

from hivemem.pool.base import Model
from hivemem.pool.filters import And, Cond, Expr
from hivemem.pool.ports import LocalIndex


class MemoryStats(Model):
    """Counts of live records (current and superseded; tombstones excluded) and disk size."""

    total: int
    current: int
    superseded: int
    by_level: dict[str, int]
    by_tier: dict[str, int]
    by_category: dict[str, int]
    by_zone: dict[str, int]
    by_user: dict[str, int]
    by_session: dict[str, int]
    by_agent: dict[str, int]
    disk_bytes: int


def compute_stats(index: LocalIndex, scope_conditions: list[Expr]) -> MemoryStats:
    """Stats over the records matching ``scope_conditions`` (all records when empty)."""
    where = And(all=scope_conditions)
    current = And(all=[*scope_conditions, Cond(field="superseded_at", op="eq", value=None)])
    total = index.count(where)
    live = index.count(current)
    return MemoryStats(
        total=total,
        current=live,
        superseded=total - live,
        by_level=index.facet("level", where),
        by_tier=index.facet("tier", where),
        by_category=index.facet("category", where),
        by_zone=index.facet("zone", where),
        by_user=index.facet("scope.user_id", where),
        by_session=index.facet("scope.session_id", where),
        by_agent=index.facet("scope.agent_id", where),
        disk_bytes=index.size_bytes(),
    )

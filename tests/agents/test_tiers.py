"""Tiers: entry tier, capacities with demotion of the least retained, promotion, bubbling."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.tiers import retention
from hivemem.pool.enums import Tier
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.settings import HivememSettings, TierSettings
from tests.conftest import Clock

MakeMemory = Callable[..., HierarchicalMemory]


def _small(data_dir: object, **tiers: object) -> HivememSettings:
    return HivememSettings(data_dir=data_dir, memory={"tiers": tiers})


def test_importance_decides_the_entry_tier(memory: HierarchicalMemory) -> None:
    """New memories enter WORKING, or LONG_TERM at high importance, unless a tier is named."""
    assert memory.add("routine", user_id="u", importance=0.3).tier is Tier.WORKING
    assert memory.add("vital", user_id="u", importance=0.95).tier is Tier.LONG_TERM
    assert memory.add("parked", user_id="u", tier="archive").tier is Tier.ARCHIVE


def test_overflow_demotes_the_least_retained(
    make_memory: MakeMemory, data_dir: object, clock: Clock
) -> None:
    """Past its capacity a user's WORKING tier moves its least retained records to SHORT_TERM,
    down to the configured fraction; other users are not touched."""
    settings = _small(
        data_dir, capacity={"working": 10, "short_term": 1000}, demote_to_fraction=0.5
    )
    memory = make_memory(settings=settings, clock=clock)
    low = memory.add_many(
        [{"content": f"minor {i}", "importance": 0.1} for i in range(6)], user_id="u"
    )
    high = memory.add_many(
        [{"content": f"major {i}", "importance": 0.7} for i in range(5)], user_id="u"
    )
    memory.add("someone else", user_id="v")
    tiers = {r.id: r.tier for r in memory.list_memories(user_id="u", limit=100)}
    assert sum(t is Tier.WORKING for t in tiers.values()) == 5
    assert all(tiers[r.id] is Tier.WORKING for r in high)
    assert all(tiers[r.id] is Tier.SHORT_TERM for r in low)
    assert memory.list_memories(user_id="v")[0].tier is Tier.WORKING


def test_deletions_never_cause_a_needless_demotion(
    make_memory: MakeMemory, data_dir: object
) -> None:
    """After deletions the followed tier size is too large; the tier is measured again before
    anything moves, so a tier back under capacity keeps every record where it is."""
    settings = _small(data_dir, capacity={"working": 10}, demote_to_fraction=0.5)
    memory = make_memory(settings=settings)
    first = memory.add_many([f"note {i}" for i in range(10)], user_id="u")
    for record in first[:3]:
        memory.delete(record.id)
    memory.add_many(["late 1", "late 2"], user_id="u")
    assert memory.stats(user_id="u").by_tier == {"working": 9}
    memory.add_many(["late 3", "late 4"], user_id="u")
    assert memory.stats(user_id="u").by_tier == {"working": 5, "short_term": 6}


def test_short_term_overflow_archives(make_memory: MakeMemory, data_dir: object) -> None:
    """An overflowing SHORT_TERM tier sends its least retained records to ARCHIVE."""
    settings = _small(data_dir, capacity={"working": 1000, "short_term": 4}, demote_to_fraction=1.0)
    memory = make_memory(settings=settings)
    memory.add_many(
        [{"content": f"note {i}", "importance": i / 10, "tier": "short_term"} for i in range(6)],
        user_id="u",
    )
    by_tier = memory.stats(user_id="u").by_tier
    assert by_tier == {"short_term": 4, "archive": 2}
    archived = memory.list_memories(user_id="u", filter={"tiers": ["archive"]})
    assert {r.content for r in archived} == {"note 0", "note 1"}


def test_repeated_access_promotes_to_long_term(make_memory: MakeMemory, data_dir: object) -> None:
    """A record reaching promote_access_count accesses (gets and search hits) is promoted."""
    memory = make_memory(settings=_small(data_dir, promote_access_count=3))
    record = memory.add("the wifi password is on the fridge", user_id="u")
    memory.get(record.id)
    memory.search("wifi password", user_id="u")
    memory.flush()
    assert memory.get(record.id).tier is Tier.WORKING
    memory.flush()
    promoted = memory.get(record.id)
    assert promoted.access_count == 3
    assert promoted.tier is Tier.LONG_TERM
    assert promoted.last_accessed_at is not None


def test_searches_can_leave_access_counts_alone(memory: HierarchicalMemory) -> None:
    """track_access=False searches do not count as accesses."""
    record = memory.add("quiet lookup", user_id="u")
    memory.search("quiet lookup", user_id="u", track_access=False)
    memory.flush()
    assert memory.get(record.id).access_count == 0


def test_ending_a_session_bubbles_important_memories(memory: HierarchicalMemory) -> None:
    """end_session promotes the session's important current memories to user scope (a new
    version in LONG_TERM); unimportant ones stay in the session."""
    keep = memory.add("Uma is vegan", user_id="uma", session_id="s1", importance=0.9)
    memory.add("Uma said hello", user_id="uma", session_id="s1", importance=0.1)
    other = memory.add("Uma likes tennis", user_id="uma", session_id="s2", importance=0.9)
    bubbled = memory.end_session(user_id="uma", session_id="s1")
    assert [b.content for b in bubbled] == ["Uma is vegan"]
    promoted = bubbled[0]
    assert promoted.scope == Scope(user_id="uma")
    assert promoted.tier is Tier.LONG_TERM
    assert promoted.supersedes == keep.id
    assert promoted.metadata["bubbled_from_session"] == "s1"
    seen_from_s2 = {h.record.id for h in memory.search("Uma", user_id="uma", session_id="s2")}
    assert promoted.id in seen_from_s2
    assert other.id in seen_from_s2
    assert memory.get(keep.id).superseded_by == promoted.id


def test_retention_orders_by_importance_recency_and_use() -> None:
    """Retention grows with importance, recent access and access count."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    settings = TierSettings()
    base = MemoryRecord(
        content="x",
        scope=Scope(user_id="u"),
        recorded_at=now - timedelta(days=30),
        valid_from=now - timedelta(days=30),
        importance=0.5,
    )
    assert retention(base.model_copy(update={"importance": 0.9}), now, settings) > retention(
        base, now, settings
    )
    recent = base.model_copy(update={"last_accessed_at": now})
    assert retention(recent, now, settings) > retention(base, now, settings)
    used = base.model_copy(update={"access_count": 4})
    assert retention(used, now, settings) > retention(base, now, settings)
    assert 0.0 <= retention(base, now, settings) <= 1.0

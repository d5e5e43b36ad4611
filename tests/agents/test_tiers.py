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


def test_each_record_keeps_the_time_of_its_own_last_access(
    memory: HierarchicalMemory, clock: Clock
) -> None:
    """Accesses buffered together are written with each record's own last time: one read on
    day 1 and another on day 20 of one buffer keep their days. Both got the latest before,
    and retention took the first for recently used."""
    early = memory.add("the boiler manual is in the attic", user_id="u")
    late = memory.add("the bike lock code is 4417", user_id="u")
    memory.flush()
    first = clock.advance(days=1)
    memory.get(early.id)
    second = clock.advance(days=19)
    memory.get(late.id)
    memory.flush()
    assert memory.get(early.id).last_accessed_at == first
    assert memory.get(late.id).last_accessed_at == second


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


def test_a_session_memory_with_full_metadata_is_promoted_without_the_mark(
    memory: HierarchicalMemory,
) -> None:
    """A record whose metadata holds the most keys a record may hold is promoted without the
    ``bubbled_from_session`` mark (its session is in the version it replaces): the promoted
    version is a valid record, which receivers accept and supersede takes. It had 65 keys
    before, which no receiver accepted."""
    full = {f"k{i}": i for i in range(64)}
    keep = memory.add("Uma is vegan", user_id="uma", session_id="s1", importance=0.9,
                      metadata=full)  # fmt: skip
    marked = memory.add("Uma runs", user_id="uma", session_id="s1", importance=0.9)
    promoted = {r.supersedes: r for r in memory.end_session(user_id="uma", session_id="s1")}
    assert promoted[keep.id].metadata == full
    assert promoted[marked.id].metadata == {"bubbled_from_session": "s1"}
    for version in promoted.values():
        assert MemoryRecord.model_validate(version.model_dump()) == version
    assert memory.supersede(promoted[keep.id].id, "Uma is vegan, mostly").metadata == full
    assert memory.get_history(promoted[keep.id].id)[0].scope.session_id == "s1"


def test_a_promoted_memory_stays_found_as_of_before_the_session_ended(
    memory: HierarchicalMemory, clock: Clock
) -> None:
    """Promotion is no change of the fact: the replaced version keeps its validity open, so a
    search or a listing as of a time before the session ended finds the memory (as the
    session's version), and one after finds the promoted version. Its validity ended where it
    began before, so neither was found."""
    before = memory.add("Vic wants the tasting menu", user_id="vic", session_id="s1",
                        importance=0.9)  # fmt: skip
    clock.advance(hours=1)
    then = clock.now
    clock.advance(hours=1)
    [promoted] = memory.end_session(user_id="vic", session_id="s1")
    assert memory.get(before.id).valid_until is None
    hits = memory.search("tasting menu", user_id="vic", as_of=then)
    assert [h.record.id for h in hits] == [before.id]
    listed = memory.list_memories(user_id="vic", as_of=then)
    assert [r.id for r in listed] == [before.id]
    clock.advance(hours=1)
    assert [h.record.id for h in memory.search("tasting menu", user_id="vic")] == [promoted.id]
    later = memory.list_memories(user_id="vic", as_of=clock.now)
    assert [r.id for r in later] == [promoted.id]


def test_a_promoted_version_of_a_shared_memory_is_the_owners(make_memory: MakeMemory) -> None:
    """end_session over a record another agent shared writes the promoted version as this
    memory's owner (as supersede does): its agent is the owner and it was received from no
    one, so a filter for the agent's own records finds it."""
    other = make_memory("b")
    shared = other.add("Wes's budget is 200 EUR", user_id="wes", session_id="s1",
                       agent_id="agent-b", importance=0.9)  # fmt: skip
    mine = make_memory("a", owner="agent-a")
    mine.receive([other.get(shared.id, with_vectors=True)], senders=["agent-b"])
    [promoted] = mine.end_session(user_id="wes", session_id="s1")
    assert (promoted.scope.agent_id, promoted.received_from) == ("agent-a", None)
    own = {"where": {"field": "received_from", "op": "eq", "value": None}}
    assert [r.id for r in mine.list_memories(user_id="wes", filter=own)] == [promoted.id]


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

"""LifecycleService against a real zone store (Qdrant Edge shards): each default policy, the
other actions, one action per record per pass, dry runs, idempotence and batching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hivemem.pool.adapters.edge_zone_store import EdgeZoneStore
from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import And
from hivemem.pool.records import MemoryRecord
from hivemem.workers.archive import ArchiveService
from hivemem.workers.lifecycle import LifecycleReport, LifecycleService
from hivemem.workers.policies import (
    DEFAULT_POLICIES,
    Action,
    Policy,
    PolicySet,
    When,
    cleanup_old_episodes,
)

DIM = 8
NOW = datetime(2026, 6, 1, tzinfo=UTC)
EVERYTHING = And(all=[])
ZONE = Zone.PUBLIC
CONSOLIDATED = ["00000000-0000-4000-8000-0000000000aa"]


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def make(content: str = "a memory", zone: Zone = ZONE, **fields: Any) -> MemoryRecord:
    """A record of ``zone`` with a fixed vector, recorded when the test says (default: now)."""
    fields.setdefault("scope", {"user_id": "u1"})
    fields.setdefault("recorded_at", NOW)
    fields.setdefault("valid_from", fields["recorded_at"])
    return MemoryRecord(content=content, zone=zone, vector=[1.0] + [0.0] * (DIM - 1), **fields)


@pytest.fixture
def service(store: EdgeZoneStore) -> LifecycleService:
    return LifecycleService(store, ArchiveService(store, batch=3), batch=2)


def put(store: EdgeZoneStore, records: dict[str, MemoryRecord], zone: Zone = ZONE) -> None:
    store.upsert(zone, list(records.values()))


def names(records: dict[str, MemoryRecord], ids: list[str]) -> set[str]:
    """The names of the records among ``ids``."""
    found = set(ids)
    return {name for name, record in records.items() if record.id in found}


def snapshot(store: EdgeZoneStore, zone: Zone = ZONE) -> tuple[list[MemoryRecord], ...]:
    """Everything the zone holds, live and archived, vectors included."""
    live = list(store.scan(zone, EVERYTHING, with_vectors=True))
    archived = store.archive_get(zone, store.archive_ids(zone, EVERYTHING))
    return live, archived


def mixed(store: EdgeZoneStore) -> dict[str, MemoryRecord]:
    """Records that each default policy (and cleanup_old_episodes(90)) acts on, and some not."""
    records = {
        "cold_unimportant": make(importance=0.1, recorded_at=days_ago(60)),
        "cold_unimportant_trace": make(importance=0.1, recorded_at=days_ago(60), level=Level.TRACE),
        "cold_unimportant_category": make(
            importance=0.1, recorded_at=days_ago(60), level=Level.CATEGORY
        ),
        "cold_unimportant_profile": make(
            importance=0.1, recorded_at=days_ago(60), level=Level.DOMAIN
        ),
        "cold_accessed_long_ago": make(
            importance=0.2, recorded_at=days_ago(80), last_accessed_at=days_ago(31)
        ),
        "cold_but_important": make(importance=0.5, recorded_at=days_ago(60)),
        "recent_unimportant": make(importance=0.1, recorded_at=days_ago(60), last_accessed_at=NOW),
        "important_unread": make(importance=0.9, recorded_at=days_ago(20)),
        "boundary_unread": make(importance=0.8, recorded_at=days_ago(20)),
        "important_read": make(importance=0.9, recorded_at=days_ago(20), last_accessed_at=NOW),
        "old_consolidated_episode": make(
            importance=0.5, recorded_at=days_ago(120), consolidated_into=CONSOLIDATED
        ),
        "old_unconsolidated_episode": make(importance=0.5, recorded_at=days_ago(120)),
        "old_consolidated_trace": make(
            importance=0.5,
            level=Level.TRACE,
            recorded_at=days_ago(120),
            consolidated_into=CONSOLIDATED,
        ),
        "ancient_archived": make(importance=0.5, recorded_at=days_ago(400)),
        "young_archived": make(importance=0.5, recorded_at=days_ago(300)),
    }
    put(store, records)
    ArchiveService(store).archive(
        ZONE, [records["ancient_archived"].id, records["young_archived"].id]
    )
    return records


ALL = PolicySet(policies=[*DEFAULT_POLICIES.policies, cleanup_old_episodes(90)])


# -- the default policies -----------------------------------------------------------------------


def test_archive_unaccessed(store: EdgeZoneStore, service: LifecycleService) -> None:
    """Default 1: episodes and traces unread for 30 days with importance below 0.3 move to the
    archive; categories and profiles stay (a consolidation run supersedes or retires only live
    ones: an archived one stayed current beside its successor at the agents)."""
    records = mixed(store)
    report = service.run([ZONE], DEFAULT_POLICIES, now=NOW)
    moved = report.ids("archive_unaccessed", ZONE)
    assert names(records, moved) == {
        "cold_unimportant",
        "cold_accessed_long_ago",
        "cold_unimportant_trace",
    }
    assert set(moved) <= set(store.archive_ids(ZONE, EVERYTHING))
    assert store.get(ZONE, moved) == []
    assert {r.tier for r in store.archive_get(ZONE, moved)} == {Tier.ARCHIVE}


def test_delete_old_archives(store: EdgeZoneStore, service: LifecycleService) -> None:
    """Default 2: archived records recorded more than 365 days ago are purged."""
    records = mixed(store)
    report = service.run([ZONE], DEFAULT_POLICIES, now=NOW)
    assert names(records, report.ids("delete_old_archives", ZONE)) == {"ancient_archived"}
    archived = store.archive_ids(ZONE, EVERYTHING)
    assert records["young_archived"].id in archived
    assert records["ancient_archived"].id not in archived
    # A tombstone stays: the ingest finds it deleted if its message is sent again.
    ancient = records["ancient_archived"].id
    assert store.presence(ZONE, [ancient]) == {ancient: True}


def test_refresh_important(store: EdgeZoneStore, service: LifecycleService) -> None:
    """Default 3: records of importance above 0.8 unread for 7 days get last access = now."""
    records = mixed(store)
    report = service.run([ZONE], DEFAULT_POLICIES, now=NOW)
    refreshed = report.ids("refresh_important", ZONE)
    assert names(records, refreshed) == {"important_unread"}
    assert store.get(ZONE, refreshed)[0].last_accessed_at == NOW


def test_cleanup_old_episodes(store: EdgeZoneStore, service: LifecycleService) -> None:
    """cleanup_old_episodes removes old consolidated episodes, not unconsolidated or traces."""
    records = mixed(store)
    report = service.run([ZONE], [cleanup_old_episodes(90)], now=NOW)
    removed = report.ids("cleanup_old_episodes", ZONE)
    assert names(records, removed) == {"old_consolidated_episode"}
    assert store.get(ZONE, removed) == []
    assert records["old_unconsolidated_episode"].id in store.ids(ZONE, EVERYTHING)


def test_consolidated_false_keeps_consolidated_records(
    store: EdgeZoneStore, service: LifecycleService
) -> None:
    """consolidated=False selects the records not consolidated into anything."""
    records = mixed(store)
    policy = Policy(
        name="p",
        when=When(older_than_days=90, levels=[Level.EPISODE], consolidated=False),
        action=Action.DELETE,
    )
    report = service.run([ZONE], [policy], now=NOW)
    assert names(records, report.ids("p", ZONE)) == {"old_unconsolidated_episode"}


# -- the other actions --------------------------------------------------------------------------


def test_demote_and_promote(store: EdgeZoneStore, service: LifecycleService) -> None:
    """Demote moves WORKING to SHORT_TERM; promote moves WORKING and SHORT_TERM to LONG_TERM."""
    records = {
        f"{tier.value}_{i}": make(tier=tier, importance=0.2 + 0.7 * i)
        for tier in (Tier.WORKING, Tier.SHORT_TERM, Tier.LONG_TERM)
        for i in (0, 1)
    }
    put(store, records)
    policies = [
        Policy(name="promote", when=When(importance_at_least=0.8), action=Action.PROMOTE),
        Policy(name="demote", when=When(importance_below=0.8), action=Action.DEMOTE),
    ]
    report = service.run([ZONE], policies, now=NOW)
    assert names(records, report.ids("promote", ZONE)) == {"working_1", "short_term_1"}
    assert names(records, report.ids("demote", ZONE)) == {"working_0"}
    tiers = {name: store.get(ZONE, [r.id])[0].tier for name, r in records.items()}
    assert tiers == {
        "working_0": Tier.SHORT_TERM,
        "working_1": Tier.LONG_TERM,
        "short_term_0": Tier.SHORT_TERM,
        "short_term_1": Tier.LONG_TERM,
        "long_term_0": Tier.LONG_TERM,
        "long_term_1": Tier.LONG_TERM,
    }


def test_delete_live_records(store: EdgeZoneStore, service: LifecycleService) -> None:
    """Delete on the live store removes the records it selects."""
    records = {"old": make(recorded_at=days_ago(10)), "new": make(recorded_at=days_ago(1))}
    put(store, records)
    policy = Policy(name="drop", when=When(older_than_days=5), action=Action.DELETE)
    report = service.run([ZONE], [policy], now=NOW)
    assert names(records, report.ids("drop", ZONE)) == {"old"}
    assert store.ids(ZONE, EVERYTHING) == [records["new"].id]
    # A tombstone stays: the ingest finds it deleted if its message is sent again.
    old = records["old"].id
    assert store.presence(ZONE, [old]) == {old: True}


# -- the pass -----------------------------------------------------------------------------------


def test_one_action_per_record_per_pass(store: EdgeZoneStore, service: LifecycleService) -> None:
    """A record acted on by an earlier policy is left alone by the later ones of the pass."""
    records = {"old": make(tier=Tier.WORKING, importance=0.1, recorded_at=days_ago(500))}
    put(store, records)
    policies = [
        Policy(name="demote", when=When(older_than_days=1), action=Action.DEMOTE),
        Policy(name="promote", when=When(tiers=[Tier.SHORT_TERM]), action=Action.PROMOTE),
        Policy(name="archive", when=When(older_than_days=1), action=Action.ARCHIVE),
    ]
    report = service.run([ZONE], [*policies, DEFAULT_POLICIES.policies[1]], now=NOW)
    assert [(o.policy, o.count) for o in report.outcomes] == [
        ("demote", 1),
        ("promote", 0),
        ("archive", 0),
        ("delete_old_archives", 0),
    ]
    assert store.get(ZONE, [records["old"].id])[0].tier is Tier.SHORT_TERM


def test_archived_in_a_pass_not_purged_in_it(
    store: EdgeZoneStore, service: LifecycleService
) -> None:
    """A record archived by a pass is not purged by a later archive policy of the same pass."""
    records = {"ancient": make(importance=0.1, recorded_at=days_ago(500))}
    put(store, records)
    report = service.run([ZONE], DEFAULT_POLICIES, now=NOW)
    assert report.count("archive_unaccessed") == 1
    assert report.count("delete_old_archives") == 0
    assert store.archive_ids(ZONE, EVERYTHING) == [records["ancient"].id]
    later = service.run([ZONE], DEFAULT_POLICIES, now=NOW + timedelta(hours=1))
    assert later.ids("delete_old_archives", ZONE) == [records["ancient"].id]


def test_dry_run_equals_real_run(store: EdgeZoneStore, service: LifecycleService) -> None:
    """A dry run changes nothing and reports exactly what the real run then does."""
    mixed(store)
    before = snapshot(store)
    dry = service.run([ZONE], ALL, now=NOW, dry_run=True)
    assert snapshot(store) == before
    real = service.run([ZONE], ALL, now=NOW)
    assert dry == real
    assert real.count() == 6
    live, archived = snapshot(store)
    live_ids = {r.id for r in live}
    archived_ids = {r.id for r in archived}
    for outcome in real.outcomes:
        if outcome.action is Action.ARCHIVE:
            assert set(outcome.ids) <= archived_ids - live_ids
        elif outcome.action is Action.DELETE:
            assert not set(outcome.ids) & (live_ids | archived_ids)
        elif outcome.action is Action.REFRESH:
            assert {r.last_accessed_at for r in live if r.id in outcome.ids} == {NOW}
    untouched = {r.id for r in before[0]} - {i for o in real.outcomes for i in o.ids}
    assert [r for r in before[0] if r.id in untouched] == [r for r in live if r.id in untouched]


def test_second_pass_does_nothing(store: EdgeZoneStore, service: LifecycleService) -> None:
    """Running the same pass again at the same time acts on nothing."""
    mixed(store)
    service.run([ZONE], ALL, now=NOW)
    after = snapshot(store)
    again = service.run([ZONE], ALL, now=NOW)
    assert again.count() == 0
    assert len(again.outcomes) == len(ALL.policies)
    assert snapshot(store) == after


def test_zones_are_separate(store: EdgeZoneStore, service: LifecycleService) -> None:
    """Each zone is passed on its own, and a policy with zones applies only there."""
    public = {"cold": make(importance=0.1, recorded_at=days_ago(60))}
    secret = {"cold": make(importance=0.1, recorded_at=days_ago(60), zone=Zone.SECRET)}
    put(store, public)
    put(store, secret, Zone.SECRET)
    only_secret = Policy(
        name="drop_secret", when=When(older_than_days=1, zones=[Zone.SECRET]), action="delete"
    )
    report = service.run(
        [Zone.SECRET, ZONE, ZONE], [only_secret, *DEFAULT_POLICIES.policies], now=NOW
    )
    assert [(o.zone, o.policy) for o in report.outcomes][:2] == [
        (Zone.SECRET, "drop_secret"),
        (Zone.SECRET, "archive_unaccessed"),
    ]
    assert report.ids("drop_secret", Zone.SECRET) == [secret["cold"].id]
    assert report.ids("archive_unaccessed", Zone.SECRET) == []
    assert report.ids("archive_unaccessed", ZONE) == [public["cold"].id]
    assert report.count(zone=ZONE) == 1
    assert len(report.outcomes) == 1 + 3 + 3


def test_batches_cover_every_record(store: EdgeZoneStore) -> None:
    """Batches smaller than the work give the same result as one batch."""
    records = {
        f"r{i}": make(f"memory {i}", importance=0.9, recorded_at=days_ago(30)) for i in range(7)
    }
    put(store, records)
    tiny = LifecycleService(store, ArchiveService(store, batch=1), batch=1)
    report = tiny.run([ZONE], DEFAULT_POLICIES, now=NOW)
    assert report.count("refresh_important") == 7
    assert {r.last_accessed_at for r in store.scan(ZONE, EVERYTHING)} == {NOW}


def test_naive_now_is_utc(store: EdgeZoneStore, service: LifecycleService) -> None:
    """A naive ``now`` is taken as UTC, in the selection and in the report."""
    mixed(store)
    report = service.run([ZONE], ALL, now=NOW.replace(tzinfo=None), dry_run=True)
    assert report == service.run([ZONE], ALL, now=NOW, dry_run=True)
    assert report.now == NOW


def test_report_round_trips_as_json(store: EdgeZoneStore, service: LifecycleService) -> None:
    """A report survives JSON (the form a task returns it in)."""
    mixed(store)
    report = service.run([ZONE], ALL, now=NOW, dry_run=True)
    assert LifecycleReport.model_validate_json(report.model_dump_json()) == report


def test_batch_must_be_positive(store: EdgeZoneStore) -> None:
    """A batch size below 1 raises InvalidInput."""
    with pytest.raises(InvalidInput):
        LifecycleService(store, ArchiveService(store), batch=0)

"""Zone policies on real pools (one Redis, several pools standing for several processes, some
configured with a policy and some without, as a misconfigured or hostile sender would be):
who may write in a zone, which levels travel, and how long a zone keeps records, at the agents
and in the workers' zone store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from hivemem.agents.agent import Agent
from hivemem.agents.embedding import FastEmbedder
from hivemem.agents.retention import LocalRetention
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import PolicyDenied
from hivemem.pool.filters import And
from hivemem.pool.records import MemoryRecord, utc_now
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.pool.zone_policy import ZonePolicies, ZonePolicy
from hivemem.workers.policies import configured_policies
from hivemem.workers.runtime import WorkerRuntime
from tests.waiting import wait_for

EVERYTHING = And(all=[])
Policies = dict[Zone, ZonePolicy]


@pytest.fixture
def policy_pool(
    pool_settings: Callable[..., HivememSettings], embedder: FastEmbedder
) -> Iterator[Callable[..., SharedMemoryPool]]:
    """``policy_pool(name, policies)``: a pool whose settings carry ``policies``."""
    opened: list[SharedMemoryPool] = []

    def make(name: str, policies: Policies | None = None, **pool_fields: Any) -> SharedMemoryPool:
        settings = pool_settings(name, **pool_fields).model_copy(
            update={"zone_policies": policies or {}}
        )
        opened.append(SharedMemoryPool.connect(settings, embedder=embedder))
        return opened[-1]

    yield make
    for pool in opened:
        pool.close()


def contents(agent: Agent) -> set[str]:
    found = agent.memory.list_memories(user_id="u1", limit=1_000)
    return {r.content for r in found}


def add(agent: Agent, content: str, zone: Zone, level: Level = Level.EPISODE) -> MemoryRecord:
    return agent.memory.add(content, user_id="u1", zone=zone, level=level)


def test_settings_refuse_a_write_floor_below_its_zone_and_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write clearance below the zone, or a retention of 0 days, fails when the settings are
    built; good policies survive the environment a child process gets."""
    with pytest.raises(ValidationError, match="below the zone"):
        HivememSettings(zone_policies={"secret": {"min_write_clearance": "internal"}})
    with pytest.raises(ValidationError):
        HivememSettings(zone_policies={"public": {"retention_days": 0}})
    with pytest.raises(ValidationError):
        HivememSettings(zone_policies={"top": {}})
    settings = HivememSettings(
        zone_policies={"internal": {"share_levels": ["category"], "retention_days": 30}}
    )
    monkeypatch.setenv("HIVEMEM_ZONE_POLICIES", settings.environment()["HIVEMEM_ZONE_POLICIES"])
    assert HivememSettings().zone_policies == settings.zone_policies


def test_an_agent_below_a_zones_write_clearance_writes_nothing_there(
    policy_pool: Callable[..., SharedMemoryPool],
) -> None:
    """With public taking internal clearance to write, a public agent's public write (alone or
    in a batch) raises PolicyDenied and stores nothing; an internal agent writes; a write
    above the agent's clearance is refused the same way."""
    pool = policy_pool("floor", {Zone.PUBLIC: ZonePolicy(min_write_clearance=Zone.INTERNAL)})
    reader = pool.register_agent("floor-reader", clearance=Zone.PUBLIC)
    writer = pool.register_agent("floor-writer", clearance=Zone.INTERNAL)

    with pytest.raises(PolicyDenied, match="takes clearance internal"):
        add(reader, "a public note", Zone.PUBLIC)
    with pytest.raises(PolicyDenied):
        reader.memory.add_many(
            [{"content": "fine?", "zone": "public"}, {"content": "no", "zone": "public"}],
            user_id="u1",
        )
    with pytest.raises(PolicyDenied, match="takes clearance confidential"):
        add(writer, "above me", Zone.CONFIDENTIAL)
    add(writer, "written by the cleared", Zone.PUBLIC)

    assert reader.memory.stats().current == 0
    assert contents(writer) == {"written by the cleared"}


def test_receivers_reject_records_from_a_sender_below_the_write_clearance(
    policy_pool: Callable[..., SharedMemoryPool],
) -> None:
    """A sender whose process has no policy writes a public record; a receiver whose pool has
    the policy rejects it (audited, reason write_clearance) and keeps a cleared sender's."""
    floor = {Zone.PUBLIC: ZonePolicy(min_write_clearance=Zone.INTERNAL)}
    lax = policy_pool("lax")
    strict = policy_pool("strict", floor)
    low = lax.register_agent("low-sender", clearance=Zone.PUBLIC, share_levels=[Level.EPISODE])
    high = lax.register_agent("high-sender", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE])
    reader = strict.register_agent("strict-reader", clearance=Zone.INTERNAL)
    assert reader.wait_connected()

    add(low, "from below the floor", Zone.PUBLIC)
    assert low.flush()
    add(high, "from a cleared sender", Zone.PUBLIC)  # later on the same stream
    assert high.flush()

    assert wait_for(lambda: "from a cleared sender" in contents(reader))
    assert contents(reader) == {"from a cleared sender"}
    refused = [e for e in strict.audit.tail(50) if e.kind == "rejected_message"]
    assert [(e.actor, e.details["reason"]) for e in refused] == [
        ("strict-reader", "write_clearance")
    ]


def test_a_zone_keeps_levels_it_does_not_share_to_each_agent(
    policy_pool: Callable[..., SharedMemoryPool],
) -> None:
    """Internal shares categories only: the writer's internal episode stays with it (and its
    hand-over is refused), its internal category and public episode travel; an internal
    episode from a sender without the policy is dropped by the receiver."""
    only_categories = {Zone.INTERNAL: ZonePolicy(share_levels=[Level.CATEGORY])}
    pool = policy_pool("levels", only_categories)
    lax = policy_pool("levels-lax")
    writer = pool.register_agent(
        "lvl-writer", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE, Level.CATEGORY]
    )
    outsider = lax.register_agent(
        "lvl-outsider", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE]
    )
    reader = pool.register_agent(
        "lvl-reader", clearance=Zone.INTERNAL, receive_levels=[Level.EPISODE, Level.CATEGORY]
    )
    assert reader.wait_connected()

    add(outsider, "outsider internal episode", Zone.INTERNAL)
    assert outsider.flush()
    kept = add(writer, "internal episode", Zone.INTERNAL)
    add(writer, "public episode", Zone.PUBLIC)
    add(writer, "internal category", Zone.INTERNAL, Level.CATEGORY)  # last on its stream
    assert writer.flush()

    assert wait_for(lambda: {"internal category", "public episode"} <= contents(reader))
    assert contents(reader) == {"internal category", "public episode"}
    with pytest.raises(PolicyDenied, match="may not be shared"):
        pool.share_knowledge("lvl-writer", "lvl-reader", kept.id)


def test_agents_expire_records_past_their_zones_retention(
    policy_pool: Callable[..., SharedMemoryPool],
) -> None:
    """Public keeps records 30 days: at day 31 an agent's retention pass deletes its public
    records (not its internal ones), and the tombstones reach the agent that received them."""
    policies = {Zone.PUBLIC: ZonePolicy(retention_days=30)}
    pool = policy_pool("retention", policies)
    writer = pool.register_agent(
        "ret-writer", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE]
    )
    reader = pool.register_agent("ret-reader", clearance=Zone.INTERNAL)
    assert reader.wait_connected()
    add(writer, "old public", Zone.PUBLIC)
    add(writer, "old internal", Zone.INTERNAL)
    assert writer.flush()
    assert wait_for(lambda: contents(reader) == {"old public", "old internal"})
    assert LocalRetention(writer.memory, pool.policies).run() == 0  # not due yet

    later = utc_now() + timedelta(days=31)
    expired = LocalRetention(writer.memory, ZonePolicies(policies), clock=lambda: later).run()

    assert expired == 1
    assert contents(writer) == {"old internal"}
    assert wait_for(lambda: contents(reader) == {"old internal"})


def test_the_workers_apply_a_zones_retention_to_the_store_and_archive(
    policy_pool: Callable[..., SharedMemoryPool], make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """The lifecycle pass with the zones' retention deletes the zone's old live and archived
    records and leaves other zones alone; a dry run changes nothing."""
    policies = {Zone.PUBLIC: ZonePolicy(retention_days=30)}
    runtime = make_runtime()
    writer = policy_pool("ret-workers", policies).register_agent(
        "ret-w", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE]
    )
    ids = [add(writer, f"public {i}", Zone.PUBLIC).id for i in range(3)]
    internal = add(writer, "internal", Zone.INTERNAL).id
    assert writer.flush()
    for zone in (Zone.PUBLIC, Zone.INTERNAL):
        runtime.ingest.drain(zone, on_due=lambda _user: None)
    runtime.archive.archive(Zone.PUBLIC, ids[:1])
    chosen = configured_policies(runtime.settings.workers, policies)
    later = utc_now() + timedelta(days=31)

    runtime.lifecycle.run([Zone.PUBLIC, Zone.INTERNAL], chosen, now=later, dry_run=True)
    assert sorted(runtime.store.ids(Zone.PUBLIC, EVERYTHING)) == sorted(ids[1:])
    runtime.lifecycle.run([Zone.PUBLIC, Zone.INTERNAL], chosen, now=later)

    assert [p.name for p in chosen.policies[:2]] == [
        "retention.public.live",
        "retention.public.archive",
    ]
    assert runtime.store.ids(Zone.PUBLIC, EVERYTHING) == []
    assert runtime.store.archive_ids(Zone.PUBLIC, EVERYTHING) == []
    assert runtime.store.ids(Zone.INTERNAL, EVERYTHING) == [internal]

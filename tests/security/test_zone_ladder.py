"""Zones extended by configuration (``HivememSettings.zones``): the ladder orders the new zones
like the built-in ones everywhere clearance is decided (records, sharing, sealing, the broker's
ACLs), bad ladders are refused without changing anything, and the processes of one pool must
agree on the ladder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from hivemem.agents.embedding import FastEmbedder
from hivemem.pool.adapters.edge_zone_store import EdgeZoneStore
from hivemem.pool.adapters.redis_bus import RedisBus, zone_topic
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import BUILTIN_ZONES, Level, Zone, configure_zones, zone_names
from hivemem.pool.errors import ClearanceDenied, InvalidInput, ZoneLadderMismatch
from hivemem.pool.records import MemoryRecord
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.redis_acl import AgentAcl
from hivemem.security.senders import SenderDirectory
from hivemem.workers.runtime import WorkerRuntime
from tests.security.conftest import received, refused_all, subscribed
from tests.waiting import wait_for

LADDER = ("public", "internal", "restricted", "confidential", "secret", "top_secret")


@pytest.fixture
def ladder_settings(
    pool_settings: Callable[..., HivememSettings],
) -> Callable[..., HivememSettings]:
    """``ladder_settings(name, zones=LADDER)``: a secure pool process's settings on the test's
    Redis with that zone ladder (installed when they are built)."""

    def make(name: str, zones: tuple[str, ...] = LADDER) -> HivememSettings:
        return pool_settings(name, zones=zones)

    return make


@pytest.fixture
def pools(make_pool: Callable[..., SharedMemoryPool]) -> Callable[[str], SharedMemoryPool]:
    return lambda name: make_pool(name, zones=LADDER)


# -- the ladder -----------------------------------------------------------------------------


def test_settings_install_their_ladder_and_zones_order_by_it(
    ladder_settings: Callable[..., HivememSettings],
) -> None:
    """New zones sit where the ladder puts them, between or above the built-in ones; records,
    policies and comparisons with names follow that order; the default settings put the
    built-in ladder back."""
    settings = ladder_settings("p")
    assert zone_names() == LADDER == settings.zones
    restricted, top = Zone("restricted"), Zone("top_secret")
    assert Zone.INTERNAL < restricted < Zone.CONFIDENTIAL < Zone.SECRET < top
    assert [zone.rank for zone in Zone] == list(range(6))
    assert Zone.top() == top
    assert Zone.highest([restricted, Zone.PUBLIC]) == restricted
    assert restricted <= "confidential"
    assert not restricted <= "internal"
    record = MemoryRecord(content="x", scope={"user_id": "u1"}, zone="restricted")
    assert record.zone is restricted
    assert record.model_dump(mode="json")["zone"] == "restricted"
    assert settings.environment()["HIVEMEM_ZONES"].startswith('["public", "internal"')

    HivememSettings(data_dir=settings.data_dir)
    assert zone_names() == BUILTIN_ZONES
    with pytest.raises(ValueError, match="not a configured zone"):
        Zone("restricted")
    with pytest.raises(InvalidInput, match="unknown zone"):
        MemoryRecord(content="x", scope={"user_id": "u1"}, zone="restricted")


@pytest.mark.parametrize(
    ("zones", "why"),
    [
        (("public", "secret"), "in that order"),
        (("internal", "public", "confidential", "secret"), "in that order"),
        (("public", "internal", "Restricted", "confidential", "secret"), "must be 1-32"),
        (("public", "internal", "a:b", "confidential", "secret"), "must be 1-32"),
        (("public", "internal", "*", "confidential", "secret"), "must be 1-32"),
        (("public", "internal", "x" * 33, "confidential", "secret"), "must be 1-32"),
        (("public", "internal", "internal", "confidential", "secret"), "named twice"),
        (("public", "public_archive", "internal", "confidential", "secret"), "_archive"),
    ],
)
def test_a_bad_ladder_is_refused_and_changes_nothing(
    ladder_settings: Callable[..., HivememSettings], zones: tuple[str, ...], why: str
) -> None:
    """Missing or reordered built-in zones, names unfit for Redis keys, ACL patterns or
    collection names, repeats: a typed error, and the ladder in force stays."""
    ladder_settings("p")
    with pytest.raises(InvalidInput, match=why):
        configure_zones(zones)
    with pytest.raises(ValidationError, match=why):
        ladder_settings("q", zones=zones)
    assert zone_names() == LADDER


def test_settings_that_fail_leave_the_ladder_as_it_was(tmp_path: Path) -> None:
    """A setting naming a zone the new ladder lacks fails the settings, and the ladder they
    would have installed is not left behind."""
    with pytest.raises(ValidationError):
        HivememSettings(zones=LADDER, data_dir=tmp_path, zone_policies={"nowhere": {}})
    assert zone_names() == BUILTIN_ZONES


def test_processes_of_one_pool_must_agree_on_the_ladder(
    ladder_settings: Callable[..., HivememSettings], embedder: FastEmbedder
) -> None:
    """The first process stores its ladder in the pool; a pool or worker process with other
    zones is refused (ZoneLadderMismatch) before it reads or writes anything."""
    first = SharedMemoryPool.connect(ladder_settings("p1"), embedder=embedder)
    try:
        other = ladder_settings("p2", zones=(*BUILTIN_ZONES, "top_secret"))
        with pytest.raises(ZoneLadderMismatch, match="differ from the pool's"):
            SharedMemoryPool.connect(other, embedder=embedder)
        SharedMemoryPool.connect(ladder_settings("p3"), embedder=embedder).close()
    finally:
        first.close()
    worker = WorkerRuntime(ladder_settings("worker", zones=BUILTIN_ZONES))
    try:
        with pytest.raises(ZoneLadderMismatch):
            _ = worker.client
    finally:
        worker.close()


def test_a_registry_entry_this_ladder_cannot_read_is_no_sender(
    ladder_settings: Callable[..., HivememSettings], client: redis.Redis
) -> None:
    """An agent registered on the extended ladder, looked up by a process on the built-in
    one, reads as an unknown sender (its messages are rejected) instead of failing the
    receiver."""
    ladder_settings("p")
    registry = AgentRegistry(client, namespace="t", heartbeat_ttl_s=5)
    registry.register(AgentInfo(agent_id="far", clearance=Zone("top_secret")))
    assert SenderDirectory(registry)("far") is not None
    configure_zones(BUILTIN_ZONES)
    assert SenderDirectory(registry)("far") is None


# -- clearance on the configured ladder ------------------------------------------------------


def test_records_of_a_new_zone_reach_only_the_agents_cleared_for_it(
    pools: Callable[[str], SharedMemoryPool],
) -> None:
    """Sealed, signed and broker-checked sharing on the extended ladder: a ``restricted``
    record reaches the restricted and top_secret agents, not the internal one; handing it to
    the internal agent is refused."""
    sender_pool = pools("p1")
    sender = sender_pool.register_agent(
        "sender", clearance="top_secret", share_levels=[Level.CATEGORY]
    )
    cleared = pools("p2").register_agent("cleared", clearance="restricted")
    above = pools("p3").register_agent("above", clearance="top_secret")
    below = pools("p4").register_agent("below", clearance=Zone.INTERNAL)
    assert all(a.wait_connected() for a in (sender, cleared, above, below))
    for zone in ("internal", "restricted", "top_secret"):
        sender.memory.add(
            f"note in {zone}", user_id="u1", agent_id="sender", level=Level.CATEGORY, zone=zone
        )
    assert wait_for(lambda: len(received(above)) == 3 and len(received(cleared)) == 2)
    assert wait_for(lambda: len(received(below)) == 1)
    time.sleep(0.3)  # anything wrongly sent would have arrived by now
    assert received(cleared) == {"note in internal", "note in restricted"}
    assert received(below) == {"note in internal"}
    restricted = sender.memory.list_memories(user_id="u1", filter={"zones": ["restricted"]})
    with pytest.raises(ClearanceDenied):
        sender_pool.share_knowledge("sender", "below", restricted[0].id)


def test_the_broker_keeps_an_agent_out_of_new_zones_above_it(
    ladder_settings: Callable[..., HivememSettings],
    client: redis.Redis,
    redis_server: EmbeddedRedis,
) -> None:
    """An agent cleared for ``restricted`` may subscribe to and read the restricted channel
    and stream, and gets NOPERM on confidential and top_secret ones (its ACL user follows the
    ladder)."""
    ladder_settings("p")
    acl = AgentAcl(client, namespace="t")
    creds = acl.provision("a1", Zone("restricted"))
    agent = redis.Redis.from_url(creds.url(redis_server.url))
    try:
        RedisBus(client, namespace="t", maxlen=100).publish(
            zone_topic(Zone("top_secret")), "admin", [("m1", b"x")]
        )
        assert subscribed(agent, "t:zone:restricted")["type"] == "subscribe"
        assert agent.xrange("t:zone:restricted:stream") == []
        attempts = (
            lambda: agent.xrange("t:zone:top_secret:stream"),
            lambda: agent.xrange("t:zone:confidential:stream"),
            lambda: subscribed(agent, "t:zone:top_secret"),
        )
        assert refused_all(attempts) == 3
    finally:
        agent.close()


def test_the_zone_store_keeps_a_collection_per_configured_zone(
    ladder_settings: Callable[..., HivememSettings], tmp_path: Path
) -> None:
    """The workers' store names a collection for every zone of the ladder and none for a
    name that is not on it."""
    ladder_settings("p")
    store = EdgeZoneStore(tmp_path / "zones", dim=4, namespace="t")
    try:
        assert store.collection(Zone("restricted")) == "t_restricted"
        assert store.collection(Zone("top_secret"), archive=True) == "t_top_secret_archive"
        with pytest.raises(InvalidInput):
            store.collection("nowhere")  # type: ignore[arg-type]
    finally:
        store.close()


def test_workers_ingest_and_consolidate_a_configured_zone(
    pools: Callable[[str], SharedMemoryPool], ladder_settings: Callable[..., HivememSettings]
) -> None:
    """Episodes of a new zone reach the workers' store in that zone's collection, and their
    consolidation stays in it."""
    agent = pools("p1").register_agent("diary", clearance="top_secret")
    restricted = Zone("restricted")
    for text in ["Ada ran 10 km by the river", "Ada runs every morning before work"]:
        agent.memory.add(text, user_id="ada", zone=restricted)
    assert agent.flush()
    worker_settings = ladder_settings("worker")
    runtime = WorkerRuntime(worker_settings)
    try:
        due: list[str] = []
        runtime.ingest.drain(restricted, on_due=due.append)
        report = runtime.consolidation.consolidate(restricted, "ada")
        assert report.domain is not None
        (domain,) = runtime.store.get(restricted, [report.domain])
        assert domain.zone == restricted
        assert domain.content.startswith("Profile of ada")
        assert (worker_settings.data_dir / "zones" / "hivemem_restricted").is_dir()
    finally:
        runtime.close()

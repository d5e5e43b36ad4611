"""Key rotation without downtime, on a real Redis, real Qdrant Edge stores and (for the command
line) a real worker process: a rotation is audited; agents re-seal their local stores at their
heartbeat or attach; the workers re-seal the zone store and its archive; an old key is retired
only once every holder re-sealed (or by force, which loses what a holder still kept under it);
everything stays readable throughout; bad requests change nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import structlog

from hivemem.agents.agent import Agent
from hivemem.cli.main import main
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import (
    INGEST_QUEUE,
    InvalidIdentifier,
    InvalidInput,
    KeyStillInUse,
    KeyUnavailable,
)
from hivemem.pool.filters import And, Cond
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.pool_security import WORKER_SENDER
from hivemem.workers.runtime import WorkerRuntime
from tests.waiting import wait_for
from tests.workers.conftest import WorkerProcess, settings_env

EVERYTHING = And(all=[])


def ignore(user_id: str) -> None:
    """An ``on_due`` for drains whose consolidations do not matter here."""


def write(agent: Agent, user_id: str, zone: Zone, count: int) -> dict[str, str]:
    """``count`` records of ``user_id``; returns id → content."""
    written = {}
    for i in range(count):
        content = f"{user_id} rotation note {i} in {zone.value}"
        written[agent.memory.add(content, user_id=user_id, zone=zone).id] = content
    assert agent.flush()
    return written


def active_key(pool: SharedMemoryPool, zone: Zone) -> str:
    """The zone's active key id (made now if the zone never had one)."""
    assert pool.rotation is not None
    return pool.rotation.keyring.active(zone).key_id


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The command line configures structlog for the process: put it back after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def pool(make_pool: Callable[..., SharedMemoryPool]) -> SharedMemoryPool:
    return make_pool("rotating", heartbeat_interval_s=0.2)


@pytest.fixture
def writer(pool: SharedMemoryPool) -> Agent:
    return pool.register_agent("writer", clearance=Zone.CONFIDENTIAL, share_levels=[Level.EPISODE])


def test_rotate_reseal_retire_keeps_everything_readable(
    pool: SharedMemoryPool, writer: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Records under the old key in the agent's store, the zone store and its archive stay
    readable after the rotation, both re-seals and the retirement of the old key; the
    retirement is refused until every holder re-sealed; rotation and retirement are audited."""
    runtime = make_runtime()
    bobs = write(writer, "bob", Zone.INTERNAL, 2)
    written = write(writer, "alice", Zone.INTERNAL, 5) | bobs
    runtime.ingest.drain(Zone.INTERNAL, on_due=ignore)
    # bob's records all archived: the re-seal finds him in the archive's index alone.
    archived = sorted(set(written) - set(bobs))[:1] + sorted(bobs)
    runtime.archive.archive(Zone.INTERNAL, archived)
    old = active_key(pool, Zone.INTERNAL)

    new = pool.rotate_key(Zone.INTERNAL)

    assert new.active
    assert new.key_id != old
    with pytest.raises(KeyStillInUse) as refused:
        pool.retire_key(Zone.INTERNAL, old)
    assert WORKER_SENDER in refused.value.holders
    assert not next(i for i in pool.zone_keys(Zone.INTERNAL) if i.key_id == old).retired
    assert pool.rotation is not None
    assert wait_for(lambda: pool.rotation.resealed_under(Zone.INTERNAL, "writer") == new.key_id)

    receipt = runtime.reseal.reseal(Zone.INTERNAL, on_due=ignore)

    assert (receipt.key_id, receipt.users, receipt.records) == (new.key_id, 2, 7)
    assert runtime.reseal.reseal(Zone.INTERNAL, on_due=ignore).records == 0
    assert pool.retire_key(Zone.INTERNAL, old) == []
    assert next(i for i in pool.zone_keys(Zone.INTERNAL) if i.key_id == old).retired
    with pytest.raises(KeyUnavailable):
        pool.rotation.keyring.get(Zone.INTERNAL, old)
    assert {i: writer.memory.get(i).content for i in written} == written
    live = runtime.store.get(Zone.INTERNAL, sorted(set(written) - set(archived)))
    kept = runtime.store.archive_get(Zone.INTERNAL, archived)
    assert {r.id: r.content for r in [*live, *kept]} == written
    kinds = {e.kind: e for e in pool.audit.tail(20)}
    assert kinds["key_rotated"].subject == new.key_id
    assert kinds["key_rotated"].details["previous"] == old
    assert kinds["key_retired"].subject == old
    assert kinds["key_retired"].details["forced"] is False


def test_a_message_waiting_in_an_outbox_under_the_old_key_holds_its_retirement(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """An agent whose outbox still holds a message sealed under the old key (it sends every
    few seconds) has not re-sealed, for the retirement: retired, the key would leave that
    acknowledged write unreadable to every receiver. Once it is sent, the agent re-seals at
    its next heartbeat; the write then waits in the zone's ingest queue, which holds the
    retirement until the workers stored it. Then the key can go, and the write is in the zone
    store. (A message sent under the old key but not yet read by an agent is not covered: see
    docs/security.md.)"""
    runtime = make_runtime()
    slow = pool.register_agent(
        "slow", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE], sync_interval=6.0
    )
    old = active_key(pool, Zone.INTERNAL)
    record = slow.memory.add("a note still in the outbox", user_id="carol", zone=Zone.INTERNAL)
    new = pool.rotate_key(Zone.INTERNAL)
    assert pool.rotation is not None
    runtime.reseal.reseal(Zone.INTERNAL, on_due=ignore)
    time.sleep(1.0)  # five heartbeats of the agent
    assert slow.pending > 0  # its zone topic's message and its ingest queue's
    assert pool.rotation.resealed_under(Zone.INTERNAL, "slow") != new.key_id
    with pytest.raises(KeyStillInUse) as refused:
        pool.retire_key(Zone.INTERNAL, old)
    assert "slow" in refused.value.holders

    assert slow.flush(timeout_s=20.0)
    assert wait_for(lambda: pool.rotation.resealed_under(Zone.INTERNAL, "slow") == new.key_id)
    with pytest.raises(KeyStillInUse) as queued:
        pool.retire_key(Zone.INTERNAL, old)
    assert queued.value.holders == [INGEST_QUEUE]
    assert "let the workers store it" in str(queued.value)

    runtime.ingest.drain(Zone.INTERNAL, on_due=ignore)  # what the workers do within seconds
    assert pool.retire_key(Zone.INTERNAL, old) == []
    [stored] = runtime.store.get(Zone.INTERNAL, [record.id])
    assert stored.content == "a note still in the outbox"


def test_an_agent_attaching_after_a_rotation_reseals_at_attach(
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """An agent that was away during the rotation re-seals its store when it attaches: its
    re-seal is recorded at once, and its records read back after the old key is retired."""
    first = make_pool("away")
    agent = first.register_agent("away-agent", clearance=Zone.INTERNAL)
    written = write(agent, "carol", Zone.PUBLIC, 3)
    first.close()
    admin = make_pool("admin")
    old = active_key(admin, Zone.PUBLIC)
    new = admin.rotate_key(Zone.PUBLIC)

    again = make_pool("away").attach("away-agent")

    assert admin.rotation is not None
    assert admin.rotation.resealed_under(Zone.PUBLIC, "away-agent") == new.key_id
    late = admin.rotation.behind(Zone.PUBLIC, old, admin.key_holders(Zone.PUBLIC))
    assert "away-agent" not in late
    admin.retire_key(Zone.PUBLIC, old, force=True)  # the workers never ran here
    assert {i: again.memory.get(i).content for i in written} == written


def test_a_forced_retirement_loses_what_a_holder_kept_under_the_key(
    pool: SharedMemoryPool, writer: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Forced before the workers re-sealed, a retirement names them, is audited as forced,
    and the zone store's records under the old key can no longer be read (the agent, which
    re-sealed, keeps its copies)."""
    runtime = make_runtime()
    written = write(writer, "dave", Zone.CONFIDENTIAL, 3)
    runtime.ingest.drain(Zone.CONFIDENTIAL, on_due=ignore)
    old = active_key(pool, Zone.CONFIDENTIAL)
    new = pool.rotate_key(Zone.CONFIDENTIAL)
    assert pool.rotation is not None
    assert wait_for(lambda: pool.rotation.resealed_under(Zone.CONFIDENTIAL, "writer") == new.key_id)

    behind = pool.retire_key(Zone.CONFIDENTIAL, old, force=True)

    assert behind == [WORKER_SENDER]
    # Other processes drop the key within their cache time (a second by default).
    assert wait_for(lambda: runtime.store.get(Zone.CONFIDENTIAL, sorted(written)) == [])
    assert {i: writer.memory.get(i).content for i in written} == written
    retired = next(e for e in reversed(pool.audit.tail(10)) if e.kind == "key_retired")
    assert retired.details == {"forced": True, "behind": [WORKER_SENDER]}

    # Unreadable, yet forgotten all the same: tombstones need no content.
    receipt = runtime.forget.forget_user("dave", [Zone.CONFIDENTIAL], on_due=lambda *_: None)
    assert receipt.zones[Zone.CONFIDENTIAL.value].live_records == len(written)
    dave = And(all=[Cond(field="scope.user_id", op="eq", value="dave")])
    assert runtime.store.ids(Zone.CONFIDENTIAL, dave) == []
    assert all(runtime.store.presence(Zone.CONFIDENTIAL, sorted(written)).values())


def test_an_agent_lowered_below_a_zone_holds_its_keys_retirement(
    pool: SharedMemoryPool,
    make_pool: Callable[..., SharedMemoryPool],
    make_runtime: Callable[..., WorkerRuntime],
) -> None:
    """An agent whose clearance was lowered while it was away keeps what it stored of the
    zone it lost, sealed under that zone's keys, and cannot re-seal it: a retirement without
    force names it and changes nothing, so its acknowledged records read once it is cleared
    again. It was left out of the holders before: the retirement went through and those
    records were lost."""
    runtime = make_runtime()
    host = make_pool("host")
    agent = host.register_agent("erin-bot", clearance=Zone.CONFIDENTIAL)
    written = write(agent, "erin", Zone.CONFIDENTIAL, 2)
    runtime.ingest.drain(Zone.CONFIDENTIAL, on_due=ignore)
    host.close()
    pool.set_clearance("erin-bot", Zone.INTERNAL)
    old = active_key(pool, Zone.CONFIDENTIAL)
    pool.rotate_key(Zone.CONFIDENTIAL)
    runtime.reseal.reseal(Zone.CONFIDENTIAL, on_due=ignore)

    with pytest.raises(KeyStillInUse) as refused:
        pool.retire_key(Zone.CONFIDENTIAL, old)

    assert refused.value.holders == ["erin-bot"]
    assert not next(i for i in pool.zone_keys(Zone.CONFIDENTIAL) if i.key_id == old).retired
    pool.set_clearance("erin-bot", Zone.CONFIDENTIAL)
    back = make_pool("host").attach("erin-bot")
    assert {i: back.memory.get(i).content for i in written} == written


def test_a_forced_retirement_names_the_writes_it_leaves_in_the_ingest_queue(
    pool: SharedMemoryPool, writer: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Writes the workers have not stored yet wait in the zone's ingest queue, sealed under the
    key they were written under. Every holder re-sealed, the queue alone holds the retirement;
    forced, the retirement names it and is audited so, and the workers can no longer open
    those writes: they never reach the zone store (what the refusal prevents)."""
    runtime = make_runtime()
    old = active_key(pool, Zone.INTERNAL)
    written = write(writer, "erin", Zone.INTERNAL, 2)  # in the ingest queue, not stored yet
    new = pool.rotate_key(Zone.INTERNAL)
    assert pool.rotation is not None
    assert wait_for(lambda: pool.rotation.resealed_under(Zone.INTERNAL, "writer") == new.key_id)
    # As after the workers re-sealed a zone store that had nothing of the zone yet.
    pool.rotation.record_resealed(Zone.INTERNAL, WORKER_SENDER, new.key_id)
    assert pool.rotation.behind(Zone.INTERNAL, old, pool.key_holders(Zone.INTERNAL)) == [
        INGEST_QUEUE
    ]
    with pytest.raises(KeyStillInUse) as refused:
        pool.retire_key(Zone.INTERNAL, old)
    assert refused.value.holders == [INGEST_QUEUE]
    assert not next(i for i in pool.zone_keys(Zone.INTERNAL) if i.key_id == old).retired

    assert pool.retire_key(Zone.INTERNAL, old, force=True) == [INGEST_QUEUE]

    retired = next(e for e in reversed(pool.audit.tail(10)) if e.kind == "key_retired")
    assert retired.details == {"forced": True, "behind": [INGEST_QUEUE]}
    report = runtime.ingest.drain(Zone.INTERNAL, on_due=ignore)
    assert (report.messages, report.records, report.skipped) == (2, 0, 2)  # one per write
    assert runtime.store.get(Zone.INTERNAL, sorted(written)) == []


def test_bad_rotation_requests_change_nothing(
    pool: SharedMemoryPool, make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """Retiring the active key, an unknown or malformed key, or rotating an unknown zone or
    with security off raises a typed error; the zone's keys are as before."""
    current = active_key(pool, Zone.SECRET)
    before = pool.zone_keys(Zone.SECRET)

    with pytest.raises(InvalidInput, match="active key"):
        pool.retire_key(Zone.SECRET, current)
    with pytest.raises(KeyUnavailable):
        pool.retire_key(Zone.SECRET, "0123456789ab")
    with pytest.raises(InvalidIdentifier):
        pool.retire_key(Zone.SECRET, "../../etc")
    with pytest.raises(InvalidInput):
        pool.rotate_key("top-secret")
    with pytest.raises(InvalidInput, match="security"):
        make_pool("plain", secure=False).rotate_key(Zone.SECRET)

    assert pool.zone_keys(Zone.SECRET) == before


def test_the_command_line_rotates_reseals_and_retires_through_a_worker(
    pool: SharedMemoryPool,
    *,
    writer: Agent,
    worker_settings: Callable[..., HivememSettings],
    spawn_worker: Callable[..., WorkerProcess],
    make_runtime: Callable[..., WorkerRuntime],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restored_logging: None,
) -> None:
    """`hivemem zones rotate-keys internal` rotates and waits for a real worker's re-seal (with
    --no-wait, only queues it);
    `zones keys` shows the old key with nobody behind once the agent re-sealed too; `zones
    retire-key` retires it (exit 0), retiring the active key exits 2, and the zone store and
    the agent still read every record."""
    settings = worker_settings()
    worker = spawn_worker(settings)
    written = write(writer, "erin", Zone.INTERNAL, 4)
    worker.wait_ready()
    for name, value in settings_env(settings).items():
        if name.startswith("HIVEMEM_"):
            monkeypatch.setenv(name, value)
    old = active_key(pool, Zone.INTERNAL)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        return code, capsys.readouterr().out

    code, out = run("zones", "rotate-keys", "internal", "--json", "--timeout", "120")
    assert code == 0, out
    rotated = json.loads(out)
    new = next(row["key_id"] for row in rotated["keys"] if row["state"] == "active")
    assert new != old
    assert "internal" in rotated["zone_store_resealed"]
    assert pool.rotation is not None
    assert wait_for(lambda: pool.rotation.resealed_under(Zone.INTERNAL, "writer") == new)
    code, out = run("zones", "keys", "internal", "--json")
    assert code == 0
    assert {row["key_id"]: (row["state"], row["behind"]) for row in json.loads(out)} == {
        old: ("old", []),
        new: ("active", []),
    }
    assert run("zones", "retire-key", "internal", old, "--json")[0] == 0
    assert run("zones", "retire-key", "internal", new)[0] == 2
    # --no-wait returns at once; the re-seal it queued still reaches the worker.
    code, out = run("zones", "rotate-keys", "internal", "--no-wait", "--json")
    assert code == 0, out
    queued = json.loads(out)
    assert queued["zone_store_resealed"] == {}
    newest = next(row["key_id"] for row in queued["keys"] if row["state"] == "active")
    assert newest != new
    assert wait_for(
        lambda: pool.rotation.resealed_under(Zone.INTERNAL, WORKER_SENDER) == newest,
        timeout_s=60,
    )
    assert {i: writer.memory.get(i).content for i in written} == written
    stored = make_runtime().store.get(Zone.INTERNAL, sorted(written))
    assert {r.id: r.content for r in stored} == written

"""Rotating the workers' ingest key through the pool, on a real Redis, a real agent and the
workers' real ingest and Qdrant Edge zone store (and, for the command line, the `hivemem`
entry point): writes sealed to the old and the new key all reach the zone store; the old key is
retired only once no agent may still seal to it and nothing queued needs it, or by force, which
loses those writes; each step is audited; bad requests change nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial

import pytest

from hivemem.agents.agent import Agent
from hivemem.cli.main import main
from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import INGEST_QUEUE, InvalidIdentifier, InvalidInput, KeyUnavailable
from hivemem.pool.records import utc_now
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.in_flight import ingest_queued_to
from hivemem.security.ingest_keys import FIRST_INGEST_ID, INGEST_KEYS
from hivemem.security.ingest_rotation import AGENTS_SEALING, IngestKeyStillInUse, IngestRotation
from hivemem.security.ingest_seal import sealed_to
from hivemem.workers.runtime import WorkerRuntime
from tests.workers.conftest import settings_env
from tests.workers.test_key_rotation import ignore, restored_logging, write

__all__ = ["restored_logging"]  # a fixture used here

#: Longer than the keyring's ttl (1 s): agents have read the key a rotation made.
AFTER_TTL_S = 1.2


@pytest.fixture
def pool(make_pool: Callable[..., SharedMemoryPool]) -> SharedMemoryPool:
    return make_pool("rotating")


@pytest.fixture
def writer(pool: SharedMemoryPool) -> Agent:
    return pool.register_agent("writer", clearance=Zone.CONFIDENTIAL, share_levels=[Level.EPISODE])


def queued_to(pool: SharedMemoryPool) -> list[str | None]:
    """The workers' key each message of the writer's internal ingest queue is sealed to."""
    backlog = pool.bus.read(ingest_topic(Zone.INTERNAL, "writer"), 0, limit=1000)
    return [sealed_to(d.data) for d in backlog.deliveries]


def past_grace(pool: SharedMemoryPool) -> IngestRotation:
    """The pool's ingest rotation with a clock past any grace (as an operator a day later)."""
    assert pool.security is not None
    return IngestRotation(
        pool.security.keyring,
        audit=pool.audit,
        queued=partial(ingest_queued_to, pool.bus, pool.registry),
        grace_s=60.0,
        clock=lambda: utc_now() + timedelta(days=1),
    )


def test_writes_sealed_to_the_old_and_the_new_key_all_reach_the_zone_store(
    pool: SharedMemoryPool, writer: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A worker that read the keys before the rotation stores the writes queued before it,
    and those sealed to the new key after it (it reads the keys again for a key it does not
    hold); the agent seals to the new key within a second; the rotation is audited."""
    runtime = make_runtime()
    written = write(writer, "ann", Zone.INTERNAL, 2)
    runtime.ingest.drain(Zone.INTERNAL, on_due=ignore)  # the worker now holds the first key
    written |= write(writer, "ann", Zone.INTERNAL, 2)

    rotated = pool.rotate_ingest_key()
    time.sleep(AFTER_TTL_S)
    written |= write(writer, "ann", Zone.INTERNAL, 2)

    assert rotated.current
    assert rotated.key_id != FIRST_INGEST_ID
    assert queued_to(pool)[-3:] == [FIRST_INGEST_ID, rotated.key_id, rotated.key_id]
    report = runtime.ingest.drain(Zone.INTERNAL, on_due=ignore)
    assert (report.records, report.skipped) == (4, 0)
    stored = runtime.store.get(Zone.INTERNAL, sorted(written))
    assert {r.id: r.content for r in stored} == written
    entry = next(e for e in reversed(pool.audit.tail(10)) if e.kind == "key_rotated")
    assert (entry.subject, entry.zone) == (rotated.key_id, INGEST_KEYS)
    assert entry.details == {"previous": FIRST_INGEST_ID}


def test_an_old_key_is_retired_once_nothing_needs_it(
    pool: SharedMemoryPool, writer: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Within the grace after the rotation, agents may still seal to the old key; past it,
    the writes queued under it hold it until the workers stored them; then it is retired
    (audited), its material leaves Redis, and the listing says so. Refusals change nothing."""
    runtime = make_runtime()
    written = write(writer, "bea", Zone.INTERNAL, 3)  # queued under the first key
    pool.rotate_ingest_key()

    with pytest.raises(IngestKeyStillInUse) as refused:
        pool.retire_ingest_key(FIRST_INGEST_ID)
    assert refused.value.holders == [AGENTS_SEALING, INGEST_QUEUE]
    assert "agents may seal to it until" in str(refused.value)
    later = past_grace(pool)
    assert later.behind(FIRST_INGEST_ID) == [INGEST_QUEUE]
    with pytest.raises(IngestKeyStillInUse) as queued:
        later.retire(FIRST_INGEST_ID, actor="operator")
    assert queued.value.holders == [INGEST_QUEUE]
    assert not next(k for k in pool.ingest_keys() if k.key_id == FIRST_INGEST_ID).retired

    assert runtime.ingest.drain(Zone.INTERNAL, on_due=ignore).records == 3
    assert later.behind(FIRST_INGEST_ID) == []
    assert later.retire(FIRST_INGEST_ID, actor="operator") == []

    info = next(k for k in pool.ingest_keys() if k.key_id == FIRST_INGEST_ID)
    assert info.retired
    first = f"{pool.settings.pool.namespace}:keys:ingest"
    assert pool.bus.client.get(first) == b"retired"  # its wrapped material is gone
    entry = next(e for e in reversed(pool.audit.tail(10)) if e.kind == "key_retired")
    assert (entry.subject, entry.zone, entry.actor) == (FIRST_INGEST_ID, INGEST_KEYS, "operator")
    assert entry.details == {"forced": False, "behind": []}
    assert later.retire(FIRST_INGEST_ID, actor="operator") == []  # again: nothing, not audited
    assert [e.kind for e in pool.audit.tail(1)] == ["key_retired"]
    assert {r.id for r in runtime.store.get(Zone.INTERNAL, sorted(written))} == set(written)


def test_a_departed_agents_queued_writes_hold_the_old_key_too(
    pool: SharedMemoryPool, writer: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """The writes a deregistered agent left queued under the old key (its queue moved to a
    departure) hold the key's retirement until the workers stored them."""
    runtime = make_runtime()
    written = write(writer, "dee", Zone.INTERNAL, 2)
    pool.deregister("writer")
    pool.rotate_ingest_key()
    later = past_grace(pool)

    assert later.behind(FIRST_INGEST_ID) == [INGEST_QUEUE]
    assert runtime.ingest.drain(Zone.INTERNAL, on_due=ignore).records == 2
    assert later.behind(FIRST_INGEST_ID) == []
    assert {r.id for r in runtime.store.get(Zone.INTERNAL, sorted(written))} == set(written)


def test_a_forced_retirement_names_what_needed_the_key_and_loses_those_writes(
    pool: SharedMemoryPool, writer: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Forced at once, the retirement names the agents and the queue, is audited as forced,
    and the workers can no longer open the writes queued under the key: they are rejected
    (``unknown_key``) and never reach the zone store, which is what the refusal prevents."""
    runtime = make_runtime()
    written = write(writer, "cid", Zone.INTERNAL, 2)
    pool.rotate_ingest_key()

    assert pool.retire_ingest_key(FIRST_INGEST_ID, force=True) == [AGENTS_SEALING, INGEST_QUEUE]

    entry = next(e for e in reversed(pool.audit.tail(10)) if e.kind == "key_retired")
    assert entry.details == {"forced": True, "behind": [AGENTS_SEALING, INGEST_QUEUE]}
    report = runtime.ingest.drain(Zone.INTERNAL, on_due=ignore)
    assert (report.messages, report.records, report.skipped) == (2, 0, 2)
    assert runtime.store.get(Zone.INTERNAL, sorted(written)) == []
    rejected = [e for e in pool.audit.tail(20) if e.kind == "rejected_message"]
    assert [e.details.get("reason") for e in rejected] == ["unknown_key", "unknown_key"]


def test_bad_ingest_key_requests_change_nothing(
    pool: SharedMemoryPool, make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """Retiring the current key, an unknown or malformed one, or any ingest key call with
    security off raises a typed error; the keys are as before."""
    pool.rotate_ingest_key()
    before = pool.ingest_keys()
    current = next(k.key_id for k in before if k.current)

    with pytest.raises(InvalidInput, match="current"):
        pool.retire_ingest_key(current, force=True)
    with pytest.raises(KeyUnavailable):
        pool.retire_ingest_key("0123456789ab", force=True)
    with pytest.raises(InvalidIdentifier):
        pool.retire_ingest_key("../../etc", force=True)
    assert pool.ingest_key_behind(current) == []
    plain = make_pool("plain", secure=False)
    for call in (plain.ingest_keys, plain.rotate_ingest_key):
        with pytest.raises(InvalidInput, match="security"):
            call()
    with pytest.raises(InvalidInput, match="security"):
        plain.retire_ingest_key(FIRST_INGEST_ID)

    assert pool.ingest_keys() == before


def test_the_command_line_lists_rotates_and_retires_ingest_keys(
    pool: SharedMemoryPool,
    pool_settings: Callable[..., HivememSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restored_logging: None,
) -> None:
    """`hivemem zones rotate-ingest-key` makes a new key; `zones ingest-keys` lists both, the
    old one still needed by the agents within the grace; `zones retire-ingest-key` is refused
    then (exit 1), exits 2 for an unknown key, and retires with --force (exit 0)."""
    settings = pool_settings("rotating")
    for name, value in settings_env(settings).items():
        if name.startswith("HIVEMEM_"):
            monkeypatch.setenv(name, value)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        return code, capsys.readouterr().out

    code, out = run("zones", "rotate-ingest-key", "--json")
    assert code == 0, out
    rows = {row["key_id"]: row for row in json.loads(out)}
    assert rows[FIRST_INGEST_ID]["state"] == "old"
    assert rows[FIRST_INGEST_ID]["behind"] == [AGENTS_SEALING]
    new = next(key for key, row in rows.items() if row["state"] == "current")
    code, out = run("zones", "ingest-keys", "--json")
    assert (code, [row["key_id"] for row in json.loads(out)]) == (0, [FIRST_INGEST_ID, new])
    assert run("zones", "retire-ingest-key", FIRST_INGEST_ID)[0] == 1
    assert run("zones", "retire-ingest-key", "0123456789ab")[0] == 2
    code, out = run("zones", "retire-ingest-key", FIRST_INGEST_ID, "--force", "--json")
    assert code == 0, out
    assert json.loads(out) == {
        "key_id": FIRST_INGEST_ID,
        "retired": True,
        "behind": [AGENTS_SEALING],
    }
    assert [k.retired for k in pool.ingest_keys()] == [True, False]

"""HierarchicalMemory: the operations, their errors, and persistence across processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import (
    InvalidContent,
    InvalidIdentifier,
    InvalidInput,
    MemoryClosed,
    MemoryNotFound,
    StoreIncompatible,
    StoreLocked,
    SupersessionConflict,
)
from hivemem.pool.settings import HivememSettings
from tests.conftest import Clock

MakeMemory = Callable[..., HierarchicalMemory]


def test_add_returns_the_stored_record_with_vectors(
    memory: HierarchicalMemory, clock: Clock
) -> None:
    """add() returns the record as stored: id, scope, defaults, both vectors, clock times."""
    record = memory.add("Carol likes sailing", user_id="carol", session_id="s1", tags=["hobby"])
    stored = memory.get(record.id, with_vectors=True)
    assert stored.content == "Carol likes sailing"
    assert stored.scope.user_id == "carol"
    assert stored.scope.session_id == "s1"
    assert stored.level is Level.EPISODE
    assert stored.tier is Tier.WORKING
    assert stored.tags == ["hobby"]
    assert stored.recorded_at == clock.now == stored.valid_from
    assert stored.vector is not None
    assert len(stored.vector) == 384
    assert stored.sparse is not None
    assert stored.sparse.indices


def test_add_many_applies_common_scope_and_item_overrides(memory: HierarchicalMemory) -> None:
    """A batch takes the call's scope unless an item names its own."""
    records = memory.add_many(
        ["first", {"content": "second", "scope": {"user_id": "dave"}}], user_id="erin"
    )
    assert [r.scope.user_id for r in records] == ["erin", "dave"]
    assert {r.id for r in memory.list_memories(user_id="erin")} == {records[0].id}


def test_a_bad_item_fails_the_whole_batch_before_any_write(memory: HierarchicalMemory) -> None:
    """One empty item in a batch raises InvalidContent and nothing of the batch is stored."""
    with pytest.raises(InvalidContent):
        memory.add_many(["fine", "   ", "also fine"], user_id="u1")
    assert memory.stats().total == 0


def test_oversized_metadata_fails_the_whole_batch_before_any_write(
    memory: HierarchicalMemory,
) -> None:
    """An item whose metadata holds a megabyte of text (it could outgrow a sync message with
    its batch) raises InvalidInput on ``metadata.<key>``, naming its place; nothing is stored."""
    items = [{"content": f"note {i}", "metadata": {"blob": "x" * 1_000_000}} for i in range(3)]
    with pytest.raises(InvalidInput, match=r"item 1: metadata\.blob") as caught:
        memory.add_many(["fine", *items], user_id="u1")
    assert caught.value.field == "metadata.blob"
    assert memory.stats().total == 0


def test_content_longer_than_the_setting_is_rejected(
    make_memory: MakeMemory, data_dir: Path
) -> None:
    """Content over memory.max_content_chars raises InvalidContent and changes nothing."""
    small = HivememSettings(data_dir=data_dir, memory={"max_content_chars": 50})
    memory = make_memory(settings=small)
    with pytest.raises(InvalidContent):
        memory.add("x" * 51, user_id="u1")
    memory.add("x" * 50, user_id="u1")
    assert memory.stats().total == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"importance": float("nan")}, InvalidInput),
        ({"importance": 1.5}, InvalidInput),
        ({"level": "paragraph"}, InvalidInput),
        ({"category": "gossip"}, InvalidInput),
        ({"tier": "lukewarm"}, InvalidInput),
        ({"zone": "top-secret"}, InvalidInput),
        ({"session_id": "s 1"}, InvalidIdentifier),
        ({"metadata": {"bad key": 1}}, InvalidIdentifier),
        ({"tags": ["ok", "$(rm -rf)"]}, InvalidIdentifier),
        ({"unknown_field": 1}, InvalidInput),
    ],
)
def test_bad_add_arguments_raise_typed_errors_and_change_nothing(
    memory: HierarchicalMemory, kwargs: dict[str, object], error: type[Exception]
) -> None:
    """Each malformed argument of add() raises its typed error; the memory stays empty."""
    with pytest.raises(error):
        memory.add("valid content", user_id="u1", **kwargs)
    assert memory.stats().total == 0


def test_scope_must_be_given_once(memory: HierarchicalMemory) -> None:
    """A scope needs a user id, and cannot be given both whole and by ids."""
    with pytest.raises(InvalidInput):
        memory.add("no scope")
    with pytest.raises(InvalidInput):
        memory.add("both", scope={"user_id": "a"}, user_id="a")


def test_get_errors(memory: HierarchicalMemory) -> None:
    """get() of a malformed id raises InvalidIdentifier; of an unknown id, MemoryNotFound."""
    with pytest.raises(InvalidIdentifier):
        memory.get("not-a-uuid")
    with pytest.raises(MemoryNotFound):
        memory.get("00000000-0000-4000-8000-000000000000")


def test_list_is_newest_first_and_filtered(memory: HierarchicalMemory, clock: Clock) -> None:
    """list_memories() returns visible records newest first, filtered, limited."""
    ids = []
    for i in range(5):
        ids.append(memory.add(f"note {i}", user_id="u1", category="fact" if i % 2 else "event").id)
        clock.advance(seconds=1)
    assert [r.id for r in memory.list_memories(user_id="u1")] == ids[::-1]
    assert [r.id for r in memory.list_memories(user_id="u1", limit=2)] == ids[:2:-1][:2]
    facts = memory.list_memories(user_id="u1", filter={"categories": ["fact"]})
    assert [r.id for r in facts] == [ids[3], ids[1]]
    with pytest.raises(InvalidInput):
        memory.list_memories(user_id="u1", limit=0)


def test_supersede_keeps_history_and_validity(memory: HierarchicalMemory, clock: Clock) -> None:
    """An update is a new version: the old one is superseded, valid until the new one starts,
    and get_history returns the whole chain oldest first from any version."""
    v1 = memory.add("Frank lives in Oslo", user_id="frank", importance=0.6)
    clock.advance(days=1)
    v2 = memory.supersede(v1.id, "Frank lives in Bergen")
    clock.advance(days=1)
    v3 = memory.supersede(v2.id, "Frank lives in Tromsø", importance=0.9)
    old = memory.get(v1.id)
    assert old.superseded_by == v2.id
    assert old.superseded_at == v2.recorded_at
    assert old.valid_until == v2.valid_from
    assert v3.importance == 0.9
    assert v2.importance == 0.6
    for any_version in (v1, v2, v3):
        assert [r.id for r in memory.get_history(any_version.id)] == [v1.id, v2.id, v3.id]
    current = memory.list_memories(user_id="frank")
    assert [r.id for r in current] == [v3.id]
    assert len(memory.list_memories(user_id="frank", include_superseded=True)) == 3


def test_superseding_a_stale_version_is_a_conflict(memory: HierarchicalMemory) -> None:
    """Superseding a version that is no longer current raises SupersessionConflict naming the
    current one, and writes nothing."""
    v1 = memory.add("Gina's team is Blue", user_id="gina")
    v2 = memory.supersede(v1.id, "Gina's team is Green")
    with pytest.raises(SupersessionConflict) as caught:
        memory.supersede(v1.id, "Gina's team is Red")
    assert caught.value.current_id == v2.id
    assert memory.stats().total == 2


def test_a_new_version_keeps_its_records_user_and_zone(memory: HierarchicalMemory) -> None:
    """A new version inherits its record's labels and every receiver refuses one that changes
    user, zone or compartments: supersede raises InvalidInput naming the field, for a zone asked
    or one the classifier lifts the new content to, and writes nothing. It keeps the level too
    (agents receiving only the old level would never hear of the new version)."""
    secret = memory.add("Ivo's vault code is 7713", user_id="ivo", zone=Zone.SECRET, tags=["v"])
    plain = memory.add("Ivo works on floor 3", user_id="ivo")
    attempts = [
        (secret.id, {"zone": Zone.PUBLIC}, "zone"),
        (plain.id, {"zone": Zone.CONFIDENTIAL}, "zone"),
        (plain.id, {"scope": {"user_id": "jan"}}, "scope"),
        (plain.id, {"level": "category"}, "level"),
    ]
    for record_id, changes, field in attempts:
        with pytest.raises(InvalidInput, match="delete the record") as caught:
            memory.supersede(record_id, "Ivo moved", **changes)
        assert caught.value.field == field
    with pytest.raises(InvalidInput, match="lifted") as lifted:
        memory.supersede(plain.id, "Ivo's SSN is 536-22-1234")
    assert lifted.value.field == "zone"
    assert memory.stats().total == 2
    assert memory.stats(user_id="jan").total == 0
    assert all(memory.get(r.id).is_current for r in (secret, plain))
    moved = memory.supersede(plain.id, "Ivo works on floor 4", scope={"user_id": "ivo"})
    assert memory.get_history(plain.id)[-1].id == moved.id


def test_delete_destroys_every_version(memory: HierarchicalMemory) -> None:
    """delete() tombstones the whole chain: no version can be got, listed or found."""
    v1 = memory.add("Hal's PIN hint is his dog's name", user_id="hal")
    v2 = memory.supersede(v1.id, "Hal's PIN hint is his cat's name")
    other = memory.add("Hal likes jazz", user_id="hal")
    assert set(memory.delete(v2.id)) == {v1.id, v2.id}
    for gone in (v1.id, v2.id):
        with pytest.raises(MemoryNotFound):
            memory.get(gone)
    hits = memory.search("PIN hint pet name", user_id="hal", include_superseded=True)
    assert [h.record.id for h in hits] == [other.id]
    with pytest.raises(MemoryNotFound):
        memory.delete(v1.id)


def test_delete_reaches_versions_beyond_one_a_forget_removed(memory: HierarchicalMemory) -> None:
    """A version chain whose middle version went with a forget of its agent's scope: delete()
    of the newest version still tombstones the oldest (its text readable and searchable
    before), and the same user's other chains, and other users' records, stay."""
    v1 = memory.add("Kai's door code is 4711", user_id="kai", agent_id="a")
    v2 = memory.supersede(
        v1.id, "Kai's door code is 4712", scope={"user_id": "kai", "agent_id": "b"}
    )
    v3 = memory.supersede(
        v2.id, "Kai's door code is 4713", scope={"user_id": "kai", "agent_id": "a"}
    )
    kept = memory.add("Kai likes rowing", user_id="kai", agent_id="a")
    kept_v2 = memory.supersede(kept.id, "Kai likes sculling")
    other = memory.add("Lea's door code is 4711", user_id="lea", agent_id="a")
    assert memory.forget(user_id="kai", agent_id="b") == 1
    assert [r.id for r in memory.get_history(v3.id)] == [v3.id]  # the chain has a gap
    assert set(memory.delete(v3.id)) == {v1.id, v3.id}
    with pytest.raises(MemoryNotFound):
        memory.get(v1.id)
    left = memory.list_memories(user_id="kai", include_superseded=True)
    assert {r.id for r in left} == {kept.id, kept_v2.id}
    hits = memory.search("door code", user_id="kai", include_superseded=True)
    assert all(h.record.id in {kept.id, kept_v2.id} for h in hits)
    assert memory.get(other.id).content == "Lea's door code is 4711"


def test_forget_removes_a_scope_and_nothing_else(memory: HierarchicalMemory) -> None:
    """forget(user, session) removes that session's records; forget(user) all of the user's."""
    memory.add("session one note", user_id="ivy", session_id="s1")
    memory.add("session two note", user_id="ivy", session_id="s2")
    memory.add("user level note", user_id="ivy")
    memory.add("another user", user_id="jon")
    assert memory.forget(user_id="ivy", session_id="s1") == 1
    assert {r.content for r in memory.list_memories(user_id="ivy")} == {
        "session two note",
        "user level note",
    }
    assert memory.forget(user_id="ivy") == 2
    assert memory.list_memories(user_id="ivy") == []
    assert [r.content for r in memory.list_memories(user_id="jon")] == ["another user"]


def test_clear_empties_the_memory(memory: HierarchicalMemory) -> None:
    """clear() removes every record of every user."""
    memory.add_many(["a", "b", "c"], user_id="u1")
    memory.add("d", user_id="u2")
    memory.clear()
    assert memory.stats().total == 0


def test_stats_count_by_every_dimension(memory: HierarchicalMemory) -> None:
    """stats() counts by level, tier, category, zone and scope, overall and for one scope."""
    memory.add("a", user_id="u1", session_id="s1", category=Category.EVENT)
    memory.add("b", user_id="u1", level=Level.TRACE, zone="internal", importance=0.95)
    v = memory.add("c", user_id="u2", agent_id="bot")
    memory.supersede(v.id, "c2")
    stats = memory.stats()
    assert (stats.total, stats.current, stats.superseded) == (4, 3, 1)
    assert stats.by_level == {"episode": 3, "trace": 1}
    assert stats.by_tier == {"working": 3, "long_term": 1}
    assert stats.by_category == {"event": 1, "fact": 3}
    assert stats.by_zone == {"public": 3, "internal": 1}
    assert stats.by_user == {"u1": 2, "u2": 2}
    assert stats.by_session == {"s1": 1}
    assert stats.by_agent == {"bot": 2}
    assert stats.disk_bytes > 0
    assert memory.stats(user_id="u1").total == 2


def test_a_directory_has_one_writer(make_memory: MakeMemory) -> None:
    """Opening a directory already open raises StoreLocked; after close it opens again."""
    first = make_memory("shared")
    with pytest.raises(StoreLocked):
        make_memory("shared")
    first.close()
    assert make_memory("shared").stats().total == 0


def test_a_closed_memory_refuses_work(memory: HierarchicalMemory) -> None:
    """Every operation after close() raises MemoryClosed; close() is idempotent."""
    memory.close()
    memory.close()
    with pytest.raises(MemoryClosed):
        memory.add("late", user_id="u1")
    with pytest.raises(MemoryClosed):
        memory.search("late", user_id="u1")


def test_a_directory_written_by_another_model_is_refused(
    make_memory: MakeMemory, tmp_path: Path
) -> None:
    """A persist directory whose metadata names another embedding model raises StoreIncompatible."""
    make_memory("old").close()
    meta = tmp_path / "old" / "hivemem.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "embedding_model": "other/model"}))
    with pytest.raises(StoreIncompatible):
        make_memory("old")


def _run_child(
    code: str, settings: HivememSettings, path: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIVEMEM_DATA_DIR": str(settings.data_dir), "HF_HUB_OFFLINE": "1"}
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from hivemem.agents.memory import HierarchicalMemory
        from hivemem.pool.settings import HivememSettings
        memory = HierarchicalMemory({str(path)!r}, settings=HivememSettings())
        """
    ) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_new_process_sees_everything(settings: HivememSettings, tmp_path: Path) -> None:
    """Records, versions and tombstones written by one process are there for the next."""
    path = tmp_path / "persisted"
    wrote = _run_child(
        """
        a = memory.add("Kim speaks Korean and Spanish", user_id="kim")
        b = memory.supersede(a.id, "Kim speaks Korean, Spanish and Italian")
        c = memory.add("Kim's locker code is 4711", user_id="kim")
        memory.delete(c.id)
        memory.close()
        print(a.id, b.id, c.id)
        """,
        settings,
        path,
    )
    assert wrote.returncode == 0, wrote.stderr
    a_id, b_id, c_id = wrote.stdout.split()
    with HierarchicalMemory(path, settings=settings) as memory:
        assert [r.id for r in memory.get_history(a_id)] == [a_id, b_id]
        assert memory.search("which languages", user_id="kim")[0].record.id == b_id
        with pytest.raises(MemoryNotFound):
            memory.get(c_id)


@pytest.mark.slow
def test_an_acknowledged_add_survives_sigkill(settings: HivememSettings, tmp_path: Path) -> None:
    """A record whose add() returned is there after the process is killed without closing."""
    path = tmp_path / "killed"
    wrote = _run_child(
        """
        record = memory.add("Lee parked on level 3", user_id="lee")
        print(record.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        settings,
        path,
    )
    assert wrote.returncode == -signal.SIGKILL
    with HierarchicalMemory(path, settings=settings) as memory:
        assert memory.get(wrote.stdout.strip()).content == "Lee parked on level 3"


def test_a_long_batch_keeps_its_order_and_session_chain(memory: HierarchicalMemory) -> None:
    """A batch spanning several embedding chunks comes back in input order, fully stored, and
    each session memory follows the one before it."""
    texts = [f"turn {i}: we talked about topic {i % 7}" for i in range(600)]
    records = memory.add_many(texts, user_id="zoe", session_id="long", progress=False)
    assert [r.content for r in records] == texts
    assert memory.stats(user_id="zoe").total == 600
    assert records[0].follows is None
    assert all(b.follows == a.id for a, b in itertools.pairwise(records))
    stored = memory.get(records[417].id, with_vectors=True)
    assert stored.follows == records[416].id
    assert stored.vector is not None


@pytest.mark.parametrize(
    "metadata",
    [{f"k{n}": n for n in range(64)}, {"notes": "x" * 99_990}],
    ids=["64 keys", "100,000 characters"],
)
def test_sensitive_content_needs_room_in_the_metadata(
    memory: HierarchicalMemory, metadata: dict[str, object]
) -> None:
    """Metadata at a record's limit leaves no room for the ``sensitive`` key the classifier
    adds: the add raises InvalidInput (field metadata) and stores nothing. It stored a record
    past the limits before, which its own export could not import and receivers refused."""
    with pytest.raises(InvalidInput, match="no room") as caught:
        memory.add("mail jane.doe@example.com", user_id="u1", metadata=metadata)
    assert caught.value.field == "metadata"
    assert memory.stats().total == 0
    assert memory.add("no address here", user_id="u1", metadata=metadata).metadata == metadata


@pytest.mark.parametrize(
    ("fields", "detector"),
    [
        ({"metadata": {"card": "4111 1111 1111 1111"}}, "payment_card"),
        ({"metadata": {"card": 4111111111111111}}, "payment_card"),
        ({"metadata": {"ids": ["x", "SSN 536-22-1234"]}}, "ssn"),
        ({"entities": ["jane.doe@example.com"]}, "email"),
        # Metadata keys are stored in clear too (a filter names them).
        ({"metadata": {"AKIA" + "Q7X2M9KD4TZ8PL3B": 1}}, "api_token"),
        ({"metadata": {"ghp_" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2": True}}, "api_token"),
    ],
)
def test_sensitive_text_outside_the_content_lifts_the_record(
    memory: HierarchicalMemory, fields: dict[str, object], detector: str
) -> None:
    """Labels and metadata travel and are stored beside the sealed content, in clear: the
    classifier reads them too, and the record is lifted as if the content held them."""
    record = memory.add("see the attached", user_id="u1", **fields)
    assert record.zone > Zone.PUBLIC
    assert record.metadata["sensitive"] == [detector]

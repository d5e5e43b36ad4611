"""Sealed labels: tags, entities and metadata kept as keyed tokens, on real Qdrant Edge stores
and a real Redis.

The main check is differential: the same records in a plain store and in a sealed one (the
agents' SealedIndex, the workers' SecureZoneStore), and every filter gives the same records in
both, whether it names its user, several, or none.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.pool.adapters.edge_index import EdgeIndex
from hivemem.pool.adapters.edge_zone_store import EdgeZoneStore
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import InvalidFilter
from hivemem.pool.filters import And, Cond, Expr, Not, Or
from hivemem.pool.ports import NearestRequest
from hivemem.pool.records import MemoryRecord, Scope, SparseVector
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.content_seal import SEALED_PREFIX, ZONE_ONLY_PREFIX, ContentSeal
from hivemem.security.key_provider import LocalKeyProvider
from hivemem.security.keyring import ZoneKeyring
from hivemem.security.label_tokens import LabelTokens, is_token
from hivemem.security.sealed_index import SealedIndex
from hivemem.security.sealing import Sealer
from hivemem.security.zone_store import SecureZoneStore
from tests.waiting import holds, wait_for

MASTER = bytes(range(32))
DIM = 4
USERS = ("u1", "u2", "u3")
ZONES = (Zone.PUBLIC, Zone.INTERNAL)
#: The metadata key kept in clear (security.clear_metadata_keys).
CLEAR = "rank"


def records(count: int = 90) -> list[MemoryRecord]:
    """Records with every kind of label value a filter treats specially: numbers that are equal
    across types (2, 2.0, True and 1), booleans in lists of mixed kinds, integers beyond what a
    float holds exactly (2**53 + 1), lists, None, and keys some records lack."""
    chance = random.Random(7)
    made = []
    for n in range(count):
        metadata: dict[str, Any] = {
            "kind": chance.choice(["k1", "k2", "k3 with space"]),
            "n": chance.choice([1, 1.0, 2, 2.0, 3.5, True, False, -0.0, 0.0]),
            CLEAR: chance.randint(0, 5),
        }
        if n % 3:
            metadata["seen"] = chance.sample(["l1", "l2", 3, 4.0, True], k=n % 4)
        if n % 5 == 0:
            metadata["floats"] = [3.0, 0.5] if n % 2 else [3.5]
        if n % 7 == 0:
            metadata["big"] = [2**53, "x"] if n % 2 else 2**53 + 1
        if n % 11 == 0:
            metadata["huge"] = [2.0**53, "z"] if n % 2 else 2.0**53
        # Booleans in a list with other kinds of values, and in a list of booleans only.
        if n % 6 == 1:
            metadata["flags"] = [True, "x"] if n % 4 == 1 else [False, 2, "y"]
        elif n % 6 == 3:
            metadata["flags"] = [True, False]
        if n % 4 == 0:
            metadata["maybe"] = None
        elif n % 4 == 1:
            metadata["maybe"] = "set"
        made.append(
            MemoryRecord(
                content=f"record {n}",
                id=str(uuid.UUID(int=n + 1)),
                vector=[1.0, chance.random(), chance.random(), 0.5],
                sparse=SparseVector(indices=[n % 5, 10 + n % 3], values=[1.0, 0.5]),
                scope=Scope(user_id=USERS[n % 3]),
                zone=ZONES[n % 2],
                tags=chance.sample(["a", "b", "c", "d e"], k=chance.randint(0, 3)),
                entities=chance.sample(["x", "y"], k=chance.randint(0, 2)),
                metadata=metadata,
            )
        )
    return made


CONDITIONS: list[Expr] = [
    Cond(field="tags", op="contains", value="a"),
    Cond(field="tags", op="in", value=["a", "d e"]),
    Cond(field="tags", op="nin", value=["b"]),
    Cond(field="entities", op="in", value=["x"]),
    Cond(field="entities", op="contains", value="nobody"),
    Cond(field="metadata.kind", op="eq", value="k1"),
    Cond(field="metadata.kind", op="ne", value="k3 with space"),
    Cond(field="metadata.kind", op="in", value=["k1", "k2"]),
    Cond(field="metadata.kind", op="nin", value=["k1"]),
    Cond(field="metadata.n", op="eq", value=2),
    Cond(field="metadata.n", op="eq", value=2.0),
    Cond(field="metadata.n", op="eq", value=1),
    Cond(field="metadata.n", op="eq", value=0),
    Cond(field="metadata.n", op="ne", value=3.5),
    Cond(field="metadata.n", op="in", value=[1, 3.5]),
    Cond(field="metadata.n", op="eq", value=True),
    Cond(field="metadata.n", op="in", value=[False, 2]),
    Cond(field="metadata.seen", op="eq", value="l1"),
    Cond(field="metadata.seen", op="eq", value=4),
    Cond(field="metadata.seen", op="contains", value=3),
    Cond(field="metadata.seen", op="contains", value=4),
    Cond(field="metadata.floats", op="contains", value=3),
    Cond(field="metadata.floats", op="eq", value=3),
    Cond(field="metadata.big", op="contains", value=2**53 + 1),
    Cond(field="metadata.big", op="contains", value=2**53),
    Cond(field="metadata.big", op="eq", value=2**53 + 1),
    Cond(field="metadata.big", op="in", value=[2**53 + 1, "q"]),
    Cond(field="metadata.big", op="eq", value=2.0**53),
    Cond(field="metadata.huge", op="contains", value=2**53),
    Cond(field="metadata.huge", op="eq", value=2**53),
    Cond(field="metadata.flags", op="contains", value=True),
    Cond(field="metadata.flags", op="contains", value=1),
    Cond(field="metadata.flags", op="contains", value=False),
    Cond(field="metadata.flags", op="contains", value=0),
    Cond(field="metadata.flags", op="contains", value=2),
    Cond(field="metadata.flags", op="eq", value=True),
    Cond(field="metadata.flags", op="eq", value=1.0),
    Cond(field="metadata.flags", op="eq", value=0),
    Cond(field="metadata.flags", op="eq", value="x"),
    Cond(field="metadata.flags", op="in", value=[False, "z"]),
    Cond(field="metadata.flags", op="ne", value=True),
    Cond(field="metadata.flags", op="nin", value=[1]),
    Cond(field="metadata.seen", op="eq", value=None),
    Cond(field="metadata.seen", op="ne", value=None),
    Cond(field="metadata.maybe", op="eq", value=None),
    Cond(field="metadata.maybe", op="in", value=[None, "set"]),
    Cond(field="metadata.absent", op="ne", value="x"),
    Cond(field=f"metadata.{CLEAR}", op="gte", value=3),
    Or(
        any=[
            Cond(field="tags", op="contains", value="a"),
            Cond(field="metadata.kind", op="eq", value="k2"),
        ]
    ),
    Not(
        expr=And(
            all=[
                Cond(field="tags", op="contains", value="b"),
                Cond(field="entities", op="in", value=["y"]),
            ]
        )
    ),
]
#: How a filter reaches users: by naming one, several (one of them unknown), or none.
USER_PARTS: list[list[Expr]] = [
    [Cond(field="scope.user_id", op="eq", value="u1")],
    [Cond(field="scope.user_id", op="in", value=["u2", "u3", "nobody"])],
    [And(all=[Cond(field="zone", op="eq", value="internal")])],
    [],
]


@dataclass
class Pair:
    """The same records in a plain store and a sealed one, read through one interface."""

    scan: Callable[[Any, And], list[str]]
    count: Callable[[Any, And], int]
    plain: Any
    sealed: Any
    raw: Callable[[], list[MemoryRecord]]  # the sealed store's records as stored


@pytest.fixture
def keyring(redis_server: EmbeddedRedis) -> Iterator[ZoneKeyring]:
    client = redis.Redis.from_url(redis_server.url)
    yield ZoneKeyring(client, LocalKeyProvider(MASTER), namespace="t")
    client.close()


def sealed_index(path: Path, keyring: ZoneKeyring, clear: tuple[str, ...] = (CLEAR,)) -> Any:
    seal = ContentSeal(Sealer(keyring), LabelTokens(keyring, clear))
    return SealedIndex(EdgeIndex(path, dim=DIM), seal)


@pytest.fixture(params=["agent index", "zone store"])
def pair(request: pytest.FixtureRequest, tmp_path: Path, keyring: ZoneKeyring) -> Iterator[Pair]:
    written = records()
    if request.param == "agent index":
        plain, sealed = EdgeIndex(tmp_path / "plain", dim=DIM), sealed_index(tmp_path, keyring)
        plain.upsert(written)
        sealed.upsert(written)
        yield Pair(
            scan=lambda s, w: sorted(r.id for r in s.scan(w)),
            count=lambda s, w: s.count(w),
            plain=plain,
            sealed=sealed,
            raw=lambda: list(sealed.inner.scan(And(all=[]))),
        )
        plain.close()
        sealed.close()
    else:
        plain_store = EdgeZoneStore(tmp_path / "plain", dim=DIM)
        inner = EdgeZoneStore(tmp_path / "sealed", dim=DIM)
        store = SecureZoneStore(inner, keyring, clear_metadata_keys=[CLEAR])
        for zone in ZONES:
            mine = [r for r in written if r.zone is zone]
            plain_store.upsert(zone, mine)
            store.upsert(zone, mine)
        yield Pair(
            scan=lambda s, w: sorted(r.id for z in ZONES for r in s.scan(z, w)),
            count=lambda s, w: sum(s.count(z, w) for z in ZONES),
            plain=plain_store,
            sealed=store,
            raw=lambda: [r for z in ZONES for r in inner.scan(z, And(all=[]))],
        )
        plain_store.close()
        store.close()


def test_every_filter_finds_the_same_records_sealed_as_plain(pair: Pair) -> None:
    """Each condition, with each way of reaching users, selects the same records from the
    sealed store as from the plain one, and each condition but one (made to match nothing)
    selects some. Every filter that disagrees is named in the failure."""
    disagreeing: list[Expr] = []
    idle: list[Expr] = []
    for condition in CONDITIONS:
        found_any, agrees = False, True
        for users in USER_PARTS:
            where = And(all=[*users, condition])
            expected = pair.scan(pair.plain, where)
            found = pair.scan(pair.sealed, where)
            agrees = agrees and found == expected and pair.count(pair.sealed, where) == len(found)
            found_any = found_any or bool(expected)
        if not agrees:
            disagreeing.append(condition)
        empty = isinstance(condition, Cond) and condition.value == "nobody"
        if found_any == empty:
            idle.append(condition)
    assert not disagreeing, "disagree: " + ", ".join(map(repr, disagreeing))
    assert not idle, "select nothing: " + ", ".join(map(repr, idle))


def test_a_nearest_lookup_filters_by_tokens(tmp_path: Path, keyring: ZoneKeyring) -> None:
    """A vector lookup with a label filter (and an IDF corpus filter) returns the plain
    index's records and scores."""
    written = records()
    plain, sealed = EdgeIndex(tmp_path / "plain", dim=DIM), sealed_index(tmp_path, keyring)
    plain.upsert(written)
    sealed.upsert(written)
    where = And(
        all=[
            Cond(field="scope.user_id", op="eq", value="u2"),
            Cond(field="tags", op="in", value=["a", "b"]),
        ]
    )
    terms = SparseVector(indices=[1, 11], values=[1.0, 1.0])
    requests = [
        NearestRequest("dense", [1.0, 0.2, 0.3, 0.5], where, 100),
        NearestRequest("sparse", terms, where, 100, idf_corpus=where),
    ]
    for expected, found in zip(plain.nearest(requests), sealed.nearest(requests), strict=True):
        assert expected
        assert {(s.id, round(s.score, 5)) for s in found} == {
            (s.id, round(s.score, 5)) for s in expected
        }


def test_the_stores_hold_tokens_and_reads_give_the_labels_back(pair: Pair) -> None:
    """As stored: the content sealed, every tag, entity and sealed metadata value a token (the
    clear key as written, None and empty lists as they were); as read: the records written."""
    by_id = {r.id: r for r in records()}
    stored = pair.raw()
    assert len(stored) == len(by_id)
    for record in stored:
        original = by_id[record.id]
        assert record.content.startswith(SEALED_PREFIX)
        assert len(record.tags) == len(original.tags)
        assert all(is_token(v) for v in [*record.tags, *record.entities])
        assert record.metadata[CLEAR] == original.metadata[CLEAR]
        for key, value in original.metadata.items():
            if key == CLEAR or value is None or value == []:
                assert record.metadata[key] == value
                continue
            kept = record.metadata[key]
            assert all(is_token(v) for v in (kept if isinstance(kept, list) else [kept]))
    everything = And(all=[])
    read = pair.sealed.scan(everything) if isinstance(pair.sealed, SealedIndex) else []
    for zone in ZONES if not read else ():
        read.extend(pair.sealed.scan(zone, everything))
    assert {r.id: (r.content, r.tags, r.entities, r.metadata) for r in read} == {
        i: (r.content, r.tags, r.entities, r.metadata) for i, r in by_id.items()
    }


@pytest.mark.parametrize(
    "condition",
    [
        Cond(field="metadata.n", op="gt", value=1),
        Cond(field="metadata.kind", op="lte", value=2),
        Cond(field="metadata.kind", op="contains", value="with"),
        Not(expr=Cond(field="metadata.seen", op="contains", value="l")),
    ],
    ids=repr,
)
def test_order_and_substring_filters_on_sealed_metadata_are_refused(
    pair: Pair, condition: Expr
) -> None:
    """Tokens keep no order and no substrings: such a filter raises InvalidFilter, naming
    the setting that keeps a key in clear, and the plain store still answers it."""
    where = And(all=[Cond(field="scope.user_id", op="eq", value="u1"), condition])
    with pytest.raises(InvalidFilter, match="clear_metadata_keys"):
        pair.scan(pair.sealed, where)
    with pytest.raises(InvalidFilter, match="clear_metadata_keys"):
        pair.count(pair.sealed, where)
    pair.scan(pair.plain, where)


def test_counting_by_a_sealed_label_is_refused(pair: Pair) -> None:
    """A count by tags would count tokens: refused; by a clear field it works."""
    everything = And(all=[])
    if isinstance(pair.sealed, SealedIndex):
        with pytest.raises(InvalidFilter, match="sealed"):
            pair.sealed.facet("tags", everything)
        assert pair.sealed.facet("scope.user_id", everything) == dict.fromkeys(USERS, 30)
        return
    with pytest.raises(InvalidFilter, match="sealed"):
        pair.sealed.facet(Zone.PUBLIC, "entities", everything)
    with pytest.raises(InvalidFilter, match="sealed"):
        pair.sealed.archive_facet(Zone.PUBLIC, "tags", everything)
    assert sum(pair.sealed.facet(Zone.PUBLIC, "scope.user_id", everything).values()) == 45


def test_a_forgotten_users_tokens_match_nothing(pair: Pair, keyring: ZoneKeyring) -> None:
    """Once a user's secret is shredded, no label filter matches their records (nothing can
    compute their tokens), and a filter naming them raises no error."""
    assert keyring.shred("u1")
    tagged = Cond(field="tags", op="in", value=["a", "b", "c", "d e"])
    named = And(all=[Cond(field="scope.user_id", op="eq", value="u1"), tagged])
    assert pair.scan(pair.sealed, named) == []
    unnamed = And(all=[Cond(field="scope.user_id", op="in", value=["u1", "u2"]), tagged])
    assert pair.scan(pair.sealed, unnamed) == pair.scan(
        pair.plain, And(all=[Cond(field="scope.user_id", op="eq", value="u2"), tagged])
    )


def test_a_record_whose_key_is_gone_is_skipped_with_a_warning(
    tmp_path: Path, keyring: ZoneKeyring
) -> None:
    """An agent's read skips a record it cannot open: a forgotten user's by design (logged
    ``local_record_unreadable`` at info), one whose zone key is gone (retired by force, or lost
    with Redis's data) as a warning naming the zone, key and why, never the content."""
    index = sealed_index(tmp_path, keyring)
    written = records(6)
    index.upsert(written)
    old_key = keyring.active(Zone.INTERNAL).key_id
    keyring.rotate(Zone.INTERNAL)
    keyring.retire(Zone.INTERNAL, old_key)
    assert keyring.shred("u1")
    with structlog.testing.capture_logs() as logs:
        left = list(index.scan(And(all=[])))
    unreadable = [e for e in logs if e["event"] == "local_record_unreadable"]
    assert len(left) + len(unreadable) == len(written)
    internal = {r.id for r in written if r.zone is Zone.INTERNAL}
    for event in unreadable:
        expected = "warning" if event["record_id"] in internal else "info"
        assert event["log_level"] == expected, event
        assert "content" not in event
    assert {e["record_id"] for e in unreadable if e["log_level"] == "warning"} == internal
    index.close()


def test_a_users_records_of_an_earlier_secret_read_as_forgotten_once_it_writes_again(
    pair: Pair, keyring: ZoneKeyring
) -> None:
    """Shredded, then written for again (a new secret), a user's earlier records read as
    forgotten: scans skip them, label filters (tokens of the new secret, ``nin`` and ``ne``
    too) leave them out without an error, a re-seal after a rotation leaves them as they are,
    and removals still find them (tombstones, made without opening content). Before, each read
    that met one raised SealBroken."""
    user = Cond(field="scope.user_id", op="eq", value="u1")
    earlier = pair.scan(pair.sealed, And(all=[user]))
    assert earlier
    assert keyring.shred("u1")
    again = records(1)[0].model_copy(
        update={"id": str(uuid.uuid4()), "scope": Scope(user_id="u1"), "tags": ["a", "b"]}
    )
    if isinstance(pair.sealed, SealedIndex):
        pair.sealed.upsert([again])
    else:
        pair.sealed.upsert(again.zone, [again])
    for condition in [
        None,
        Cond(field="tags", op="contains", value="a"),
        Cond(field="tags", op="nin", value=["c"]),
        Cond(field="metadata.kind", op="ne", value="nobody"),
        Not(expr=Cond(field="tags", op="contains", value="b")),
    ]:
        where = And(all=[user] if condition is None else [user, condition])
        expected = [] if isinstance(condition, Not) else [again.id]
        assert pair.scan(pair.sealed, where) == expected, condition
    others = And(all=[Cond(field="scope.user_id", op="in", value=["u2", "u3"])])
    assert pair.scan(pair.sealed, others) == pair.scan(pair.plain, others)
    for zone in ZONES:
        keyring.rotate(zone)
    if isinstance(pair.sealed, SealedIndex):
        pair.sealed.reseal({zone: keyring.active(zone).key_id for zone in ZONES})
    else:
        for zone in ZONES:
            pair.sealed.reseal(zone, And(all=[]))
    assert pair.scan(pair.sealed, And(all=[user])) == [again.id]
    assert tombstone_ids(pair.sealed, And(all=[user])) == sorted([*earlier, again.id])


def tombstone_ids(store: Any, where: And) -> list[str]:
    """The ids of the tombstones a removal would write for ``where`` in an agent's index or
    (every zone of) the zone store."""
    if isinstance(store, SealedIndex):
        return sorted(t.id for t in store.tombstones(where))
    return sorted(t.id for zone in ZONES for t in store.tombstones(zone, where))


def test_records_labelled_in_clear_get_tokens_at_the_next_reseal(
    tmp_path: Path, keyring: ZoneKeyring
) -> None:
    """A record written before labels were sealed (its labels in clear in the payload) is
    stale for the re-seal, which gives it tokens; label filters then find it."""
    index = sealed_index(tmp_path, keyring)
    old = records(6)
    index.inner.upsert(old)  # as a store of the previous version kept them
    tagged = [r for r in old if "a" in r.tags]
    assert tagged
    where = And(
        all=[
            Cond(field="scope.user_id", op="eq", value=tagged[0].scope.user_id),
            Cond(field="tags", op="contains", value="a"),
        ]
    )
    assert list(index.scan(where)) == []
    active = {zone: keyring.active(zone).key_id for zone in ZONES}
    assert index.reseal(active) == len(old)
    assert [r.id for r in index.scan(where)] == [
        r.id for r in tagged if r.scope.user_id == tagged[0].scope.user_id
    ]
    assert index.reseal(active) == 0
    assert {r.id: r.metadata for r in index.scan(And(all=[]))} == {r.id: r.metadata for r in old}


def test_tokens_are_per_user_and_per_field(keyring: ZoneKeyring) -> None:
    """The same value gives another token for another user or another field, and equal
    numbers give one token."""
    tokens = LabelTokens(keyring)
    one, two = tokens.key("u1"), tokens.key("u2")
    assert one is not None
    assert two is not None
    assert tokens.token(one, "tags", "a") != tokens.token(two, "tags", "a")
    assert tokens.token(one, "tags", "a") != tokens.token(one, "entities", "a")
    assert tokens.token(one, "metadata.n", 2) == tokens.token(one, "metadata.n", 2.0)
    assert tokens.token(one, "metadata.n", True) == tokens.token(one, "metadata.n", 1)
    assert tokens.token(one, "metadata.n", "2") != tokens.token(one, "metadata.n", 2)
    assert is_token(tokens.token(one, "tags", "a"))


def test_agents_filter_their_own_and_received_records_by_labels(
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """Through the agents' API on a secure pool: a search and a listing filtered by tags and
    metadata find the writer's records and the copies another agent received, and an order
    filter on sealed metadata is refused with InvalidFilter."""
    pool = make_pool("p")
    writer = pool.register_agent("w", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE])
    reader = pool.register_agent("r", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE])
    assert writer.wait_connected()
    assert reader.wait_connected()
    kept = writer.memory.add(
        "the launch moved to friday",
        user_id="u1",
        zone=Zone.INTERNAL,
        tags=["launch"],
        metadata={"team": "apollo", "priority": 2},
    )
    writer.memory.add("lunch is at noon", user_id="u1", zone=Zone.INTERNAL, tags=["food"])
    assert writer.flush()
    assert wait_for(lambda: holds(reader, kept.id))
    by_tag = {"tags_any": ["launch"]}
    by_metadata = {"where": {"field": "metadata.priority", "op": "eq", "value": 2.0}}
    for agent in (writer, reader):
        for chosen in (by_tag, by_metadata):
            hits = agent.memory.search("when is the launch", user_id="u1", filter=chosen)
            assert [h.record.id for h in hits] == [kept.id]
            listed = agent.memory.list_memories(user_id="u1", filter=chosen)
            assert [(r.id, r.tags, r.metadata) for r in listed] == [
                (kept.id, ["launch"], {"team": "apollo", "priority": 2})
            ]
        with pytest.raises(InvalidFilter, match="clear_metadata_keys"):
            agent.memory.list_memories(
                user_id="u1",
                filter={"where": {"field": "metadata.priority", "op": "gt", "value": 1}},
            )


def test_a_changed_clear_metadata_keys_setting_takes_effect_at_the_next_reseal(
    tmp_path: Path, keyring: ZoneKeyring
) -> None:
    """Records keep the form they were written in when the setting changes (a filter then
    misses them); the next re-seal writes each key in its new form, in both directions."""
    written = records(12)
    plain = EdgeIndex(tmp_path / "plain", dim=DIM)
    plain.upsert(written)
    before = sealed_index(tmp_path / "before", keyring, clear=(CLEAR,))
    before.upsert(written)
    before.close()
    after = sealed_index(tmp_path / "before", keyring, clear=("n",))
    active = {zone: keyring.active(zone).key_id for zone in ZONES}
    conditions = [
        Cond(field="metadata.n", op="eq", value=2),
        Cond(field=f"metadata.{CLEAR}", op="eq", value=3),
    ]
    for user in USERS:
        for condition in conditions:
            where = And(all=[Cond(field="scope.user_id", op="eq", value=user), condition])
            assert [r.id for r in after.scan(where)] == [] or user == "nobody"
    assert after.reseal(active) == len(written)
    assert after.reseal(active) == 0
    for user in USERS:
        for condition in [*conditions, Cond(field="metadata.n", op="gte", value=2)]:
            where = And(all=[Cond(field="scope.user_id", op="eq", value=user), condition])
            assert sorted(r.id for r in after.scan(where)) == sorted(
                r.id for r in plain.scan(where)
            ), where
    after.close()
    plain.close()


def test_label_filters_need_no_redis_for_what_they_cannot_match(
    tmp_path: Path, keyring: ZoneKeyring, redis_server: EmbeddedRedis
) -> None:
    """With Redis away: a label filter for a user whose secret this process never read finds
    nothing instead of failing, one for a user it knows still works, and an "is unset"
    condition needs no key. A batch with both users seals the known one as usual and the
    other under the zone key alone, without tokens."""
    lasting = ZoneKeyring(keyring_client(redis_server), LocalKeyProvider(MASTER), namespace="t",
                          active_ttl_s=3600)  # fmt: skip
    seal = ContentSeal(Sealer(lasting), LabelTokens(lasting))
    index = SealedIndex(EdgeIndex(tmp_path / "i", dim=DIM), seal)
    known = records(3)[0].model_copy(update={"tags": ["a", "b"]})
    index.upsert([known])
    redis_server.stop()
    unknown = known.model_copy(update={"id": str(uuid.UUID(int=99)), "scope": Scope(user_id="u9")})
    again = known.model_copy(update={"id": str(uuid.UUID(int=98))})
    index.upsert([unknown, again])
    stored = {r.id: r for r in index.inner.scan(And(all=[]))}
    assert stored[unknown.id].content.startswith(ZONE_ONLY_PREFIX)
    assert stored[unknown.id].tags == []
    assert stored[again.id].content.startswith(SEALED_PREFIX)
    assert all(is_token(t) for t in stored[again.id].tags)
    both = sorted([known.id, again.id])
    for users, condition, expected in [
        (["u9"], Cond(field="tags", op="contains", value="a"), []),
        (["u9"], Cond(field="tags", op="nin", value=["a"]), []),  # none of theirs either way
        (["u9"], Not(expr=Cond(field="tags", op="contains", value="a")), []),
        (["u1"], Cond(field="tags", op="contains", value="a"), both),
        (["u1"], Cond(field="tags", op="nin", value=["a"]), []),
        (["a0", "u1"], Cond(field="tags", op="in", value=["b"]), both),  # a0 fails first
        (["a0", "u9", "u1"], Cond(field="tags", op="nin", value=["z"]), both),
    ]:
        where = And(all=[Cond(field="scope.user_id", op="in", value=users), condition])
        assert sorted(r.id for r in index.scan(where)) == expected, where
        assert index.count(where) == len(expected)
    unset = And(
        all=[
            Cond(field="scope.user_id", op="eq", value="u9"),
            Cond(field="metadata.absent", op="eq", value=None),
        ]
    )
    assert [r.id for r in index.scan(unset)] == [unknown.id]
    assert index.get([unknown.id])[0].tags == known.tags  # the labels are in its sealed content


def keyring_client(server: EmbeddedRedis) -> redis.Redis:
    """A client that fails at once when the server is gone."""
    return redis.Redis.from_url(server.url, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


def test_a_shred_here_reaches_a_filter_used_again_at_once(
    tmp_path: Path, keyring: ZoneKeyring
) -> None:
    """A search passes one filter object again and again. After this process shreds a user
    who then writes again (under a new secret), that same filter object finds the new record
    at once: a rewrite kept from before the shred is not used."""
    index = sealed_index(tmp_path, keyring)
    first = records(1)[0].model_copy(update={"tags": ["a"]})
    index.upsert([first])
    where = And(
        all=[
            Cond(field="scope.user_id", op="eq", value=first.scope.user_id),
            Cond(field="tags", op="contains", value="a"),
        ]
    )
    assert [r.id for r in index.scan(where)] == [first.id]
    assert keyring.shred(first.scope.user_id)
    later = first.model_copy(update={"id": str(uuid.UUID(int=77))})
    index.upsert([later])
    assert [r.id for r in index.scan(where)] == [later.id]  # the first no longer opens
    index.close()


def test_with_redis_away_one_lookup_fails_and_the_rest_use_held_secrets(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    """Held secrets older than the keyring's TTL, Redis gone (a host that does not answer
    costs a timeout per attempt): one rewrite for many users, and one batch sealed for them,
    each ask Redis once, not once per user; the held users' records are still found."""
    client = keyring_client(redis_server)
    short = ZoneKeyring(client, LocalKeyProvider(MASTER), namespace="t", active_ttl_s=0.05)
    index = SealedIndex(
        EdgeIndex(tmp_path / "i", dim=DIM), ContentSeal(Sealer(short), LabelTokens(short))
    )
    users = [f"held{n}" for n in range(6)]
    written = [
        records(1)[0].model_copy(
            update={"id": str(uuid.UUID(int=200 + n)), "scope": Scope(user_id=u), "tags": ["a"]}
        )
        for n, u in enumerate(users)
    ]
    index.upsert(written)
    redis_server.stop()
    time.sleep(0.6)  # older than the TTL, and than any earlier failure's pause
    asked: list[str] = []
    lookup = client.hget

    def counted(*args: Any, **kwargs: Any) -> Any:
        asked.append(str(args[0]))
        return lookup(*args, **kwargs)

    client.hget = counted  # type: ignore[method-assign]
    where = And(
        all=[
            Cond(field="scope.user_id", op="in", value=["a-new-user", *users]),
            Cond(field="tags", op="contains", value="a"),
        ]
    )
    assert sorted(r.id for r in index.scan(where)) == sorted(r.id for r in written)
    assert len(asked) == 1  # one failure, then what this process holds
    time.sleep(0.6)
    asked.clear()
    more = [r.model_copy(update={"id": str(uuid.UUID(int=300 + n))}) for n, r in enumerate(written)]
    newcomer = more[0].model_copy(
        update={"id": str(uuid.UUID(int=400)), "scope": Scope(user_id="a-new-user")}
    )
    index.upsert([*more, newcomer])
    assert len(asked) == 1
    stored = {r.id: r for r in index.inner.scan(And(all=[]))}
    assert all(stored[r.id].content.startswith(SEALED_PREFIX) for r in more)
    assert stored[str(uuid.UUID(int=400))].content.startswith(ZONE_ONLY_PREFIX)
    index.close()

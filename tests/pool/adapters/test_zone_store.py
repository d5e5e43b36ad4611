"""Contract of the ZoneStore port (hivemem.pool.ports.ZoneStore), run against every adapter.

``edge``: EdgeZoneStore on Qdrant Edge shards under a temporary directory. ``qdrant``:
QdrantZoneStore on qdrant-client's local engine (``QdrantClient(location=":memory:")``), the same
client code paths as against a server, with Qdrant's filter semantics. Vectors are hand-made
(4 dimensions), so no embedder is needed.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from hivemem.pool.adapters.edge_zone_store import EdgeZoneStore
from hivemem.pool.adapters.qdrant_zone_store import QdrantZoneStore
from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.errors import (
    InvalidFilter,
    InvalidIdentifier,
    InvalidInput,
    MemoryClosed,
    MemoryNotFound,
    StoreIncompatible,
    StoreUnavailable,
)
from hivemem.pool.filters import And, Cond, Expr, MemoryFilter, Not, Or, TimeRange
from hivemem.pool.ids import new_record_id
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord, Scope, SparseVector, Tombstone

pytestmark = pytest.mark.filterwarnings(
    # qdrant-client's local engine accepts payload indexes and says it ignores them.
    "ignore:Payload indexes have no effect in the local Qdrant:UserWarning"
)

DIM = 4
T0 = datetime(2026, 1, 1, tzinfo=UTC)
D, H = timedelta(days=1), timedelta(hours=1)
EVERYTHING = And(all=[])
PUBLIC = Zone.PUBLIC
ADAPTERS = ["edge", "qdrant"]
INJECTIONS = [
    "x' OR 1=1",
    "../../etc",
    "*",
    "",
    '{"$ne": 1}',
    "00000000-0000-0000-0000-000000000000' OR '1'='1",
    "0000000000000000000000000000000g",
]


Adapter = EdgeZoneStore | QdrantZoneStore


def open_store(kind: str, root: Path) -> Adapter:
    """An empty store of adapter ``kind`` (the Edge one under ``root``)."""
    store: Adapter = (
        EdgeZoneStore(root, dim=DIM, idle_close_s=0)
        if kind == "edge"
        else QdrantZoneStore(QdrantClient(location=":memory:"), dim=DIM)
    )
    port: ZoneStore = store  # both adapters implement the port (mypy checks this line)
    assert port is store
    return store


def unit(*weights: float) -> list[float]:
    """A unit vector of DIM dimensions whose leading components are proportional to weights."""
    vector = np.zeros(DIM)
    vector[: len(weights)] = weights
    return [float(x) for x in vector / np.linalg.norm(vector)]


def axis(i: int) -> list[float]:
    """The i-th basis vector: exact in float32, so it survives storage bit for bit."""
    return unit(*([0.0] * i), 1.0)


def make(content: str = "a memory", **fields: Any) -> MemoryRecord:
    fields.setdefault("scope", Scope(user_id="u1"))
    return MemoryRecord(content=content, **fields)


def tombstone_of(record: MemoryRecord) -> Tombstone:
    return Tombstone.of(record, T0)


def typed(value: object) -> object:
    """``value`` with the type of every scalar attached: 1, 1.0 and True compare unequal."""
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


def full_record() -> MemoryRecord:
    """A record with most fields set, datetimes to the microsecond, an inexact vector."""
    other = new_record_id()
    return make(
        "Alice prefers green tea ☕ — «always»",
        vector=unit(0.3, 0.5, 0.7, 0.1),
        sparse=SparseVector(indices=[2, 7, 1000], values=[0.5, 1.25, 3.0]),
        level=Level.CATEGORY,
        scope=Scope(user_id="alice", session_id="s-1", agent_id="agent@x", run_id="run:1"),
        tier=Tier.LONG_TERM,
        importance=0.8125,
        access_count=7,
        last_accessed_at=T0 + 3 * D + timedelta(microseconds=1),
        tags=["drinks", "a b"],
        entities=["person:alice"],
        metadata={
            "flag": True,
            "bools": [True, False],
            "mixed": [True, 1, "x", 0.0, False, 0],
            "n": 3,
            "f": 1.0,
            "s": "x",
            "none": None,
        },
        sources=[other],
        follows=other,
        received_from="agent-7",
        valid_from=T0 + timedelta(microseconds=123_456),
        valid_until=T0 + 30 * D,
        recorded_at=T0 + H + timedelta(microseconds=7),
    )


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(params=ADAPTERS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Adapter]:
    """A fresh, empty zone store of each adapter, closed at teardown."""
    opened = open_store(request.param, tmp_path)
    yield opened
    opened.close()


@pytest.fixture(scope="module", params=ADAPTERS)
def scratch(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Adapter]:
    """One store per adapter shared by the tests that only read back, by id, the records they
    wrote themselves (opening Edge shards takes ~0.2 s each, so they need no fresh store)."""
    opened = open_store(request.param, tmp_path_factory.mktemp(f"scratch-{request.param}"))
    yield opened
    opened.close()


# -- writes and reads by id ---------------------------------------------------------------------


def test_upsert_is_idempotent_and_latest_wins(store: Adapter) -> None:
    """Upserting the same id twice keeps one record, the one written last."""
    first = make("old", tags=["t1"])
    store.upsert(PUBLIC, [first])
    store.upsert(PUBLIC, [first])
    second = make("new", id=first.id, tags=["t2"])
    store.upsert(PUBLIC, [second])
    assert store.get(PUBLIC, [first.id]) == [second]
    assert store.count(PUBLIC, EVERYTHING) == 1
    assert store.facet(PUBLIC, "tags", EVERYTHING) == {"t2": 1}


def test_get_keeps_request_order_and_skips_missing(scratch: Adapter) -> None:
    """get() returns the live records among ids in the order asked, skipping unknown ids and
    returning a repeated (or upper-case) id once."""
    a, b, c = (make(f"r{i}") for i in range(3))
    scratch.upsert(PUBLIC, [a, b, c])
    missing = new_record_id()
    got = scratch.get(PUBLIC, [c.id, missing, a.id, b.id, c.id.upper()])
    assert [r.content for r in got] == ["r2", "r0", "r1"]
    assert scratch.get(PUBLIC, [missing]) == []
    assert scratch.get(PUBLIC, []) == []


def test_get_round_trips_every_field(scratch: Adapter) -> None:
    """A record read back with vectors equals the one written, field by field and type by type;
    without with_vectors it lacks only the vectors."""
    record = full_record()
    scratch.upsert(PUBLIC, [record])
    [got] = scratch.get(PUBLIC, [record.id], with_vectors=True)
    assert typed(got.model_dump(exclude={"vector"})) == typed(record.model_dump(exclude={"vector"}))
    assert got.vector == pytest.approx(record.vector, abs=1e-6)  # float32 in the index
    [plain] = scratch.get(PUBLIC, [record.id])
    assert (plain.vector, plain.sparse) == (None, None)


def test_dense_rows_replace_the_records_vectors(scratch: Adapter) -> None:
    """The rows of ``dense`` are stored instead of the records' own vectors."""
    a, b = make("a", vector=axis(0)), make("b", vector=axis(0))
    scratch.upsert(PUBLIC, [a, b], np.array([axis(1), axis(2)], dtype=np.float32))
    got = scratch.get(PUBLIC, [a.id, b.id], with_vectors=True)
    assert [r.vector for r in got] == [axis(1), axis(2)]


def test_wrong_dimension_raises_invalid_input(store: Adapter) -> None:
    """A vector or a dense matrix of the wrong shape raises InvalidInput; nothing is written."""
    record = make(vector=[1.0, 0.0])
    with pytest.raises(InvalidInput):
        store.upsert(PUBLIC, [record])
    with pytest.raises(InvalidInput):
        store.upsert(PUBLIC, [make()], np.zeros((1, DIM + 1), dtype=np.float32))
    assert store.count(PUBLIC, EVERYTHING) == 0


def test_empty_writes_are_no_ops(store: Adapter) -> None:
    """Writes and removals of nothing change nothing."""
    store.upsert(PUBLIC, [])
    store.put_tombstones(PUBLIC, [])
    store.update_fields(PUBLIC, {})
    store.remove(PUBLIC, [])
    store.archive_put(PUBLIC, [])
    store.archive_remove(PUBLIC, [])
    assert store.count(PUBLIC, EVERYTHING) == 0
    assert store.archive_ids(PUBLIC, EVERYTHING) == []


# -- tombstones and removal ---------------------------------------------------------------------


def test_tombstones_hide_records_everywhere(store: Adapter) -> None:
    """A tombstoned record leaves get, scan, ids, count, facet and the archive; presence says
    True for it, False for a live record, and nothing for an unknown id."""
    kept = make("kept", vector=axis(0), tags=["t"])
    gone = make("gone", vector=axis(1), tags=["t"])
    store.upsert(PUBLIC, [kept, gone])
    store.archive_put(PUBLIC, [gone])
    store.put_tombstones(PUBLIC, [tombstone_of(gone)])

    assert store.get(PUBLIC, [gone.id, kept.id], with_vectors=True) == [kept]
    assert [r.id for r in store.scan(PUBLIC, EVERYTHING)] == [kept.id]
    assert store.ids(PUBLIC, EVERYTHING) == [kept.id]
    assert store.count(PUBLIC, EVERYTHING) == 1
    assert store.facet(PUBLIC, "tags", EVERYTHING) == {"t": 1}
    assert store.archive_get(PUBLIC, [gone.id]) == []
    assert store.presence(PUBLIC, [kept.id, gone.id, new_record_id()]) == {
        kept.id: False,
        gone.id: True,
    }


def test_tombstones_never_match_negative_filters(store: Adapter) -> None:
    """ne/nin/eq None match records lacking a field, never a tombstone (which lacks most)."""
    kept, gone = make("kept"), make("gone")
    store.upsert(PUBLIC, [kept, gone])
    store.put_tombstones(PUBLIC, [tombstone_of(gone)])
    for cond in (
        Cond(field="tags", op="nin", value=["x"]),
        Cond(field="metadata.k", op="ne", value=1),
        Cond(field="valid_until", op="eq", value=None),
    ):
        assert store.ids(PUBLIC, And(all=[cond])) == [kept.id]


def test_remove_deletes_records_and_tombstones(scratch: Adapter) -> None:
    """remove() physically deletes records and tombstones; unknown ids are ignored."""
    live, dead, other = make("live"), make("dead"), make("other")
    scratch.upsert(PUBLIC, [live, dead, other])
    scratch.put_tombstones(PUBLIC, [tombstone_of(dead)])
    scratch.remove(PUBLIC, [live.id, dead.id, new_record_id()])
    assert scratch.get(PUBLIC, [live.id, dead.id, other.id]) == [other]
    assert scratch.presence(PUBLIC, [live.id, dead.id, other.id]) == {other.id: False}


# -- bookkeeping --------------------------------------------------------------------------------


def test_update_fields_changes_bookkeeping(store: Adapter) -> None:
    """update_fields sets bookkeeping fields, seen by get and by filters; the rest is kept."""
    record, untouched = make("changed", vector=axis(0), tags=["keep"]), make("other")
    store.upsert(PUBLIC, [record, untouched])
    changes: dict[str, object] = {
        "tier": Tier.ARCHIVE,
        "importance": 0.125,
        "access_count": 9,
        "last_accessed_at": T0 + timedelta(microseconds=5),
        "superseded_at": T0 + D,
        "superseded_by": new_record_id(),
        "valid_until": datetime(2999, 1, 1, tzinfo=UTC),
        "consolidated_into": [new_record_id()],
    }
    store.update_fields(PUBLIC, {record.id: changes})
    [got] = store.get(PUBLIC, [record.id], with_vectors=True)
    assert typed(got.model_dump()) == typed(record.model_copy(update=changes).model_dump())
    assert store.get(PUBLIC, [untouched.id]) == [untouched]
    assert store.ids(PUBLIC, And(all=[Cond(field="tier", op="eq", value="archive")])) == [record.id]
    assert store.facet(PUBLIC, "tier", EVERYTHING) == {"archive": 1, "working": 1}


def test_update_fields_with_a_missing_id_changes_nothing(scratch: Adapter) -> None:
    """An unknown or tombstoned id raises MemoryNotFound, and no record of the call changes."""
    live, dead = make("live"), make("dead")
    scratch.upsert(PUBLIC, [live, dead])
    scratch.put_tombstones(PUBLIC, [tombstone_of(dead)])
    for absent in (new_record_id(), dead.id):
        with pytest.raises(MemoryNotFound) as caught:
            scratch.update_fields(
                PUBLIC, {live.id: {"access_count": 5}, absent: {"access_count": 5}}
            )
        assert caught.value.record_id == absent
    assert scratch.get(PUBLIC, [live.id]) == [live]
    assert scratch.presence(PUBLIC, [dead.id]) == {dead.id: True}


@pytest.mark.parametrize(
    "change",
    [{"content": "x"}, {"kind": "record"}, {"importance": 2.0}, {"tier": "bogus"}],
    ids=["content", "kind", "importance", "tier"],
)
def test_update_fields_refuses_bad_changes(scratch: Adapter, change: dict[str, object]) -> None:
    """A non-bookkeeping field or a bad value raises InvalidInput; nothing changes."""
    first, second = make("first"), make("second")
    scratch.upsert(PUBLIC, [first, second])
    with pytest.raises(InvalidInput):
        scratch.update_fields(PUBLIC, {first.id: {"access_count": 1}, second.id: change})
    assert scratch.get(PUBLIC, [first.id, second.id]) == [first, second]


def resealed(record: MemoryRecord, content: str) -> MemoryRecord:
    """``record`` with other content and labels (as a re-seal makes them: tokens), fewer
    kinds of metadata than before (no booleans, no lists)."""
    change = {"content": content, "tags": ["tok-1"], "entities": [], "metadata": {"s": "tok-2"}}
    return record.model_copy(update=change)


def test_replace_content_writes_records_still_as_read(store: Adapter) -> None:
    """replace_content gives a record the new content and labels, filters and facets included,
    and keeps its vectors and its other fields, those changed since the read too; a record
    deleted, removed or given other content since the read is left as it is."""
    read = full_record()
    linked, deleted, removed, changed = (make(f"r{i}", tags=["old"]) for i in range(4))
    store.upsert(PUBLIC, [read, linked, deleted, removed, changed])
    link = {"superseded_at": T0 + D, "superseded_by": new_record_id(), "tier": Tier.ARCHIVE}
    store.update_fields(PUBLIC, {linked.id: link})
    store.put_tombstones(PUBLIC, [tombstone_of(deleted)])
    store.remove(PUBLIC, [removed.id])
    other = changed.model_copy(update={"content": "written meanwhile"})
    store.upsert(PUBLIC, [other])

    pairs = [
        (r, resealed(r, f"new {r.content}")) for r in (read, linked, deleted, removed, changed)
    ]
    assert store.replace_content(PUBLIC, pairs) == [read.id, linked.id]

    [got] = store.get(PUBLIC, [read.id], with_vectors=True)
    expected = pairs[0][1]
    assert typed(got.model_dump(exclude={"vector"})) == typed(
        expected.model_dump(exclude={"vector"})
    )
    assert got.vector == pytest.approx(read.vector, abs=1e-6)
    [now_linked] = store.get(PUBLIC, [linked.id])
    assert now_linked == pairs[1][1].model_copy(update=link)
    assert store.presence(PUBLIC, [deleted.id, removed.id]) == {deleted.id: True}
    assert store.get(PUBLIC, [changed.id]) == [other]
    token = And(all=[Cond(field="metadata.s", op="eq", value="tok-2")])
    assert sorted(store.ids(PUBLIC, token)) == sorted([read.id, linked.id])
    assert store.facet(PUBLIC, "tags", EVERYTHING) == {"tok-1": 2, "old": 1}


def test_replace_content_refuses_a_pair_of_two_records(store: Adapter) -> None:
    """A pair whose records have two ids raises InvalidInput, and nothing is written."""
    first, second = make("first"), make("second")
    store.upsert(PUBLIC, [first, second])
    pairs = [(first, resealed(first, "x")), (second, resealed(first, "y"))]
    with pytest.raises(InvalidInput):
        store.replace_content(PUBLIC, pairs)
    with pytest.raises(InvalidInput):
        store.archive_replace(PUBLIC, pairs)
    assert store.get(PUBLIC, [first.id, second.id]) == [first, second]
    assert store.replace_content(PUBLIC, []) == store.archive_replace(PUBLIC, []) == []


# -- scans, counts, facets and filters ----------------------------------------------------------


def test_scan_and_ids_page_through_many_records_in_id_order(store: Adapter) -> None:
    """scan and ids return every matching record once, in id order, across pages."""
    records = [make(f"r{i}", importance=(i % 2) / 2) for i in range(1_100)]
    store.upsert(PUBLIC, records)
    scanned = [r.id for r in store.scan(PUBLIC, EVERYTHING)]
    assert scanned == sorted(r.id for r in records)
    half = And(all=[Cond(field="importance", op="gt", value=0.25)])
    assert store.ids(PUBLIC, half) == sorted(r.id for r in records if r.importance > 0.25)


def test_scan_returns_vectors_only_when_asked(store: Adapter) -> None:
    """scan() leaves vectors out unless with_vectors is set."""
    record = make(vector=axis(2), sparse=SparseVector(indices=[4], values=[2.0]))
    store.upsert(PUBLIC, [record])
    [plain] = store.scan(PUBLIC, EVERYTHING)
    [full] = store.scan(PUBLIC, EVERYTHING, with_vectors=True)
    assert (plain.vector, plain.sparse) == (None, None)
    assert (full.vector, full.sparse) == (record.vector, record.sparse)


@pytest.mark.parametrize("field", ["importance", "content", "recorded_at", "metadata.k"])
def test_facet_refuses_non_keyword_fields(store: Adapter, field: str) -> None:
    """facet() on a field that is not a keyword field raises InvalidFilter."""
    with pytest.raises(InvalidFilter):
        store.facet(PUBLIC, field, EVERYTHING)


def corpus_records() -> list[MemoryRecord]:
    """Five live records that differ on the fields the filter rows read, some fields unset."""
    rows: list[dict[str, Any]] = [
        {"level": "episode", "importance": 0.1, "scope": {"user_id": "u1", "session_id": "s1",
         "agent_id": "a1"}, "tags": ["alpha"], "valid_until": T0 + 10 * D, "recorded_at": T0,
         "metadata": {"lang": "english text", "n": 1, "flag": True, "labels": ["x", "y"],
                      "flags": [True, "x"], "big": [2.0**53, "y"]}},
        {"level": "trace", "importance": 0.4, "scope": {"user_id": "u1", "session_id": "s1"},
         "tags": ["beta"], "recorded_at": T0 + H, "last_accessed_at": T0 + 2 * D,
         "metadata": {"lang": "French", "n": 2, "flag": False, "flags": [False, 2],
                      "big": [2**53 + 1, "z"]}},
        {"level": "category", "importance": 0.6, "scope": {"user_id": "u1", "session_id": "s2"},
         "tags": ["alpha", "beta"], "valid_until": T0 + 3 * D, "recorded_at": T0 + 2 * H,
         "metadata": {"n": 3.5, "labels": ["y"], "flags": [True, False]}},
        {"level": "episode", "importance": 0.9, "scope": {"user_id": "u2"}, "tags": [],
         "recorded_at": T0 + 3 * H, "last_accessed_at": T0 + D, "metadata": {"lang": "German"}},
        {"level": "domain", "importance": 1.0, "scope": {"user_id": "u2", "session_id": "s1",
         "run_id": "r1"}, "recorded_at": T0 + 4 * H},
    ]  # fmt: skip
    return [make(f"r{i}", vector=axis(i % DIM), valid_from=T0, **r) for i, r in enumerate(rows)]


@pytest.fixture(scope="module", params=ADAPTERS)
def corpus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Adapter, list[MemoryRecord]]]:
    """One store per adapter holding the corpus live and archived, plus a tombstoned record that
    matches most filters (and must never be returned)."""
    opened = open_store(request.param, tmp_path_factory.mktemp(f"corpus-{request.param}"))
    live = corpus_records()
    dead = make("dead", tags=["alpha"], metadata={"lang": "French"}, recorded_at=T0 + H)
    opened.upsert(PUBLIC, [*live, dead])
    opened.put_tombstones(PUBLIC, [tombstone_of(dead)])
    opened.archive_put(PUBLIC, live)
    yield opened, live
    opened.close()


def c(field: str, op: str, value: object = None) -> Cond:
    return Cond.model_validate({"field": field, "op": op, "value": value})


FILTER_ROWS: list[tuple[str, Expr | MemoryFilter, set[str]]] = [
    ("everything", EVERYTHING, {"r0", "r1", "r2", "r3", "r4"}),
    ("user-eq", c("scope.user_id", "eq", "u1"), {"r0", "r1", "r2"}),
    ("session-eq-none", c("scope.session_id", "eq", None), {"r3"}),
    ("session-ne-matches-unset", c("scope.session_id", "ne", "s1"), {"r2", "r3"}),
    ("agent-in", c("scope.agent_id", "in", ["a1", "a9"]), {"r0"}),
    ("level-in", c("level", "in", [Level.EPISODE, "domain"]), {"r0", "r3", "r4"}),
    ("level-nin", c("level", "nin", ["episode"]), {"r1", "r2", "r4"}),
    ("importance-gt", c("importance", "gt", 0.6), {"r3", "r4"}),
    ("importance-range", MemoryFilter(importance_min=0.4, importance_max=0.9), {"r1", "r2", "r3"}),
    (
        "recorded-range",
        MemoryFilter(times={"recorded_at": TimeRange(after=T0 + H, before=T0 + 3 * H)}),
        {"r1", "r2"},
    ),
    ("valid-until-eq-none", c("valid_until", "eq", None), {"r1", "r3", "r4"}),
    ("valid-until-ne-none", c("valid_until", "ne", None), {"r0", "r2"}),
    ("valid-until-eq", c("valid_until", "eq", T0 + 3 * D), {"r2"}),
    ("last-accessed-lt", c("last_accessed_at", "lt", T0 + 2 * D), {"r3"}),
    ("tags-contains", c("tags", "contains", "alpha"), {"r0", "r2"}),
    ("tags-nin", c("tags", "nin", ["alpha"]), {"r1", "r3", "r4"}),
    ("meta-eq", c("metadata.lang", "eq", "French"), {"r1"}),
    ("meta-ne-matches-missing", c("metadata.lang", "ne", "French"), {"r0", "r2", "r3", "r4"}),
    ("meta-substring", c("metadata.lang", "contains", "glish"), {"r0"}),
    ("meta-list-contains", c("metadata.labels", "contains", "y"), {"r0", "r2"}),
    ("meta-list-eq-any-element", c("metadata.labels", "eq", "x"), {"r0"}),
    ("meta-num-gte", c("metadata.n", "gte", 2), {"r1", "r2"}),
    ("meta-num-in", c("metadata.n", "in", [1, 3.5]), {"r0", "r2"}),
    ("meta-bool-true", c("metadata.flag", "eq", True), {"r0"}),
    ("meta-bool-as-int", c("metadata.flag", "eq", 0), {"r1"}),
    ("meta-bool-list-contains-true", c("metadata.flags", "contains", True), {"r0", "r2"}),
    ("meta-bool-list-contains-one", c("metadata.flags", "contains", 1), {"r0", "r2"}),
    ("meta-bool-list-eq-true", c("metadata.flags", "eq", True), {"r0", "r2"}),
    ("meta-bool-list-eq-zero", c("metadata.flags", "eq", 0.0), {"r1", "r2"}),
    ("meta-bool-list-in", c("metadata.flags", "in", [False, "q"]), {"r1", "r2"}),
    ("meta-bool-list-nin", c("metadata.flags", "nin", [True]), {"r1", "r3", "r4"}),
    ("meta-bool-list-string", c("metadata.flags", "contains", "x"), {"r0"}),
    ("meta-big-contains-float", c("metadata.big", "contains", 2**53), {"r0"}),
    ("meta-big-eq-exact", c("metadata.big", "eq", 2**53 + 1), {"r1"}),
    ("meta-big-in-exact", c("metadata.big", "in", [2**53 + 1]), {"r1"}),
    ("meta-big-eq-float", c("metadata.big", "eq", 2.0**53), {"r0"}),
    ("or", Or(any=[c("level", "eq", "trace"), c("tags", "contains", "alpha")]), {"r0", "r1", "r2"}),
    ("not", Not(expr=c("scope.user_id", "eq", "u1")), {"r3", "r4"}),
    (
        "and-not",
        And(all=[c("scope.user_id", "eq", "u2"), Not(expr=c("scope.session_id", "eq", None))]),
        {"r4"},
    ),
]


def as_where(expr: Expr | MemoryFilter) -> And:
    if isinstance(expr, MemoryFilter):
        return expr.to_expr()
    return expr if isinstance(expr, And) else And(all=[expr])


@pytest.mark.parametrize(
    ("expr", "expected"), [pytest.param(e, x, id=name) for name, e, x in FILTER_ROWS]
)
def test_filters_select_the_documented_records(
    corpus: tuple[Adapter, list[MemoryRecord]], expr: Expr | MemoryFilter, expected: set[str]
) -> None:
    """scan, ids, count and facet agree on exactly the live records a filter selects."""
    store, live = corpus
    where = as_where(expr)
    by_id = {r.id: r for r in live}
    assert {r.content for r in store.scan(PUBLIC, where)} == expected
    assert {by_id[i].content for i in store.ids(PUBLIC, where)} == expected
    assert store.count(PUBLIC, where) == len(expected)
    levels = Counter(r.level.value for r in live if r.content in expected)
    assert store.facet(PUBLIC, "level", where) == dict(levels)


def test_facet_counts_list_values_per_record(
    corpus: tuple[Adapter, list[MemoryRecord]],
) -> None:
    """facet() on a list field counts each value once per matching record."""
    store, _ = corpus
    assert store.facet(PUBLIC, "tags", EVERYTHING) == {"alpha": 2, "beta": 2}
    first_user = And(all=[c("scope.user_id", "eq", "u1")])
    assert store.facet(PUBLIC, "scope.session_id", first_user) == {"s1": 2, "s2": 1}


def test_filters_recheck_fields_and_scope_ids(corpus: tuple[Adapter, list[MemoryRecord]]) -> None:
    """A condition that skipped validation (model_construct) is still refused: an unknown field
    with InvalidFilter, an injected scope id with InvalidIdentifier."""
    store, _ = corpus
    field = Cond.model_construct(field="metadata.a.b", op="eq", value="x")
    scope = Cond.model_construct(field="scope.user_id", op="eq", value="u1' OR 1=1")
    with pytest.raises(InvalidFilter):
        store.count(PUBLIC, And.model_construct(all=[field]))
    with pytest.raises(InvalidIdentifier):
        store.ids(PUBLIC, And.model_construct(all=[scope]))


def test_a_filter_with_too_many_big_numbers_is_refused(
    corpus: tuple[Adapter, list[MemoryRecord]],
) -> None:
    """Each number beyond 2**53 that is a float excludes the integers rounding to it (1,024 near
    2**62): four such numbers in one filter run, five are refused with InvalidFilter however
    they are spread over the tree, and nothing runs; many smaller ones still run."""
    store, _ = corpus
    big = [2**62 + 4096 * i for i in range(5)]
    assert store.count(PUBLIC, as_where(c("metadata.n", "in", big[:4]))) == 0
    for where in (
        c("metadata.n", "in", big),
        Or(any=[c("metadata.n", "eq", v) for v in big]),
        And(all=[c("metadata.n", "nin", big[:3]), Not(expr=c("metadata.m", "in", big[3:]))]),
    ):
        with pytest.raises(InvalidFilter, match="beyond 2\\*\\*53"):
            store.count(PUBLIC, as_where(where))
    small = [2**54 + 4 * i for i in range(1000)]  # 1 integer to exclude each
    assert store.count(PUBLIC, as_where(c("metadata.n", "in", small))) == 0


# -- the archive --------------------------------------------------------------------------------


def test_archive_round_trips_records_exactly(store: Adapter) -> None:
    """archive_get returns archived records with their vectors and content exactly, in the
    order asked, skipping unknown ids; the live collection does not see them."""
    first, second = full_record(), make("second", vector=unit(0.1, 0.2, 0.3, 0.4))
    store.archive_put(PUBLIC, [first, second])
    got = store.archive_get(PUBLIC, [second.id, new_record_id(), first.id])
    assert typed([r.model_dump() for r in got]) == typed([second.model_dump(), first.model_dump()])
    assert store.get(PUBLIC, [first.id]) == []
    assert store.count(PUBLIC, EVERYTHING) == 0


def test_tombstones_cover_live_and_archived_records_once(store: Adapter) -> None:
    """tombstones: one per matching record, live or archived (a record in both counts once),
    with the record's identity and scope; other users' records are left out."""
    live, both, archived = make("live"), make("both"), make("archived")
    other = make("other user", scope=Scope(user_id="u2"))
    store.upsert(PUBLIC, [live, both, other])
    store.archive_put(PUBLIC, [both, archived])
    where = And(all=[Cond(field="scope.user_id", op="eq", value="u1")])
    found = {t.id: t for t in store.tombstones(PUBLIC, where)}
    assert sorted(found) == sorted(r.id for r in (live, both, archived))
    assert len(store.tombstones(PUBLIC, where)) == 3
    assert all(t.scope.user_id == "u1" and t.zone == PUBLIC for t in found.values())


def test_archive_put_is_idempotent(store: Adapter) -> None:
    """Archiving a record twice keeps one copy, the one written last."""
    record = make("old")
    store.archive_put(PUBLIC, [record])
    newer = record.model_copy(update={"tier": Tier.ARCHIVE})
    store.archive_put(PUBLIC, [newer])
    assert store.archive_ids(PUBLIC, EVERYTHING) == [record.id]
    assert store.archive_get(PUBLIC, [record.id]) == [newer]


def test_archive_ids_apply_filters(corpus: tuple[Adapter, list[MemoryRecord]]) -> None:
    """archive_ids returns the archived records matching the filter, in id order."""
    store, live = corpus
    assert store.archive_ids(PUBLIC, EVERYTHING) == sorted(r.id for r in live)
    for expr, expected in (
        (c("scope.user_id", "eq", "u2"), {"r3", "r4"}),
        (c("valid_until", "eq", None), {"r1", "r3", "r4"}),
        (MemoryFilter(importance_min=0.5), {"r2", "r3", "r4"}),
        (Or(any=[c("level", "eq", "trace"), c("tags", "contains", "alpha")]), {"r0", "r1", "r2"}),
    ):
        wanted = sorted(r.id for r in live if r.content in expected)
        assert store.archive_ids(PUBLIC, as_where(expr)) == wanted


def test_archive_facet_counts_archived_records_by_their_indexed_fields(
    corpus: tuple[Adapter, list[MemoryRecord]],
) -> None:
    """archive_facet counts archived records per value of a keyword field, filtered like
    archive_ids; a field that is not a keyword field is refused."""
    store, live = corpus
    users = Counter(r.scope.user_id for r in live)
    assert store.archive_facet(PUBLIC, "scope.user_id", EVERYTHING) == dict(users)
    u2 = And(all=[c("scope.user_id", "eq", "u2")])
    levels = Counter(r.level.value for r in live if r.scope.user_id == "u2")
    assert store.archive_facet(PUBLIC, "level", u2) == dict(levels)
    with pytest.raises(InvalidFilter):
        store.archive_facet(PUBLIC, "content", EVERYTHING)


def test_archive_remove_deletes_archived_records(store: Adapter) -> None:
    """archive_remove deletes archived records, ignores unknown ids, and leaves live ones."""
    archived, kept = make("archived"), make("kept")
    store.archive_put(PUBLIC, [archived, kept])
    store.upsert(PUBLIC, [archived])
    store.archive_remove(PUBLIC, [archived.id, new_record_id()])
    assert store.archive_ids(PUBLIC, EVERYTHING) == [kept.id]
    assert store.get(PUBLIC, [archived.id]) == [archived]


def test_archive_replace_replaces_records_still_as_read(store: Adapter) -> None:
    """archive_replace puts the new record in the archive, its indexed fields included, where
    the archive still holds the record as read; one changed or removed since is left as it
    is, and an id never archived stays so."""
    read, changed, removed, unseen = full_record(), make("changed"), make("removed"), make("u")
    store.archive_put(PUBLIC, [read, changed, removed])
    marked = changed.model_copy(update={"superseded_by": new_record_id(), "superseded_at": T0})
    store.archive_put(PUBLIC, [marked])
    store.archive_remove(PUBLIC, [removed.id])

    pairs = [(r, resealed(r, f"new {r.content}")) for r in (read, changed, removed, unseen)]
    assert store.archive_replace(PUBLIC, pairs) == [read.id]

    got = store.archive_get(PUBLIC, [read.id, changed.id, removed.id, unseen.id])
    assert typed([r.model_dump() for r in got]) == typed(
        [pairs[0][1].model_dump(), marked.model_dump()]
    )
    assert store.archive_facet(PUBLIC, "tags", EVERYTHING) == {"tok-1": 1}
    assert store.archive_facet(PUBLIC, "entities", EVERYTHING) == {}


# -- zones, names, ids, closing -----------------------------------------------------------------


def test_zones_are_isolated(store: Adapter) -> None:
    """Records, tombstones, removals and archives of one zone are invisible to the others."""
    public, secret = make("public"), make("secret", zone=Zone.SECRET)
    store.upsert(PUBLIC, [public])
    store.upsert(Zone.SECRET, [secret])
    store.archive_put(Zone.INTERNAL, [public])
    store.put_tombstones(Zone.SECRET, [tombstone_of(public)])
    store.remove(Zone.SECRET, [public.id])
    assert store.get(PUBLIC, [public.id, secret.id]) == [public]
    assert store.get(Zone.SECRET, [public.id, secret.id]) == [secret]
    assert store.ids(Zone.CONFIDENTIAL, EVERYTHING) == []
    assert store.archive_ids(Zone.INTERNAL, EVERYTHING) == [public.id]
    assert store.archive_ids(PUBLIC, EVERYTHING) == []


def test_collections_are_named_by_namespace_and_zone(store: Adapter) -> None:
    """Collections are ``<namespace>_<zone>`` and ``<namespace>_<zone>_archive``; an unknown
    zone raises ValueError."""
    assert store.collection(Zone.SECRET) == "hivemem_secret"
    assert store.collection(PUBLIC, archive=True) == "hivemem_public_archive"
    with pytest.raises(ValueError, match=r"(?i)zone"):
        store.collection("x' OR 1=1")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_bad_ids_raise_invalid_identifier(scratch: Adapter, bad: str) -> None:
    """A malformed id given to any read, update or removal raises InvalidIdentifier."""
    calls: list[Callable[[], object]] = [
        lambda: scratch.get(PUBLIC, [bad]),
        lambda: scratch.presence(PUBLIC, [new_record_id(), bad]),
        lambda: scratch.update_fields(PUBLIC, {bad: {"tier": Tier.ARCHIVE}}),
        lambda: scratch.remove(PUBLIC, [bad]),
        lambda: scratch.archive_get(PUBLIC, [bad]),
        lambda: scratch.archive_remove(PUBLIC, [bad]),
    ]
    for call in calls:
        with pytest.raises(InvalidIdentifier):
            call()


def test_session_is_a_context_manager(store: Adapter) -> None:
    """Work inside session() behaves as outside it."""
    record = make()
    with store.session():
        store.upsert(PUBLIC, [record])
    assert store.get(PUBLIC, [record.id]) == [record]


def test_closed_store_raises_memory_closed(store: Adapter) -> None:
    """Every call after close() raises MemoryClosed; closing twice is harmless."""
    record = make()
    store.upsert(PUBLIC, [record])
    store.close()
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.upsert(PUBLIC, [record]),
        lambda: store.get(PUBLIC, [record.id]),
        lambda: store.presence(PUBLIC, [record.id]),
        lambda: store.put_tombstones(PUBLIC, [tombstone_of(record)]),
        lambda: store.update_fields(PUBLIC, {record.id: {"access_count": 1}}),
        lambda: store.remove(PUBLIC, [record.id]),
        lambda: store.scan(PUBLIC, EVERYTHING),
        lambda: store.ids(PUBLIC, EVERYTHING),
        lambda: store.count(PUBLIC, EVERYTHING),
        lambda: store.facet(PUBLIC, "tags", EVERYTHING),
        lambda: store.archive_put(PUBLIC, [record]),
        lambda: store.archive_get(PUBLIC, [record.id]),
        lambda: store.archive_ids(PUBLIC, EVERYTHING),
        lambda: store.archive_remove(PUBLIC, [record.id]),
    ]
    for call in calls:
        with pytest.raises(MemoryClosed):
            call()


# -- QdrantZoneStore only: the server's failures ------------------------------------------------


def test_unreachable_qdrant_raises_pool_unavailable() -> None:
    """A server that refuses connections raises StoreUnavailable, not a client error."""
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # No version check: the client runs it in a thread that warns about the refused connection.
    client = QdrantClient(url=f"http://127.0.0.1:{port}", timeout=2, check_compatibility=False)
    store = QdrantZoneStore(client, dim=DIM)
    with pytest.raises(StoreUnavailable):
        store.count(PUBLIC, EVERYTHING)
    store.close()


def test_collection_of_another_dimension_raises_store_incompatible() -> None:
    """A live collection made with another vector dimension raises StoreIncompatible on use."""
    client = QdrantClient(location=":memory:")
    QdrantZoneStore(client, dim=DIM).upsert(PUBLIC, [make(vector=axis(0))])
    with pytest.raises(StoreIncompatible):
        QdrantZoneStore(client, dim=DIM * 2).count(PUBLIC, EVERYTHING)
    client.close()

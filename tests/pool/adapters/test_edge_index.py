"""Contract of EdgeIndex (hivemem.pool.ports.LocalIndex) against a real Qdrant Edge shard.

Vectors are hand-made (8 dimensions, sparse terms chosen by the test), so no embedder is needed.
Every filter operator is run against the engine and compared with a plain-Python reading of the
semantics documented in hivemem.pool.filters, evaluated over the records the test inserted.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hivemem.pool.adapters.edge_index import EdgeIndex
from hivemem.pool.compartments import configure_compartments
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import (
    InvalidFilter,
    InvalidIdentifier,
    InvalidInput,
    MemoryClosed,
)
from hivemem.pool.filters import ORDER_OPS, And, Cond, Expr, MemoryFilter, Not, Or, TimeRange
from hivemem.pool.filters import parse_filter as parse
from hivemem.pool.ids import new_record_id
from hivemem.pool.ports import NearestRequest
from hivemem.pool.records import MemoryRecord, Scope, SparseVector, Tombstone

DIM = 8
T0 = datetime(2026, 1, 1, tzinfo=UTC)
EVERYTHING = And(all=[])
INJECTIONS = ['u1" OR 1=1', "*", "../x", "a b", '{"$ne":1}', "u1\nu2", "x" * 200]


def unit(*weights: float) -> list[float]:
    """A unit vector of DIM dimensions whose leading components are proportional to weights."""
    vector = np.zeros(DIM)
    vector[: len(weights)] = weights
    return (vector / np.linalg.norm(vector)).tolist()


def axis(i: int) -> list[float]:
    """The i-th basis vector: exact in float32, so it survives storage bit for bit."""
    return unit(*([0.0] * i), 1.0)


def make(content: str = "a memory", **fields: Any) -> MemoryRecord:
    fields.setdefault("scope", {"user_id": "u1"})
    return MemoryRecord(content=content, **fields)


def typed(value: object) -> object:
    """``value`` with the type of every scalar attached: 1, 1.0 and True compare unequal."""
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


def tombstone_of(record: MemoryRecord, deleted_at: datetime) -> Tombstone:
    return Tombstone.of(record, deleted_at)


def ids(records: Iterator[MemoryRecord] | list[MemoryRecord]) -> set[str]:
    return {r.id for r in records}


# -- fixtures -----------------------------------------------------------------------------------


def copy_of(template: Path, target: Path) -> Path:
    """A copy of the template index at ``target``. cp keeps the shard's sparse files sparse;
    shutil would write hundreds of MB."""
    subprocess.run(["cp", "-r", str(template), str(target)], check=True)
    return target


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty index made once by EdgeIndex itself (creating the shard and its 19 payload
    indexes takes seconds); tests open copies of it, which takes milliseconds."""
    path = tmp_path_factory.mktemp("edge-template") / "index"
    EdgeIndex(path, dim=DIM).close()
    return path


@pytest.fixture
def new_path(template: Path, tmp_path: Path) -> Callable[[], Path]:
    """Factory of fresh copies of the empty template index."""
    counter = iter(range(1_000))

    def copy() -> Path:
        target = tmp_path / f"index-{next(counter)}"
        return copy_of(template, target)

    return copy


@pytest.fixture
def index(new_path: Callable[[], Path]) -> Iterator[EdgeIndex]:
    """A fresh, empty index, closed at teardown."""
    opened = EdgeIndex(new_path(), dim=DIM)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def scratch(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeIndex]:
    """One index shared by the tests that only read back the records they wrote themselves
    (by id), so they need no fresh shard each."""
    path = copy_of(template, tmp_path_factory.mktemp("edge-scratch") / "index")
    shared = EdgeIndex(path, dim=DIM)
    yield shared
    shared.close()


# -- records, round trips, bookkeeping ----------------------------------------------------------


def full_record() -> MemoryRecord:
    """A record with every field set to a non-default value, datetimes to the microsecond
    (it configures two compartments; the root conftest removes them after the test)."""
    configure_compartments(("apollo", "hr"))
    other, another = new_record_id(), new_record_id()
    values: dict[str, Any] = {
        "id": new_record_id(),
        "content": "Alice prefers green tea ☕ — «always»",
        "vector": unit(0.5, 0.5, 0.5, 0.5),
        "sparse": SparseVector(indices=[2, 7, 1000], values=[0.5, 1.25, 3.0]),
        "level": Level.CATEGORY,
        "scope": Scope(user_id="alice", session_id="s-1", agent_id="agent@x", run_id="run:1"),
        "tier": Tier.LONG_TERM,
        "category": Category.PREFERENCE,
        "zone": Zone.CONFIDENTIAL,
        "compartments": ["apollo", "hr"],
        "importance": 0.8125,
        "access_count": 7,
        "last_accessed_at": T0 + timedelta(days=3, microseconds=1),
        "tags": ["drinks", "a b", "x/y"],
        "entities": ["person:alice", "org:acme"],
        "metadata": {
            "flag": True,
            "off": False,
            "bools": [True, False, True],
            "mixed": [True, 2, "x", 1.5, False, 0, 1],
            "n": 3,
            "big": 2**53 + 1,
            "f": 1.0,
            "neg": -2.5,
            "s": "text with 'quotes' and \"more\"",
            "none": None,
            "empty": [],
            "strs": ["a", "b"],
        },
        "sources": [other],
        "consolidated_into": [another],
        "follows": other,
        "received_from": "agent-7",
        "valid_from": T0 + timedelta(microseconds=123_456),
        "valid_until": T0 + timedelta(days=30, microseconds=999_999),
        "recorded_at": T0 + timedelta(hours=1, microseconds=7),
        "superseded_at": T0 + timedelta(days=2, microseconds=42),
        "supersedes": other,
        "superseded_by": another,
    }
    fields = MemoryRecord.model_fields
    assert set(fields) <= set(values), f"round trip misses {set(fields) - set(values)}"
    return MemoryRecord(**{k: v for k, v in values.items() if k in fields})


def test_round_trip_keeps_every_field_exactly(scratch: EdgeIndex) -> None:
    """A record read back with vectors equals the one written, field by field and type by type."""
    record = full_record()
    scratch.upsert([record])
    [got] = scratch.get([record.id], with_vectors=True)
    assert typed(got.model_dump()) == typed(record.model_dump())
    for name in ("valid_from", "valid_until", "recorded_at", "superseded_at", "last_accessed_at"):
        assert getattr(got, name).utcoffset() == timedelta(0)


def test_get_without_vectors_omits_only_the_vectors(scratch: EdgeIndex) -> None:
    """get() without with_vectors returns everything but vector and sparse (None)."""
    record = full_record()
    scratch.upsert([record])
    [got] = scratch.get([record.id])
    assert (got.vector, got.sparse) == (None, None)
    assert typed(got.model_dump(exclude={"vector", "sparse"})) == typed(
        record.model_dump(exclude={"vector", "sparse"})
    )


def test_record_without_vectors_round_trips(scratch: EdgeIndex) -> None:
    """A record with no dense or sparse vector is stored and read back without them."""
    record = make(metadata={"k": "v"})
    scratch.upsert([record])
    assert scratch.get([record.id], with_vectors=True) == [record]


@pytest.mark.parametrize("value", [2**70, -(2**63) - 1], ids=["2**70", "-2**63-1"])
def test_huge_metadata_ints_round_trip_or_are_refused(scratch: EdgeIndex, value: int) -> None:
    """An integer too large for the engine is refused with InvalidInput or read back exactly."""
    try:
        record = make(metadata={"n": value})
        scratch.upsert([record])
    except InvalidInput:
        return
    [got] = scratch.get([record.id])
    assert typed(got.metadata) == typed({"n": value})


def test_get_keeps_request_order_and_skips_missing(scratch: EdgeIndex) -> None:
    """get() returns the live records among ids, in the order asked, skipping unknown ids."""
    a, b, c = (make(f"r{i}") for i in range(3))
    scratch.upsert([a, b, c])
    missing = new_record_id()
    assert [r.content for r in scratch.get([c.id, missing, a.id, b.id])] == ["r2", "r0", "r1"]
    assert [r.content for r in scratch.get([b.id, a.id])] == ["r1", "r0"]
    assert scratch.get([missing]) == []
    assert scratch.get([]) == []


def test_get_accepts_upper_case_ids(scratch: EdgeIndex) -> None:
    """get() finds a record by the upper-case spelling of its id, which ids accept."""
    record = make()
    scratch.upsert([record])
    assert scratch.get([record.id.upper()]) == [record]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_ids_are_validated_before_the_engine(scratch: EdgeIndex, bad: str) -> None:
    """Malformed ids given to get/get_tombstones/remove/update_fields raise InvalidIdentifier."""
    calls: list[Callable[[], object]] = [
        lambda: scratch.get([bad]),
        lambda: scratch.get_tombstones([bad]),
        lambda: scratch.remove([bad]),
        lambda: scratch.update_fields({bad: {"tier": Tier.ARCHIVE}}),
    ]
    for call in calls:
        with pytest.raises(InvalidIdentifier):
            call()


def test_upsert_replaces_by_id(index: EdgeIndex) -> None:
    """Upserting a record with an existing id replaces it; nothing is duplicated."""
    first = make("old", tags=["t1"])
    index.upsert([first])
    second = make("new", id=first.id, tags=["t2"])
    index.upsert([second])
    assert index.get([first.id]) == [second]
    assert index.count(EVERYTHING) == 1
    assert index.facet("tags", EVERYTHING) == {"t2": 1}


def test_empty_writes_are_no_ops(index: EdgeIndex) -> None:
    """upsert/put_tombstones/remove of nothing change nothing."""
    index.upsert([])
    index.put_tombstones([])
    index.remove([])
    assert index.count(EVERYTHING) == 0


def test_update_fields_changes_every_bookkeeping_field(scratch: EdgeIndex) -> None:
    """update_fields sets each bookkeeping field; the rest of the record is untouched."""
    record = make(vector=axis(0), tags=["keep"])
    untouched = make("other")
    scratch.upsert([record, untouched])
    changes: dict[str, object] = {
        "tier": Tier.ARCHIVE,
        "importance": 0.125,
        "access_count": 9,
        "last_accessed_at": T0 + timedelta(microseconds=5),
        "superseded_at": T0 + timedelta(days=1),
        "superseded_by": new_record_id(),
        "valid_until": datetime(2999, 1, 1, tzinfo=UTC),
        "consolidated_into": [new_record_id(), new_record_id()],
    }
    scratch.update_fields({record.id: changes})
    [got] = scratch.get([record.id], with_vectors=True)
    expected = record.model_copy(update=changes)
    assert typed(got.model_dump()) == typed(expected.model_dump())
    assert scratch.get([untouched.id]) == [untouched]


def test_update_fields_is_seen_by_filters(index: EdgeIndex) -> None:
    """Updated indexed fields are what filters, counts and facets see afterwards."""
    records = [make(f"r{i}") for i in range(4)]
    index.upsert(records)
    index.update_fields({r.id: {"tier": Tier.ARCHIVE, "access_count": 3} for r in records[:2]})
    archived = And(all=[Cond(field="tier", op="eq", value="archive")])
    assert ids(index.scan(archived)) == ids(records[:2])
    assert index.count(And(all=[Cond(field="access_count", op="gte", value=3)])) == 2
    assert index.facet("tier", EVERYTHING) == {"archive": 2, "working": 2}


@pytest.mark.parametrize(
    "name",
    ["content", "scope", "user_id", "level", "zone", "vector", "id", "tags", "metadata", "kind"],
)
def test_update_fields_rejects_non_bookkeeping_fields(scratch: EdgeIndex, name: str) -> None:
    """Changing anything but bookkeeping raises InvalidInput naming the field and changes
    nothing, not even the valid updates of the same call."""
    first, second = make("first"), make("second")
    scratch.upsert([first, second])
    with pytest.raises(InvalidInput) as caught:
        scratch.update_fields(
            {first.id: {"tier": Tier.ARCHIVE}, second.id: {"tier": Tier.ARCHIVE, name: "x"}}
        )
    assert caught.value.field == name
    assert scratch.get([first.id, second.id]) == [first, second]


@pytest.mark.parametrize(
    "change",
    [
        {"last_accessed_at": datetime(2026, 1, 1, 12)},  # noqa: DTZ001 - naive on purpose
        {"last_accessed_at": datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))},
        {"tier": "bogus"},
        {"importance": 5.0},
    ],
    ids=["naive", "offset", "bad-tier", "importance"],
)
def test_update_fields_keeps_record_invariants(
    scratch: EdgeIndex, change: dict[str, object]
) -> None:
    """update_fields either refuses a bad value with InvalidInput or stores a valid record."""
    record = make()
    scratch.upsert([record])
    try:
        scratch.update_fields({record.id: change})
    except InvalidInput:
        assert scratch.get([record.id]) == [record]
        return
    [got] = scratch.get([record.id])
    assert MemoryRecord.model_validate(got.model_dump()) == got
    assert got.last_accessed_at is None or got.last_accessed_at.utcoffset() == timedelta(0)


# -- tombstones and removal ---------------------------------------------------------------------


def test_tombstones_hide_records_everywhere(index: EdgeIndex) -> None:
    """A tombstoned record leaves get, scan, count, facet and nearest; get_tombstones has it."""
    kept = make("kept", vector=axis(0), sparse=SparseVector(indices=[1], values=[1.0]), tags=["t"])
    gone = make("gone", vector=axis(0), sparse=SparseVector(indices=[1], values=[1.0]), tags=["t"])
    index.upsert([kept, gone])
    deleted_at = T0 + timedelta(microseconds=321)
    index.put_tombstones([tombstone_of(gone, deleted_at)])

    assert index.get([gone.id, kept.id], with_vectors=True) == [kept]
    assert ids(index.scan(EVERYTHING)) == {kept.id}
    assert index.count(EVERYTHING) == 1
    assert index.facet("tags", EVERYTHING) == {"t": 1}
    assert index.facet("scope.user_id", EVERYTHING) == {"u1": 1}
    dense = NearestRequest("dense", axis(0), EVERYTHING, limit=10)
    sparse = NearestRequest("sparse", SparseVector(indices=[1], values=[1.0]), EVERYTHING, 10)
    assert [[hit.id for hit in hits] for hits in index.nearest([dense, sparse])] == [
        [kept.id],
        [kept.id],
    ]
    assert index.get_tombstones([gone.id, kept.id]) == [tombstone_of(gone, deleted_at)]


def test_tombstones_never_match_negative_filters(index: EdgeIndex) -> None:
    """ne/nin match records lacking a field, but never a tombstone (which lacks most fields)."""
    kept, gone = make("kept"), make("gone")
    index.upsert([kept, gone])
    index.put_tombstones([tombstone_of(gone, T0)])
    for cond in (
        Cond(field="tags", op="nin", value=["x"]),
        Cond(field="metadata.k", op="ne", value=1),
        Cond(field="importance", op="ne", value=0.3),
        Cond(field="valid_until", op="eq", value=None),
    ):
        assert ids(index.scan(And(all=[cond]))) == {kept.id}


def test_get_tombstones_skips_live_and_missing_ids(scratch: EdgeIndex) -> None:
    """get_tombstones returns only tombstones; live or unknown ids give nothing."""
    record = make()
    scratch.upsert([record])
    assert scratch.get_tombstones([record.id, new_record_id()]) == []
    assert scratch.get_tombstones([]) == []


def test_tombstones_of_a_filter_name_each_live_match(index: EdgeIndex) -> None:
    """tombstones(where) gives, for each live record matching ``where``, its tombstone (its
    scope, level, zone and compartments; deleted now), and nothing for a tombstoned one."""
    mine = make("mine", scope={"user_id": "u1", "session_id": "s1"}, zone="internal")
    gone = make("gone")
    index.upsert([mine, gone, make("theirs", scope={"user_id": "u2"})])
    index.put_tombstones([tombstone_of(gone, T0)])
    before = datetime.now(UTC)
    found = index.tombstones(And(all=[Cond(field="scope.user_id", op="eq", value="u1")]))
    assert [t.model_dump(exclude={"deleted_at"}) for t in found] == [
        Tombstone.of(mine).model_dump(exclude={"deleted_at"})
    ]
    assert found[0].deleted_at >= before


def test_tombstone_without_record_is_stored(index: EdgeIndex) -> None:
    """A tombstone for a record never seen here (a replicated deletion) is kept as such."""
    tombstone = Tombstone(
        id=new_record_id(), scope={"user_id": "u9"}, level="trace", zone="secret", deleted_at=T0
    )
    index.put_tombstones([tombstone])
    assert index.get_tombstones([tombstone.id]) == [tombstone]
    assert index.get([tombstone.id]) == []
    assert index.count(EVERYTHING) == 0


def test_remove_deletes_records_and_tombstones(index: EdgeIndex) -> None:
    """remove() physically deletes records and tombstones; unknown ids are ignored."""
    live, dead, other = make("live"), make("dead"), make("other")
    index.upsert([live, dead, other])
    index.put_tombstones([tombstone_of(dead, T0)])
    index.remove([live.id, dead.id, new_record_id()])
    assert index.get([live.id, dead.id, other.id]) == [other]
    assert index.get_tombstones([dead.id]) == []
    assert index.count(EVERYTHING) == 1


# -- nearest ------------------------------------------------------------------------------------


def test_nearest_dense_ranks_by_cosine(index: EdgeIndex) -> None:
    """Dense hits come best first, scored by cosine similarity, at most ``limit`` of them."""
    vectors = [unit(1, 0), unit(3, 1), unit(1, 1), unit(0, 1), unit(-1, 0.2)]
    records = [make(f"r{i}", vector=v) for i, v in enumerate(vectors)]
    index.upsert(records)
    query = unit(1, 0.1)
    cosine = {r.id: float(np.dot(r.vector, query)) for r in records}  # type: ignore[arg-type]
    ranked = sorted(cosine, key=cosine.__getitem__, reverse=True)

    [hits] = index.nearest([NearestRequest("dense", np.asarray(query), EVERYTHING, limit=3)])
    assert [hit.id for hit in hits] == ranked[:3]
    for hit in hits:
        assert hit.score == pytest.approx(cosine[hit.id], abs=1e-5)


def test_nearest_score_threshold_drops_weaker_hits(index: EdgeIndex) -> None:
    """score_threshold keeps only hits scoring at least the threshold."""
    records = [make(f"r{i}", vector=unit(1, i)) for i in range(5)]
    index.upsert(records)
    query = axis(0)
    threshold = 0.5
    expected = {r.id for r in records if float(np.dot(r.vector, query)) >= threshold}  # type: ignore[arg-type]
    assert 0 < len(expected) < len(records)
    [hits] = index.nearest(
        [NearestRequest("dense", query, EVERYTHING, limit=10, score_threshold=threshold)]
    )
    assert {hit.id for hit in hits} == expected
    assert all(hit.score >= threshold for hit in hits)


def test_nearest_applies_filters_and_batches(index: EdgeIndex) -> None:
    """Each request of a batch gets its own filter, results come back in request order."""
    records = [
        make(f"r{i}", vector=unit(1, i / 10), zone=zone, scope={"user_id": user})
        for i, (zone, user) in enumerate(
            [("public", "u1"), ("secret", "u1"), ("public", "u2"), ("internal", "u1")]
        )
    ]
    index.upsert(records)
    public = parse({"zones": ["public"]}).to_expr()
    u1_not_secret = And(
        all=[
            Cond(field="scope.user_id", op="eq", value="u1"),
            Not(expr=Cond(field="zone", op="eq", value="secret")),
        ]
    )
    results = index.nearest(
        [
            NearestRequest("dense", axis(0), public, limit=10),
            NearestRequest("dense", axis(0), u1_not_secret, limit=10),
        ]
    )
    assert [{hit.id for hit in hits} for hits in results] == [
        {r.id for r in records if r.zone is Zone.PUBLIC},
        {r.id for r in records if r.scope.user_id == "u1" and r.zone is not Zone.SECRET},
    ]


def test_nearest_sparse_matches_shared_terms(index: EdgeIndex) -> None:
    """Sparse hits are the records sharing a query term; on one term, heavier weight ranks first."""
    terms = {"a": [3, 9], "b": [3], "c": [4], "d": [9, 12]}
    weights = {"a": [0.5, 1.0], "b": [2.0], "c": [1.0], "d": [1.0, 1.0]}
    records = {
        name: make(
            name,
            sparse=SparseVector(indices=terms[name], values=weights[name]),
            metadata={"name": name},
        )
        for name in terms
    }
    index.upsert(list(records.values()))

    [on_3] = index.nearest(
        [NearestRequest("sparse", SparseVector(indices=[3], values=[1.0]), EVERYTHING, 10)]
    )
    assert [hit.id for hit in on_3] == [records["b"].id, records["a"].id]
    assert all(hit.score > 0 for hit in on_3)

    query = SparseVector(indices=[9, 12], values=[1.0, 1.0])
    [on_9_12] = index.nearest([NearestRequest("sparse", query, EVERYTHING, 10)])
    assert {hit.id for hit in on_9_12} == {
        r.id
        for r in records.values()
        if set(r.sparse.indices) & {9, 12}  # type: ignore[union-attr]
    }

    not_d = And(
        all=[
            Cond(field="scope.user_id", op="eq", value="u1"),
            Not(expr=Cond(field="metadata.name", op="eq", value="d")),
        ]
    )
    [filtered] = index.nearest([NearestRequest("sparse", query, not_d, 10)])
    assert [hit.id for hit in filtered] == [records["a"].id]


def test_nearest_sparse_needs_a_sparse_vector(scratch: EdgeIndex) -> None:
    """A sparse lookup given a dense vector raises InvalidInput on vector."""
    with pytest.raises(InvalidInput) as caught:
        scratch.nearest([NearestRequest("sparse", axis(0), EVERYTHING, 10)])
    assert caught.value.field == "vector"


def test_wrong_dimension_raises_invalid_input(scratch: EdgeIndex) -> None:
    """A dense vector of the wrong dimension raises InvalidInput, not the engine's error."""
    with pytest.raises(InvalidInput):
        scratch.upsert([make(vector=[1.0, 0.0])])


# -- scan, count, facet -------------------------------------------------------------------------


def test_scan_pages_through_many_records_in_id_order(index: EdgeIndex) -> None:
    """scan() yields every matching live record exactly once, in id order, across pages."""
    records = [make(f"r{i}", scope={"user_id": "u1" if i % 4 else "u2"}) for i in range(1_100)]
    index.upsert(records)
    scanned = [r.id for r in index.scan(EVERYTHING)]
    assert scanned == sorted(r.id for r in records)
    u1 = And(all=[Cond(field="scope.user_id", op="eq", value="u1")])
    expected = sorted(r.id for r in records if r.scope.user_id == "u1")
    assert len(expected) > 512
    assert [r.id for r in index.scan(u1)] == expected
    assert index.count(u1) == len(expected)


def test_scan_returns_vectors_only_when_asked(index: EdgeIndex) -> None:
    """scan(with_vectors=True) fills vector and sparse; the default leaves them None."""
    record = make(vector=axis(2), sparse=SparseVector(indices=[5], values=[0.5]))
    index.upsert([record])
    [plain] = index.scan(EVERYTHING)
    [full] = index.scan(EVERYTHING, with_vectors=True)
    assert (plain.vector, plain.sparse) == (None, None)
    assert full == record


@pytest.fixture(scope="module")
def facet_corpus(
    template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EdgeIndex, list[MemoryRecord]]]:
    """Thirteen records with repeating keyword values, the first one tombstoned."""
    path = copy_of(template, tmp_path_factory.mktemp("edge-facets") / "index")
    index = EdgeIndex(path, dim=DIM)
    records = [
        make(
            f"r{i}",
            tags=[["a"], ["a", "b"], [], ["c"]][i % 4],
            entities=[["e1"], ["e2"]][i % 2],
            level=list(Level)[i % 3],
            zone=list(Zone)[i % 4],
            tier=list(Tier)[i % 2],
            scope={"user_id": ["u1", "u2", "u3"][i % 3]},
        )
        for i in range(13)
    ]
    index.upsert(records)
    index.put_tombstones([tombstone_of(records[0], T0)])
    yield index, records[1:]
    index.close()


@pytest.mark.parametrize("field", ["tags", "entities", "level", "zone", "scope.user_id", "tier"])
def test_facet_counts_live_records_per_value(
    facet_corpus: tuple[EdgeIndex, list[MemoryRecord]], field: str
) -> None:
    """facet() counts matching live records per value of a keyword field (never tombstones)."""
    index, live = facet_corpus

    def values(record: MemoryRecord) -> list[str]:
        value = record.scope.user_id if field == "scope.user_id" else getattr(record, field)
        return value if isinstance(value, list) else [str(value)]

    assert index.facet(field, EVERYTHING) == dict(Counter(v for r in live for v in values(r)))
    where = And(all=[Not(expr=Cond(field="zone", op="eq", value="secret"))])
    kept = [r for r in live if r.zone is not Zone.SECRET]
    assert index.facet(field, where) == dict(Counter(v for r in kept for v in values(r)))


@pytest.mark.parametrize(
    "field", ["importance", "access_count", "recorded_at", "metadata.k", "content", "bogus"]
)
def test_facet_refuses_non_keyword_fields(scratch: EdgeIndex, field: str) -> None:
    """facet() over a field that is not an indexed keyword raises InvalidFilter."""
    with pytest.raises(InvalidFilter):
        scratch.facet(field, EVERYTHING)


# -- persistence and closing --------------------------------------------------------------------


def test_data_survives_close_and_reopen(new_path: Callable[[], Path]) -> None:
    """Records, updates and tombstones written before close() are there after reopening."""
    path = new_path()
    record, dead = full_record(), make("dead", vector=axis(1))
    first = EdgeIndex(path, dim=DIM)
    first.upsert([record, dead])
    first.update_fields({record.id: {"access_count": 11}})
    first.put_tombstones([tombstone_of(dead, T0)])
    first.close()

    reopened = EdgeIndex(path, dim=DIM)
    try:
        [got] = reopened.get([record.id, dead.id], with_vectors=True)
        assert typed(got.model_dump()) == typed(
            record.model_copy(update={"access_count": 11}).model_dump()
        )
        assert reopened.get_tombstones([dead.id]) == [tombstone_of(dead, T0)]
        assert reopened.count(EVERYTHING) == 1
        assert reopened.count(And(all=[Cond(field="access_count", op="eq", value=11)])) == 1
        assert reopened.size_bytes() > 0
    finally:
        reopened.close()


def test_closed_index_raises_memory_closed(index: EdgeIndex) -> None:
    """Every call on a closed index raises MemoryClosed; closing twice is harmless."""
    record = make()
    index.upsert([record])
    index.close()
    index.close()
    calls: list[Callable[[], object]] = [
        lambda: index.upsert([record]),
        lambda: index.get([record.id]),
        lambda: index.get_tombstones([record.id]),
        lambda: index.update_fields({record.id: {"access_count": 1}}),
        lambda: index.put_tombstones([tombstone_of(record, T0)]),
        lambda: index.remove([record.id]),
        lambda: list(index.scan(EVERYTHING)),
        lambda: index.count(EVERYTHING),
        lambda: index.facet("tags", EVERYTHING),
        lambda: index.nearest([NearestRequest("dense", axis(0), EVERYTHING, 1)]),
        lambda: index.neighbourhoods([record.id]),
        lambda: index.retention_facts_of([record.id]),
        lambda: index.retention_facts(EVERYTHING),
    ]
    for call in calls:
        with pytest.raises(MemoryClosed):
            call()


# -- filters against the engine -----------------------------------------------------------------

MISSING = object()


def actual(record: MemoryRecord, field: str) -> object:
    """The value a filter field reads on a record; MISSING for an absent metadata key."""
    if field.startswith("scope."):
        return getattr(record.scope, field.removeprefix("scope."))
    if field.startswith("metadata."):
        return record.metadata.get(field.removeprefix("metadata."), MISSING)
    return getattr(record, field)


def equals(value: object, wanted: object) -> bool:
    if wanted is None:
        return value is None or value is MISSING
    return value is not MISSING and value == wanted


def holds(expr: Expr, record: MemoryRecord) -> bool:
    """The documented semantics of a filter, in plain Python."""
    if isinstance(expr, And):
        return all(holds(e, record) for e in expr.all)
    if isinstance(expr, Or):
        return any(holds(e, record) for e in expr.any)
    if isinstance(expr, Not):
        return not holds(expr.expr, record)
    value, op, wanted = actual(record, expr.field), expr.op, expr.value
    if expr.field in ("tags", "entities"):  # list fields: membership
        assert isinstance(value, list)
        hit = any(w in value for w in (wanted if op in ("in", "nin") else [wanted]))
        return not hit if op == "nin" else hit
    if op == "eq":
        return equals(value, wanted)
    if op == "ne":
        return not equals(value, wanted)
    if op == "in":
        return any(equals(value, w) for w in wanted)
    if op == "nin":
        return not any(equals(value, w) for w in wanted)
    if op == "contains":  # metadata: substring of a string, element of a list
        if isinstance(value, str):
            return isinstance(wanted, str) and wanted in value
        return isinstance(value, list) and wanted in value
    assert op in ORDER_OPS
    if value is MISSING or value is None or isinstance(value, str | list):
        return False
    return {
        "gt": value > wanted,
        "gte": value >= wanted,
        "lt": value < wanted,
        "lte": value <= wanted,
    }[op]


def corpus_records() -> list[MemoryRecord]:
    """Six live records that differ on every filterable field, some fields unset."""
    day, hour = timedelta(days=1), timedelta(hours=1)
    rows: list[dict[str, Any]] = [
        {
            "level": "episode", "tier": "working", "category": "fact", "zone": "public",
            "importance": 0.0, "access_count": 0,
            "scope": {"user_id": "u1", "session_id": "s1", "agent_id": "a1", "run_id": "r1"},
            "tags": ["alpha"], "entities": ["person:alice"],
            "metadata": {"lang": "english text", "n": 1, "score": 2.0, "flag": True,
                         "labels": ["english", "fr"], "nums": [1, 2], "opt": None,
                         "mixed": [True, "x"], "huge": 2**53},
            "valid_from": T0, "valid_until": T0 + 10 * day, "recorded_at": T0,
        },
        {
            "level": "trace", "tier": "short_term", "category": "preference", "zone": "internal",
            "importance": 0.25, "access_count": 1,
            "scope": {"user_id": "u1", "session_id": "s1"},
            "tags": ["alpha", "beta"], "entities": [],
            "metadata": {"lang": "French", "n": 2, "score": 2.5, "flag": False,
                         "labels": ["de", "engl"], "nums": [3], "floats": [1.5, 2.5],
                         "mixed": [False, 2.5, "y"], "huge": 2**53 + 1,
                         "hugepair": [2.0**53, 2**53 + 1]},
            "valid_from": T0 + day, "recorded_at": T0 + hour + timedelta(microseconds=123_456),
            "last_accessed_at": T0 + 2 * day, "superseded_at": T0 + 5 * day,
        },
        {
            "level": "category", "tier": "long_term", "category": "decision",
            "zone": "confidential", "importance": 0.5, "access_count": 2,
            "scope": {"user_id": "u1", "session_id": "s2", "agent_id": "a1"},
            "tags": ["beta gamma"], "entities": ["org:acme", "person:bob"],
            "metadata": {"lang": "German", "n": 3, "score": 3, "flag": 1, "opt": "set",
                         "mixed": [1, "z"], "hugelist": [2.0**53, "w"], "huge": 2.0**62},
            "valid_from": T0 + 2 * day, "valid_until": T0 + 3 * day,
            "recorded_at": T0 + hour + timedelta(microseconds=123_457),
            "last_accessed_at": T0 + 3 * day,
        },
        {
            "level": "domain", "tier": "archive", "category": "insight", "zone": "secret",
            "importance": 1.0, "access_count": 5,
            "scope": {"user_id": "u2", "agent_id": "a2", "run_id": "r2"},
            "tags": ["x/y", "alpha"], "entities": ["person:alice"],
            "metadata": {"n": 5.5, "flag": 0, "labels": ["english"], "mixed": [True, False],
                         "hugelist": [2**53 + 1, "v"], "huge": 2**62 + 1},
            "valid_from": T0 + 3 * day, "recorded_at": T0 + 3 * hour,
            "last_accessed_at": T0 + day, "superseded_at": T0 + 6 * day,
        },
        {
            "level": "episode", "tier": "working", "category": "event", "zone": "public",
            "importance": 0.75, "access_count": 3,
            "scope": {"user_id": "u2", "session_id": "s1", "run_id": "r1"},
            "tags": [], "entities": ["org:acme"],
            "metadata": {"lang": "Englishman", "score": 1, "opt": None, "huge": 2.0**53},
            "valid_from": T0 + 4 * day, "valid_until": T0 + 4 * day, "recorded_at": T0 + 4 * hour,
        },
        {
            "level": "trace", "tier": "short_term", "category": "context", "zone": "internal",
            "importance": 0.5, "access_count": 0,
            "scope": {"user_id": "u1"},
            "tags": ["beta"], "entities": [],
            "metadata": {},
            "valid_from": T0 - day, "recorded_at": T0 + 5 * hour,
        },
    ]  # fmt: skip
    return [make(f"r{i}", vector=axis(i), **row) for i, row in enumerate(rows)]


@pytest.fixture(scope="module")
def corpus(
    template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EdgeIndex, list[MemoryRecord]]]:
    """One index holding the corpus plus a tombstoned record (which no filter may return)."""
    path = copy_of(template, tmp_path_factory.mktemp("edge-corpus") / "index")
    index = EdgeIndex(path, dim=DIM)
    live = corpus_records()
    dead = make("dead", vector=axis(7), tags=["alpha"], metadata={"lang": "French"})
    index.upsert([*live, dead])
    index.put_tombstones([tombstone_of(dead, T0)])
    yield index, live
    index.close()


def c(field: str, op: str, value: object = None) -> Cond:
    return Cond(field=field, op=op, value=value)  # type: ignore[arg-type]


def row(name: str, expr: Expr | MemoryFilter, *marks: pytest.MarkDecorator) -> Any:
    return pytest.param(expr, id=name, marks=marks)


@pytest.mark.parametrize("value", [2.5, None])
def test_contains_with_a_float_or_none_is_refused_when_built(value: object) -> None:
    """contains takes a string or an integer: a float or None fails when the Cond is built,
    never later in the engine."""
    with pytest.raises(InvalidFilter):
        Cond(field="metadata.floats", op="contains", value=value)


D, H = timedelta(days=1), timedelta(hours=1)
FILTER_ROWS = [
    # enums
    row("level-eq", c("level", "eq", "trace")),
    row("level-ne", c("level", "ne", Level.TRACE)),
    row("level-in", c("level", "in", ["episode", "domain"])),
    row("level-nin", c("level", "nin", ["episode", "domain"])),
    row("tier-eq", c("tier", "eq", "working")),
    row("tier-ne", c("tier", "ne", "archive")),
    row("tier-in", c("tier", "in", ["short_term", "long_term"])),
    row("tier-nin", c("tier", "nin", ["working"])),
    row("category-eq", c("category", "eq", "decision")),
    row("category-in", c("category", "in", ["fact", "event", "context"])),
    row("category-nin", c("category", "nin", ["fact", "event"])),
    row("zone-eq", c("zone", "eq", "public")),
    row("zone-ne", c("zone", "ne", "public")),
    row("zone-in", c("zone", "in", [Zone.SECRET, Zone.CONFIDENTIAL])),
    row("zone-nin", c("zone", "nin", ["secret", "internal"])),
    # numbers
    row("importance-eq", c("importance", "eq", 0.5)),
    row("importance-ne", c("importance", "ne", 0.5)),
    row("importance-gt", c("importance", "gt", 0.25)),
    row("importance-gte", c("importance", "gte", 0.25)),
    row("importance-lt", c("importance", "lt", 0.5)),
    row("importance-lte", c("importance", "lte", 0.5)),
    row("importance-gt-int", c("importance", "gt", 0)),
    row("importance-lt-int", c("importance", "lt", 1)),
    row("importance-eq-int-1", c("importance", "eq", 1)),
    row("importance-eq-int-0", c("importance", "eq", 0)),
    row("importance-ne-int-0", c("importance", "ne", 0)),
    row("access-eq", c("access_count", "eq", 2)),
    row("access-eq-float", c("access_count", "eq", 3.0)),
    row("access-ne", c("access_count", "ne", 0)),
    row("access-gt", c("access_count", "gt", 1)),
    row("access-gte", c("access_count", "gte", 2)),
    row("access-lt", c("access_count", "lt", 2)),
    row("access-lte-float", c("access_count", "lte", 2.5)),
    # times
    row("valid-until-eq-none", c("valid_until", "eq", None)),
    row("valid-until-ne-none", c("valid_until", "ne", None)),
    row("valid-until-eq", c("valid_until", "eq", T0 + 4 * D)),
    row("valid-until-ne", c("valid_until", "ne", T0 + 4 * D)),
    row("valid-until-gt", c("valid_until", "gt", T0 + 3 * D)),
    row("valid-until-lte", c("valid_until", "lte", T0 + 3 * D)),
    row("valid-from-lt", c("valid_from", "lt", T0 + D)),
    row("valid-from-gte-naive", c("valid_from", "gte", (T0 + 2 * D).replace(tzinfo=None))),
    row("valid-from-gte-iso-offset", c("valid_from", "gte", "2026-01-03T02:00:00+02:00")),
    row(
        "recorded-eq-microsecond", c("recorded_at", "eq", T0 + H + timedelta(microseconds=123_456))
    ),
    row(
        "recorded-gt-microsecond", c("recorded_at", "gt", T0 + H + timedelta(microseconds=123_456))
    ),
    row("recorded-lte-iso", c("recorded_at", "lte", "2026-01-01T01:00:00.123456+00:00")),
    row("recorded-lt-offset", c("recorded_at", "lt", "2026-01-01T05:00:00+02:00")),
    row("last-accessed-eq-none", c("last_accessed_at", "eq", None)),
    row("last-accessed-gte", c("last_accessed_at", "gte", T0 + 2 * D)),
    row("last-accessed-ne", c("last_accessed_at", "ne", T0 + D)),
    row("superseded-ne-none", c("superseded_at", "ne", None)),
    row("superseded-lt", c("superseded_at", "lt", T0 + 6 * D)),
    # labels
    row("tags-contains", c("tags", "contains", "alpha")),
    row("tags-contains-space", c("tags", "contains", "beta gamma")),
    row("tags-contains-slash", c("tags", "contains", "x/y")),
    row("tags-in", c("tags", "in", ["beta", "x/y"])),
    row("tags-nin", c("tags", "nin", ["alpha"])),
    row("entities-contains", c("entities", "contains", "org:acme")),
    row("entities-in", c("entities", "in", ["person:bob", "person:alice"])),
    row("entities-nin", c("entities", "nin", ["person:alice"])),
    # scope
    row("user-eq", c("scope.user_id", "eq", "u1")),
    row("user-ne", c("scope.user_id", "ne", "u1")),
    row("user-in", c("scope.user_id", "in", ["u2", "u9"])),
    row("user-nin", c("scope.user_id", "nin", ["u2"])),
    row("session-eq", c("scope.session_id", "eq", "s1")),
    row("session-ne", c("scope.session_id", "ne", "s1")),
    row("session-eq-none", c("scope.session_id", "eq", None)),
    row("session-ne-none", c("scope.session_id", "ne", None)),
    row("session-nin", c("scope.session_id", "nin", ["s1", "s2"])),
    row("agent-in", c("scope.agent_id", "in", ["a1", "a2"])),
    row("agent-eq-none", c("scope.agent_id", "eq", None)),
    row("run-eq", c("scope.run_id", "eq", "r1")),
    row("run-ne", c("scope.run_id", "ne", "r1")),
    # metadata
    row("meta-str-eq", c("metadata.lang", "eq", "French")),
    row("meta-str-ne", c("metadata.lang", "ne", "French")),
    row("meta-str-in", c("metadata.lang", "in", ["French", "German", "Klingon"])),
    row("meta-str-nin", c("metadata.lang", "nin", ["French", "German"])),
    row("meta-str-contains", c("metadata.lang", "contains", "glish")),
    row("meta-str-contains-case", c("metadata.lang", "contains", "English")),
    row("meta-int-eq", c("metadata.n", "eq", 3)),
    row("meta-int-ne", c("metadata.n", "ne", 3)),
    row("meta-num-gt", c("metadata.n", "gt", 2)),
    row("meta-num-gte", c("metadata.n", "gte", 2)),
    row("meta-num-lt-float", c("metadata.n", "lt", 5.5)),
    row("meta-num-lte", c("metadata.n", "lte", 2)),
    row("meta-int-in", c("metadata.n", "in", [1, 3])),
    row("meta-float-eq", c("metadata.score", "eq", 2.5)),
    row("meta-float-eq-matches-int", c("metadata.score", "eq", 3.0)),
    row("meta-int-eq-matches-float", c("metadata.score", "eq", 2)),
    row("meta-mixed-in", c("metadata.score", "in", [1, 2.5])),
    row("meta-mixed-nin", c("metadata.score", "nin", [1, 2.5])),
    row("meta-bool-eq-true", c("metadata.flag", "eq", True)),
    row("meta-bool-eq-one", c("metadata.flag", "eq", 1)),
    row("meta-bool-eq-false", c("metadata.flag", "eq", False)),
    row("meta-bool-ne-true", c("metadata.flag", "ne", True)),
    row("meta-bool-in", c("metadata.flag", "in", [False])),
    row("meta-bool-gte", c("metadata.flag", "gte", 1)),
    row("meta-eq-none", c("metadata.opt", "eq", None)),
    row("meta-ne-none", c("metadata.opt", "ne", None)),
    row("meta-nin-none", c("metadata.opt", "nin", [None])),
    row("meta-in-none-or-value", c("metadata.lang", "in", [None, "French"])),
    row("meta-ne-matches-missing", c("metadata.score", "ne", 2.5)),
    row("meta-list-contains", c("metadata.labels", "contains", "english")),
    row("meta-list-contains-int", c("metadata.nums", "contains", 2)),
    row("meta-list-contains-substring", c("metadata.labels", "contains", "engl")),
    # booleans in lists of mixed kinds, or of booleans only, compare as numbers
    row("meta-bool-list-contains-true", c("metadata.mixed", "contains", True)),
    row("meta-bool-list-contains-one", c("metadata.mixed", "contains", 1)),
    row("meta-bool-list-contains-false", c("metadata.mixed", "contains", False)),
    row("meta-bool-list-contains-zero", c("metadata.mixed", "contains", 0)),
    row("meta-bool-list-contains-string", c("metadata.mixed", "contains", "x")),
    row("meta-bool-list-not-contains-true", Not(expr=c("metadata.mixed", "contains", True))),
    # integers beyond what a float holds exactly, against integers and integral floats
    row("meta-huge-eq", c("metadata.huge", "eq", 2**53)),
    row("meta-huge-eq-next", c("metadata.huge", "eq", 2**53 + 1)),
    row("meta-huge-eq-float", c("metadata.huge", "eq", 2.0**53)),
    row("meta-huge-in-next", c("metadata.huge", "in", [2**53 + 1, "q"])),
    row("meta-huge-ne-next", c("metadata.huge", "ne", 2**53 + 1)),
    row("meta-huge-list-contains", c("metadata.hugelist", "contains", 2**53)),
    row("meta-huge-list-contains-next", c("metadata.hugelist", "contains", 2**53 + 1)),
    row("meta-huge-far-eq", c("metadata.huge", "eq", 2**62)),
    row("meta-huge-far-eq-next", c("metadata.huge", "eq", 2**62 + 1)),
    row(
        "meta-huge-float-beside-its-neighbour",
        c("metadata.hugepair", "contains", 2**53),
        pytest.mark.xfail(reason="the known gap of payload_rules.BigNumber", strict=True),
    ),
    # nesting
    row("and", And(all=[c("zone", "in", ["public", "internal"]), c("importance", "gte", 0.25)])),
    row("or", Or(any=[c("level", "eq", "domain"), c("tags", "contains", "beta")])),
    row("not", Not(expr=c("scope.session_id", "eq", None))),
    row(
        "not-or", Not(expr=Or(any=[c("zone", "eq", "secret"), c("metadata.lang", "eq", "French")]))
    ),
    row(
        "and-or-not",
        And(
            all=[
                Or(any=[c("scope.user_id", "eq", "u2"), c("tags", "contains", "alpha")]),
                Not(expr=c("tier", "eq", "archive")),
            ]
        ),
    ),
    row(
        "or-of-ands",
        Or(
            any=[
                And(all=[c("level", "eq", "episode"), c("access_count", "gt", 0)]),
                And(all=[c("level", "eq", "trace"), c("metadata.n", "eq", 2)]),
            ]
        ),
    ),
    row("not-not", Not(expr=Not(expr=c("entities", "contains", "person:alice")))),
    row(
        "deep",
        Or(
            any=[
                Not(
                    expr=And(
                        all=[
                            c("importance", "lte", 0.5),
                            Or(any=[c("zone", "eq", "public"), c("zone", "eq", "internal")]),
                        ]
                    )
                ),
                c("metadata.opt", "eq", "set"),
            ]
        ),
    ),
    # convenience filters, through to_expr()
    row("mf-levels-importance", MemoryFilter(levels=["episode", "trace"], importance_min=0.25)),
    row("mf-importance-range", MemoryFilter(importance_min=0.25, importance_max=0.75)),
    row(
        "mf-time-range", MemoryFilter(times={"valid_from": TimeRange(after=T0, before=T0 + 3 * D)})
    ),
    row("mf-tags-all", MemoryFilter(tags_all=["alpha", "x/y"])),
    row("mf-tags-any-zones", MemoryFilter(tags_any=["beta", "beta gamma"], zones=["internal"])),
    row(
        "mf-entities-where",
        MemoryFilter(entities_any=["org:acme"], where=c("scope.run_id", "eq", None)),
    ),
    row(
        "mf-parsed",
        parse(
            {
                "categories": ["fact", "insight"],
                "tiers": ["working", "archive"],
                "times": {"recorded_at": {"before": "2026-01-01T02:00:00"}},
            }
        ),
    ),
]


@pytest.mark.parametrize("expr", FILTER_ROWS)
def test_filter_matches_documented_semantics(
    corpus: tuple[EdgeIndex, list[MemoryRecord]], expr: Expr | MemoryFilter
) -> None:
    """scan, count, nearest and facet return exactly the live records the documented semantics
    select (computed here in plain Python)."""
    index, live = corpus
    where = expr.to_expr() if isinstance(expr, MemoryFilter) else And(all=[expr])
    expected = sorted(r.content for r in live if holds(where, r))
    assert 0 < len(expected) < len(live), "each row must tell records apart"
    names = {r.id: r.content for r in live}

    assert sorted(names.get(r.id, r.content) for r in index.scan(where)) == expected
    assert index.count(where) == len(expected)
    [hits] = index.nearest([NearestRequest("dense", axis(0), where, limit=20)])
    assert sorted(names.get(hit.id, hit.id) for hit in hits) == expected
    assert sum(index.facet("level", where).values()) == len(expected)


def test_empty_filter_matches_every_live_record(
    corpus: tuple[EdgeIndex, list[MemoryRecord]],
) -> None:
    """And([]) (an empty MemoryFilter) matches every live record and no tombstone."""
    index, live = corpus
    assert ids(index.scan(MemoryFilter().to_expr())) == ids(live)
    assert index.count(EVERYTHING) == len(live)


def test_facet_respects_the_filter(corpus: tuple[EdgeIndex, list[MemoryRecord]]) -> None:
    """facet() counts only records matching its filter."""
    index, live = corpus
    where = And(all=[c("scope.user_id", "eq", "u1")])
    expected = Counter(t for r in live if r.scope.user_id == "u1" for t in r.tags)
    assert index.facet("tags", where) == dict(expected)


# -- validation before the engine ---------------------------------------------------------------


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize(
    "field", ["scope.user_id", "scope.session_id", "scope.agent_id", "scope.run_id"]
)
def test_scope_injection_in_filters_never_reaches_the_engine(
    corpus: tuple[EdgeIndex, list[MemoryRecord]], field: str, bad: str
) -> None:
    """An injection string as a scope value raises InvalidIdentifier while the filter is built,
    whether given as a model or as data."""
    index, live = corpus
    with pytest.raises(InvalidIdentifier):
        index.count(And(all=[Cond(field=field, op="eq", value=bad)]))
    with pytest.raises(InvalidIdentifier):
        index.count(parse({"where": {"field": field, "op": "in", "value": ["u1", bad]}}).to_expr())
    assert index.count(EVERYTHING) == len(live)


@pytest.mark.parametrize("field", ["content", "bogus", "scope", "id", "metadata", "kind"])
def test_unknown_filter_field_raises_invalid_filter(
    corpus: tuple[EdgeIndex, list[MemoryRecord]], field: str
) -> None:
    """A filter on an unknown field raises InvalidFilter before the index runs anything."""
    index, live = corpus
    with pytest.raises(InvalidFilter):
        index.count(And(all=[Cond(field=field, op="eq", value="x")]))
    with pytest.raises(InvalidFilter):
        index.count(parse({"where": {"field": field, "op": "ne", "value": "x"}}).to_expr())
    assert index.count(EVERYTHING) == len(live)


@pytest.mark.parametrize(
    "field", ["content", "bogus", "metadata.a.b", "metadata.a b", "bool_keys", "bool_items"]
)
def test_index_rechecks_field_names(
    corpus: tuple[EdgeIndex, list[MemoryRecord]], field: str
) -> None:
    """A condition that skipped validation (model_construct) on an unknown field is still
    refused by the index with InvalidFilter: field names are checked twice."""
    index, _ = corpus
    where = And.model_construct(all=[Cond.model_construct(field=field, op="eq", value="x")])
    with pytest.raises(InvalidFilter):
        index.count(where)
    with pytest.raises(InvalidFilter):
        list(index.scan(where))


@pytest.mark.parametrize("bad", ["*", 'u1" OR 1=1'])
def test_index_rechecks_scope_values(
    corpus: tuple[EdgeIndex, list[MemoryRecord]], bad: str
) -> None:
    """A scope value that skipped validation is refused by the index with InvalidIdentifier."""
    index, _ = corpus
    cond = Cond.model_construct(field="scope.user_id", op="eq", value=bad)
    with pytest.raises(InvalidIdentifier):
        index.count(And.model_construct(all=[cond]))

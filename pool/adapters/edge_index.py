"""The agent-local index on Qdrant Edge (Qdrant's engine, in-process, one shard per directory).

Measured on the 2-core machine (see docs/performance.md): a plain (brute-force) segment with
keyword/float/datetime payload indexes answers a user-filtered hybrid query in ~0.5 ms at 100k
points, so no HNSW graph is built (building one took minutes on 2 cores). Writes go through
Edge's write-ahead log: a point upserted before the process is SIGKILLed is there on reopen.

Thread safety: Edge shard calls are made under one lock per index (reads included); each call is
short, and embedding, the expensive part of every operation, happens outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import numpy as np
from qdrant_edge import (
    CountRequest,
    EdgeShard,
    FieldCondition,
    Filter,
    HasIdCondition,
    IdfParams,
    MatchValue,
    PointVectors,
    Query,
    QueryBatchRequest,
    QueryRequest,
    SearchParams,
    UpdateOperation,
)
from qdrant_edge import SparseVector as EdgeSparse

from hivemem.pool.adapters.edge_codec import (
    DENSE,
    KIND_RECORD,
    KIND_TOMBSTONE,
    SPARSE,
    content_payload,
    decode_record,
    decode_retention,
    decode_tombstone,
    encode_field,
    record_point,
    same_record,
    tombstone_point,
)
from hivemem.pool.adapters.edge_filters import to_edge_filter
from hivemem.pool.adapters.edge_shards import (
    create_payload_indexes,
    facet_counts,
    scroll_points,
    shard_config,
)
from hivemem.pool.adapters.payload_rules import check_vector_shapes
from hivemem.pool.errors import InvalidInput, MemoryClosed, MemoryNotFound
from hivemem.pool.filters import And
from hivemem.pool.ids import check_record_id
from hivemem.pool.ports import NearestRequest, Neighbourhood, RetentionFacts, ScoredId, Vector
from hivemem.pool.records import MemoryRecord, SparseVector, Tombstone

#: Translated vector-lookup filters kept per index (see EdgeIndex._vector_filter).
_FILTER_CACHE = 256
#: Result ids kept as text per index (see EdgeIndex._id_text): ~150 bytes each.
_ID_TEXT_CACHE = 65_536
#: Payload keys that make up a record's RetentionFacts.
_RETENTION = ["tier", "importance", "access_count", "last_accessed_at", "recorded_at"]
#: Payload keys that make up a record's Neighbourhood.
_NEIGHBOURHOOD = ["session_id", "follows"]


def _holding(record_id: str, record: MemoryRecord) -> Filter:
    """The point ``record_id`` while it holds ``record``'s content."""
    content = FieldCondition("content", match=MatchValue(record.content))
    return Filter(must=[HasIdCondition({record_id}), content])


class _Point(NamedTuple):
    """A retrieved point: canonical id, payload (possibly partial), vectors if asked for."""

    id: str
    payload: dict[str, Any]
    vector: Any


class EdgeIndex:
    """:class:`hivemem.pool.ports.LocalIndex` on one Qdrant Edge shard under ``path``."""

    def __init__(self, path: Path, *, dim: int) -> None:
        self.path = path
        self.dim = dim
        self._lock = threading.Lock()
        #: A unit vector (cosine normalises a zero one to NaN) that scrubs a record's own.
        self._scrub_vector = [1.0] + [0.0] * (dim - 1)
        # id(where) -> (where, its Edge filter). Holding `where` keeps its id from being reused
        # by another object while the entry lives, so identity is a safe key.
        self._filters: dict[int, tuple[And, Filter]] = {}
        self._id_texts: dict[int, str] = {}
        #: Points were removed from a compacted shard since its last optimisation (see purge).
        self._unpurged = False
        if (path / "edge").exists():
            self._shard: EdgeShard | None = EdgeShard.load(str(path / "edge"), shard_config(dim))
        else:
            path.mkdir(parents=True, exist_ok=True)
            self._shard = EdgeShard.create(str(path / "edge"), shard_config(dim))
            create_payload_indexes(self._shard)
        #: Whether the shard has immutable segments (Edge only compacts when asked to).
        self._compacted = self._shard.info().segments_count > 1

    def _open(self) -> EdgeShard:
        if self._shard is None:
            raise MemoryClosed("the index is closed")
        return self._shard

    # -- writes ---------------------------------------------------------------------------------

    def upsert(self, records: Sequence[MemoryRecord], dense: Vector | None = None) -> None:
        """Raises InvalidInput for a vector of the wrong dimension (nothing is written)."""
        if not records:
            return
        check_vector_shapes(records, dense, self.dim)
        rows = list(dense) if dense is not None else [None] * len(records)
        points = [record_point(r, row) for r, row in zip(records, rows, strict=True)]
        with self._lock:
            self._open().update(UpdateOperation.upsert_points(points))

    def replace_content(self, pairs: Sequence[tuple[MemoryRecord, MemoryRecord]]) -> list[str]:
        """For each ``(read, new)`` pair of one record: ``new``'s content and labels
        (:data:`~hivemem.pool.adapters.edge_codec.CONTENT_KEYS`) on the live record, if it
        still holds ``read``'s content, checked and written in one engine operation (a record
        deleted, removed or given other content since is left alone); its other fields are
        kept. Returns the ids written. Raises InvalidInput for a pair of two ids."""
        ids = same_record(pairs)
        for record_id, (read, new) in zip(ids, pairs, strict=True):
            payload, unset = content_payload(new)
            with self._lock:
                shard = self._open()
                shard.update(
                    UpdateOperation.set_payload_by_filter(_holding(record_id, read), payload)
                )
                if unset:
                    shard.update(
                        UpdateOperation.delete_payload_by_filter(_holding(record_id, new), unset)
                    )
        now = {p.id: p.payload.get("content") for p in self._canonical_points(ids, ["content"])}
        return [i for i, (_, new) in zip(ids, pairs, strict=True) if now.get(i) == new.content]

    def update_fields(self, updates: Mapping[str, Mapping[str, object]]) -> None:
        """Every value is validated before anything changes; missing records raise
        MemoryNotFound, also before anything changes. Records that get the same changes are
        updated in one engine call, the lock taken per call so that searches interleave."""
        groups: dict[str, tuple[dict[str, object], list[int | UUID | str]]] = {}
        for record_id, fields in updates.items():
            payload = {k: encode_field(k, v) for k, v in fields.items()}
            key = repr(sorted(payload.items()))
            groups.setdefault(key, (payload, []))[1].append(check_record_id(record_id))
        self._require_live([str(i) for _, ids in groups.values() for i in ids])
        for payload, ids in groups.values():
            with self._lock:
                self._open().update(UpdateOperation.set_payload(ids, payload))

    def _require_live(self, ids: list[str]) -> None:
        """Raises MemoryNotFound for the first of ``ids`` (canonical) that is not a live record.
        Counted in the engine first: no point crosses into Python when all are there."""
        wanted: set[int | UUID | str] = set(ids)
        live = Filter(
            must=[HasIdCondition(wanted), FieldCondition("kind", match=MatchValue(KIND_RECORD))]
        )
        with self._lock:
            counted = self._open().count(CountRequest(filter=live, exact=True))
        if counted == len(wanted):
            return
        found = {point.id for point in self._canonical_points(ids, [])}
        missing = [i for i in ids if i not in found]
        if missing:
            raise MemoryNotFound(missing[0])

    def put_tombstones(self, tombstones: Sequence[Tombstone]) -> None:
        if not tombstones:
            return
        points = [tombstone_point(t) for t in tombstones]
        with self._lock:
            shard = self._open()
            self._scrub(shard, [check_record_id(t.id) for t in tombstones])
            # Upserting replaces the whole point: content and (scrubbed) vectors go with it.
            shard.update(UpdateOperation.upsert_points(points))
            self._note_removal()

    def remove(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        checked: list[int | UUID | str] = [check_record_id(i) for i in ids]
        with self._lock:
            shard = self._open()
            self._scrub(shard, checked)
            shard.update(UpdateOperation.delete_points(checked))
            self._note_removal()

    def _note_removal(self) -> None:
        """After points were replaced or deleted: in a compacted shard their old copies stay in
        an immutable segment until :meth:`purge` rewrites it."""
        if self._compacted:
            self._unpurged = True

    def purge(self) -> None:
        """Rewrite the immutable segments that still hold the bytes of replaced or deleted
        points (a no-op unless the shard was compacted and points were removed since)."""
        with self._lock:
            if self._unpurged:
                self._optimize()

    def compact(self) -> bool:
        """Turn a grown appendable segment into an immutable one and rewrite segments holding
        removed points; True when anything changed. Filtered lookups on an immutable segment
        measured 0.45 against 0.70 ms at 100k records. Blocks every call on this index (and,
        as Edge holds the GIL, the process) while it runs: ~10 s per 100k records."""
        with self._lock:
            return self._optimize()

    def _optimize(self) -> bool:
        """Run Edge's optimizers (the caller holds the lock). The segments they replace leave
        the disk only at the next flush, so it flushes at once."""
        shard = self._open()
        changed = bool(shard.optimize())
        shard.flush()
        self._unpurged = False
        self._compacted = self._compacted or changed
        return changed

    def _scrub(self, shard: EdgeShard, ids: list[int | UUID | str]) -> None:
        """Overwrite, in place, the vectors of the live records among ``ids`` (callers hold the
        lock and replace or delete those points next). Replacing or deleting a point only marks
        its vectors deleted: the bytes stayed in the segment's vector file, where a reader of
        the disk could find a forgotten record's embedding (tests/security/test_forget_scan.py).
        Updating the vectors writes over them."""
        live = [p.id for p in shard.retrieve(ids, ["kind"], False)
                if (p.payload or {}).get("kind") == KIND_RECORD]  # fmt: skip
        if live:
            scrubbed: dict[str, list[float] | EdgeSparse | list[list[float]]] = {
                DENSE: self._scrub_vector,
                SPARSE: EdgeSparse([], []),
            }
            shard.update(UpdateOperation.update_vectors([PointVectors(i, scrubbed) for i in live]))

    # -- reads ----------------------------------------------------------------------------------

    def _points(
        self,
        ids: Sequence[str],
        payload: bool | list[str],
        *,
        with_vectors: bool = False,
        tombstones: bool = False,
    ) -> list[_Point]:
        """The live points (or, with ``tombstones``, the tombstones) among ``ids``, ids checked
        and in canonical form, payload as selected."""
        return self._canonical_points(
            [check_record_id(i) for i in ids],
            payload,
            with_vectors=with_vectors,
            tombstones=tombstones,
        )

    def _canonical_points(
        self,
        canonical: Sequence[str],
        payload: bool | list[str],
        *,
        with_vectors: bool = False,
        tombstones: bool = False,
    ) -> list[_Point]:
        """:meth:`_points` of ids already checked and canonical."""
        if not canonical:
            return []
        selected = ["kind", *payload] if isinstance(payload, list) else payload
        wanted: list[int | UUID | str] = list(canonical)
        with self._lock:
            points = self._open().retrieve(wanted, selected, with_vectors)
        found = []
        for point in points:
            stored = point.payload or {}
            if (stored.get("kind") == KIND_TOMBSTONE) == tombstones:
                found.append(_Point(str(point.id), stored, point.vector))
        return found

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[MemoryRecord]:
        """Ids are matched in canonical (lower-case) form; a repeated id is returned once."""
        canonical = list(dict.fromkeys(check_record_id(i) for i in ids))
        found = {
            p.id: decode_record(p.id, p.payload, p.vector)
            for p in self._canonical_points(canonical, True, with_vectors=with_vectors)
        }
        return [found[i] for i in canonical if i in found]

    def presence(self, ids: Sequence[str]) -> dict[str, bool]:
        """For each of ``ids`` present: True when it is a tombstone, False when a live record."""
        canonical: list[int | UUID | str] = [check_record_id(i) for i in ids]
        if not canonical:
            return {}
        with self._lock:
            points = self._open().retrieve(canonical, ["kind"], False)
        return {str(p.id): (p.payload or {}).get("kind") == KIND_TOMBSTONE for p in points}

    def get_tombstones(self, ids: Sequence[str]) -> list[Tombstone]:
        return [decode_tombstone(p.id, p.payload) for p in self._points(ids, True, tombstones=True)]

    def nearest(self, requests: Sequence[NearestRequest]) -> list[list[ScoredId]]:
        batch = [self._query(r) for r in requests]
        with self._lock:
            results = self._open().query_batch(QueryBatchRequest(batch))
        return [[ScoredId(self._id_text(p.id), p.score) for p in points] for points in results]

    def _id_text(self, point_id: int | UUID | str) -> str:
        """``str(point_id)``, kept for ids that come back again: Edge makes a new UUID for every
        result, and formatting it cost ~1 µs, ~0.08 ms per hybrid search (80 candidates)."""
        if not isinstance(point_id, UUID):  # hivemem writes UUIDs only
            return str(point_id)
        key = point_id.int
        text = self._id_texts.get(key)
        if text is None:
            if len(self._id_texts) >= _ID_TEXT_CACHE:
                self._id_texts.clear()
            text = self._id_texts[key] = str(point_id)
        return text

    def _vector_filter(self, where: And) -> Filter:
        """``where`` translated for a vector lookup. Searches usually pass the same (immutable)
        expression again (see hivemem.agents.search), so translations are kept by identity."""
        cached = self._filters.get(id(where))
        if cached is not None and cached[0] is where:
            return cached[1]
        translated = to_edge_filter(where, vectors_only=True)
        if len(self._filters) >= _FILTER_CACHE:
            self._filters.clear()
        self._filters[id(where)] = (where, translated)
        return translated

    def neighbourhoods(self, ids: Sequence[str]) -> dict[str, Neighbourhood]:
        return {
            p.id: Neighbourhood(p.payload.get("session_id"), p.payload.get("follows"))
            for p in self._points(ids, _NEIGHBOURHOOD)
        }

    def _query(self, request: NearestRequest) -> QueryRequest:
        vector: Any
        if request.using == SPARSE:
            if not isinstance(request.vector, SparseVector):
                raise InvalidInput("a sparse lookup takes a SparseVector", field="vector")
            vector = EdgeSparse(request.vector.indices, request.vector.values)
        else:
            dense = np.asarray(request.vector, dtype=np.float32)
            if dense.shape != (self.dim,):
                raise InvalidInput(f"the query vector must be {self.dim}-d", field="vector")
            vector = dense.tolist()
        params = None
        if request.idf_corpus is not None:
            params = SearchParams(idf=IdfParams(corpus=self._vector_filter(request.idf_corpus)))
        return QueryRequest(
            query=Query.Nearest(vector, using=request.using),
            filter=self._vector_filter(request.where),
            params=params,
            limit=request.limit,
            score_threshold=request.score_threshold,
            with_payload=False,
            with_vector=False,
        )

    def _scroll(
        self, where: And, with_payload: bool | list[str], with_vector: bool
    ) -> Iterator[Any]:
        """Every live point matching ``where``, page by page, the lock taken per page."""
        return scroll_points(
            self._open,
            self._lock,
            to_edge_filter(where),
            with_payload=with_payload,
            with_vector=with_vector,
        )

    def scan(self, where: And, *, with_vectors: bool = False) -> Iterator[MemoryRecord]:
        for point in self._scroll(where, True, bool(with_vectors)):
            yield decode_record(point.id, point.payload or {}, point.vector)

    def tombstones(self, where: And) -> list[Tombstone]:
        return [Tombstone.of(record) for record in self.scan(where)]

    def ids(self, where: And) -> list[str]:
        """The ids of every live record matching ``where``, in id order."""
        return [str(point.id) for point in self._scroll(where, ["kind"], False)]

    def retention_facts(self, where: And) -> list[RetentionFacts]:
        return [
            decode_retention(p.id, p.payload or {}) for p in self._scroll(where, _RETENTION, False)
        ]

    def retention_facts_of(self, ids: Sequence[str]) -> list[RetentionFacts]:
        return [decode_retention(p.id, p.payload) for p in self._points(ids, _RETENTION)]

    def count(self, where: And) -> int:
        edge_filter = to_edge_filter(where)
        with self._lock:
            return int(self._open().count(CountRequest(filter=edge_filter, exact=True)))

    def facet(self, field: str, where: And) -> dict[str, int]:
        return facet_counts(self._open, self._lock, field, where)

    def size_bytes(self) -> int:
        return sum(f.stat().st_blocks * 512 for f in self.path.rglob("*") if f.is_file())

    def close(self) -> None:
        self.purge()
        with self._lock:
            if self._shard is not None:
                self._shard.close()
                self._shard = None

"""A zone's archive collection on Qdrant Edge: records kept compressed, filterable, restorable.

A point per archived record, without vectors in the index (the shard is configured with one
sparse vector it never uses, since Edge needs a vector configuration). The payload holds the
record's indexed fields (:data:`~hivemem.pool.adapters.edge_codec.INDEXED_FIELDS`, so that the
filters of :mod:`hivemem.pool.filters` apply, metadata conditions aside) and ``blob``: the whole
record, dense vector included, as zlib-compressed JSON (see :mod:`hivemem.pool.archive_codec`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from qdrant_edge import (
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    FieldCondition,
    Filter,
    HasIdCondition,
    MatchValue,
    Point,
    UpdateOperation,
)

from hivemem.pool.adapters.edge_codec import INDEXED_FIELDS, record_payload, same_record
from hivemem.pool.adapters.edge_filters import to_edge_filter
from hivemem.pool.adapters.edge_shards import create_payload_indexes, facet_counts, scroll_points
from hivemem.pool.archive_codec import pack, unpack
from hivemem.pool.errors import MemoryClosed
from hivemem.pool.filters import And
from hivemem.pool.ids import check_record_id
from hivemem.pool.records import MemoryRecord


def archive_payload(record: MemoryRecord) -> dict[str, Any]:
    """The indexed fields of ``record`` plus its compressed ``blob``."""
    payload = record_payload(record)
    indexed = {key: value for key, value in payload.items() if key in INDEXED_FIELDS}
    indexed["blob"] = pack(record)
    return indexed


def replacements(
    pairs: Sequence[tuple[MemoryRecord, MemoryRecord]], blobs: Mapping[str, str]
) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """For :meth:`EdgeArchive.replace` and its server twin: of the ``(read, new)`` pairs whose
    record the archive holds as read (``blobs``: the stored blob by id), each id with its blob
    now, ``new``'s payload, and the indexed keys that payload leaves out (to delete). Raises
    InvalidInput for a pair of two ids."""
    found = []
    for record_id, (read, new) in zip(same_record(pairs), pairs, strict=True):
        blob = blobs.get(record_id)
        if blob is not None and unpack(blob) == read:
            payload = archive_payload(new)
            unset = [key for key in INDEXED_FIELDS if key not in payload]
            found.append((record_id, blob, payload, unset))
    return found


def _holding(record_id: str, blob: str) -> Filter:
    """The archived point ``record_id`` while it holds ``blob``."""
    return Filter(
        must=[HasIdCondition({record_id}), FieldCondition("blob", match=MatchValue(blob))]
    )


class EdgeArchive:
    """One archive collection (a Qdrant Edge shard under ``path``). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        if (path / "edge").exists():
            self._shard: EdgeShard | None = EdgeShard.load(str(path / "edge"))
        else:
            path.mkdir(parents=True, exist_ok=True)
            config = EdgeConfig(sparse_vectors={"unused": EdgeSparseVectorParams()})
            self._shard = EdgeShard.create(str(path / "edge"), config)
            create_payload_indexes(self._shard)

    def _open(self) -> EdgeShard:
        if self._shard is None:
            raise MemoryClosed("the archive is closed")
        return self._shard

    def put(self, records: Sequence[MemoryRecord]) -> None:
        points = [Point(r.id, {}, archive_payload(r)) for r in records]
        with self._lock:
            self._open().update(UpdateOperation.upsert_points(points))

    def get(self, ids: Sequence[str]) -> list[MemoryRecord]:
        canonical: list[int | UUID | str] = [check_record_id(i) for i in ids]
        if not canonical:
            return []
        with self._lock:
            points = self._open().retrieve(canonical, ["blob"], False)
        found = {str(p.id): unpack((p.payload or {})["blob"]) for p in points}
        return [found[str(i)] for i in dict.fromkeys(canonical) if str(i) in found]

    def replace(self, pairs: Sequence[tuple[MemoryRecord, MemoryRecord]]) -> list[str]:
        """For each ``(read, new)`` pair of one record: the archived record replaced by ``new``
        if the archive still holds ``read``, checked and written in one engine operation (one
        changed or removed since is left alone). Returns the ids written. Raises InvalidInput
        for a pair of two ids."""
        ids = same_record(pairs)
        written = []
        for record_id, blob, payload, unset in replacements(pairs, self._blobs(ids)):
            with self._lock:
                shard = self._open()
                shard.update(
                    UpdateOperation.set_payload_by_filter(_holding(record_id, blob), payload)
                )
                if unset:
                    holding = _holding(record_id, payload["blob"])
                    shard.update(UpdateOperation.delete_payload_by_filter(holding, unset))
            written.append((record_id, payload["blob"]))
        now = self._blobs([record_id for record_id, _ in written])
        return [record_id for record_id, blob in written if now.get(record_id) == blob]

    def _blobs(self, ids: Sequence[str]) -> dict[str, str]:
        """The stored blob of each archived record among ``ids`` (canonical)."""
        if not ids:
            return {}
        wanted: list[int | UUID | str] = list(ids)
        with self._lock:
            points = self._open().retrieve(wanted, ["blob"], False)
        return {str(p.id): (p.payload or {})["blob"] for p in points}

    def ids(self, where: And) -> list[str]:
        points = scroll_points(
            self._open, self._lock, to_edge_filter(where), with_payload=["kind"], with_vector=False
        )
        return [str(p.id) for p in points]

    def facet(self, field: str, where: And) -> dict[str, int]:
        return facet_counts(self._open, self._lock, field, where)

    def remove(self, ids: Sequence[str]) -> None:
        checked: list[int | UUID | str] = [check_record_id(i) for i in ids]
        if checked:
            with self._lock:
                self._open().update(UpdateOperation.delete_points(checked))

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.close()
                self._shard = None

"""The zone store on a Qdrant server, through qdrant-client (REST).

Per zone, two collections, created on first use: ``<namespace>_<zone>`` (named vectors
``dense``, cosine, and ``sparse``, IDF-weighted) and ``<namespace>_<zone>_archive`` (no vectors:
the archived record, vectors included, is packed in its ``blob`` payload, see
:mod:`hivemem.pool.archive_codec`), both with a payload index on every key of
:data:`~hivemem.pool.adapters.edge_codec.INDEXED_FIELDS`. Points are laid out exactly as on
Qdrant Edge (:mod:`hivemem.pool.adapters.edge_codec`), so the two zone stores hold the same data
and answer the same filters (:mod:`hivemem.pool.adapters.qdrant_filters`).

Writes wait for the server to apply them (``wait=True``) and are upserts by id, so a retried
write is harmless. Errors of the client and its transport are mapped here: an unreachable or
failing server raises :class:`StoreUnavailable`, a server that refuses a well-formed request (a
collection made with another dimension, another schema) :class:`StoreIncompatible`.

Thread safety: the store is as thread-safe as its client; the REST client is, qdrant-client's
local engine (used by the tests) is not meant for concurrent use.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import httpx
import structlog
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from hivemem.pool.adapters.edge_archive import archive_payload, replacements
from hivemem.pool.adapters.edge_codec import (
    DENSE,
    FIELD_KEYS,
    INDEXED_FIELDS,
    KIND_TOMBSTONE,
    SPARSE,
    content_payload,
    decode_record,
    encode_field,
    record_payload,
    same_record,
    tombstone_payload,
)
from hivemem.pool.adapters.payload_rules import check_vector_shapes
from hivemem.pool.adapters.qdrant_conditions import Swap, requests
from hivemem.pool.adapters.qdrant_filters import to_qdrant_filter
from hivemem.pool.archive_codec import unpack
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import (
    InvalidFilter,
    InvalidInput,
    MemoryClosed,
    MemoryNotFound,
    StoreIncompatible,
    StoreUnavailable,
)
from hivemem.pool.filters import And
from hivemem.pool.ids import check_record_id
from hivemem.pool.ports import Vector, tombstones_in
from hivemem.pool.records import MemoryRecord, Tombstone

log = structlog.get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "float": models.PayloadSchemaType.FLOAT,
    "integer": models.PayloadSchemaType.INTEGER,
    "datetime": models.PayloadSchemaType.DATETIME,
}
_SCROLL_PAGE = 512
#: Points per upsert request (the server refuses requests above 32 MB by default).
_WRITE_BATCH = 256
_FACET_LIMIT = 1_000_000
#: Statuses besides 5xx that mean "the server will not serve now", not "the request is wrong".
_UNAVAILABLE = frozenset({401, 403, 408, 429})
_CONFLICT = 409
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _checked(ids: Sequence[str]) -> list[str]:
    return [check_record_id(i) for i in ids]


def _record_point(record: MemoryRecord, dense: Any) -> models.PointStruct:
    """``dense`` (a float32 row) replaces ``record.vector`` when given."""
    vectors: dict[str, Any] = {}
    if dense is not None:
        vectors[DENSE] = dense.tolist()
    elif record.vector is not None:
        vectors[DENSE] = record.vector
    if record.sparse is not None and record.sparse.indices:
        sparse = record.sparse
        vectors[SPARSE] = models.SparseVector(indices=sparse.indices, values=sparse.values)
    payload = record_payload(record)
    return models.PointStruct(id=check_record_id(record.id), vector=vectors, payload=payload)


def _tombstone_point(tombstone: Tombstone) -> models.PointStruct:
    payload = tombstone_payload(tombstone)
    return models.PointStruct(id=check_record_id(tombstone.id), vector={}, payload=payload)


def _is_live(point: models.Record) -> bool:
    return (point.payload or {}).get("kind") != KIND_TOMBSTONE


class QdrantZoneStore:
    """:class:`hivemem.pool.ports.ZoneStore` on the Qdrant behind ``client``.

    ``dim`` is the dense vectors' dimension; an existing live collection with another one raises
    StoreIncompatible on first use. The store owns the client: :meth:`close` closes it.
    """

    def __init__(self, client: QdrantClient, *, dim: int, namespace: str = "hivemem") -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise InvalidInput(f"namespace must match {_NAMESPACE.pattern}", field="namespace")
        self.dim = dim
        self.namespace = namespace
        self._client = client
        self._lock = threading.Lock()
        self._ready: set[str] = set()
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        dim: int,
        api_key: str | None = None,
        namespace: str = "hivemem",
        timeout_s: int | None = None,
    ) -> QdrantZoneStore:
        """A store on the Qdrant server at ``url`` (REST), with an optional API key."""
        client = QdrantClient(url=url, api_key=api_key, timeout=timeout_s)
        return cls(client, dim=dim, namespace=namespace)

    # -- collections ----------------------------------------------------------------------------

    def collection(self, zone: Zone, *, archive: bool = False) -> str:
        """The collection's name: ``<namespace>_<zone>`` (``_archive`` appended for archives).
        Raises InvalidInput for an unknown zone."""
        return f"{self.namespace}_{checked_zone(zone).value}{'_archive' if archive else ''}"

    @contextmanager
    def session(self) -> Iterator[None]:
        """A unit of work (one task). Nothing to hold open on a server: a no-op."""
        yield

    def close(self) -> None:
        """Close the client; further calls raise MemoryClosed. Closing twice is harmless."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._client.close()

    def _call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One client call, its errors mapped to hivemem's."""
        if self._closed:
            raise MemoryClosed("the zone store is closed")
        try:
            return method(*args, **kwargs)
        except ResponseHandlingException as error:
            cause = error.source
            if isinstance(cause, httpx.TransportError):
                raise StoreUnavailable(f"Qdrant is unreachable: {type(cause).__name__}") from error
            raise StoreIncompatible(
                f"unreadable answer from Qdrant: {type(cause).__name__}"
            ) from error
        except UnexpectedResponse as error:
            status = error.status_code
            if status is None or status >= 500 or status in _UNAVAILABLE:
                raise StoreUnavailable(f"Qdrant cannot serve ({status})") from error
            # The server's text (it may quote a payload) stays in the chained error, out of ours.
            reason = f"{status} {error.reason_phrase}"
            raise StoreIncompatible(f"Qdrant refused the request ({reason})") from error

    def _live(self, zone: Zone) -> str:
        return self._ensure(self.collection(zone), archive=False)

    def _archive(self, zone: Zone) -> str:
        return self._ensure(self.collection(zone, archive=True), archive=True)

    def _ensure(self, name: str, *, archive: bool) -> str:
        """The collection ``name``, created (with its payload indexes) if it does not exist."""
        if self._closed:
            raise MemoryClosed("the zone store is closed")
        if name not in self._ready:
            with self._lock:
                if name not in self._ready:
                    self._call(self._prepare, name, archive=archive)
                    self._ready.add(name)
        return name

    def _prepare(self, name: str, *, archive: bool) -> None:
        if not self._client.collection_exists(name):
            self._create(name, archive=archive)
        info = self._client.get_collection(name)
        if not archive:
            vectors = info.config.params.vectors
            params = vectors.get(DENSE) if isinstance(vectors, dict) else None
            if params is None or params.size != self.dim:
                raise StoreIncompatible(f"collection {name} does not hold {self.dim}-d vectors")
        for key, kind in INDEXED_FIELDS.items():
            if key not in info.payload_schema:
                self._client.create_payload_index(name, key, _SCHEMA[kind], wait=True)

    def _create(self, name: str, *, archive: bool) -> None:
        vectors: dict[str, models.VectorParams] = {}
        sparse: dict[str, models.SparseVectorParams] | None = None
        if not archive:
            vectors[DENSE] = models.VectorParams(size=self.dim, distance=models.Distance.COSINE)
            sparse = {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)}
        try:
            self._client.create_collection(
                name, vectors_config=vectors, sparse_vectors_config=sparse
            )
        except UnexpectedResponse as error:
            if error.status_code != _CONFLICT:  # 409: another process created it meanwhile
                raise
            return
        log.info("zone_collection_created", collection=name)

    # -- engine calls shared by both collections ------------------------------------------------

    def _write(self, name: str, points: list[models.PointStruct]) -> None:
        for start in range(0, len(points), _WRITE_BATCH):
            batch = points[start : start + _WRITE_BATCH]
            self._call(self._client.upsert, name, batch, wait=True)

    def _retrieve(
        self, name: str, ids: list[str], payload: bool | list[str], *, vectors: bool = False
    ) -> list[models.Record]:
        if not ids:
            return []
        return self._call(
            self._client.retrieve, name, ids, with_payload=payload, with_vectors=vectors
        )

    def _delete(self, name: str, ids: list[str]) -> None:
        selector = models.PointIdsList(points=list(ids))
        self._call(self._client.delete, name, selector, wait=True)

    def _scroll(
        self, name: str, where: models.Filter, payload: bool | list[str], vectors: bool
    ) -> Iterator[models.Record]:
        """Every point matching ``where``, in id order, page by page."""
        offset: Any = None
        while True:
            points, offset = self._call(
                self._client.scroll,
                name,
                where,
                limit=_SCROLL_PAGE,
                offset=offset,
                with_payload=payload,
                with_vectors=vectors,
            )
            yield from points
            if offset is None:
                return

    # -- the live collections -------------------------------------------------------------------

    def upsert(
        self, zone: Zone, records: Sequence[MemoryRecord], dense: Vector | None = None
    ) -> None:
        """Raises InvalidInput for a vector of the wrong dimension (nothing is written)."""
        if not records:
            return
        check_vector_shapes(records, dense, self.dim)
        rows = list(dense) if dense is not None else [None] * len(records)
        points = [_record_point(r, row) for r, row in zip(records, rows, strict=True)]
        self._write(self._live(zone), points)

    def put_tombstones(self, zone: Zone, tombstones: Sequence[Tombstone]) -> None:
        if not tombstones:
            return
        points = [_tombstone_point(t) for t in tombstones]
        # Upserting replaces the whole point: content and vectors are gone with it.
        self._write(self._live(zone), points)
        self._delete(self._archive(zone), [str(p.id) for p in points])

    def presence(self, zone: Zone, ids: Sequence[str]) -> dict[str, bool]:
        points = self._retrieve(self._live(zone), _checked(ids), ["kind"])
        return {str(p.id): not _is_live(p) for p in points}

    def get(
        self, zone: Zone, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        """Ids are matched in canonical (lower-case) form; a repeated id is returned once."""
        canonical = _checked(ids)
        points = self._retrieve(self._live(zone), canonical, True, vectors=with_vectors)
        found = {
            str(p.id): decode_record(p.id, p.payload or {}, p.vector) for p in points if _is_live(p)
        }
        return [found[i] for i in dict.fromkeys(canonical) if i in found]

    def scan(self, zone: Zone, where: And, *, with_vectors: bool = False) -> Iterator[MemoryRecord]:
        """Read lazily, page by page; the filter is checked (InvalidFilter) before returning."""
        points = self._scroll(self._live(zone), to_qdrant_filter(where), True, with_vectors)
        return (decode_record(p.id, p.payload or {}, p.vector) for p in points)

    def ids(self, zone: Zone, where: And) -> list[str]:
        points = self._scroll(self._live(zone), to_qdrant_filter(where), False, False)
        return [str(p.id) for p in points]

    def count(self, zone: Zone, where: And) -> int:
        name, qdrant_filter = self._live(zone), to_qdrant_filter(where)
        return self._call(self._client.count, name, qdrant_filter, exact=True).count

    def facet(self, zone: Zone, field: str, where: And) -> dict[str, int]:
        """Raises InvalidFilter for a field that is not a keyword field."""
        return self._facet(self._live(zone), field, where)

    def _facet(self, name: str, field: str, where: And) -> dict[str, int]:
        key = FIELD_KEYS.get(field, field)
        if INDEXED_FIELDS.get(key) != "keyword":
            raise InvalidFilter(f"cannot count by {field[:80]!r}", field="field")
        qdrant_filter = to_qdrant_filter(where)
        response = self._call(
            self._client.facet, name, key, qdrant_filter, limit=_FACET_LIMIT, exact=True
        )
        return {str(hit.value): hit.count for hit in response.hits}

    def update_fields(self, zone: Zone, updates: Mapping[str, Mapping[str, object]]) -> None:
        """Every value is validated (InvalidInput) and every record looked up (MemoryNotFound
        for one missing or tombstoned) before anything changes. Records that get the same
        changes are updated in one call."""
        groups: dict[str, tuple[dict[str, object], list[str]]] = {}
        for record_id, fields in updates.items():
            payload = {k: encode_field(k, v) for k, v in fields.items()}
            key = repr(sorted(payload.items()))
            groups.setdefault(key, (payload, []))[1].append(check_record_id(record_id))
        if not groups:
            return
        name = self._live(zone)
        wanted = [i for _, ids in groups.values() for i in ids]
        found = {str(p.id) for p in self._retrieve(name, wanted, ["kind"]) if _is_live(p)}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise MemoryNotFound(missing[0])
        for payload, ids in groups.values():
            if payload:
                points = models.PointIdsList(points=list(ids))
                self._call(self._client.set_payload, name, payload, points, wait=True)

    def replace_content(
        self, zone: Zone, pairs: Sequence[tuple[MemoryRecord, MemoryRecord]]
    ) -> list[str]:
        """The condition is checked by the server as it applies each write; many records go
        in one request (:mod:`hivemem.pool.adapters.qdrant_conditions`)."""
        ids = same_record(pairs)
        if not ids:
            return []
        name = self._live(zone)
        swaps = [
            Swap(i, "content", read.content, *content_payload(new))
            for i, (read, new) in zip(ids, pairs, strict=True)
        ]
        self._swap(name, swaps)
        points = self._retrieve(name, ids, ["content"])
        now = {str(p.id): (p.payload or {}).get("content") for p in points}
        return [i for i, (_, new) in zip(ids, pairs, strict=True) if now.get(i) == new.content]

    def _swap(self, name: str, swaps: Sequence[Swap]) -> None:
        for operations in requests(swaps):
            self._call(self._client.batch_update_points, name, operations, wait=True)

    def remove(self, zone: Zone, ids: Sequence[str]) -> None:
        checked = _checked(ids)
        if checked:
            self._delete(self._live(zone), checked)

    # -- the archive collections ----------------------------------------------------------------

    def archive_put(self, zone: Zone, records: Sequence[MemoryRecord]) -> None:
        points = [
            models.PointStruct(id=check_record_id(r.id), vector={}, payload=archive_payload(r))
            for r in records
        ]
        if points:
            self._write(self._archive(zone), points)

    def archive_get(self, zone: Zone, ids: Sequence[str]) -> list[MemoryRecord]:
        canonical = _checked(ids)
        points = self._retrieve(self._archive(zone), canonical, ["blob"])
        found = {str(p.id): unpack((p.payload or {})["blob"]) for p in points}
        return [found[i] for i in dict.fromkeys(canonical) if i in found]

    def archive_replace(
        self, zone: Zone, pairs: Sequence[tuple[MemoryRecord, MemoryRecord]]
    ) -> list[str]:
        """The condition (the blob read) is checked by the server as it applies each write."""
        ids = same_record(pairs)
        if not ids:
            return []
        name = self._archive(zone)
        found = replacements(pairs, self._blobs(name, ids))
        self._swap(
            name, [Swap(i, "blob", blob, payload, unset) for i, blob, payload, unset in found]
        )
        now = self._blobs(name, [i for i, *_ in found])
        return [i for i, _, payload, _ in found if now.get(i) == payload["blob"]]

    def _blobs(self, name: str, ids: list[str]) -> dict[str, str]:
        """The stored blob of each archived record among ``ids`` (canonical)."""
        return {str(p.id): (p.payload or {})["blob"] for p in self._retrieve(name, ids, ["blob"])}

    def archive_ids(self, zone: Zone, where: And) -> list[str]:
        points = self._scroll(self._archive(zone), to_qdrant_filter(where), False, False)
        return [str(p.id) for p in points]

    def archive_facet(self, zone: Zone, field: str, where: And) -> dict[str, int]:
        """Raises InvalidFilter for a field that is not a keyword field."""
        return self._facet(self._archive(zone), field, where)

    def tombstones(self, zone: Zone, where: And) -> list[Tombstone]:
        return tombstones_in(self, zone, where)

    def archive_remove(self, zone: Zone, ids: Sequence[str]) -> None:
        checked = _checked(ids)
        if checked:
            self._delete(self._archive(zone), checked)

"""The ports: what hivemem needs from the outside world, as Protocols.

Adapters live beside the code that owns them (``pool/adapters/`` for stores). Fakes of these ports
are fine in unit tests of the logic above them; the adapters themselves are tested against the
real engines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from hivemem.pool.enums import Tier, Zone
from hivemem.pool.filters import And
from hivemem.pool.records import MemoryRecord, SparseVector, Tombstone

Vector = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns text into dense vectors. Rows are unit length; similarity is the dot product."""

    model_id: str
    dim: int

    def embed_documents(self, texts: Sequence[str]) -> Vector:
        """Shape (len(texts), dim), float32."""
        ...

    def embed_query(self, text: str) -> Vector:
        """Shape (dim,), float32."""
        ...


class SparseEncoder(Protocol):
    """Turns text into sparse term vectors (BM25 weights for documents, 1 per term for queries)."""

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]: ...

    def encode_query(self, text: str) -> SparseVector: ...


@dataclass(frozen=True, slots=True)
class NearestRequest:
    """One nearest-neighbour lookup: ``using`` names the vector ("dense" or "sparse")."""

    using: Literal["dense", "sparse"]
    vector: Vector | SparseVector
    where: And
    limit: int
    score_threshold: float | None = None
    #: Sparse lookups: the records whose statistics give term rarity (IDF); None = all records.
    idf_corpus: And | None = None


@dataclass(frozen=True, slots=True)
class ScoredId:
    """A record id with its score for one request (higher is better)."""

    id: str
    score: float


@dataclass(frozen=True, slots=True)
class Neighbourhood:
    """Where a record sits in its conversation: its session and the record it follows. Both are
    immutable, so callers may cache them."""

    session_id: str | None
    follows: str | None


@dataclass(frozen=True, slots=True)
class RetentionFacts:
    """What tier management needs to know about a record (see hivemem.agents.tiers)."""

    id: str
    tier: Tier
    importance: float
    access_count: int
    last_accessed_at: datetime | None
    recorded_at: datetime


class LocalIndex(Protocol):
    """An agent's local store of records and tombstones, searchable by vector and filter.

    Conditions in ``where`` use the field names of :mod:`hivemem.pool.filters` plus the scope
    fields ``scope.user_id``, ``scope.session_id``, ``scope.agent_id`` and ``scope.run_id``.
    Tombstones never appear in queries, scans, counts or facets. Writes are durable when the
    call returns.
    """

    def upsert(self, records: Sequence[MemoryRecord], dense: Vector | None = None) -> None:
        """Insert or replace records (by id), vectors included; ``dense`` (one float32 row per
        record) replaces the records' own dense vectors when given."""
        ...

    def update_fields(self, updates: Mapping[str, Mapping[str, object]]) -> None:
        """Change bookkeeping fields of existing records: ``{record_id: {field: value}}``."""
        ...

    def put_tombstones(self, tombstones: Sequence[Tombstone]) -> None:
        """Replace records by tombstones (the content and vectors are destroyed; see purge)."""
        ...

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[MemoryRecord]:
        """The live records among ``ids``, in the order of ``ids``; missing ids are skipped."""
        ...

    def presence(self, ids: Sequence[str]) -> dict[str, bool]:
        """For each of ``ids`` that is stored: True for a tombstone, False for a live record."""
        ...

    def get_tombstones(self, ids: Sequence[str]) -> list[Tombstone]:
        """The tombstones among ``ids``."""
        ...

    def nearest(self, requests: Sequence[NearestRequest]) -> list[list[ScoredId]]:
        """Run the requests (in one engine call where possible); best first."""
        ...

    def neighbourhoods(self, ids: Sequence[str]) -> dict[str, Neighbourhood]:
        """The neighbourhood of each live record among ``ids``."""
        ...

    def scan(self, where: And, *, with_vectors: bool = False) -> Iterator[MemoryRecord]:
        """Every live record matching ``where``, in id order."""
        ...

    def tombstones(self, where: And) -> list[Tombstone]:
        """A tombstone (deleted now) for each live record matching ``where``, made without
        opening content: a record whose content cannot be opened any more (its user forgotten,
        its key retired) gets one too. What a forget or an expiry writes."""
        ...

    def retention_facts(self, where: And) -> list[RetentionFacts]:
        """The retention facts of every live record matching ``where``."""
        ...

    def retention_facts_of(self, ids: Sequence[str]) -> list[RetentionFacts]:
        """The retention facts of the live records among ``ids``."""
        ...

    def count(self, where: And) -> int:
        """How many live records match ``where``."""
        ...

    def facet(self, field: str, where: And) -> dict[str, int]:
        """Count of live records matching ``where`` per value of a keyword field."""
        ...

    def remove(self, ids: Sequence[str]) -> None:
        """Physically remove records and tombstones (no trace is kept once :meth:`purge`
        returns)."""
        ...

    def purge(self) -> None:
        """Erase from disk what earlier put_tombstones and remove calls destroyed, where the
        store keeps it until then; callers that destroy data call it once they are done."""
        ...

    def compact(self) -> bool:
        """Reorganise the store for faster lookups (and purge); True when anything changed."""
        ...

    def size_bytes(self) -> int:
        """Bytes the index occupies on disk."""
        ...

    def close(self) -> None:
        """Flush and release the store; further calls raise MemoryClosed."""
        ...


class WriteObserver(Protocol):
    """Told of every write a memory makes, inside its write lock, before the write returns to
    its caller (the pool's outbox is one). An exception aborts the acknowledgement."""

    def records_written(self, records: Sequence[MemoryRecord], dense: Vector | None) -> None:
        """New records (``dense``: their vectors as rows, else each record's ``vector``)."""
        ...

    def tombstones_written(self, tombstones: Sequence[Tombstone]) -> None: ...


@dataclass(frozen=True, slots=True)
class Intent:
    """A write a memory noted before making it: new records (``kind`` "records") or the
    deletion of records (``kind`` "tombstones", deleted at ``deleted_at``), named by id."""

    entry: int
    kind: Literal["records", "tombstones"]
    ids: tuple[str, ...]
    deleted_at: datetime | None = None


class WriteJournal(Protocol):
    """Where a memory notes each write its observers must hear of, before its index changes,
    and crosses it off once they have: a process killed in between leaves the note, and the
    next process finishes the write (:mod:`hivemem.agents.write_ahead`). The agent's outbox is
    one. A note is durable when :meth:`note` returns."""

    def note(
        self,
        kind: Literal["records", "tombstones"],
        ids: Sequence[str],
        deleted_at: datetime | None = None,
    ) -> int:
        """Note an intent; returns its entry."""
        ...

    def cross_off(self, entry: int) -> None:
        """Drop a finished intent (an unknown entry is ignored)."""
        ...

    def unfinished(self) -> list[Intent]:
        """The intents not crossed off, oldest first."""
        ...


# -- ports the pool, workers and security issues implement ------------------------------------
# Their shapes are the smallest the design brief implies; the issue that builds each adapter
# may widen them.


def tombstones_in(store: ZoneStore, zone: Zone, where: And) -> list[Tombstone]:
    """:meth:`ZoneStore.tombstones` of a store that keeps content as given (the adapters)."""
    found = {r.id: Tombstone.of(r) for r in store.scan(zone, where)}
    archived = [i for i in store.archive_ids(zone, where) if i not in found]
    found |= {r.id: Tombstone.of(r) for r in store.archive_get(zone, archived)}
    return list(found.values())


class ZoneStore(Protocol):
    """The shared store the workers keep: per zone, a live collection and an archive collection
    (Qdrant collections ``<namespace>_<zone>`` and ``<namespace>_<zone>_archive``).

    Filters (``where``) use the field names of :mod:`hivemem.pool.filters`, as in LocalIndex;
    tombstones never appear in reads, scans or counts. Writes are idempotent by record id and
    durable when the call returns. Archived records are kept compressed, without their vectors
    in the index (they come back with them on restore); archive filters take the same fields.
    """

    @property
    def dim(self) -> int:
        """The dimension of the dense vectors it keeps."""
        ...

    def upsert(
        self, zone: Zone, records: Sequence[MemoryRecord], dense: Vector | None = None
    ) -> None:
        """Insert or replace records by id; ``dense`` rows replace the records' own vectors."""
        ...

    def put_tombstones(self, zone: Zone, tombstones: Sequence[Tombstone]) -> None:
        """Replace records by tombstones (content and vectors destroyed, in live and archive)."""
        ...

    def presence(self, zone: Zone, ids: Sequence[str]) -> dict[str, bool]:
        """For each of ``ids`` stored live: True for a tombstone, False for a live record."""
        ...

    def get(
        self, zone: Zone, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        """The live records among ``ids``, in the order of ``ids``; missing ids are skipped."""
        ...

    def scan(self, zone: Zone, where: And, *, with_vectors: bool = False) -> Iterator[MemoryRecord]:
        """Every live record matching ``where``, in id order."""
        ...

    def ids(self, zone: Zone, where: And) -> list[str]:
        """The ids of the live records matching ``where``, in id order (no payload read)."""
        ...

    def count(self, zone: Zone, where: And) -> int:
        """How many live records match ``where``."""
        ...

    def facet(self, zone: Zone, field: str, where: And) -> dict[str, int]:
        """Count of live records matching ``where`` per value of a keyword field."""
        ...

    def update_fields(self, zone: Zone, updates: Mapping[str, Mapping[str, object]]) -> None:
        """Change bookkeeping fields of live records: ``{record_id: {field: value}}``."""
        ...

    def remove(self, zone: Zone, ids: Sequence[str]) -> None:
        """Physically remove live records and tombstones (no trace is kept)."""
        ...

    def archive_put(self, zone: Zone, records: Sequence[MemoryRecord]) -> None:
        """Store records (vectors included) in the zone's archive, compressed; by id."""
        ...

    def archive_get(self, zone: Zone, ids: Sequence[str]) -> list[MemoryRecord]:
        """The archived records among ``ids`` (with vectors), in the order of ``ids``."""
        ...

    def archive_ids(self, zone: Zone, where: And) -> list[str]:
        """The ids of the archived records matching ``where``, in id order."""
        ...

    def archive_facet(self, zone: Zone, field: str, where: And) -> dict[str, int]:
        """Count of archived records matching ``where`` per value of a keyword field (the
        archive keeps the indexed fields beside each compressed record)."""
        ...

    def archive_remove(self, zone: Zone, ids: Sequence[str]) -> None:
        """Delete archived records (unknown ids are ignored)."""
        ...

    def tombstones(self, zone: Zone, where: And) -> list[Tombstone]:
        """A tombstone for each record, live or archived, matching ``where`` (one per id),
        made without reading content: a record whose content cannot be opened any more (its
        key retired) gets one too. What a forget writes."""
        ...

    def session(self) -> AbstractContextManager[None]:
        """A unit of work (one task): an embedded store stays open in this process for its
        duration; a server store has nothing to hold."""
        ...

    def close(self) -> None:
        """Release the store; further calls raise MemoryClosed."""
        ...


class ResealableZoneStore(ZoneStore, Protocol):
    """A zone store whose records can be given new content in place, on condition, as a re-seal
    after a key rotation does (the adapters; :class:`~hivemem.security.zone_store.SecureZoneStore`
    writes through them). Each record is checked and written in one engine operation, so that
    what another worker changed meanwhile (a delete, a new version's link) stays as it made it.
    """

    def replace_content(
        self, zone: Zone, pairs: Sequence[tuple[MemoryRecord, MemoryRecord]]
    ) -> list[str]:
        """For each ``(read, new)`` pair of one record: give the live record ``new``'s content,
        tags, entities and metadata, if it still holds ``read``'s content; its other fields
        (tier, links, times) are kept as they are now. A record deleted, removed or given other
        content since it was read is left alone. Returns the ids written. Raises InvalidInput
        for a pair of two ids (nothing is written)."""
        ...

    def archive_replace(
        self, zone: Zone, pairs: Sequence[tuple[MemoryRecord, MemoryRecord]]
    ) -> list[str]:
        """For each ``(read, new)`` pair of one record: replace the archived record by ``new``
        if the archive still holds ``read`` as it was; one changed or removed since is left
        alone. Returns the ids written. Raises InvalidInput for a pair of two ids."""
        ...

"""The zone store with its content sealed and its vectors keyed: a ZoneStore around another.

:class:`SecureZoneStore` wraps either adapter (Qdrant Edge or a Qdrant server: a
:class:`~hivemem.pool.ports.ResealableZoneStore`) and keeps in it, per record:

- ``content`` sealed with its tags, entities and metadata
  (:class:`~hivemem.security.content_seal.ContentSeal`: the zone's active data key and the
  record's user's subject secret, the record id bound in), and those labels in the payload as
  keyed tokens that filters are rewritten to match (:mod:`hivemem.security.label_tokens`);
- the dense vector rotated and the sparse term ids permuted by the zone's keyed
  :class:`~hivemem.security.vector_transform.VectorTransform` (see docs/security.md for what
  that resists and what it does not).

Reads give the original record back: content opened, vectors restored. A record whose key is
gone — its user was forgotten (the subject secret shredded) or its data key retired before it
was re-sealed — cannot be read by anyone: reads skip it (logged, without content). Content that
is not sealed (written before security was on) is returned as stored. Ids, scope, levels, tiers,
times and metadata keys stay in clear: the workers filter on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager

import numpy as np
import structlog

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, KeyUnavailable
from hivemem.pool.filters import And
from hivemem.pool.ports import ResealableZoneStore, Vector
from hivemem.pool.records import MemoryRecord, SparseVector, Tombstone
from hivemem.security.content_seal import ContentSeal
from hivemem.security.keyring import ZoneKeyring
from hivemem.security.label_tokens import LabelTokens, check_facet
from hivemem.security.sealing import Sealer
from hivemem.security.vector_transform import VectorTransform

log = structlog.get_logger(__name__)

#: The dimension of the transform used for sparse terms only (their permutation depends on the
#: key alone; a 1-d rotation costs nothing to build).
_SPARSE_ONLY = 1
#: Records re-sealed per read and write of the store.
_RESEAL_BATCH = 512


class SecureZoneStore:
    """A :class:`~hivemem.pool.ports.ZoneStore` sealing what it keeps in ``inner``."""

    def __init__(
        self,
        inner: ResealableZoneStore,
        keyring: ZoneKeyring,
        *,
        clear_metadata_keys: Iterable[str] = (),
    ) -> None:
        """``clear_metadata_keys``: the metadata keys kept in clear in the payload."""
        self.inner = inner
        self._keyring = keyring
        self._content = ContentSeal(Sealer(keyring), LabelTokens(keyring, clear_metadata_keys))
        self._transforms: dict[tuple[Zone, int], VectorTransform] = {}

    @property
    def dim(self) -> int:
        return self.inner.dim

    # -- the transformation -----------------------------------------------------------------

    def _transform(self, zone: Zone, dim: int) -> VectorTransform:
        found = self._transforms.get((zone, dim))
        if found is None:
            found = VectorTransform(self._keyring.vector_key(zone), dim)
            self._transforms[(zone, dim)] = found
        return found

    def _outgoing(
        self, zone: Zone, records: Sequence[MemoryRecord], dense: Vector | None
    ) -> tuple[list[MemoryRecord], Vector | None]:
        """``records`` as stored: content sealed, vectors transformed. The rows are ``dense``'s,
        else the records' own vectors when every record has one; else each record keeps its own
        (transformed) vector, and those without one stay without."""
        rows = None if dense is None else np.asarray(dense, dtype=np.float32)
        if rows is None and records and all(r.vector is not None for r in records):
            rows = np.asarray([r.vector for r in records], dtype=np.float32)
        if rows is not None and rows.size:
            rows = self._transform(zone, rows.shape[1]).forward_dense(rows)
        stored = []
        for record, sealed in zip(records, self._content.sealed_many(records), strict=True):
            update: dict[str, object] = {"vector": None}
            if rows is None and record.vector is not None:
                own = np.asarray(record.vector, dtype=np.float32)
                update["vector"] = self._transform(zone, len(own)).forward_dense(own).tolist()
            if record.sparse is not None and record.sparse.indices:
                terms = self._transform(zone, _SPARSE_ONLY)
                ids, values = terms.forward_sparse(record.sparse.indices, record.sparse.values)
                update["sparse"] = SparseVector(indices=ids, values=values)
            stored.append(sealed.model_copy(update=update))
        return stored, rows

    def _incoming(self, zone: Zone, records: Iterable[MemoryRecord]) -> Iterator[MemoryRecord]:
        """Stored records as they were written; those whose key is gone are skipped."""
        for record in records:
            try:
                opened = self._content.opened(record)
            except KeyUnavailable as error:
                log.info("zone_record_unreadable", zone=zone.value, record_id=record.id,
                         why=str(error)[:120])  # fmt: skip
                continue
            update: dict[str, object] = {}
            if record.vector is not None:
                transform = self._transform(zone, len(record.vector))
                update["vector"] = transform.inverse_dense(
                    np.asarray(record.vector, dtype=np.float32)
                ).tolist()
            if record.sparse is not None and record.sparse.indices:
                terms = self._transform(zone, _SPARSE_ONLY)
                ids, values = terms.inverse_sparse(record.sparse.indices, record.sparse.values)
                update["sparse"] = SparseVector(indices=ids, values=values)
            yield opened.model_copy(update=update) if update else opened

    def _where(self, zone: Zone, where: And, *, archive: bool = False) -> And:
        """``where`` matching labels by their tokens (LabelTokens.rewrite)."""
        facet = self.inner.archive_facet if archive else self.inner.facet
        return self._content.tokens.rewrite(where, lambda rest: facet(zone, "scope.user_id", rest))

    # -- ZoneStore ----------------------------------------------------------------------------

    def upsert(
        self, zone: Zone, records: Sequence[MemoryRecord], dense: Vector | None = None
    ) -> None:
        stored, rows = self._outgoing(zone, records, dense)
        self.inner.upsert(zone, stored, rows)

    def put_tombstones(self, zone: Zone, tombstones: Sequence[Tombstone]) -> None:
        self.inner.put_tombstones(zone, tombstones)

    def presence(self, zone: Zone, ids: Sequence[str]) -> dict[str, bool]:
        return self.inner.presence(zone, ids)

    def get(
        self, zone: Zone, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        return list(self._incoming(zone, self.inner.get(zone, ids, with_vectors=with_vectors)))

    def scan(self, zone: Zone, where: And, *, with_vectors: bool = False) -> Iterator[MemoryRecord]:
        found = self.inner.scan(zone, self._where(zone, where), with_vectors=with_vectors)
        return self._incoming(zone, found)

    def ids(self, zone: Zone, where: And) -> list[str]:
        return self.inner.ids(zone, self._where(zone, where))

    def count(self, zone: Zone, where: And) -> int:
        return self.inner.count(zone, self._where(zone, where))

    def facet(self, zone: Zone, field: str, where: And) -> dict[str, int]:
        check_facet(field)
        return self.inner.facet(zone, field, self._where(zone, where))

    def update_fields(self, zone: Zone, updates: Mapping[str, Mapping[str, object]]) -> None:
        if any("content" in fields for fields in updates.values()):
            raise InvalidInput("content is not a bookkeeping field", field="content")
        self.inner.update_fields(zone, updates)

    def remove(self, zone: Zone, ids: Sequence[str]) -> None:
        self.inner.remove(zone, ids)

    def archive_put(self, zone: Zone, records: Sequence[MemoryRecord]) -> None:
        stored, rows = self._outgoing(zone, records, None)
        if rows is not None:
            stored = [
                record.model_copy(update={"vector": row.tolist()})
                for record, row in zip(stored, rows, strict=True)
            ]
        self.inner.archive_put(zone, stored)

    def archive_get(self, zone: Zone, ids: Sequence[str]) -> list[MemoryRecord]:
        return list(self._incoming(zone, self.inner.archive_get(zone, ids)))

    def archive_ids(self, zone: Zone, where: And) -> list[str]:
        return self.inner.archive_ids(zone, self._where(zone, where, archive=True))

    def archive_facet(self, zone: Zone, field: str, where: And) -> dict[str, int]:
        check_facet(field)
        return self.inner.archive_facet(zone, field, self._where(zone, where, archive=True))

    def archive_remove(self, zone: Zone, ids: Sequence[str]) -> None:
        self.inner.archive_remove(zone, ids)

    def tombstones(self, zone: Zone, where: And) -> list[Tombstone]:
        # No content is read, none is opened; a tombstone keeps no labels to match.
        return self.inner.tombstones(zone, self._where(zone, where))

    def session(self) -> AbstractContextManager[None]:
        return self.inner.session()

    def close(self) -> None:
        self.inner.close()

    # -- key rotation -------------------------------------------------------------------------

    def reseal(self, zone: Zone, where: And) -> int:
        """Re-seal the content of the live and archived records of ``zone`` matching ``where``
        that are not under the zone's active key (after a rotation) or whose labels are not
        tokens yet; returns how many were. Only the sealed fields are written, and only to a
        record still as it was read (:class:`~hivemem.pool.ports.ResealableZoneStore`): a
        delete, a new version's link or a tier change another worker makes meanwhile stays,
        and what it rewrote whole (an archived record marked superseded) is sealed under the
        active key already. Records whose key is already gone are left as they are."""
        active = self._keyring.active(zone).key_id
        live = self.inner.scan(zone, self._where(zone, where))
        stale = [r.id for r in live if self._content.stale(r, active)]
        moved = 0
        for start in range(0, len(stale), _RESEAL_BATCH):
            found = self.inner.get(zone, stale[start : start + _RESEAL_BATCH])
            moved += len(self.inner.replace_content(zone, self._resealed_pairs(found)))
        archived = self.inner.archive_ids(zone, self._where(zone, where, archive=True))
        for start in range(0, len(archived), _RESEAL_BATCH):
            batch = self.inner.archive_get(zone, archived[start : start + _RESEAL_BATCH])
            old = [r for r in batch if self._content.stale(r, active)]
            moved += len(self.inner.archive_replace(zone, self._resealed_pairs(old)))
        return moved

    def _resealed_pairs(
        self, records: Sequence[MemoryRecord]
    ) -> list[tuple[MemoryRecord, MemoryRecord]]:
        """Each of ``records`` (as stored) with its re-sealed copy; those whose key is gone
        are left out."""
        pairs = [(r, self._resealed(r)) for r in records]
        return [(read, fresh) for read, fresh in pairs if fresh is not None]

    def _resealed(self, record: MemoryRecord) -> MemoryRecord | None:
        try:
            return self._content.sealed(self._content.opened(record))
        except KeyUnavailable:
            return None

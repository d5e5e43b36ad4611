"""An agent's local index with its content sealed on disk: a LocalIndex around another.

:class:`SealedIndex` keeps each record's content in ``inner`` as
:class:`~hivemem.security.content_seal.ContentSeal` text (the zone's data key and the user's
subject secret) and opens it on every read. Vectors stay in clear here: the agent searches its
own index with them, and its process holds the keys anyway. Tags, entities and metadata are
sealed with the content and kept as tokens, which filters are rewritten to match
(:mod:`hivemem.security.label_tokens`). A record whose key is gone (its user was forgotten
everywhere, even if the user id was written for again since; its data key retired) cannot be
read: reads skip it, as if it had been deleted, and removals (:meth:`SealedIndex.tombstones`:
a forget, an expiry) still reach it. Content the agent's clearance cannot seal (a zone above
it) is refused with KeyUnavailable before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence

import structlog

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, KeyUnavailable
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import (
    LocalIndex,
    NearestRequest,
    Neighbourhood,
    RetentionFacts,
    ScoredId,
    Vector,
)
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.security.content_seal import ContentSeal
from hivemem.security.label_tokens import check_facet
from hivemem.security.sealing import SUBJECT_FORGOTTEN

log = structlog.get_logger(__name__)

#: Records re-sealed per read and write of the index.
_RESEAL_BATCH = 512


class SealedIndex:
    """A :class:`~hivemem.pool.ports.LocalIndex` sealing content in ``inner``."""

    def __init__(self, inner: LocalIndex, seal: ContentSeal) -> None:
        self.inner = inner
        self._seal = seal

    def _opened(self, records: Iterable[MemoryRecord]) -> Iterator[MemoryRecord]:
        for record in records:
            try:
                yield self._seal.opened(record)
            except KeyUnavailable as error:
                # A forgotten user's record is skipped by design; a key that is gone (retired
                # by force, or lost with Redis's data) makes records unreadable for good.
                level = log.info if error.why == SUBJECT_FORGOTTEN else log.warning
                level("local_record_unreadable", record_id=record.id, zone=error.zone,
                      key_id=error.key_id, why=error.why)  # fmt: skip

    def _where(self, where: And) -> And:
        """``where`` matching labels by their tokens (LabelTokens.rewrite)."""
        return self._seal.tokens.rewrite(
            where, lambda rest: self.inner.facet("scope.user_id", rest)
        )

    def upsert(self, records: Sequence[MemoryRecord], dense: Vector | None = None) -> None:
        self.inner.upsert(self._seal.sealed_many(records), dense)

    def update_fields(self, updates: Mapping[str, Mapping[str, object]]) -> None:
        if any("content" in fields for fields in updates.values()):
            raise InvalidInput("content is not a bookkeeping field", field="content")
        self.inner.update_fields(updates)

    def put_tombstones(self, tombstones: Sequence[Tombstone]) -> None:
        self.inner.put_tombstones(tombstones)

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[MemoryRecord]:
        return list(self._opened(self.inner.get(ids, with_vectors=with_vectors)))

    def presence(self, ids: Sequence[str]) -> dict[str, bool]:
        return self.inner.presence(ids)

    def get_tombstones(self, ids: Sequence[str]) -> list[Tombstone]:
        return self.inner.get_tombstones(ids)

    def nearest(self, requests: Sequence[NearestRequest]) -> list[list[ScoredId]]:
        # A search passes one filter to several requests: rewrite each once (same object, so
        # the inner index's translation cache by identity still holds across them).
        rewritten: dict[int, And] = {}

        def where(expr: And) -> And:
            found = rewritten.get(id(expr))
            if found is None:
                found = rewritten[id(expr)] = self._where(expr)
            return found

        return self.inner.nearest(
            [
                dataclasses.replace(
                    r,
                    where=where(r.where),
                    idf_corpus=None if r.idf_corpus is None else where(r.idf_corpus),
                )
                for r in requests
            ]
        )

    def neighbourhoods(self, ids: Sequence[str]) -> dict[str, Neighbourhood]:
        return self.inner.neighbourhoods(ids)

    def scan(self, where: And, *, with_vectors: bool = False) -> Iterator[MemoryRecord]:
        return self._opened(self.inner.scan(self._where(where), with_vectors=with_vectors))

    def tombstones(self, where: And) -> list[Tombstone]:
        # No content is opened: a record whose key is gone gets one too (a forget removes it).
        return self.inner.tombstones(self._where(where))

    def retention_facts(self, where: And) -> list[RetentionFacts]:
        return self.inner.retention_facts(self._where(where))

    def retention_facts_of(self, ids: Sequence[str]) -> list[RetentionFacts]:
        return self.inner.retention_facts_of(ids)

    def count(self, where: And) -> int:
        return self.inner.count(self._where(where))

    def facet(self, field: str, where: And) -> dict[str, int]:
        check_facet(field)
        return self.inner.facet(field, self._where(where))

    def remove(self, ids: Sequence[str]) -> None:
        self.inner.remove(ids)

    def purge(self) -> None:
        self.inner.purge()

    def compact(self) -> bool:
        return self.inner.compact()

    def size_bytes(self) -> int:
        return self.inner.size_bytes()

    def close(self) -> None:
        self.inner.close()

    # -- key rotation -------------------------------------------------------------------------

    def reseal(self, active: Mapping[Zone, str]) -> int:
        """Re-seal the content of every record of a zone in ``active`` (zone → its active key
        id) that is sealed under another key, or whose labels are not tokens yet; returns how
        many were. Vectors and the other payload fields are kept as they are. Records whose
        key is gone stay as they are (nobody can read them). Hold the memory's writes off
        meanwhile (HierarchicalMemory.hold_writes)."""
        moved = 0
        for zone, key_id in active.items():
            where = And(all=[Cond(field="zone", op="eq", value=zone.value)])
            stale = [r.id for r in self.inner.scan(where) if self._seal.stale(r, key_id)]
            for start in range(0, len(stale), _RESEAL_BATCH):
                found = self.inner.get(stale[start : start + _RESEAL_BATCH], with_vectors=True)
                opened = list(self._opened(found))
                if opened:
                    self.upsert(opened)
                    moved += len(opened)
        return moved

"""A record as it is kept at rest: sealed under its zone's key and its user's secret.

``content`` becomes ``hm:sealed:`` + :meth:`~hivemem.security.sealing.Sealed.to_text` of the
record's UTF-8 content, with its tags, entities and metadata when it has any (as JSON;
zlib-compressed when over 1 KB and that makes it shorter), sealed with the zone's active data
key and the record's user's subject secret, the record id bound in as context, stamped with the
secret's id (version 2 of :mod:`hivemem.security.sealing`). The payload keeps tokens in place of
those labels (:mod:`hivemem.security.label_tokens`). Forgetting the user (shredding the secret)
makes every such copy unreadable, wherever it lingers: it raises KeyUnavailable (``subject
forgotten``), even once the user id is written for again under a new secret. Content without
the prefix (written before security was on) reads as it is, with its labels as stored;
version-1 content (sealed before stamps) opens as before, and a re-seal stamps it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence

import structlog

from hivemem.pool.enums import Zone
from hivemem.pool.errors import PoolUnavailable
from hivemem.pool.records import MemoryRecord
from hivemem.security.label_tokens import LabelTokens, UserKey, has_labels
from hivemem.security.sealing import Sealed, Sealer

SEALED_PREFIX = "hm:sealed:"
#: Content sealed under the zone key alone: the user's secret could not be had (Redis was
#: unreachable the first time this process wrote for that user).
ZONE_ONLY_PREFIX = "hm:sealed0:"
#: Content longer than this (bytes) is compressed before sealing when that makes it shorter.
_COMPRESS_ABOVE = 1024
#: The sealed body's first byte: content alone (``p``, or ``z`` compressed), or a record's
#: content with its tags, entities and metadata as JSON (``l``, or ``L`` compressed).
_PLAIN, _ZIPPED, _LABELLED, _LABELLED_ZIPPED = b"p", b"z", b"l", b"L"

log = structlog.get_logger(__name__)
#: One encoder for every record (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _packed(record: MemoryRecord) -> bytes:
    if has_labels(record):
        document = {"c": record.content, "t": record.tags, "e": record.entities}
        document["m"] = record.metadata  # type: ignore[assignment]
        raw = _JSON.encode(document).encode()
        kinds = (_LABELLED, _LABELLED_ZIPPED)
    else:
        raw, kinds = record.content.encode(), (_PLAIN, _ZIPPED)
    if len(raw) > _COMPRESS_ABOVE:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return kinds[1] + packed
    return kinds[0] + raw


def _unpacked(record: MemoryRecord, body: bytes) -> MemoryRecord:
    kind, raw = body[:1], body[1:]
    if kind in (_ZIPPED, _LABELLED_ZIPPED):
        raw = zlib.decompress(raw)
    if kind in (_PLAIN, _ZIPPED):
        return record.model_copy(update={"content": raw.decode()})
    document = json.loads(raw)
    return record.model_copy(
        update={
            "content": document["c"],
            "tags": document["t"],
            "entities": document["e"],
            "metadata": document["m"],
        }
    )


class ContentSeal:
    """Seals and opens records' content (and labels: ``tokens``) with ``sealer``."""

    def __init__(self, sealer: Sealer, tokens: LabelTokens) -> None:
        self.sealer = sealer
        self.tokens = tokens

    def sealed(self, record: MemoryRecord) -> MemoryRecord:
        """``record`` as stored: content (with labels) sealed, labels as tokens. Raises
        KeyUnavailable above the sealer's clearance."""
        return self.sealed_many([record])[0]

    def sealed_many(self, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """:meth:`sealed` for many records (one key lookup per zone and user)."""
        by_zone: dict[Zone, list[int]] = {}
        for position, record in enumerate(records):
            by_zone.setdefault(record.zone, []).append(position)
        out: list[MemoryRecord] = list(records)
        for zone, positions in by_zone.items():
            try:
                self._seal(zone, [records[i] for i in positions], positions, out)
            except PoolUnavailable:
                # Redis is away and some user's secret is not held here: each user whose secret
                # this process holds is sealed as usual, the others by the zone key alone (the
                # keyring does not ask Redis again for a moment: KeyStore.down).
                by_user: dict[str, list[int]] = {}
                for i in positions:
                    by_user.setdefault(records[i].scope.user_id, []).append(i)
                for mine in by_user.values():
                    theirs = [records[i] for i in mine]
                    try:
                        self._seal(zone, theirs, mine, out)
                    except PoolUnavailable:
                        self._seal(zone, theirs, mine, out, subject=False)
        return out

    def _seal(
        self,
        zone: Zone,
        records: list[MemoryRecord],
        positions: list[int],
        out: list[MemoryRecord],
        *,
        subject: bool = True,
    ) -> None:
        """Seal ``records`` of ``zone`` into ``out`` at ``positions``, under their users'
        secrets; raises PoolUnavailable when one cannot be had. With ``subject`` false, under
        the zone key alone (a forget still deletes them everywhere, but shredding the user's
        secret does not cover these copies), with no tokens."""
        items = [(_packed(r), r.id.encode(), r.scope.user_id) for r in records]
        keys: dict[str, UserKey | None] = {}
        if subject:
            prefix = SEALED_PREFIX
            sealed = self.sealer.seal_many(zone, items)
            keys = {u: self.tokens.key(u) for u in {r.scope.user_id for r in records}}
        else:
            log.warning("content_sealed_without_subject", zone=zone.value, records=len(items))
            prefix = ZONE_ONLY_PREFIX
            sealed = self.sealer.seal_many(zone, [(p, c, None) for p, c, _ in items])
        for i, record, one in zip(positions, records, sealed, strict=True):
            update = self.tokens.tokenized(record, keys.get(record.scope.user_id))
            update["content"] = prefix + one.to_text()
            out[i] = record.model_copy(update=update)

    def opened(self, record: MemoryRecord) -> MemoryRecord:
        """``record`` in clear: content, tags, entities and metadata. Raises KeyUnavailable when
        its key is gone (user forgotten, key retired), SealBroken when it was altered."""
        subject: str | None = record.scope.user_id
        if record.content.startswith(SEALED_PREFIX):
            text = record.content.removeprefix(SEALED_PREFIX)
        elif record.content.startswith(ZONE_ONLY_PREFIX):
            text, subject = record.content.removeprefix(ZONE_ONLY_PREFIX), None
        else:
            return record
        body = self.sealer.open(
            record.zone, Sealed.from_text(text), context=record.id.encode(), subject=subject
        )
        return _unpacked(record, body)

    def stale(self, record: MemoryRecord, active: str) -> bool:
        """Whether a re-seal would change ``record`` as stored: its content is not under the
        zone's ``active`` key, not under its user's secret, or not stamped (version 1), or its
        labels are not in the form this layer writes (LabelTokens.labels_stale)."""
        sealed = _sealed_of(record)
        return (
            sealed is None
            or sealed.key_id != active
            or sealed.stamp is None
            or record.content.startswith(ZONE_ONLY_PREFIX)
            or self.tokens.labels_stale(record)
        )

    @staticmethod
    def key_id(record: MemoryRecord) -> str | None:
        """The data key ``record``'s content is sealed under (None: not sealed)."""
        sealed = _sealed_of(record)
        return None if sealed is None else sealed.key_id


def _sealed_of(record: MemoryRecord) -> Sealed | None:
    """``record``'s sealed content (None: not sealed)."""
    for prefix in (SEALED_PREFIX, ZONE_ONLY_PREFIX):
        if record.content.startswith(prefix):
            return Sealed.from_text(record.content.removeprefix(prefix))
    return None

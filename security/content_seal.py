"""A record's content as it is kept at rest: sealed under its zone's key and its user's secret.

``hm:sealed:`` + :meth:`~hivemem.security.sealing.Sealed.to_text` of the UTF-8 content
(zlib-compressed when it is over 1 KB and that makes it shorter), sealed with the zone's active
data key and the record's user's subject secret, the record id bound in as context. Forgetting
the user (shredding the secret) makes every such copy unreadable, wherever it lingers. Content
without the prefix (written before security was on) reads as it is.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import structlog

from hivemem.pool.enums import Zone
from hivemem.pool.errors import PoolUnavailable
from hivemem.pool.records import MemoryRecord
from hivemem.security.sealing import Sealed, Sealer

SEALED_PREFIX = "hm:sealed:"
#: Content sealed under the zone key alone: the user's secret could not be had (Redis was
#: unreachable the first time this process wrote for that user).
ZONE_ONLY_PREFIX = "hm:sealed0:"
#: Content longer than this (bytes) is compressed before sealing when that makes it shorter.
_COMPRESS_ABOVE = 1024

log = structlog.get_logger(__name__)


def _packed(content: str) -> bytes:
    raw = content.encode()
    if len(raw) > _COMPRESS_ABOVE:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return b"z" + packed
    return b"p" + raw


class ContentSeal:
    """Seals and opens records' content with ``sealer``."""

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer

    def seal(self, record: MemoryRecord) -> str:
        """The sealed text of ``record.content``. Raises KeyUnavailable above the sealer's
        clearance."""
        return self.seal_many([record])[0]

    def seal_many(self, records: Sequence[MemoryRecord]) -> list[str]:
        """:meth:`seal` for many records (one key lookup per zone and user)."""
        by_zone: dict[Zone, list[int]] = {}
        for position, record in enumerate(records):
            by_zone.setdefault(record.zone, []).append(position)
        out = [""] * len(records)
        for zone, positions in by_zone.items():
            items = [
                (_packed(records[i].content), records[i].id.encode(), records[i].scope.user_id)
                for i in positions
            ]
            prefix = SEALED_PREFIX
            try:
                sealed = self.sealer.seal_many(zone, items)
            except PoolUnavailable:
                # A user this process never wrote for, while Redis is away: the write must not
                # fail, so the zone key alone seals it (a forget still deletes it everywhere,
                # but shredding the user's secret does not cover this copy).
                log.warning("content_sealed_without_subject", zone=zone.value)
                sealed = self.sealer.seal_many(zone, [(p, c, None) for p, c, _ in items])
                prefix = ZONE_ONLY_PREFIX
            for i, one in zip(positions, sealed, strict=True):
                out[i] = prefix + one.to_text()
        return out

    def open(self, record: MemoryRecord) -> str:
        """``record``'s content in clear. Raises KeyUnavailable when its key is gone (user
        forgotten, key retired), SealBroken when it was altered."""
        subject: str | None = record.scope.user_id
        if record.content.startswith(SEALED_PREFIX):
            text = record.content.removeprefix(SEALED_PREFIX)
        elif record.content.startswith(ZONE_ONLY_PREFIX):
            text, subject = record.content.removeprefix(ZONE_ONLY_PREFIX), None
        else:
            return record.content
        body = self.sealer.open(
            record.zone, Sealed.from_text(text), context=record.id.encode(), subject=subject
        )
        return (zlib.decompress(body[1:]) if body[:1] == b"z" else body[1:]).decode()

    @staticmethod
    def key_id(record: MemoryRecord) -> str | None:
        """The data key ``record``'s content is sealed under (None: not sealed)."""
        for prefix in (SEALED_PREFIX, ZONE_ONLY_PREFIX):
            if record.content.startswith(prefix):
                return Sealed.from_text(record.content.removeprefix(prefix)).key_id
        return None

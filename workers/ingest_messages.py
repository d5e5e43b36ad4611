"""Opening what the workers read from an ingest queue: a message's records, their vectors and
its tombstones, or the reason it is skipped.

A message is skipped (logged and counted; noted for the audit when a security check refused it)
when it does not decode or fails its checks, belongs in another zone, comes from
another agent than the queue's, or carries a vector of another dimension than the zone store's
(the store would refuse the whole round). A departure's queues open with a codec of their own,
which checks them against the agent's registry entry as it stood
(:mod:`hivemem.pool.adapters.departures`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from hivemem.pool.adapters.departures import Departure
from hivemem.pool.adapters.redis_bus import Delivery
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import EnvelopeCodec
from hivemem.pool.errors import InvalidMessage, MessageRejected
from hivemem.pool.ports import Vector
from hivemem.pool.records import MemoryRecord, Tombstone

log = structlog.get_logger(__name__)
#: Departures whose codecs a worker keeps (each holds the agent's entry; a few are read at once).
_DEPARTURE_CODECS = 64


@dataclass
class IngestReport:
    """What one drain did. ``busy``: another worker was draining the zone (nothing done)."""

    zone: str
    messages: int = 0
    records: int = 0
    tombstones: int = 0
    skipped: int = 0
    due: list[str] = field(default_factory=list)
    busy: bool = False


@dataclass
class Round:
    """What one or more messages of a round hold (``seqs``: theirs)."""

    seqs: list[int] = field(default_factory=list)
    records: list[MemoryRecord] = field(default_factory=list)
    rows: list[Vector | None] = field(default_factory=list)
    tombstones: list[Tombstone] = field(default_factory=list)

    def extend(self, other: Round) -> None:
        self.seqs += other.seqs
        self.records += other.records
        self.rows += other.rows
        self.tombstones += other.tombstones


def wrong_dimension(
    records: Sequence[MemoryRecord], rows: Sequence[Vector | None], dim: int
) -> bool:
    """Whether a record's dense vector (its row, else its own) has not ``dim`` values: the
    store would refuse the whole round (found here, whatever the store's error for it)."""
    for record, row in zip(records, rows, strict=True):
        vector = row if row is not None else record.vector
        if vector is not None and len(vector) != dim:
            return True
    return False


class QueuedMessages:
    """Opens the messages of ingest queues for a zone store of ``dim``-d vectors."""

    def __init__(
        self,
        codec: EnvelopeCodec,
        departed_codec: Callable[[AgentInfo], EnvelopeCodec],
        *,
        dim: int,
    ) -> None:
        """``departed_codec(info)``: what opens a departure's messages, checked against the
        agent's entry ``info`` as it stood."""
        self._codec = codec
        self._departed_codec = departed_codec
        self._dim = dim
        #: The codecs of the departures being read, by number.
        self._departures: dict[int, EnvelopeCodec] = {}

    def codec(self, departure: Departure | None) -> EnvelopeCodec:
        """What opens a queue's messages: ``departure``'s codec for one of its queues (one per
        departure, kept while it is read), else the workers' own."""
        if departure is None:
            return self._codec
        codec = self._departures.get(departure.number)
        if codec is None:
            if len(self._departures) >= _DEPARTURE_CODECS:
                self._departures.clear()
            codec = self._departures[departure.number] = self._departed_codec(departure.info)
        return codec

    def opened(
        self,
        zone: Zone,
        delivery: Delivery,
        report: IngestReport,
        codec: EnvelopeCodec,
        owner: str | None,
        *,
        rejected: list[tuple[MessageRejected, Delivery]],
    ) -> Round | None:
        """The message's records (with their vectors) and tombstones, opened with ``codec``,
        or None when it is skipped (logged; added to ``rejected`` when a security check refused
        it, for the caller to audit once the round is committed). ``owner``: the only agent
        whose envelopes the queue may hold (None: any, the zone's shared queue)."""
        at = (delivery.topic, delivery.seq)
        try:
            envelope = codec.decode(delivery.data)
            rows = envelope.vectors()
        except MessageRejected as error:
            log.warning("ingest_message_rejected", zone=zone.value, topic=delivery.topic,
                        seq=delivery.seq, reason=error.reason)  # fmt: skip
            rejected.append((error, delivery))
            report.skipped += 1
            return None
        except InvalidMessage as error:
            skipped(zone, at, str(error), report)
            return None
        if envelope.zone != zone or envelope.to is not None:
            skipped(
                zone,
                (delivery.topic, delivery.seq),
                "envelope does not belong in this zone's queue",
                report,
            )
            return None
        if owner not in (None, envelope.sender):
            skipped(
                zone,
                (delivery.topic, delivery.seq),
                "envelope of another agent than the queue's",
                report,
            )
            return None
        if wrong_dimension(envelope.records, rows, self._dim):
            skipped(zone, (delivery.topic, delivery.seq), f"a vector is not {self._dim}-d", report)
            return None
        return Round([delivery.seq], list(envelope.records), rows, list(envelope.tombstones))


def skipped(zone: Zone, at: tuple[str, int], reason: str, report: IngestReport) -> None:
    """Log a message skipped at ``at`` (its queue and seq) and count it."""
    log.warning("ingest_message_skipped", zone=zone.value, topic=at[0], seq=at[1],
                reason=reason[:200])  # fmt: skip
    report.skipped += 1

"""The pool's transport on Redis: per topic, a pub/sub channel for live fan-out and a Stream for
completeness, written together by one Lua script (atomic: a message is in both or in neither).

A *topic* is a zone (``zone:<zone>``), an agent's inbox for direct hand-overs
(``agent:<id>:inbox``), or a zone's ingest queue (``ingest:<zone>``: every record agents write in
the zone, for the workers). Per topic, under the pool's namespace ``ns``:

- ``ns:<topic>`` — the pub/sub channel; a message is ``b"<epoch> <seq> <sender> <envelope>"``;
- ``ns:<topic>:stream`` — the Stream; entry ``<seq>-0`` holds the envelope in field ``d`` and the
  sender's agent id in ``s`` (so that an agent skips its own messages without decoding them;
  the envelope's own ``sender`` is what counts);
- ``ns:<topic>:seq`` — the last sequence number: sequence numbers are contiguous (1, 2, 3...), so
  a receiver that applied up to ``n`` and hears ``n + 2`` knows exactly what it missed;
- ``ns:<topic>:epoch`` — a random id made when the topic's first message is written. A Redis
  that lost its data starts a new epoch, which tells receivers to start over from 0;
- ``ns:<topic>:msg:<message id>`` — the sequence number a message id got (24 h): the script
  appends a message id once, so an outbox that resends after a lost acknowledgement
  duplicates nothing.

Every key of a topic starts with ``ns:<topic>``, so one ACL pattern per zone covers them.
The stream is trimmed approximately to ``maxlen`` entries, except an ingest queue's: it has no
pub/sub channel and keeps every entry until the workers have stored it (:meth:`trim_through`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidMessage
from hivemem.pool.ids import check_agent_id

_DEDUPE_TTL_S = 24 * 3600

_PUBLISH = (Path(__file__).parent / "lua" / "publish.lua").read_text()


def zone_topic(zone: Zone) -> str:
    return f"zone:{Zone(zone).value}"


def inbox_topic(agent_id: str) -> str:
    return f"agent:{check_agent_id(agent_id)}:inbox"


def ingest_topic(zone: Zone) -> str:
    return f"ingest:{Zone(zone).value}"


def is_queue(topic: str) -> bool:
    """True for an ingest queue (never trimmed by writers, never published live)."""
    return topic.startswith("ingest:")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message of a topic: its position (epoch, seq), the sending agent as the publisher
    declared it, and the envelope bytes."""

    topic: str
    epoch: str
    seq: int
    sender: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a topic's stream holds after a position: the entries (oldest first, at most the
    limit asked), the topic's current epoch and last seq, and whether entries right after the
    position were trimmed away (the reader must re-bootstrap)."""

    epoch: str | None
    last_seq: int
    deliveries: list[Delivery]
    trimmed: bool


class RedisBus:
    """Publish to and read from topics on one Redis. Thread-safe (redis-py pools connections)."""

    def __init__(self, client: redis.Redis, *, namespace: str, maxlen: int) -> None:
        self.client = client
        self.namespace = namespace
        self.maxlen = maxlen
        self._publish = client.register_script(_PUBLISH)

    def subscribe(self, topics: Sequence[str]) -> redis.client.PubSub:
        """A new pub/sub connection subscribed to ``topics`` (confirmations skipped)."""
        # redis-py's PubSub is untyped.
        pubsub: redis.client.PubSub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(*[self.channel(t) for t in topics])  # type: ignore[no-untyped-call]
        return pubsub

    def channel(self, topic: str) -> str:
        return f"{self.namespace}:{topic}"

    def topic_of(self, channel: bytes | str) -> str:
        name = channel.decode() if isinstance(channel, bytes) else channel
        return name.removeprefix(f"{self.namespace}:")

    def _key(self, topic: str, part: str) -> str:
        return f"{self.namespace}:{topic}:{part}"

    def publish(self, topic: str, sender: str, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """Append ``sender``'s ``(message_id, body)`` pairs to the topic's stream and publish
        each, in one atomic script; returns their sequence numbers. A message id seen in the
        last 24 h is not appended again (its first sequence number is returned)."""
        if not messages:
            return []
        queue = is_queue(topic)
        args: list[str | bytes | int] = [
            "" if queue else self.channel(topic),
            0 if queue else self.maxlen,
            uuid.uuid4().hex,
            self._key(topic, "msg:"),
            _DEDUPE_TTL_S,
            check_agent_id(sender, field="sender"),
        ]
        for message_id, body in messages:
            args.extend((message_id, body))
        keys = [self._key(topic, "stream"), self._key(topic, "seq"), self._key(topic, "epoch")]
        _epoch, seqs = self._publish(keys=keys, args=args)
        return [int(s) for s in seqs]

    def read(self, topic: str, after: int, *, limit: int) -> Backlog:
        """Entries of the topic with seq > ``after``, oldest first, at most ``limit``."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(topic, "epoch"))
            pipe.get(self._key(topic, "seq"))
            pipe.xrange(self._key(topic, "stream"), min=f"{after + 1}-0", max="+", count=limit)
            epoch_raw, seq_raw, entries = pipe.execute()
        epoch = epoch_raw.decode() if epoch_raw is not None else None
        deliveries = []
        for entry_id, fields in entries:
            seq = int(entry_id.split(b"-")[0])
            sender = fields.get(b"s", b"").decode(errors="replace")
            deliveries.append(Delivery(topic, epoch or "", seq, sender, fields[b"d"]))
        last_seq = int(seq_raw or 0)
        first = deliveries[0].seq if deliveries else last_seq + 1
        return Backlog(epoch, last_seq, deliveries, trimmed=first > after + 1)

    def parse_live(self, channel: bytes | str, data: bytes) -> Delivery:
        """A pub/sub message as a Delivery; raises InvalidMessage when it is not one of ours."""
        parts = data.split(b" ", 3) if isinstance(data, bytes) else []
        if len(parts) != 4 or not parts[1].isdigit():
            raise InvalidMessage("pub/sub message without epoch, sequence number and sender")
        epoch, seq, sender, body = parts
        return Delivery(self.topic_of(channel), epoch.decode(errors="replace"), int(seq),
                        sender.decode(errors="replace"), body)  # fmt: skip

    def trim_through(self, topic: str, seq: int) -> None:
        """Delete the topic's stream entries up to and including ``seq`` (consumed)."""
        self.client.xtrim(self._key(topic, "stream"), minid=f"{seq + 1}-0")

    def drop_topic(self, topic: str) -> None:
        """Delete a topic's stream and counters (an inbox of a deregistered agent)."""
        self.client.delete(
            self._key(topic, "stream"), self._key(topic, "seq"), self._key(topic, "epoch")
        )

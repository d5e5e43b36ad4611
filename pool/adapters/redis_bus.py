"""The pool's transport on Redis: per topic, a pub/sub channel for live fan-out and a Stream for
completeness, written together by one Lua script (atomic: a message is in both or in neither).

A *topic* is a zone (``zone:<zone>``), a set of compartments in a zone (``comp:<zone>:<mask>``,
see :mod:`hivemem.pool.compartments`: records that carry compartments travel there, never on
the zone's topic), an agent's inbox for direct hand-overs (``agent:<id>:inbox``), or a zone's
agent's ingest queue in a zone (``ingest:<zone>:agent:<id>``: every record it writes in the
zone, for the workers; ``ingest:<zone>``, the zone's shared queue of earlier versions, is only
read). Per topic, under the pool's namespace ``ns``:

- ``ns:<topic>`` — the pub/sub channel; a message is ``b"<epoch> <seq> <sender> <envelope>"``;
- ``ns:<topic>:stream`` — the Stream; entry ``<seq>-0`` holds the envelope in field ``d`` and the
  sender's agent id in ``s`` (so that an agent skips its own messages without decoding them;
  the envelope's own ``sender`` is what counts);
- ``ns:<topic>:seq`` — the last sequence number: sequence numbers are contiguous (1, 2, 3...), so
  a receiver that applied up to ``n`` and hears ``n + 2`` knows exactly what it missed;
- ``ns:<topic>:epoch`` — a random id made when the topic's first message is written. A Redis
  that lost its data starts a new epoch, which tells receivers to start over from 0; so does
  the script when it finds the topic's keys damaged (see publish.lua: an agent's user may
  write them), after deleting the stream and counter;
- ``ns:<topic>:msg:<message id>`` — ``<epoch>:<seq>``, where a message id was appended (24 h):
  the script appends a message id once per epoch, so an outbox that resends after a lost
  acknowledgement duplicates nothing, and one that resends after the topic started over
  appends it to the new stream.

Besides the topics, ``ns:agent:<id>:access`` is a bare pub/sub channel (no stream, no sequence
numbers): without Redis ACLs the pool announces there that the agent's registry entry changed or
went (:meth:`RedisBus.notify`), and its receiver reads the entry again at once.

Every key of a topic starts with ``ns:<topic>``, so one ACL pattern per zone covers them (and
one per zone the compartment topics an agent may use). Compartment topics come into being as
records are written there; whoever publishes to one first adds it to the set
``ns:registry:topics`` (:meth:`RedisBus.register_topic`, through the pool's own connection), so
that a receiver starting later knows which streams to catch up from.
The stream is trimmed approximately to ``maxlen`` entries, except an ingest queue's: it has no
pub/sub channel and keeps every entry until the workers have stored it (:meth:`trim_through`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import redis

from hivemem.pool.compartments import from_mask, mask, mask_pattern
from hivemem.pool.enums import Zone, named_zone
from hivemem.pool.errors import InvalidMessage
from hivemem.pool.ids import check_agent_id

_DEDUPE_TTL_S = 24 * 3600

_PUBLISH = (Path(__file__).parent / "lua" / "publish.lua").read_text()


#: Sequence numbers are below this (the cursor is kept in a SQLite integer).
_MAX_SEQ_DIGITS = 18
#: An epoch as the pool's script writes it (it checks the same: see publish.lua).
_EPOCH = re.compile(rb"[A-Za-z0-9-]{1,64}")


#: Digits of an append time in milliseconds: enough until the year 33658.
_MAX_STAMP_DIGITS = 15


def _seq(raw: bytes | str) -> int | None:
    """A sequence number as the pool's script writes it (ASCII digits, at most 18), or None."""
    text = raw.encode() if isinstance(raw, str) else raw
    if not text.isdigit() or len(text) > _MAX_SEQ_DIGITS:
        return None
    return int(text)


def _appended_at(raw: bytes | None) -> datetime | None:
    """When the pool's script appended an entry (its ``t`` field: milliseconds since the Unix
    epoch, at most 15 digits), or None for an entry without one or with anything else."""
    if raw is None or not raw.isdigit() or len(raw) > _MAX_STAMP_DIGITS:
        return None
    return datetime.fromtimestamp(int(raw) / 1000, UTC)


def _epoch(raw: bytes | None) -> str | None:
    """An epoch as the pool's script writes it (a token of letters, digits and dashes), or
    None."""
    if raw is None or not _EPOCH.fullmatch(raw):
        return None
    return raw.decode()


def zone_topic(zone: Zone, compartments: Sequence[str] = ()) -> str:
    """The topic of records in ``zone`` that carry ``compartments`` (none: the zone's own)."""
    if compartments:
        return f"comp:{Zone(zone).value}:{mask(compartments)}"
    return f"zone:{Zone(zone).value}"


def compartment_glob(zone: Zone, held: Sequence[str]) -> str | None:
    """The glob of every compartment topic of ``zone`` an agent holding ``held`` may use
    (None when it holds none)."""
    if not held:
        return None
    return f"comp:{Zone(zone).value}:{mask_pattern(held)}"


def topic_compartments(topic: str) -> tuple[Zone, tuple[str, ...]] | None:
    """The zone and compartments of a compartment topic; None for any other topic (or one that
    names an unknown zone or no mask of the configured compartments)."""
    parts = topic.split(":")
    if len(parts) != 3 or parts[0] != "comp" or (zone := named_zone(parts[1])) is None:
        return None
    held = from_mask(parts[2])
    return None if not held else (zone, held)


def inbox_topic(agent_id: str) -> str:
    return f"agent:{check_agent_id(agent_id)}:inbox"


def access_topic(agent_id: str) -> str:
    """The channel where the pool announces that ``agent_id``'s registry entry changed (see the
    module docstring): a notice only, never a message to apply."""
    return f"agent:{check_agent_id(agent_id)}:access"


def ingest_topic(zone: Zone, agent_id: str | None = None) -> str:
    """``agent_id``'s ingest queue in ``zone``: everything it writes there, for the workers.
    None: the zone's shared queue, which every agent of the zone wrote before each had its own
    (so that no agent may delete what another queued); the workers still drain it."""
    if agent_id is None:
        return f"ingest:{Zone(zone).value}"
    return f"ingest:{Zone(zone).value}:agent:{check_agent_id(agent_id)}"


def zone_queues(zone: Zone, owners: Iterable[str]) -> list[str]:
    """``zone``'s ingest queues: the shared one, then those of ``owners`` (agent ids), sorted."""
    return [ingest_topic(zone), *(ingest_topic(zone, agent) for agent in sorted(set(owners)))]


def topic_key(namespace: str, topic: str, part: str) -> str:
    """The key of a topic's ``part`` (``stream``, ``seq``, ``epoch``, ``msg:<id>``)."""
    return f"{namespace}:{topic}:{part}"


def topic_keys(namespace: str, topic: str) -> list[str]:
    """The keys a topic is made of: its stream, counter and epoch."""
    return [topic_key(namespace, topic, part) for part in ("stream", "seq", "epoch")]


def ingest_cursor_key(namespace: str, topic: str) -> str:
    """Where the workers keep their place in the ingest queue ``topic``: ``"<epoch> <seq>"`` of
    the last message they stored (outside ``<ns>:ingest:*``, which agents may write)."""
    return f"{namespace}:cursor:{topic}"


def ingest_lock_key(namespace: str, zone: Zone) -> str:
    """The lock a worker holds while it drains ``zone``'s ingest queues (one at a time)."""
    return f"{namespace}:lock:ingest:{Zone(zone).value}"


def ingest_cursor(raw: bytes | None) -> tuple[str | None, int]:
    """The epoch and seq an ingest cursor's value holds ((None, 0): none kept yet)."""
    if raw is None:
        return None, 0
    epoch, seq = raw.decode().rsplit(" ", 1)
    return epoch, int(seq)


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
    #: When Redis appended it to the stream (None: read live, or an entry without the time).
    appended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a topic's stream holds after a position: the entries (oldest first, at most the
    limit asked), the topic's current epoch and last seq, and whether entries right after the
    position were trimmed away (the reader must re-bootstrap)."""

    epoch: str | None
    last_seq: int
    deliveries: list[Delivery]
    trimmed: bool
    #: The body of the entry at the position read after, when asked for (None: none there).
    at_position: bytes | None = None


class RedisBus:
    """Publish to and read from topics on one Redis. Thread-safe (redis-py pools connections)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        maxlen: int,
        script_loader: redis.Redis | None = None,
    ) -> None:
        """``script_loader``: the connection that loads the publishing script into Redis when
        Redis lacks it (NOSCRIPT; by default ``client``). An agent's own Redis user may only
        run scripts already loaded, so its bus loads them through the pool's connection."""
        self.client = client
        self.namespace = namespace
        self.maxlen = maxlen
        self._publish = client.register_script(_PUBLISH)
        self._loader = script_loader or client
        #: Compartment topics this bus has noted (see :meth:`register_topic`).
        self._registered: set[str] = set()

    def subscribe(self, topics: Sequence[str], patterns: Sequence[str] = ()) -> redis.client.PubSub:
        """A new pub/sub connection subscribed to ``topics`` and to the topic globs
        ``patterns`` (confirmations skipped)."""
        # redis-py's PubSub is untyped.
        pubsub: redis.client.PubSub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(*[self.channel(t) for t in topics])  # type: ignore[no-untyped-call]
        if patterns:
            pubsub.psubscribe(*[self.channel(p) for p in patterns])  # type: ignore[no-untyped-call]
        return pubsub

    def register_topic(self, topic: str) -> None:
        """Note a compartment topic in ``ns:registry:topics`` before its first message (once
        per bus; other topics need no note). The bus must be the pool's own connection."""
        if not topic.startswith("comp:") or topic in self._registered:
            return
        self.client.sadd(f"{self.namespace}:registry:topics", topic)
        self._registered.add(topic)

    def known_topics(self) -> set[str]:
        """The compartment topics written so far (see :meth:`register_topic`)."""
        raw = cast("set[bytes]", self.client.smembers(f"{self.namespace}:registry:topics"))
        return {item.decode(errors="replace") for item in raw}

    def channel(self, topic: str) -> str:
        return f"{self.namespace}:{topic}"

    def topic_of(self, channel: bytes | str) -> str:
        name = channel.decode() if isinstance(channel, bytes) else channel
        return name.removeprefix(f"{self.namespace}:")

    def _key(self, topic: str, part: str) -> str:
        return topic_key(self.namespace, topic, part)

    def epoch_key(self, topic: str) -> str:
        """The key of the topic's epoch (which changes when the topic starts over or, for an
        ingest queue, moves to a departure and begins again)."""
        return self._key(topic, "epoch")

    def publish(self, topic: str, sender: str, messages: Sequence[tuple[str, bytes]]) -> list[int]:
        """Append ``sender``'s ``(message_id, body)`` pairs to the topic's stream and publish
        each, in one atomic script; returns their sequence numbers. A message id appended in
        the last 24 h, in the topic's current epoch, is not appended again (its first sequence
        number is returned)."""
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
        keys = topic_keys(self.namespace, topic)
        try:
            _epoch, seqs = self._run_publish(keys, args)
        except redis.exceptions.NoScriptError:  # Redis restarted, or its scripts were flushed
            self._loader.script_load(_PUBLISH)
            _epoch, seqs = self._run_publish(keys, args)
        return [int(s) for s in seqs]

    def _run_publish(
        self, keys: list[str], args: list[str | bytes | int]
    ) -> tuple[bytes, list[bytes]]:
        """The publishing script by its digest (never loading it: see ``script_loader``)."""
        found = self.client.evalsha(self._publish.sha, len(keys), *keys, *args)
        return cast("tuple[bytes, list[bytes]]", found)

    def unread_queues(self, topics: Sequence[str]) -> list[tuple[str, int]]:
        """Those of the ingest queues ``topics`` that hold messages the workers have not
        stored, in order, each with the seq to read after: the workers' cursor, or 0 when the
        queue started over in another epoch since (Redis lost its data). One command."""
        names = [
            name
            for topic in topics
            for name in (
                self._key(topic, "epoch"),
                self._key(topic, "seq"),
                ingest_cursor_key(self.namespace, topic),
            )
        ]
        raw = cast("list[bytes | None]", self.client.mget(names)) if names else []
        unread = []
        for topic, epoch_raw, seq_raw, cursor in zip(
            topics, raw[::3], raw[1::3], raw[2::3], strict=True
        ):
            epoch, seq = _epoch(epoch_raw), _seq(seq_raw or b"0") or 0
            stored_epoch, stored = ingest_cursor(cursor)
            if epoch is None or (epoch, seq) == (stored_epoch, stored):
                continue
            unread.append((topic, stored if epoch == stored_epoch else 0))
        return unread

    def read(self, topic: str, after: int, *, limit: int, at_position: bool = False) -> Backlog:
        """Entries of the topic with seq > ``after``, oldest first, at most ``limit``; with
        ``at_position``, the body of the entry numbered ``after`` too, in the same read."""
        stream = self._key(topic, "stream")
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(topic, "epoch"))
            pipe.get(self._key(topic, "seq"))
            pipe.xrange(stream, min=f"{after + 1}-0", max="+", count=limit)
            if at_position:
                pipe.xrange(stream, min=f"{after}-0", max=f"{after}-0")
            epoch_raw, seq_raw, entries, *at = pipe.execute()
        # Only the pool's script writes these keys, but an agent's user may write them too: what
        # is not as the script writes it is read as no message (skipped), never raised. An epoch
        # that is no token reads as none (nothing to read until the script starts the topic
        # over); an entry numbered beyond the counter was not written by the script.
        epoch = _epoch(epoch_raw)
        last_seq = _seq(seq_raw or b"0") or 0
        if epoch is None:
            return Backlog(None, last_seq, [], trimmed=False)
        deliveries = []
        for entry_id, fields in entries:
            seq = _seq(entry_id.split(b"-")[0])
            if seq is None or seq > last_seq:
                continue
            sender = fields.get(b"s", b"").decode(errors="replace")
            appended_at = _appended_at(fields.get(b"t"))
            deliveries.append(
                Delivery(topic, epoch, seq, sender, fields.get(b"d", b""), appended_at)
            )
        first = deliveries[0].seq if deliveries else last_seq + 1
        body = bytes(at[0][0][1].get(b"d", b"")) if at and at[0] else None
        return Backlog(epoch, last_seq, deliveries, trimmed=first > after + 1, at_position=body)

    def parse_live(self, channel: bytes | str, data: bytes) -> Delivery:
        """A pub/sub message as a Delivery; raises InvalidMessage when it is not one of ours."""
        parts = data.split(b" ", 3) if isinstance(data, bytes) else []
        seq = _seq(parts[1]) if len(parts) == 4 else None
        if seq is None:
            raise InvalidMessage("pub/sub message without epoch, sequence number and sender")
        epoch, _, sender, body = parts
        return Delivery(self.topic_of(channel), epoch.decode(errors="replace"), seq,
                        sender.decode(errors="replace"), body)  # fmt: skip

    def trim_through(self, topic: str, seq: int) -> None:
        """Delete the topic's stream entries up to and including ``seq`` (consumed). The
        workers trim an ingest queue in the transaction that moves their cursor, and only while
        the queue is in the epoch they read (workers/ingest.py): see :meth:`trim_args`."""
        stream, minid = self.trim_args(topic, seq)
        self.client.xtrim(stream, minid=minid)

    def trim_args(self, topic: str, seq: int) -> tuple[str, str]:
        """The stream key and ``MINID`` that trim ``topic`` through ``seq`` (for ``XTRIM``
        in a caller's transaction)."""
        return self._key(topic, "stream"), f"{seq + 1}-0"

    def notify(self, topic: str) -> None:
        """Publish an empty notice on ``topic``'s channel (nothing is kept: whoever is not
        subscribed then misses it)."""
        self.client.publish(self.channel(topic), b"")

    def drop_topic(self, topic: str) -> None:
        """Delete a topic's stream and counters (an inbox of a deregistered agent)."""
        self.client.delete(*topic_keys(self.namespace, topic))

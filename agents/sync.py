"""One agent's side of the pool: what leaves it (outbox → Redis) and what reaches it.

**Sending.** :class:`ShareObserver` sees every write of the agent's memory before the write is
acknowledged; the records and tombstones of a level in ``share_levels`` become envelopes (one per
zone, compartments, user and write, at most ``send_batch`` records each) committed to the outbox,
and so do all of them for the zone's ingest queue, which the workers drain into the zone store
(``pool.ingest``). :class:`Sender`, a thread, moves them to Redis: at once when ``sync_interval`` is
0, else everything that accumulated once per interval, in one round trip per topic. A message leaves
the outbox only after Redis acknowledged it; while Redis is unreachable the sender waits with
exponential back-off (``retry_initial_s`` doubling to ``retry_max_s``) and tries again, never
spinning.

**Receiving.** :class:`Receiver`, a thread, subscribes to the channel of every zone at or below the
agent's clearance, to its inbox and (one glob per zone) to the compartment topics it may read, then
reads each topic's stream from its cursor (catch-up), then applies live messages. A compartment
topic it has not seen before is followed from its first live message, or found in the pool's topic
set when the receiver (re)connects. Sequence numbers are contiguous per topic, so a live message
beyond ``cursor + 1`` means a gap, filled from the stream; a stream trimmed past the cursor, or a
new epoch (Redis lost its data), makes it re-bootstrap from what the stream holds, with a warning in
the logs. A message that does not decode, comes from the wrong zone or is above the clearance (or
outside the compartments) is logged (without content) and skipped, and the cursor moves past it; a
lost connection is retried with back-off, then the receiver subscribes and catches up again. The
cursor is stored after the records are applied, and applying is idempotent, so a crash in between
costs a re-apply only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis
import structlog

from hivemem.agents.identity import Identity
from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.outbox import Outbox, Pending
from hivemem.pool.adapters.redis_bus import (
    Delivery,
    RedisBus,
    compartment_glob,
    inbox_topic,
    ingest_topic,
    topic_compartments,
    zone_topic,
)
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import missing
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import Envelope, Row, make_envelope
from hivemem.pool.errors import InvalidMessage, MemoryClosed, MessageRejected, SecurityMismatch
from hivemem.pool.ports import Vector
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.pool.settings import PoolSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)
#: Pub/sub messages that carry a delivery: of a channel, and of a channel a glob matched.
_MESSAGE_TYPES = ("message", "pmessage")
_POLL_S = 0.2
#: Stream entries read per catch-up round trip (each holds up to ``send_batch`` records).
_READ_MESSAGES = 32


def is_denied(error: redis.ResponseError) -> bool:
    """True for the broker's refusal by ACL: NOPERM, or its wording for a command a script ran
    (``can't publish to the channel``, ``can't access at least one of the keys``)."""
    if isinstance(error, redis.exceptions.NoPermissionError):
        return True
    text = str(error)
    return "NOPERM" in text or "can't publish" in text or "can't access" in text


class Backoff:
    """Exponential waits between retries, interruptible by ``stop``."""

    def __init__(self, settings: PoolSettings, stop: threading.Event) -> None:
        self._initial_s = settings.retry_initial_s
        self._max_s = settings.retry_max_s
        self._halt = stop
        self.wait_s = 0.0

    def failed(self, event: str, **context: object) -> None:
        """Log ``event`` (a warning, with the wait ahead), then wait."""
        self.wait_s = min(self._max_s, max(self._initial_s, self.wait_s * 2))
        log.warning(event, retry_in_s=round(self.wait_s, 3), **context)
        self._halt.wait(self.wait_s)

    def succeeded(self) -> None:
        self.wait_s = 0.0


#: How written items are grouped into envelopes: zone, compartments, user.
_Group = tuple[Zone, tuple[str, ...], str]


def _group(item: MemoryRecord | Tombstone) -> _Group:
    return item.zone, tuple(item.compartments), item.scope.user_id


def _ingest(zone: Zone, compartments: Sequence[str]) -> str:
    """The zone's ingest queue (one per zone, whatever the compartments: the workers hold all)."""
    del compartments
    return ingest_topic(zone)


class ShareObserver:
    """Puts each write in the outbox (a WriteObserver): the shared levels for the zone's sync
    topic and, with ``ingest``, every record and tombstone for the zone's ingest queue."""

    def __init__(
        self,
        info: AgentInfo,
        outbox: Outbox,
        wake: Callable[[], None],
        settings: PoolSettings,
        identity: Identity,
    ):
        self._info = info
        self._outbox = outbox
        self._wake = wake
        self._batch = settings.send_batch
        self._ingest = settings.ingest
        self._identity = identity

    def records_written(self, records: Sequence[MemoryRecord], dense: Vector | None) -> None:
        rows: Sequence[Row] = list(dense) if dense is not None else [r.vector for r in records]
        pairs = list(zip(records, rows, strict=True))

        def envelope_of(part: list[tuple[MemoryRecord, Row]]) -> Envelope:
            return make_envelope(
                sender=self._info.agent_id,
                zone=part[0][0].zone,
                records=[record for record, _ in part],
                dense=[row for _, row in part],
            )

        shared = [pair for pair in pairs if self._shares(pair[0].zone, pair[0].level)]
        self._send(self._messages(pairs, shared, lambda pair: _group(pair[0]), envelope_of))

    def tombstones_written(self, tombstones: Sequence[Tombstone]) -> None:
        def envelope_of(part: list[Tombstone]) -> Envelope:
            return make_envelope(sender=self._info.agent_id, zone=part[0].zone, tombstones=part)

        shared = [t for t in tombstones if self._shares(t.zone, t.level)]
        self._send(self._messages(tombstones, shared, _group, envelope_of))

    def _shares(self, zone: Zone, level: Level) -> bool:
        """The agent shares the level, and the zone's policy lets it travel."""
        return level in self._info.share_levels and self._identity.policies.may_share(zone, level)

    def _messages(
        self,
        written: Sequence[T],
        shared: Sequence[T],
        group_of: Callable[[T], _Group],
        envelope_of: Callable[[list[T]], Envelope],
    ) -> list[tuple[str, str, bytes]]:
        """The shared items for the zones' sync topics (records that carry compartments: the
        topic of their compartments) and, with ingest, everything written for the ingest
        queues; when everything is shared, the same envelopes serve both (encoded once:
        message ids are deduplicated per topic)."""
        if not self._ingest:
            return self._grouped(shared, group_of, envelope_of, [zone_topic])
        if len(shared) == len(written):
            return self._grouped(written, group_of, envelope_of, [zone_topic, _ingest])
        return self._grouped(shared, group_of, envelope_of, [zone_topic]) + self._grouped(
            written, group_of, envelope_of, [_ingest]
        )

    def _grouped(
        self,
        items: Sequence[T],
        group_of: Callable[[T], _Group],
        envelope_of: Callable[[list[T]], Envelope],
        topics: Sequence[Callable[[Zone, Sequence[str]], str]],
    ) -> list[tuple[str, str, bytes]]:
        """One envelope per (zone, compartments, user) and ``send_batch`` items — one user per
        envelope, so that it can be sealed under that user's key — as a message to each of
        ``topics``."""
        groups: dict[_Group, list[T]] = {}
        for item in items:
            groups.setdefault(group_of(item), []).append(item)
        messages: list[tuple[str, str, bytes]] = []
        for (zone, compartments, _user), chosen in groups.items():
            for start in range(0, len(chosen), self._batch):
                envelope = envelope_of(chosen[start : start + self._batch])
                body = self._identity.codec.encode(envelope)
                messages.extend(
                    (topic(zone, compartments), envelope.message_id, body) for topic in topics
                )
        return messages

    def hand_over(self, to_agent: str, record: MemoryRecord) -> None:
        """Queue ``record`` (with its vector) for ``to_agent``'s inbox."""
        envelope = make_envelope(
            sender=self._info.agent_id, zone=record.zone, records=[record], to=to_agent
        )
        self._send(
            [(inbox_topic(to_agent), envelope.message_id, self._identity.codec.encode(envelope))]
        )

    def _send(self, messages: list[tuple[str, str, bytes]]) -> None:
        if messages:
            self._outbox.put(messages)
            self._wake()


class Sender(threading.Thread):
    """Drains the outbox to Redis (see the module docstring)."""

    def __init__(  # noqa: PLR0917 - the parts of one agent, each needed
        self,
        info: AgentInfo,
        outbox: Outbox,
        bus: RedisBus,
        settings: PoolSettings,
        relay: RedisBus | None,
        identity: Identity,
    ) -> None:
        super().__init__(name=f"hivemem-send-{info.agent_id}", daemon=True)
        self._identity = identity
        self._info = info
        self._outbox = outbox
        self._bus = bus
        #: Hand-overs to other agents' inboxes go through the pool's own connection (the
        #: agent's Redis user may touch no inbox but its own); None: ``bus`` for everything.
        self._relay = relay or bus
        self._settings = settings
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._idle = threading.Condition()
        self._backoff = Backoff(settings, self._halt)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def run(self) -> None:
        interval_s = self._info.sync_interval
        while not self._halt.is_set():
            self._wake.wait(timeout=1.0)
            if interval_s > 0:
                self._halt.wait(interval_s)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        """Send until the outbox is empty (or Redis is down, then back off and retry)."""
        while not self._halt.is_set():
            pending = self._outbox.peek(self._settings.send_batch)
            if not pending:
                with self._idle:
                    self._idle.notify_all()
                return
            by_topic: dict[str, list[Pending]] = {}
            for message in pending:
                by_topic.setdefault(message.topic, []).append(message)
            try:
                for topic, chosen in by_topic.items():
                    self._publish(topic, chosen)
                    self._outbox.remove([m.row for m in chosen])
            except redis.AuthenticationError:
                self._relogin()
                continue
            except _REDIS_DOWN as error:
                self._backoff.failed(
                    "pool_send_failed",
                    agent_id=self._info.agent_id,
                    pending=len(self._outbox),
                    error=type(error).__name__,
                )
                continue
            self._backoff.succeeded()

    def _relogin(self) -> None:
        """Redis refused the agent's login: have its user restored, then retry after a wait."""
        try:
            self._identity.reauthorize()
        except _REDIS_DOWN as error:
            log.warning("pool_relogin_failed", agent_id=self._info.agent_id,
                        error=type(error).__name__)  # fmt: skip
        self._backoff.failed("pool_send_unauthorized", agent_id=self._info.agent_id)

    def _publish(self, topic: str, chosen: list[Pending]) -> None:
        bus = self._relay if topic.startswith("agent:") else self._bus
        self._relay.register_topic(topic)  # a compartment topic, before its first message
        try:
            bus.publish(topic, self._info.agent_id, [(m.message_id, m.body) for m in chosen])
        except redis.ResponseError as error:
            if not is_denied(error):
                raise
            # The broker refuses this agent the topic: its clearance was lowered since the
            # write. The messages can never be sent; keeping them would block the outbox.
            log.warning(
                "pool_send_denied", agent_id=self._info.agent_id, topic=topic, dropped=len(chosen)
            )

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until the outbox is empty; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: len(self._outbox) == 0, timeout=timeout_s)


@dataclass
class _Cursor:
    epoch: str | None
    seq: int


class Receiver(threading.Thread):
    """Applies what other agents share with this one (see the module docstring)."""

    def __init__(  # noqa: PLR0917 - the parts of one agent, each needed
        self,
        info: AgentInfo,
        memory: HierarchicalMemory,
        outbox: Outbox,
        bus: RedisBus,
        settings: PoolSettings,
        heartbeat: Callable[[], None],
        *,
        identity: Identity,
        relay: RedisBus | None = None,
    ) -> None:
        super().__init__(name=f"hivemem-receive-{info.agent_id}", daemon=True)
        self._memory = memory
        self._outbox = outbox
        self._bus = bus
        #: The pool's own connection: it reads which compartment topics exist.
        self._relay = relay or bus
        self._settings = settings
        self._heartbeat = heartbeat
        self._identity = identity
        self._halt = threading.Event()
        self._backoff = Backoff(settings, self._halt)
        self.listeners: list[Callable[[list[MemoryRecord]], None]] = []
        self.connected = threading.Event()
        self._adopt(info)

    def _adopt(self, info: AgentInfo) -> None:
        """Receive as ``info`` says: the channels of its clearance, its inbox and, when it
        holds compartments, the compartment topics of its zones that it may use."""
        self._info = info
        zones = [zone for zone in Zone if zone <= info.clearance]
        self.topics = [zone_topic(zone) for zone in zones] + [inbox_topic(info.agent_id)]
        self.patterns = [
            glob for zone in zones if (glob := compartment_glob(zone, info.compartments))
        ]
        self._cursors = {topic: _Cursor(*self._outbox.cursor(topic)) for topic in self.topics}

    def _may_use(self, topic: str) -> bool:
        """Whether ``topic`` is a compartment topic this agent may read."""
        found = topic_compartments(topic)
        return (
            found is not None
            and found[0] <= self._info.clearance
            and not missing(self._info.compartments, found[1])
        )

    def _follow(self, topic: str) -> None:
        """Start reading a compartment topic (from the cursor this agent kept for it, if any)."""
        self.topics.append(topic)
        self._cursors[topic] = _Cursor(*self._outbox.cursor(topic))

    def _discover(self) -> None:
        """Follow the compartment topics written so far that this agent may read (called after
        subscribing, so that a topic made later shows up live)."""
        if not self.patterns:
            return
        for topic in sorted(self._relay.known_topics()):
            if topic not in self._cursors and self._may_use(topic):
                self._follow(topic)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            pubsub = None
            try:
                # Compartment topics come through the globs: subscribing to them as well would
                # deliver each of their messages twice.
                channels = [t for t in self.topics if topic_compartments(t) is None]
                pubsub = self._bus.subscribe(channels, self.patterns)
                self._discover()
                for topic in list(self.topics):
                    self._catch_up(topic)
                self._heartbeat()
                self.connected.set()
                self._backoff.succeeded()
                self._listen(pubsub)
            except MemoryClosed:
                return
            except redis.AuthenticationError:
                self.connected.clear()
                with contextlib.suppress(*_REDIS_DOWN):  # still down: back off, try again
                    self._identity.reauthorize()
                self._backoff.failed("pool_receive_unauthorized", agent_id=self._info.agent_id)
            except _REDIS_DOWN as error:
                self.connected.clear()
                self._backoff.failed(
                    "pool_receive_disconnected",
                    agent_id=self._info.agent_id,
                    error=type(error).__name__,
                )
            except redis.ResponseError as error:
                if not is_denied(error):
                    raise
                # The broker denied a topic: the clearance changed. Receive as now registered.
                self.connected.clear()
                self._adopt(self._identity.reload())
                self._backoff.failed(
                    "pool_receive_clearance_changed",
                    agent_id=self._info.agent_id,
                    clearance=self._info.clearance.value,
                )
            finally:
                if pubsub is not None:
                    pubsub.close()

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        beat_every_s = self._settings.heartbeat_interval_s
        next_beat = 0.0
        while not self._halt.is_set():
            message = pubsub.get_message(timeout=_POLL_S)
            if message is not None and message.get("type") in _MESSAGE_TYPES:
                self._on_live(message["channel"], message["data"])
            now = time.monotonic()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + beat_every_s

    def _on_live(self, channel: bytes, data: bytes) -> None:
        try:
            delivery = self._bus.parse_live(channel, data)
        except InvalidMessage as error:
            log.warning("pool_message_skipped", agent_id=self._info.agent_id, reason=str(error))
            return
        cursor = self._cursors.get(delivery.topic)
        if cursor is None:
            if not self._may_use(delivery.topic):
                return
            self._follow(delivery.topic)  # a compartment topic's first message
            cursor = self._cursors[delivery.topic]
        if delivery.epoch != cursor.epoch or delivery.seq > cursor.seq + 1:
            self._catch_up(delivery.topic)  # a gap, a first message or a new epoch
        elif delivery.seq == cursor.seq + 1:
            self._apply(delivery.topic, [delivery], live=True)

    def _catch_up(self, topic: str) -> None:
        """Apply what the topic's stream holds after the cursor."""
        cursor = self._cursors[topic]
        while not self._halt.is_set():
            backlog = self._bus.read(topic, cursor.seq, limit=_READ_MESSAGES)
            if backlog.epoch is None:
                return
            if backlog.epoch != cursor.epoch:
                if cursor.epoch is not None:
                    log.warning(
                        "pool_rebootstrap",
                        agent_id=self._info.agent_id,
                        topic=topic,
                        reason="new epoch: Redis lost its data",
                        source="stream",
                    )
                cursor.epoch, cursor.seq = backlog.epoch, 0
                continue
            if backlog.trimmed:
                log.warning(
                    "pool_rebootstrap",
                    agent_id=self._info.agent_id,
                    topic=topic,
                    reason="stream trimmed past the cursor",
                    cursor=cursor.seq,
                    first_available=backlog.deliveries[0].seq if backlog.deliveries else None,
                    source="stream",
                )
            if not backlog.deliveries:
                return
            self._apply(topic, backlog.deliveries)
            if cursor.seq >= backlog.last_seq:
                return

    def _apply(self, topic: str, deliveries: Sequence[Delivery], *, live: bool = False) -> None:
        """Apply the deliveries in order, in chunks of about ``send_batch`` records (the
        memory's write lock is released between chunks), then advance the cursor. ``live``:
        they came by pub/sub (their age is checked)."""
        records: list[MemoryRecord] = []
        senders: list[str] = []
        rows: list[Vector | None] = []
        tombstones: list[Tombstone] = []
        for delivery in deliveries:
            envelope = self._accepted(topic, delivery, live=live)
            if envelope is None:
                continue
            # A hand-over is applied whatever the levels; a zone message, for the levels asked.
            wanted = list(Level) if envelope.to is not None else self._info.receive_levels
            policies = self._identity.policies
            for record, row in zip(envelope.records, envelope.vectors(), strict=True):
                if record.level in wanted and policies.may_share(envelope.zone, record.level):
                    records.append(record)
                    senders.append(envelope.sender)
                    rows.append(row)
            tombstones.extend(t for t in envelope.tombstones if t.level in wanted)
            if len(records) + len(tombstones) >= self._settings.send_batch:
                self._store(records, senders, rows, tombstones)
                records, senders, rows, tombstones = [], [], [], []
        self._store(records, senders, rows, tombstones)
        cursor = self._cursors[topic]
        cursor.seq = deliveries[-1].seq
        self._outbox.set_cursor(topic, cursor.epoch or deliveries[-1].epoch, cursor.seq)

    def _store(
        self,
        records: list[MemoryRecord],
        senders: list[str],
        rows: list[Vector | None],
        tombstones: list[Tombstone],
    ) -> None:
        if not records and not tombstones:
            return
        try:
            stored = self._memory.receive(records, tombstones, senders=senders, dense=rows)
        except MemoryClosed:
            raise
        except Exception:  # isolation point: a bad record must not stop the receiver
            log.exception("pool_apply_failed", agent_id=self._info.agent_id, records=len(records))
            stored = self._store_one_by_one(records, senders, rows, tombstones)
        for listener in self.listeners if stored else []:
            try:
                listener(stored)
            except Exception:  # isolation point: a caller's listener
                log.exception("pool_listener_failed", agent_id=self._info.agent_id)

    def _store_one_by_one(
        self,
        records: list[MemoryRecord],
        senders: list[str],
        rows: list[Vector | None],
        tombstones: list[Tombstone],
    ) -> list[MemoryRecord]:
        """After a chunk failed: apply what can be applied, skip (and log) what cannot."""
        stored: list[MemoryRecord] = []
        items: list[tuple[list[MemoryRecord], list[str], list[Vector | None], list[Tombstone]]]
        items = [([r], [s], [v], []) for r, s, v in zip(records, senders, rows, strict=True)]
        items += [([], [], [], [t]) for t in tombstones]
        for one in items:
            try:
                stored += self._memory.receive(one[0], one[3], senders=one[1], dense=one[2])
            except MemoryClosed:
                raise
            except Exception as error:  # noqa: BLE001 - isolation point, as above
                log.warning(
                    "pool_record_skipped",
                    agent_id=self._info.agent_id,
                    record_id=(one[0] or one[3])[0].id,
                    error=type(error).__name__,
                )
        return stored

    def _accepted(self, topic: str, delivery: Delivery, *, live: bool) -> Envelope | None:
        """The delivery's envelope, or None (logged; audited when a security check refused it)
        when it must be skipped."""
        if delivery.sender == self._info.agent_id:
            return None  # our own write, already here: not even decoded
        try:
            envelope = self._identity.codec.decode(delivery.data, live=live)
        except MessageRejected as error:
            self._identity.rejected(error, topic, delivery)
            return None
        except SecurityMismatch as error:
            log.error("pool_security_mismatch", agent_id=self._info.agent_id, topic=topic,  # noqa: TRY400 - the message says it all
                      seq=delivery.seq, error=str(error))  # fmt: skip
            return None
        except InvalidMessage as error:
            log.warning(
                "pool_message_skipped",
                agent_id=self._info.agent_id,
                topic=topic,
                seq=delivery.seq,
                reason=str(error)[:200],
            )
            return None
        if envelope.sender == self._info.agent_id:
            return None  # our own write, already here
        expected = (
            inbox_topic(self._info.agent_id)
            if envelope.to is not None
            else zone_topic(envelope.zone, envelope.compartments)
        )
        reason = None
        if topic != expected:
            reason = "envelope does not belong on this topic"
        elif envelope.zone > self._info.clearance:
            reason = "above clearance"
        elif missing(self._info.compartments, envelope.compartments):
            reason = "outside compartments"
        if reason is not None:
            log.warning(
                "pool_message_skipped",
                agent_id=self._info.agent_id,
                topic=topic,
                seq=delivery.seq,
                sender=envelope.sender,
                zone=envelope.zone.value,
                reason=reason,
            )
            return None
        if envelope.records and not self._identity.sender_may_write(envelope.sender, envelope.zone):
            refused = MessageRejected("write_clearance", "sender below the zone's write clearance")
            self._identity.rejected(refused, topic, delivery)
            return None
        return envelope

"""What reaches an agent: the zones', compartments' and its inbox's messages, from Redis into
its memory (see :mod:`hivemem.agents.sync`).

The receiver follows the agent's registry entry. With Redis ACLs the broker enforces it: a
grant or revocation closes the agent's connections and a topic it lost answers NOPERM, on which
the receiver reads its entry again. Without them, the receiver reads its entry itself: when it
(re)subscribes, before it catches up; when the pool announces a change on the agent's notice
channel (:func:`~hivemem.pool.adapters.redis_bus.access_topic`), which arrives before any
message sent after the change returned; and before each heartbeat, for a notice missed. Its
entry changed, it resubscribes as now registered (``pool_receive_clearance_changed``); its
entry gone (deregistered), it stops receiving (``pool_receive_deregistered``, once) and only
looks again every heartbeat interval, in case the agent is registered again.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
import structlog

from hivemem.agents.admission import LateDelivery, admitted
from hivemem.agents.identity import Identity
from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.outbox import Outbox
from hivemem.agents.sync import REDIS_DOWN, Backoff, is_denied
from hivemem.pool.adapters.redis_bus import (
    Backlog,
    Delivery,
    RedisBus,
    compartment_glob,
    inbox_topic,
    topic_compartments,
    zone_topic,
)
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import missing
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import (
    AgentNotFound,
    InvalidMessage,
    MemoryClosed,
    PoolUnavailable,
)
from hivemem.pool.failures import described
from hivemem.pool.ports import Vector
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.pool.settings import PoolSettings

log = structlog.get_logger(__name__)

#: Pub/sub messages that carry a delivery: of a channel, and of a channel a glob matched.
_MESSAGE_TYPES = ("message", "pmessage")
_POLL_S = 0.2
#: Stream entries read per catch-up round trip (each holds up to ``send_batch`` records).
_READ_MESSAGES = 32


class _EntryChanged(Exception):
    """The agent's registry entry changed and the receiver took it on: subscribe again."""


@dataclass
class _Cursor:
    epoch: str | None
    seq: int
    #: A digest of the message at ``seq`` (kept with the cursor; None: not known).
    digest: bytes | None = None
    #: The bytes of the message at ``seq``, once this process judged it (None after a restart).
    data: bytes | None = None


def _start_over(backlog: Backlog, cursor: _Cursor) -> str | None:
    """Why the topic must be read from the start of its stream (None: from the cursor on):
    Redis lost its data (a new epoch), or restored older data (its counter went back below the
    cursor, or another message than the cursor's digest says stands at its number; no entry
    there, trimmed or never written, says nothing)."""
    if backlog.epoch != cursor.epoch:
        return "new epoch: Redis lost its data"
    if backlog.last_seq < cursor.seq:
        return "the topic's counter went back: Redis restored older data"
    at = backlog.at_position
    if at is not None and cursor.digest is not None and _digest(at) != cursor.digest:
        return "another message at the cursor: Redis restored older data"
    return None


def _digest(data: bytes) -> bytes:
    """What a cursor keeps of the message it stands on."""
    return hashlib.sha256(data).digest()[:16]


def _contested(cursor: _Cursor, delivery: Delivery) -> bool:
    """Whether a live message claims the number of the one the cursor stands on with other
    bytes. Only the pool's script numbers messages, but an agent's Redis user may also PUBLISH
    on its zones' channels: one of the two bypassed the script. Both are judged, so that a
    message sent with a forged number cannot hide the genuine message of that number."""
    return delivery.seq == cursor.seq and cursor.data not in (None, delivery.data)


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
        #: Whether the receiver found the agent deregistered (logged once, until it is back).
        self._gone = False
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

    def _follow_entry(self) -> None:
        """Take on the agent's registry entry if its clearance or compartments changed, then
        raise _EntryChanged (the receiver subscribes again, as now registered). Raises
        AgentNotFound when the agent is deregistered; what Redis raises when it is away."""
        info = self._identity.changed()
        if info is not None:
            self._adopt(info)
            raise _EntryChanged

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
                notice = self._identity.notice_topic
                pubsub = self._bus.subscribe(channels + ([notice] if notice else []), self.patterns)
                # Subscribed first: a change made after this read is announced there.
                self._follow_entry()
                if self._gone:
                    self._gone = False
                    log.warning("pool_receive_registered_again", agent_id=self._info.agent_id)
                self._discover()
                for topic in list(self.topics):
                    self._catch_up(topic)
                self._beat()
                self.connected.set()
                self._backoff.succeeded()
                self._listen(pubsub)
            except MemoryClosed:
                return
            except _EntryChanged:  # nothing failed: subscribe again at once
                self.connected.clear()
                log.warning("pool_receive_clearance_changed", agent_id=self._info.agent_id,
                            clearance=self._info.clearance.value,
                            compartments=self._info.compartments)  # fmt: skip
            except AgentNotFound:
                self._deregistered()
            except redis.AuthenticationError:
                self.connected.clear()
                with contextlib.suppress(*REDIS_DOWN, PoolUnavailable):  # still down: retry later
                    self._identity.reauthorize()
                self._backoff.failed("pool_receive_unauthorized", agent_id=self._info.agent_id)
            except (*REDIS_DOWN, PoolUnavailable) as error:  # the keyring raises the latter
                self.connected.clear()
                self._backoff.failed(
                    "pool_receive_disconnected",
                    agent_id=self._info.agent_id,
                    error=type(error).__name__,
                )
            except redis.ResponseError as error:
                self.connected.clear()
                self._refused(error)
            finally:
                if pubsub is not None:
                    pubsub.close()

    def _refused(self, error: redis.ResponseError) -> None:
        """After Redis refused a step: a denial by the broker means the clearance changed
        (receive as now registered); another refusal is retried later."""
        if not is_denied(error):  # a refusal the steps above do not expect: retry later
            self._backoff.failed("pool_receive_refused", agent_id=self._info.agent_id,
                                 error=str(error)[:200])  # fmt: skip
            return
        try:
            self._adopt(self._identity.reload())
        except AgentNotFound:
            self._deregistered()
            return
        except (*REDIS_DOWN, PoolUnavailable) as down:
            self._backoff.failed("pool_receive_disconnected", agent_id=self._info.agent_id,
                                 error=type(down).__name__)  # fmt: skip
            return
        self._backoff.failed(
            "pool_receive_clearance_changed",
            agent_id=self._info.agent_id,
            clearance=self._info.clearance.value,
        )

    def _deregistered(self) -> None:
        """The agent is no longer registered: receive nothing, and look again only after a
        heartbeat interval (logged the first time)."""
        self.connected.clear()
        if not self._gone:
            self._gone = True
            log.warning("pool_receive_deregistered", agent_id=self._info.agent_id,
                        retry_in_s=self._settings.heartbeat_interval_s)  # fmt: skip
        self._halt.wait(self._settings.heartbeat_interval_s)

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        beat_every_s = self._settings.heartbeat_interval_s
        next_beat = 0.0
        notice = self._identity.notice_topic
        while not self._halt.is_set():
            message = pubsub.get_message(timeout=_POLL_S)
            if message is not None and message.get("type") in _MESSAGE_TYPES:
                if notice is not None and self._bus.topic_of(message["channel"]) == notice:
                    self._follow_entry()
                else:
                    self._on_live(message["channel"], message["data"])
            now = time.monotonic()
            if now >= next_beat:
                self._follow_entry()  # a notice missed: the entry is read at least this often
                self._beat()
                next_beat = now + beat_every_s

    def _beat(self) -> None:
        """The agent's heartbeat (and upkeep). Redis refusing it for a reason other than a denial
        (out of memory, a read-only replica) is logged: receiving goes on."""
        try:
            self._heartbeat()
        except redis.ResponseError as error:
            if is_denied(error):
                raise
            log.warning(
                "pool_heartbeat_failed", agent_id=self._info.agent_id, error=str(error)[:200]
            )

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
        elif delivery.seq == cursor.seq + 1 or _contested(cursor, delivery):
            try:
                self._apply(delivery.topic, [delivery], live=True)
            except LateDelivery:
                log.info("pool_live_message_late", agent_id=self._info.agent_id,
                         topic=delivery.topic, seq=delivery.seq)  # fmt: skip
                self._catch_up(delivery.topic)

    def _catch_up(self, topic: str) -> None:
        """Apply what the topic's stream holds after the cursor."""
        cursor = self._cursors[topic]
        # The entry at the cursor is compared with the cursor's digest at the first read.
        check = cursor.digest is not None and cursor.seq > 0
        while not self._halt.is_set():
            try:
                backlog = self._bus.read(topic, cursor.seq, limit=_READ_MESSAGES, at_position=check)
            except redis.ResponseError as error:
                if is_denied(error):
                    raise
                # Its keys were overwritten with other types (by a user allowed to write them):
                # the other topics go on; this one is read again at the next catch-up.
                log.warning("pool_topic_unreadable", agent_id=self._info.agent_id, topic=topic,
                            error=str(error)[:200])  # fmt: skip
                return
            if backlog.epoch is None:
                return
            check = False
            reason = _start_over(backlog, cursor)
            if reason is not None:
                if cursor.epoch is not None:
                    log.warning("pool_rebootstrap", agent_id=self._info.agent_id, topic=topic,
                                reason=reason, cursor=cursor.seq, last_seq=backlog.last_seq,
                                source="stream")  # fmt: skip
                cursor.epoch, cursor.seq, cursor.digest, cursor.data = backlog.epoch, 0, None, None
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
            if self._identity.notice_topic is not None:
                # Read after the stream: a change announced before one of these messages was
                # sent is in the entry now, though its notice waits behind them on pub/sub.
                self._follow_entry()
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
        # Stored and passed by the cursor at the end: every delivery judged, or, when one could
        # not be judged (Redis away), those before it, whose ids the replay guard now holds; the
        # rest is read again later.
        judged: Delivery | None = None  # the last delivery accepted or refused
        try:
            for delivery in deliveries:
                accepted = admitted(
                    topic, delivery, info=self._info, identity=self._identity, live=live
                )
                judged = delivery
                if accepted is None:
                    continue
                envelope, vectors = accepted
                # A hand-over is applied whatever the levels; a zone message, for the levels
                # asked.
                wanted = list(Level) if envelope.to is not None else self._info.receive_levels
                policies = self._identity.policies
                for record, row in zip(envelope.records, vectors, strict=True):
                    if record.level in wanted and policies.may_share(envelope.zone, record.level):
                        records.append(record)
                        senders.append(envelope.sender)
                        rows.append(row)
                # A tombstone of a level not asked for still deletes a copy held here (a
                # hand-over's, one received before receive_levels narrowed, or a forget's).
                unasked = [t.id for t in envelope.tombstones if t.level not in wanted]
                held = set(self._memory.holds(unasked)) if unasked else set()
                tombstones.extend(
                    t for t in envelope.tombstones if t.level in wanted or t.id in held
                )
                if len(records) + len(tombstones) >= self._settings.send_batch:
                    self._store(records, senders, rows, tombstones)
                    records, senders, rows, tombstones = [], [], [], []
        finally:
            if judged is not None:
                self._store(records, senders, rows, tombstones)
                self._advance(topic, judged)

    def _advance(self, topic: str, delivery: Delivery) -> None:
        """Move the topic's cursor to ``delivery`` and keep it, with its digest."""
        cursor = self._cursors[topic]
        cursor.seq, cursor.data = delivery.seq, delivery.data
        cursor.digest = _digest(delivery.data)
        self._outbox.set_cursor(topic, cursor.epoch or delivery.epoch, cursor.seq, cursor.digest)

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
        except Exception as error:  # noqa: BLE001 - isolation point: a bad record must not stop it
            log.error(
                "pool_apply_failed",
                agent_id=self._info.agent_id,
                records=len(records),
                **described(error),
            )
            stored = self._store_one_by_one(records, senders, rows, tombstones)
        for listener in self.listeners if stored else []:
            try:
                listener(stored)
            except Exception as error:  # noqa: BLE001 - isolation point: a caller's listener
                log.error("pool_listener_failed", agent_id=self._info.agent_id, **described(error))

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

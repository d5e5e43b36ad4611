"""What leaves an agent: its shared writes, through the outbox, to Redis (see
:mod:`hivemem.agents.sync`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import redis
import structlog

from hivemem.agents.identity import Identity
from hivemem.agents.outbox import Outbox, Pending
from hivemem.agents.sync import REDIS_DOWN, Backoff, is_denied
from hivemem.pool.adapters.redis_bus import (
    RedisBus,
    inbox_topic,
    ingest_topic,
    is_queue,
    zone_topic,
)
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import Envelope, Row, fitted, make_envelope
from hivemem.pool.errors import PoolUnavailable, SealBroken
from hivemem.pool.ports import Vector
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.pool.settings import PoolSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")


#: How written items are grouped into envelopes: zone, compartments, user.
_Group = tuple[Zone, tuple[str, ...], str]


def _group(item: MemoryRecord | Tombstone) -> _Group:
    return item.zone, tuple(item.compartments), item.scope.user_id


def _pair_group(pair: tuple[MemoryRecord, Row]) -> _Group:
    return _group(pair[0])


def _by_agent(
    items: Sequence[T], handed: dict[str, list[str]], record_of: Callable[[T], str | None]
) -> dict[str, list[T]]:
    """``items`` by the agents the record each names (``record_of``) was handed over to."""
    found: dict[str, list[T]] = {}
    for item in items:
        for agent in handed.get(record_of(item) or "", []):
            found.setdefault(agent, []).append(item)
    return found


def _own_queue(topic: str, agent_id: str) -> str:
    """``topic``; for a zone's shared ingest queue (a message put in the outbox before each
    agent had a queue of its own, which its Redis user alone may write), the agent's own."""
    zone = topic.removeprefix("ingest:")
    if zone != topic and ":" not in zone:
        return ingest_topic(Zone(zone), agent_id)
    return topic


class ShareObserver:
    """Puts each write in the outbox (a WriteObserver): the shared levels for the zone's sync
    topic and, with ``ingest``, every record and tombstone for the agent's ingest queue in the
    zone."""

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
        self._max_bytes = settings.message_max_bytes
        self._ingest = settings.ingest
        self._identity = identity

    def records_written(self, records: Sequence[MemoryRecord], dense: Vector | None) -> None:
        rows: Sequence[Row] = list(dense) if dense is not None else [r.vector for r in records]
        pairs = list(zip(records, rows, strict=True))
        shared = [pair for pair in pairs if self._shares(pair[0].zone, pair[0].level)]
        messages = self._messages(pairs, shared, _pair_group, self._records_envelope)
        versions = [pair for pair in pairs if pair[0].supersedes is not None]
        handed = self._outbox.handed_to([r.supersedes for r, _ in versions if r.supersedes])
        notes: list[tuple[str, str]] = []
        for agent, chosen in _by_agent(versions, handed, lambda p: p[0].supersedes).items():
            # a new version of a record handed over follows it there
            messages += self._to_inbox(agent, chosen, _pair_group, self._records_envelope)
            notes += [(record.id, agent) for record, _ in chosen]
        self._send(messages, handed=notes)

    def tombstones_written(self, tombstones: Sequence[Tombstone]) -> None:
        shared = [t for t in tombstones if self._shares(t.zone, t.level)]
        messages = self._messages(tombstones, shared, _group, self._tombstones_envelope)
        handed = self._outbox.handed_to([t.id for t in tombstones])
        for agent, chosen in _by_agent(tombstones, handed, lambda t: t.id).items():
            # a record handed over is deleted there too
            messages += self._to_inbox(agent, chosen, _group, self._tombstones_envelope)
        self._send(messages)
        if handed:
            self._outbox.forget_handed(list(handed))

    def _records_envelope(
        self, part: list[tuple[MemoryRecord, Row]], to: str | None = None
    ) -> Envelope:
        return make_envelope(
            sender=self._info.agent_id,
            zone=part[0][0].zone,
            records=[record for record, _ in part],
            dense=[row for _, row in part],
            to=to,
        )

    def _tombstones_envelope(self, part: list[Tombstone], to: str | None = None) -> Envelope:
        return make_envelope(sender=self._info.agent_id, zone=part[0].zone, tombstones=part, to=to)

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
            return self._grouped(written, group_of, envelope_of, [zone_topic, self._queue])
        return self._grouped(shared, group_of, envelope_of, [zone_topic]) + self._grouped(
            written, group_of, envelope_of, [self._queue]
        )

    def _queue(self, zone: Zone, compartments: Sequence[str]) -> str:
        """This agent's ingest queue in the zone (one per zone, whatever the compartments: the
        workers hold all)."""
        del compartments
        return ingest_topic(zone, self._info.agent_id)

    def _grouped(
        self,
        items: Sequence[T],
        group_of: Callable[[T], _Group],
        envelope_of: Callable[[list[T]], Envelope],
        topics: Sequence[Callable[[Zone, Sequence[str]], str]],
    ) -> list[tuple[str, str, bytes]]:
        """One envelope per (zone, compartments, user) and ``send_batch`` items — one user per
        envelope, so that it can be sealed under that user's key — and ``message_max_bytes``
        (see :meth:`_fitted`), as a message to each of ``topics``."""
        groups: dict[_Group, list[T]] = {}
        for item in items:
            groups.setdefault(group_of(item), []).append(item)
        messages: list[tuple[str, str, bytes]] = []
        for (zone, compartments, _user), chosen in groups.items():
            for start in range(0, len(chosen), self._batch):
                part = chosen[start : start + self._batch]
                for envelope, body in self._fitted(part, envelope_of):
                    messages.extend(
                        (topic(zone, compartments), envelope.message_id, body) for topic in topics
                    )
        return messages

    def _fitted(
        self, items: list[T], envelope_of: Callable[[list[T]], Envelope]
    ) -> list[tuple[Envelope, bytes]]:
        """:func:`~hivemem.pool.envelope.fitted` with this agent's codec and message size."""
        return fitted(items, envelope_of, self._identity.codec, self._max_bytes)

    def hand_over(self, to_agent: str, record: MemoryRecord) -> None:
        """Queue ``record`` (with its vector) for ``to_agent``'s inbox (MessageTooLarge: it
        fits in no message), and note the hand-over: the record's new versions and tombstone
        follow it there."""
        pair: tuple[MemoryRecord, Row] = (record, record.vector)
        messages = self._to_inbox(to_agent, [pair], _pair_group, self._records_envelope)
        self._send(messages, handed=[(record.id, to_agent)])

    def _to_inbox(
        self,
        to_agent: str,
        items: Sequence[T],
        group_of: Callable[[T], _Group],
        envelope_of: Callable[[list[T], str | None], Envelope],
    ) -> list[tuple[str, str, bytes]]:
        """``items`` for ``to_agent``'s inbox, in envelopes as :meth:`_grouped` makes them."""
        return self._grouped(
            items, group_of, lambda part: envelope_of(part, to_agent),
            [lambda _zone, _compartments: inbox_topic(to_agent)],
        )  # fmt: skip

    def _send(
        self, messages: list[tuple[str, str, bytes]], *, handed: Sequence[tuple[str, str]] = ()
    ) -> None:
        if messages:
            self._outbox.put(messages, handed=handed)
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
        #: Send without waiting out ``sync_interval`` (a flush, a close, a stop).
        self._now = threading.Event()
        self._halt = threading.Event()
        self._idle = threading.Condition()
        self._backoff = Backoff(settings, self._halt)

    def wake(self) -> None:
        self._wake.set()

    def send_now(self) -> None:
        """Wake the sender and cut its ``sync_interval`` wait short: what is queued goes now."""
        self._now.set()
        self._wake.set()

    def stop(self) -> None:
        self._halt.set()
        self.send_now()

    def run(self) -> None:
        interval_s = self._info.sync_interval
        while not self._halt.is_set():
            self._wake.wait(timeout=1.0)
            if interval_s > 0:
                self._now.wait(interval_s)
            self._now.clear()
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        """Send until the outbox is empty (or Redis is down, then back off and retry)."""
        while not self._halt.is_set():
            pending = self._outbox.peek(
                self._settings.send_batch, max_bytes=self._settings.message_max_bytes
            )
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
            except (*REDIS_DOWN, redis.ResponseError, PoolUnavailable, SealBroken) as error:
                # Down, or refusing the write (out of memory, a read-only replica), or the
                # workers' ingest key cannot be had: the messages stay in the outbox and go
                # once Redis takes them.
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
        except (*REDIS_DOWN, PoolUnavailable) as error:  # the latter: its admin link is down
            log.warning("pool_relogin_failed", agent_id=self._info.agent_id,
                        error=type(error).__name__)  # fmt: skip
        self._backoff.failed("pool_send_unauthorized", agent_id=self._info.agent_id)

    def _publish(self, topic: str, chosen: list[Pending]) -> None:
        topic = _own_queue(topic, self._info.agent_id)
        bus = self._relay if topic.startswith("agent:") else self._bus
        self._relay.register_topic(topic)  # a compartment topic, before its first message
        ingest = is_queue(topic)
        messages = [(m.message_id, self._identity.outgoing(m.body, ingest=ingest)) for m in chosen]
        try:
            bus.publish(topic, self._info.agent_id, messages)
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

"""What the workers still owe deregistered agents: the writes they queued before leaving.

An agent's writes wait for the workers in its ingest queues (``ingest:<zone>:agent:<id>``),
keys its Redis user may write. Deregistering it (:meth:`AgentRegistry.deregister
<hivemem.pool.adapters.redis_registry.AgentRegistry.deregister>`, one script,
``lua/depart.lua``) removes it from the registry and, in the same step, moves each of those
queues, with the workers' cursor in it, to a *departure* of its own: number ``n`` from a
counter, topics ``departed:<n>:ingest:<zone>:agent:<id>``, keys no agent's user may touch
(``ns:departed:*``). The departure keeps the agent's registry entry as it stood
(``ns:registry:departures``, field ``n``). The workers read a departure's queues as any other
and check their messages against that entry; once read through, the departure and its keys go
(:meth:`Departures.forget`).

So what an agent queued while registered is stored whatever happens to its id afterwards: a
registration again (another clearance, another key) starts new queues, and each departure is
judged by its own entry. Nothing can be added to a departure's queues, not even with the
agent's key and a user of the same id. Deregistering with ``keep`` off deletes the queues
instead (an agent whose key or host is compromised), and :meth:`Departures.discard` deletes
the departures of an agent deregistered before; both hold every zone's ingest lock meanwhile,
so that no drain stores what they delete. A departure whose entry does not read is left to an
operator (it is logged): its writes wait, unread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import redis
import structlog
from pydantic import ValidationError
from redis.exceptions import LockError
from redis.lock import Lock

from hivemem.pool.adapters.redis_bus import (
    ingest_cursor_key,
    ingest_lock_key,
    ingest_topic,
    topic_keys,
    zone_queues,
)
from hivemem.pool.adapters.redis_errors import REDIS_DOWN, read_back
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.errors import QueuesBusy
from hivemem.pool.ids import check_agent_id

log = structlog.get_logger(__name__)

#: How long a discard waits for each zone's drain to end, and holds the zones (seconds).
_QUIET_WAIT_S = 60.0
_QUIET_TTL_S = 60.0


def departed_topic(number: int, zone: Zone, agent_id: str) -> str:
    """The queue of departure ``number`` that holds what ``agent_id`` queued in ``zone``."""
    return f"departed:{number}:{ingest_topic(zone, agent_id)}"


def queue_keys(namespace: str, topic: str) -> list[str]:
    """A queue's keys: its stream, counter and epoch, and the workers' cursor in it."""
    return [*topic_keys(namespace, topic), ingest_cursor_key(namespace, topic)]


def queue_owner(topic: str) -> str | None:
    """The agent whose writes the ingest queue ``topic`` holds (None: the zone's shared queue
    of earlier versions, any agent's)."""
    return topic.rsplit(":agent:", 1)[1] if ":agent:" in topic else None


@dataclass(frozen=True, slots=True)
class Departure:
    """What an agent queued before deregistration ``number``, and its registry entry then."""

    number: int
    info: AgentInfo

    def topic(self, zone: Zone) -> str:
        return departed_topic(self.number, zone, self.info.agent_id)

    def topics(self) -> list[str]:
        """Its queues, one per zone (those the agent never wrote to are empty)."""
        return [self.topic(zone) for zone in Zone]


@dataclass(frozen=True, slots=True)
class Owners:
    """Whose ingest queues the workers read, as of one read of the registry: the registered
    agents and the deregistered ones whose own queues they have not read through (sorted;
    the latter's processes may still run, and with security off nothing stops them writing),
    and the departures."""

    registered: Sequence[str]
    departed: Sequence[str]
    departures: Mapping[int, Departure] = field(default_factory=dict)

    def queues(self, zone: Zone) -> list[str]:
        """``zone``'s ingest queues: the shared one, the agents', then the departures'."""
        found = zone_queues(zone, [*self.registered, *self.departed])
        return found + [d.topic(zone) for _, d in sorted(self.departures.items())]

    def departure_of(self, topic: str) -> Departure | None:
        """The departure ``topic`` is a queue of, if any."""
        if not topic.startswith("departed:"):
            return None
        number = topic.split(":", 2)[1]
        return self.departures.get(int(number)) if number.isdigit() else None


class Departures:
    """The departures of one pool, in Redis."""

    def __init__(self, client: redis.Redis, *, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.key = f"{namespace}:registry:departures"
        #: The counter departures are numbered from.
        self.counter = f"{namespace}:registry:departure_seq"

    def all(self) -> dict[int, Departure]:
        """Every departure not forgotten yet, by number."""
        return self.parsed(cast("dict[bytes, bytes]", self.client.hgetall(self.key)))

    def parsed(self, raw: Mapping[bytes, bytes]) -> dict[int, Departure]:
        """The departures an HGETALL of :attr:`key` gave. One that does not read (only the
        pool's operators and workers may write them) is logged and left out: its writes wait,
        unread, until an operator mends it."""
        found = {}
        for number, entry in raw.items():
            try:
                found[int(number)] = Departure(int(number), AgentInfo.model_validate_json(entry))
            except (ValueError, ValidationError) as error:
                log.error("agent_departure_unreadable", departure=number.decode(errors="replace"),
                          error=type(error).__name__)  # fmt: skip
        return found

    def of(self, agent_id: str) -> list[Departure]:
        """The departures of ``agent_id``, oldest first."""
        check_agent_id(agent_id)
        return [d for _, d in sorted(self.all().items()) if d.info.agent_id == agent_id]

    def forget(self, departure: Departure) -> bool:
        """Remove the departure and its queues' keys (the workers read them through, or an
        operator discards what they hold); False when it was gone already."""
        keys = [k for topic in departure.topics() for k in queue_keys(self.namespace, topic)]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.key, str(departure.number))
            pipe.delete(*keys)
            try:
                removed, _ = pipe.execute()
            except REDIS_DOWN:  # the reply lost on the way: gone now, it was this call
                if read_back(lambda: not self.client.hexists(self.key, str(departure.number))):
                    return True
                raise
        return bool(removed)

    def discard(self, agent_id: str, *, wait_s: float = _QUIET_WAIT_S) -> int:
        """Delete what ``agent_id`` queued before its earlier deregistrations and the workers
        have not stored (an agent found compromised after it left), with no worker draining
        meanwhile (:meth:`quiet`); returns how many departures went. Raises QueuesBusy (nothing
        deleted) when the workers keep a zone longer than ``wait_s``. Not within a
        :meth:`quiet` (use :meth:`discard_now` there)."""
        with self.quiet(wait_s):
            return self.discard_now(agent_id)

    def discard_now(self, agent_id: str) -> int:
        """:meth:`discard`, in a :meth:`quiet` the caller holds."""
        return sum(self.forget(departure) for departure in self.of(agent_id))

    @contextlib.contextmanager
    def quiet(
        self, wait_s: float = _QUIET_WAIT_S, *, ttl_s: float = _QUIET_TTL_S
    ) -> Iterator[None]:
        """Hold every zone's ingest lock (the one a worker holds while it drains the zone):
        no worker reads an ingest queue meanwhile, so what is deleted then is not stored by a
        drain that read it just before. Waits up to ``wait_s`` for each zone, renewing the
        locks already held (for ``ttl_s``) while it waits. Raises QueuesBusy (no lock kept)
        when a zone stays taken, or a held lock lapsed all the same. Not reentrant."""
        held: list[Lock] = []
        try:
            for zone in Zone:
                lock = self.client.lock(
                    ingest_lock_key(self.namespace, zone), timeout=ttl_s, thread_local=False
                )
                deadline = time.monotonic() + wait_s
                while not lock.acquire(blocking_timeout=min(wait_s, ttl_s / 3)):
                    _renewed(held)
                    if time.monotonic() >= deadline:
                        raise QueuesBusy(
                            f"the workers kept draining zone {zone.value} for over {wait_s:g} "
                            "s: nothing was discarded; try again"
                        )
                held.append(lock)
            _renewed(held)
            yield
        finally:
            for lock in held:
                with contextlib.suppress(LockError):  # expired: a worker may hold it now
                    lock.release()


def _renewed(held: Sequence[Lock]) -> None:
    """Renew each of the locks ``held``; QueuesBusy when one lapsed (a worker may have taken
    it since)."""
    for lock in held:
        try:
            lock.reacquire()
        except LockError:
            raise QueuesBusy(
                "a zone's lock lapsed while the others were awaited: nothing was discarded; "
                "try again"
            ) from None

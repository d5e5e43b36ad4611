"""The agent registry in Redis: register, look up, heartbeat and deregister agents.

Keys under the pool namespace ``ns``: ``ns:registry:agents`` (hash: agent id → AgentInfo JSON),
``ns:registry:clearance`` (hash: agent id → its access, the zone followed by ``+`` and its
compartments when it holds any; what a re-registration is checked against),
``ns:registry:zones`` and ``ns:registry:compartments`` (the zone ladder and the compartments,
JSON, set once: see :func:`check_zone_ladder`), ``ns:registry:topics`` (a set: the compartment
topics written so far, see :mod:`hivemem.pool.adapters.redis_bus`), ``ns:registry:departed`` (a
set: agents deregistered whose own ingest queues the workers have not read through yet),
``ns:registry:unaudited`` (hash: agent id → its registry change whose audit entry is not
written yet: see :meth:`AgentRegistry.pending`), ``ns:registry:departures`` and
``ns:registry:departure_seq`` (what deregistered agents queued before leaving:
:mod:`hivemem.pool.adapters.departures`) and ``ns:agent:<id>:alive`` (the last heartbeat,
expiring after the heartbeat TTL).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import cast

import redis
import structlog

from hivemem.pool.adapters.departures import Departures, Owners, departed_topic, queue_keys
from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.adapters.redis_errors import REDIS_DOWN, ran_anyway, read_back, unavailable
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import compartment_names
from hivemem.pool.enums import Zone, zone_names
from hivemem.pool.errors import AgentNotFound, RegistrationConflict, ZoneLadderMismatch
from hivemem.pool.ids import check_agent_id

log = structlog.get_logger(__name__)

_REGISTER = (Path(__file__).parent / "lua" / "register.lua").read_text()
_DEPART = (Path(__file__).parent / "lua" / "depart.lua").read_text()
_FORGET_DEPARTED = (Path(__file__).parent / "lua" / "forget_departed.lua").read_text()
_AUDITED = (Path(__file__).parent / "lua" / "audited.lua").read_text()


def check_zone_ladder(client: redis.Redis, namespace: str) -> None:
    """Store this process's zone ladder and compartments in the pool, unless they are there
    already; raise ZoneLadderMismatch when the stored ones differ (every process of a pool must
    order the same zones the same way, and know the same compartments in the same order)."""
    for what, mine, joint in (
        ("zones", list(zone_names()), " < "),
        ("compartments", list(compartment_names()), ", "),
    ):
        key = f"{namespace}:registry:{what}"
        client.set(key, json.dumps(mine), nx=True)
        stored = cast("bytes | None", client.get(key))
        held = json.loads(stored) if stored else mine
        if held != mine:
            raise ZoneLadderMismatch(
                f"this process's {what} ({joint.join(mine) or 'none'}) differ from the pool's "
                f"({joint.join(map(str, held)) or 'none'}); set HIVEMEM_{what.upper()} to the "
                "pool's"
            )


def access_of(info: AgentInfo) -> str:
    """What the clearance hash holds for an agent: its zone, then ``+`` and its compartments
    (comma-separated) when it holds any."""
    zone = info.clearance.value
    return f"{zone}+{','.join(info.compartments)}" if info.compartments else zone


class Registration(StrEnum):
    """What a registration did: a new agent, an update of its entry, or a new key (the old
    key's registration ended, its queued writes kept)."""

    NEW = "new"
    UPDATED = "updated"
    REKEYED = "rekeyed"


@dataclass(frozen=True, slots=True)
class Departing:
    """A deregistration whose step in Redis ran (the agent is out of the registry, its queues
    moved or deleted), noted there until its caller has also done what follows it (the inbox,
    the audit entry): its departure number, whether it kept what the agent queued, and how many
    of its queues held anything."""

    number: int
    keep: bool
    queues: int

    @property
    def note(self) -> str:
        """How ``lua/depart.lua`` notes it."""
        return f"departed {self.number} {int(self.keep)} {self.queues}"

    @classmethod
    def parse(cls, note: str) -> Departing:
        """The deregistration ``note`` stands for; ValueError when it is not one."""
        kind, number, keep, queues = note.split(" ")
        if kind != "departed" or keep not in ("0", "1"):
            raise ValueError(note)
        return cls(int(number), keep == "1", int(queues))


@dataclass(frozen=True, slots=True)
class AccessChange:
    """A change of a registered agent's clearance or compartments: the access it held before
    (as :func:`access_of` writes it)."""

    prior: str

    @property
    def note(self) -> str:
        return f"access {self.prior}"

    @property
    def clearance(self) -> Zone:
        return Zone(self.prior.partition("+")[0])

    @property
    def compartments(self) -> list[str]:
        held = self.prior.partition("+")[2]
        return held.split(",") if held else []


#: A registry change not yet audited (:meth:`AgentRegistry.pending`).
Change = Registration | Departing | AccessChange


def _note(change: Change) -> str:
    """How a change is noted until it is audited: ``new``, ``rekeyed``, a departure's or an
    access change's."""
    return change.value if isinstance(change, Registration) else change.note


#: Tries at replacing an entry that another process changes meanwhile.
_REGISTER_ATTEMPTS = 5


def _conflict(info: AgentInfo, held: str) -> RegistrationConflict:
    return RegistrationConflict(
        f"agent {info.agent_id} is registered with clearance {held}, not {access_of(info)}; "
        "deregister it first to change its clearance (or use set_clearance / set_compartments)"
    )


class AgentRegistry:
    """Register, look up, heartbeat and deregister agents."""

    def __init__(self, client: redis.Redis, *, namespace: str, heartbeat_ttl_s: float) -> None:
        self.client = client
        self.namespace = namespace
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self._agents = f"{namespace}:registry:agents"
        self._clearance = f"{namespace}:registry:clearance"
        #: Agents deregistered whose ingest queues the workers may not have read through yet.
        self._departed = f"{namespace}:registry:departed"
        #: Registry changes whose audit entry is not written yet.
        self._unaudited = f"{namespace}:registry:unaudited"
        #: What deregistered agents queued before leaving.
        self.departures = Departures(client, namespace=namespace)
        self._register = client.register_script(_REGISTER)
        self._depart = client.register_script(_DEPART)
        self._forget_departed = client.register_script(_FORGET_DEPARTED)
        self._audited = client.register_script(_AUDITED)

    def _alive_key(self, agent_id: str) -> str:
        return f"{self.namespace}:agent:{check_agent_id(agent_id)}:alive"

    def register(self, info: AgentInfo) -> AgentInfo:
        """:meth:`registered`, the stored info only."""
        return self.registered(info)[0]

    def registered(self, info: AgentInfo) -> tuple[AgentInfo, Registration]:
        """Add ``info``, or update an agent of the same id and clearance (keeping its first
        registration time); returns the stored info and which it was. Raises
        RegistrationConflict (nothing changed) when the id holds another clearance,
        PoolUnavailable when Redis cannot say whether it was done. ``info``
        with another key than the entry's (the agent attached from another directory)
        replaces the entry in the same step that ends the old key's registration as a
        deregistration that keeps what it queued: those writes are checked against the key
        that signed them (:mod:`hivemem.pool.adapters.departures`). Each write happens only
        if the entry is still the one read; else it is read again."""
        for _attempt in range(_REGISTER_ATTEMPTS):
            raw = cast("bytes | None", self.client.hget(self._agents, info.agent_id))
            prior = None if raw is None else AgentInfo.model_validate_json(raw)
            if prior is not None:
                info = info.model_copy(update={"registered_at": prior.registered_at})
            if prior is None or prior.public_key in (None, info.public_key):
                try:
                    done = self._put(info, expected=raw)
                except REDIS_DOWN as error:  # the reply lost: the entry says whether it ran
                    ran_anyway(
                        error, partial(self._holds, info), "agent_registration_reply_lost",
                        agent_id=info.agent_id,
                    )  # fmt: skip
                    done = Registration.NEW if raw is None else Registration.UPDATED
                if done is not None:
                    return info, done
                continue
            if access_of(prior) != access_of(info):
                raise _conflict(info, access_of(prior))
            try:
                if self._departed_now(info.agent_id, keep=True, expected=raw, then=info) >= 0:
                    log.info("agent_key_replaced", agent_id=info.agent_id)
                    return info, Registration.REKEYED
            except AgentNotFound:  # deregistered meanwhile: register it afresh
                continue
            except REDIS_DOWN as error:  # the reply lost: the entry says whether it ran
                ran_anyway(
                    error, partial(self._holds, info), "agent_key_replaced",
                    agent_id=info.agent_id, reply_lost=True,
                )  # fmt: skip
                return info, Registration.REKEYED
        raise RegistrationConflict(f"agent {info.agent_id}'s entry kept changing; try again")

    def _holds(self, info: AgentInfo) -> bool:
        """Whether the agent's entry is ``info``."""
        raw = cast("bytes | None", self.client.hget(self._agents, info.agent_id))
        return raw == info.model_dump_json().encode()

    def _put(self, info: AgentInfo, *, expected: bytes | None) -> Registration | None:
        """``info`` put in the registry by ``lua/register.lua`` if the entry is ``expected``
        (None: no entry); which it was, or None when the entry changed (nothing done)."""
        try:
            done = self._register(
                keys=[self._agents, self._clearance, self._unaudited],
                args=[info.agent_id, access_of(info), info.model_dump_json(), expected or ""],
            )
        except redis.ResponseError as error:
            if not str(error).startswith("CONFLICT"):
                raise
            raise _conflict(info, str(error).split(" ", 1)[1]) from None
        if int(done) < 0:
            return None
        return Registration.NEW if int(done) == 1 else Registration.UPDATED

    def update_access(
        self,
        agent_id: str,
        changes: dict[str, object],
        resign: Callable[[AgentInfo], AgentInfo] | None,
    ) -> tuple[AgentInfo, AgentInfo]:
        """Apply ``changes`` (validated) to a registered entry in one transaction, noted as an
        :class:`AccessChange` unless a change of the agent is noted already; returns the new
        and the prior entry. A reply lost on the way is no failure when the entry shows the
        transaction ran (redis-py raises WatchError for it too); PoolUnavailable when Redis
        cannot say."""
        check_agent_id(agent_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                sent: tuple[AgentInfo, AgentInfo] | None = None  # what this try writes
                try:
                    pipe.watch(self._agents)  # type: ignore[no-untyped-call]
                    raw = cast("bytes | None", pipe.hget(self._agents, agent_id))
                    if raw is None:
                        raise AgentNotFound(agent_id)
                    prior = AgentInfo.model_validate_json(raw)
                    info = AgentInfo.model_validate({**prior.model_dump(), **changes})
                    if resign is not None:
                        info = resign(info)
                    pipe.multi()
                    pipe.hset(self._clearance, agent_id, access_of(info))
                    pipe.hset(self._agents, agent_id, info.model_dump_json())
                    pipe.hsetnx(self._unaudited, agent_id, AccessChange(access_of(prior)).note)
                    sent = info, prior
                    pipe.execute()
                except (redis.WatchError, *REDIS_DOWN) as error:
                    if sent is not None and read_back(partial(self._holds, sent[0])):
                        return sent  # it ran, its reply lost
                    if isinstance(error, redis.WatchError):
                        continue
                    raise unavailable(error) from None
                return info, prior

    def exists(self, agent_id: str) -> bool:
        return bool(self.client.hexists(self._agents, check_agent_id(agent_id)))

    def get(self, agent_id: str) -> AgentInfo:
        raw = cast("bytes | None", self.client.hget(self._agents, check_agent_id(agent_id)))
        if raw is None:
            raise AgentNotFound(agent_id)
        return AgentInfo.model_validate_json(raw)

    def list(self) -> list[AgentInfo]:
        """Every registered agent, by id."""
        raw = cast("dict[bytes, bytes]", self.client.hgetall(self._agents))
        return sorted(
            (AgentInfo.model_validate_json(v) for v in raw.values()), key=lambda a: a.agent_id
        )

    def heartbeat(self, agent_id: str) -> None:
        self.client.set(
            self._alive_key(agent_id), str(time.time()), px=int(self.heartbeat_ttl_s * 1000)
        )

    def stopped(self, agent_id: str) -> None:
        """The agent's process closed it: no heartbeat any more (:meth:`is_alive` is False at
        once, not a ``heartbeat_ttl_s`` later)."""
        self.client.delete(self._alive_key(agent_id))

    def last_seen(self, agent_id: str) -> datetime | None:
        """When the agent last sent a heartbeat, if within the TTL. The key is the agent's
        own (its Redis user may write it): what is no heartbeat there (not a time, a key of
        another type) reads as none, and is logged."""
        key = self._alive_key(agent_id)
        try:
            raw = cast("bytes | None", self.client.get(key))
            return None if raw is None else datetime.fromtimestamp(float(raw), tz=UTC)
        except redis.ResponseError as error:  # WRONGTYPE
            reason = str(error)
        except (ValueError, OverflowError, OSError) as error:  # not a time, or out of range
            reason = type(error).__name__
        log.warning("agent_heartbeat_unreadable", agent_id=agent_id, reason=reason[:200])
        return None

    def is_alive(self, agent_id: str) -> bool:
        return self.last_seen(agent_id) is not None

    def deregister(self, agent_id: str, *, keep_queued: bool = True) -> int:
        """Remove the agent, and in the same step take its ingest queues out of its reach:
        ``keep_queued`` moves them to a departure, which the workers read through (see
        :mod:`hivemem.pool.adapters.departures`); off, it deletes them, and the agent's
        earlier departures too: call it so within :meth:`Departures.quiet`, so that no drain
        stores what it deletes. Returns how many queues held anything. Raises AgentNotFound
        (nothing changed) when it is not registered. (:meth:`depart` and
        :meth:`audited`, with nothing between them.)"""
        departing = self.depart(agent_id, keep_queued=keep_queued)
        if not departing.keep:
            self.departures.discard_now(agent_id)
        self.audited(agent_id, departing)
        return departing.queues

    def depart(self, agent_id: str, *, keep_queued: bool = True) -> Departing:
        """Remove the agent and take its ingest queues out of its reach (``lua/depart.lua``;
        ``keep_queued`` as for :meth:`deregister`, except that the earlier departures are the
        caller's to discard), noting the deregistration as not yet audited. A reply lost on
        the way (a timeout, a dropped connection) is no failure when the note shows the script
        ran. Raises AgentNotFound (nothing changed) when it is not registered, PoolUnavailable
        when Redis cannot say whether it ran (it may run still: :meth:`pending` then finds
        it)."""
        check_agent_id(agent_id)
        number = int(cast("int", self.client.incr(self.departures.counter)))
        try:
            queues = self._departed_now(agent_id, keep=keep_queued, number=number)
        except REDIS_DOWN as error:  # the reply lost: the note says whether it ran
            return ran_anyway(
                error, lambda: self._departure(agent_id, number), "agent_departure_reply_lost",
                agent_id=agent_id, departure=number,
            )  # fmt: skip
        return Departing(number, keep_queued, queues)

    def _departure(self, agent_id: str, number: int) -> Departing | None:
        """Departure ``number`` of the agent, if it is the deregistration noted unaudited."""
        noted = self.pending(agent_id)
        return noted if isinstance(noted, Departing) and noted.number == number else None

    def pending(self, agent_id: str) -> Change | None:
        """The agent's registry change whose audit entry is not written yet, if any: a
        registration (``NEW``), a new key (``REKEYED``), a deregistration (a
        :class:`Departing`) or a change of its access (the first not audited), noted in the
        step that made it and deleted by :meth:`audited`.
        The caller whose reply was lost, or whose process stopped, before the audit entry
        leaves it for a later call to audit. A note that does not read is logged and counts
        as none."""
        raw = cast("bytes | None", self.client.hget(self._unaudited, check_agent_id(agent_id)))
        if raw is None:
            return None
        note = raw.decode(errors="replace")
        if note in (Registration.NEW, Registration.REKEYED):
            return Registration(note)
        try:
            if note.startswith("access "):
                change = AccessChange(note.removeprefix("access "))
                change.clearance  # noqa: B018 - ValueError for a zone not configured
                return change
            return Departing.parse(note)
        except ValueError:
            log.warning("agent_change_note_unreadable", agent_id=agent_id)
            return None

    def audited(self, agent_id: str, change: Change) -> bool:
        """Delete the note of ``change`` (its audit entry is written); False when the agent's
        note is another one (a later change's) or none."""
        done = self._audited(keys=[self._unaudited], args=[agent_id, _note(change)])
        return bool(int(done))

    def _departed_now(
        self,
        agent_id: str,
        *,
        keep: bool,
        number: int | None = None,
        expected: bytes | None = None,
        then: AgentInfo | None = None,
    ) -> int:
        """Run ``lua/depart.lua`` for the agent (``number``: its departure's, else the next;
        ``then``: the entry it is registered under from now on, instead of deregistered;
        ``expected``: only if its entry is this one). Returns how many queues held anything,
        -1 when the entry was not ``expected`` (nothing changed); raises AgentNotFound
        (nothing changed) when it is not registered."""
        if number is None:
            number = int(cast("int", self.client.incr(self.departures.counter)))
        keys = [self._agents, self._clearance, self._departed, self.departures.key]
        keys += [self._alive_key(agent_id), self._unaudited]
        for zone in Zone:
            keys += queue_keys(self.namespace, ingest_topic(zone, agent_id))
            keys += queue_keys(self.namespace, departed_topic(number, zone, agent_id))
        args: list[str | bytes | int] = [agent_id, number, "1" if keep else "0", expected or ""]
        args += [then.model_dump_json(), access_of(then)] if then is not None else ["", ""]
        queues = self._depart(keys=keys, args=args)
        if queues is None:
            raise AgentNotFound(agent_id)
        return int(queues)

    def queue_owners(self) -> Owners:
        """Whose ingest queues the workers read (one round trip)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hkeys(self._clearance)
            pipe.smembers(self._departed)
            pipe.hgetall(self.departures.key)
            registered, departed, departures = pipe.execute()
        return Owners(
            sorted(i.decode() for i in cast("Sequence[bytes]", registered)),
            sorted(i.decode() for i in cast("set[bytes]", departed)),
            self.departures.parsed(departures),
        )

    def forget_departed(self, agent_ids: Sequence[str]) -> Sequence[str]:
        """Forget those of these deregistered agents whose own ingest queues the workers read
        through, checked again in the same step (``lua/forget_departed.lua``): each that is
        registered again (its queues stay: they are a registered agent's), or that still does
        not beat and whose queues hold nothing unstored (what is left of them is deleted).
        Returns those forgotten."""
        if not agent_ids:
            return []
        keys = [self._clearance, self._departed]
        for agent_id in agent_ids:
            keys.append(self._alive_key(agent_id))
            for zone in Zone:
                keys += queue_keys(self.namespace, ingest_topic(zone, agent_id))
        done = cast("list[bytes]", self._forget_departed(keys=keys, args=list(agent_ids)))
        return [agent_id.decode() for agent_id in done]

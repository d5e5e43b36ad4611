"""``SharedMemoryPool``: agents register, and the levels they share reach each other.

The pool owns the Redis connection (``redis_url``, or a ``redis-server`` it starts and stops
itself), the agent registry and the bus. Agents attached in this process live under
``<data_dir>/agents/<agent_id>``; several processes may each attach their own agents to the same
Redis. See :mod:`hivemem.agents.sync` for how records travel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import redis
import structlog

from hivemem.agents.agent import Agent
from hivemem.agents.identity import Identity, SecureIdentity
from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.outbox import Outbox
from hivemem.agents.retention import LocalRetention
from hivemem.pool.adapters.redis_bus import RedisBus, inbox_topic
from hivemem.pool.adapters.redis_errors import REDIS_DOWN, unavailable
from hivemem.pool.adapters.redis_registry import AgentRegistry, check_zone_ladder
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import missing
from hivemem.pool.enums import Level, Zone, checked_zone
from hivemem.pool.envelope import PlainCodec
from hivemem.pool.errors import (
    AgentNotFound,
    ClearanceDenied,
    CompartmentDenied,
    HivememError,
    InvalidInput,
    ZoneLadderMismatch,
)
from hivemem.pool.ids import check_agent_id
from hivemem.pool.ports import Embedder, LocalIndex
from hivemem.pool.records import MemoryRecord
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.stack_file import running_stack
from hivemem.pool.zone_policy import ZonePolicies
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.content_seal import ContentSeal
from hivemem.security.data_keys import KeyInfo
from hivemem.security.in_flight import ingest_queued_under
from hivemem.security.ingest_seal import IngestOpener
from hivemem.security.key_rotation import KeyRotation
from hivemem.security.local_reseal import LocalReseal
from hivemem.security.pool_security import WORKER_SENDER, PoolSecurity
from hivemem.security.sealed_index import SealedIndex
from hivemem.security.sealing import Sealer

log = structlog.get_logger(__name__)

#: The actor of the audit entries the pool API writes (registrations, deregistrations).
AUDIT_ACTOR = "pool"


def _check_read(info: AgentInfo, zone: Zone, compartments: Sequence[str]) -> None:
    """Raise ClearanceDenied, or CompartmentDenied, unless ``info``'s agent may hold a record
    of ``zone`` carrying ``compartments``."""
    if zone > info.clearance:
        raise ClearanceDenied(info.agent_id, zone.value, info.clearance.value)
    lacking = missing(info.compartments, compartments)
    if lacking:
        raise CompartmentDenied(info.agent_id, zone.value, info.clearance.value, lacking)


def _kept(sealed: list[SealedIndex], index: LocalIndex, seal: ContentSeal) -> SealedIndex:
    """``index`` sealed with ``seal``, also put in ``sealed``."""
    sealed.append(SealedIndex(index, seal))
    return sealed[-1]


class SharedMemoryPool:
    """The pool as seen from one process. Use as a context manager, or call close()."""

    def __init__(
        self,
        settings: HivememSettings,
        client: redis.Redis,
        server: EmbeddedRedis | None = None,
        *,
        redis_url: str,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self.server = server
        #: The Redis this pool is on (from the settings, a running stack, or its own server).
        self.redis_url = redis_url
        self._embedder = embedder
        pool = settings.pool
        self.bus = RedisBus(client, namespace=pool.namespace, maxlen=pool.stream_maxlen)
        self.registry = AgentRegistry(
            client, namespace=pool.namespace, heartbeat_ttl_s=pool.heartbeat_ttl_s
        )
        self.audit = AuditLog(client, namespace=pool.namespace, jsonl_path=settings.audit_file)
        #: The security layer (keys, signatures, ACLs); None when ``security.enabled`` is off.
        self.security = (
            PoolSecurity(settings, client, self.registry) if settings.security.enabled else None
        )
        #: Key rotation and retirement (None when security is off).
        self.rotation = (
            None
            if self.security is None
            else KeyRotation(
                self.security.keyring,
                client,
                namespace=pool.namespace,
                audit=self.audit,
                # The writes in a zone's ingest queues under a key hold its retirement.
                queued=partial(
                    ingest_queued_under,
                    self.bus,
                    self.registry,
                    IngestOpener(self.security.keyring),
                ),
            )
        )
        #: The zones' rules (``settings.zone_policies``).
        self.policies = ZonePolicies(settings.zone_policies)
        self._attached: dict[str, Agent] = {}

    @classmethod
    def connect(
        cls, settings: HivememSettings | None = None, *, embedder: Embedder | None = None
    ) -> SharedMemoryPool:
        """Connect to ``settings.redis_url``; when it is None, to the Redis of the stack that
        ``hivemem up`` runs on ``data_dir``, else start a redis-server of our own (append-only,
        its files under ``<data_dir>/redis``). ``embedder`` replaces the default (fastembed) in
        the agents' memories. Raises PoolUnavailable, or ZoneLadderMismatch when the pool holds
        other zones than ``settings.zones``."""
        settings = settings or HivememSettings()
        server = None
        url = settings.redis_url
        if url is None and (stack := running_stack(settings.data_dir)) is not None:
            url = stack.redis_url
        if url is None:
            server = EmbeddedRedis(settings.data_dir / "redis", appendonly=True).start()
            url = server.url
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=10)
        try:
            client.ping()
            check_zone_ladder(client, settings.pool.namespace)
        except (*REDIS_DOWN, ZoneLadderMismatch) as error:
            if server is not None:
                server.stop()
            if isinstance(error, ZoneLadderMismatch):
                raise
            raise unavailable(error) from None
        log.info("pool_connected", embedded=server is not None)
        pool = cls(settings, client, server, redis_url=url, embedder=embedder)
        if pool.security is not None and pool.security.acl is not None:
            try:
                pool.security.acl.upgrade(pool.registry.list)  # once per namespace
            except (HivememError, redis.RedisError) as error:  # the next connect tries again
                log.warning("acl_upgrade_failed", error=type(error).__name__)
        return pool

    # -- agents ---------------------------------------------------------------------------------

    def register_agent(
        self,
        agent_id: str,
        *,
        clearance: Zone | str = Zone.PUBLIC,
        compartments: Sequence[str] = (),
        share_levels: Sequence[Level | str] = (),
        receive_levels: Sequence[Level | str] | None = None,
        display_name: str = "",
        capabilities: Sequence[str] = (),
        sync_interval: float = 0.0,
    ) -> Agent:
        """Register the agent (or re-register it with the same clearance and compartments, e.g.
        after a restart) and attach it here: its memory opens under
        ``<data_dir>/agents/<agent_id>``, its outbox drains and it starts receiving.
        ``compartments`` are the configured compartments it holds (see
        :mod:`hivemem.pool.compartments`). Raises InvalidInput (nothing registered),
        RegistrationConflict, StoreLocked when another process has it attached."""
        optional = {} if receive_levels is None else {"receive_levels": list(receive_levels)}
        info = AgentInfo(
            agent_id=agent_id,
            display_name=display_name or agent_id,
            capabilities=list(capabilities),
            clearance=clearance,
            compartments=list(compartments),
            share_levels=list(share_levels),
            sync_interval=sync_interval,
            **optional,
        )
        if agent_id in self._attached:
            raise InvalidInput(f"agent {agent_id} is already attached here", field="agent_id")
        info, _ = self._record(info)
        return self._attach(info)  # which provisions its Redis user

    def register(self, info: AgentInfo) -> tuple[AgentInfo, bool]:
        """Register ``info`` without attaching it (or update an agent of the same clearance);
        returns the stored info and whether the agent is new. A new agent is audited as
        ``registered``; an update (a restart, new shares) is not. With Redis ACLs its Redis
        user is provisioned (attaching provisions it afresh). Raises RegistrationConflict."""
        info, created = self._record(info)
        if self.security is not None and self.security.acl is not None:
            self.security.acl.provision(
                info.agent_id, info.clearance, compartments=info.compartments
            )
        return info, created

    def _record(self, info: AgentInfo) -> tuple[AgentInfo, bool]:
        """Put ``info`` in the registry (with its key and the admin's signature when security
        is on) and audit a new agent; see :meth:`register`."""
        created = not self.registry.exists(info.agent_id)
        if self.security is not None:
            key = self.security.agent_key(self.agent_dir(info.agent_id))
            info = self.security.signed(info.model_copy(update={"public_key": key.public_key}))
        info = self.registry.register(info)
        if created:
            self.audit.record(
                AuditEvent.REGISTERED,
                actor=AUDIT_ACTOR,
                subject=info.agent_id,
                zone=info.clearance.value,
                share_levels=[level.value for level in info.share_levels],
                **({"compartments": info.compartments} if info.compartments else {}),
            )
        log.info("agent_registered", agent_id=info.agent_id, clearance=info.clearance.value)
        return info, created

    def attach(self, agent_id: str) -> Agent:
        """Attach an agent registered earlier (by any process) here, as registered. Raises
        AgentNotFound, InvalidInput when it is attached here already, StoreLocked when another
        process has it attached."""
        if check_agent_id(agent_id) in self._attached:
            raise InvalidInput(f"agent {agent_id} is already attached here", field="agent_id")
        return self._attach(self.registry.get(agent_id))

    def _attach(self, info: AgentInfo) -> Agent:
        security = self.security
        seal = (
            None
            if security is None
            else ContentSeal(Sealer(security.keyring, clearance=info.clearance))
        )
        sealed: list[SealedIndex] = []  # the memory's sealed index, once it is open
        identities: list[Identity] = []  # the agent's, once made: its entry follows grants
        memory = HierarchicalMemory(
            self.agent_dir(info.agent_id),
            settings=self.settings,
            embedder=self._embedder,
            owner=info.agent_id,
            wrap_index=None if seal is None else lambda index: _kept(sealed, index, seal),
            write_gate=lambda zone, compartments: self._check_write(info, zone, compartments),
            read_gate=lambda zone, compartments: _check_read(
                identities[0].info if identities else info, zone, compartments
            ),
        )
        outbox = Outbox(memory.path)
        try:
            identity, bus = self._secured(info)
            identities.append(identity)
            chores: list[Callable[[], int]] = [LocalRetention(memory, self.policies).run]
            if self.rotation is not None and sealed:
                zones = [zone for zone in Zone if zone <= info.clearance]
                chores.append(
                    LocalReseal(
                        info.agent_id, zones, sealed[0], memory.hold_writes(), self.rotation,
                        waiting=lambda: (p.body for p in outbox.peek(len(outbox))),
                    ).run
                )  # fmt: skip
            for chore in chores:  # what passed or was rotated while the agent was away
                chore()
        except BaseException:
            outbox.close()
            memory.close()
            raise
        agent = Agent(
            info, memory, bus, self.registry, self.settings.pool, identity=identity,
            relay=self.bus, upkeep=lambda: [chore() for chore in chores], outbox=outbox,
        )  # fmt: skip
        self._attached[info.agent_id] = agent
        return agent

    def _check_write(self, info: AgentInfo, zone: Zone, compartments: Sequence[str]) -> None:
        """Raise PolicyDenied, or CompartmentDenied, unless ``info``'s agent may write a record
        of ``zone`` carrying ``compartments``."""
        self.policies.check_write(zone, info.agent_id, info.clearance)
        lacking = missing(info.compartments, compartments)
        if lacking:
            raise CompartmentDenied(info.agent_id, zone.value, info.clearance.value, lacking)

    def _secured(self, info: AgentInfo) -> tuple[Identity, RedisBus]:
        """The agent's identity (its key, issued here when this data directory has none) and
        its own bus: with ACLs, a connection as its own Redis user, provisioned afresh."""
        security = self.security
        if security is None:
            return Identity(info, PlainCodec(), self.policies), self.bus
        key = security.agent_key(self.agent_dir(info.agent_id))
        if info.public_key != key.public_key:
            info = self.registry.register(
                security.signed(info.model_copy(update={"public_key": key.public_key}))
            )
        identity = SecureIdentity(
            info, key, security, self.registry, self.audit, policies=self.policies
        )
        for zone in Zone:  # hold the zones' keys, so that writes go on while Redis is away
            if zone <= info.clearance:
                security.keyring.active(zone)
        if security.acl is None:
            return identity, self.bus
        credentials = security.acl.provision(
            info.agent_id, info.clearance, compartments=info.compartments
        )
        identity.redis_password = credentials.password
        client = redis.Redis.from_url(
            credentials.url(self.redis_url), socket_connect_timeout=5, health_check_interval=10
        )
        pool = self.settings.pool
        bus = RedisBus(
            client,
            namespace=pool.namespace,
            maxlen=pool.stream_maxlen,
            script_loader=self.bus.client,
        )
        return identity, bus

    def agent_dir(self, agent_id: str) -> Path:
        return self.settings.data_dir / "agents" / check_agent_id(agent_id)

    def agent(self, agent_id: str) -> Agent:
        """The agent attached in this process; raises AgentNotFound."""
        found = self._attached.get(check_agent_id(agent_id))
        if found is None:
            raise AgentNotFound(agent_id)
        return found

    def agents(self) -> list[AgentInfo]:
        """Every agent registered in the pool (any process)."""
        return self.registry.list()

    def get_agent(self, agent_id: str) -> AgentInfo:
        """A registered agent's info; raises AgentNotFound."""
        return self.registry.get(agent_id)

    def is_alive(self, agent_id: str) -> bool:
        """True while the agent's heartbeat is younger than ``pool.heartbeat_ttl_s``."""
        return self.registry.is_alive(agent_id)

    def deregister(self, agent_id: str, *, keep_queued: bool = True) -> None:
        """Detach the agent here if attached (its memory stays on disk), remove it from the
        registry and drop its inbox. Raises AgentNotFound.

        ``keep_queued``: the writes it queued for the workers are still stored (they were
        acknowledged; :mod:`hivemem.pool.adapters.departures`); False deletes them unstored,
        and those it queued before earlier deregistrations (an agent whose key or host is
        compromised)."""
        self.registry.get(agent_id)  # AgentNotFound before anything changes
        attached = self._attached.pop(check_agent_id(agent_id), None)
        if attached is not None:
            attached.close()
        # Its Redis user first: a process of it running elsewhere must queue nothing more.
        if self.security is not None and self.security.acl is not None:
            self.security.acl.remove(agent_id)
        queues = self.registry.deregister(agent_id, keep_queued=keep_queued)
        self.bus.drop_topic(inbox_topic(agent_id))
        if self.security is not None:
            self.security.senders.forget(agent_id)
        self.audit.record(AuditEvent.DEREGISTERED, actor=AUDIT_ACTOR, subject=agent_id,
                          kept_queued=keep_queued, queues=queues)  # fmt: skip
        log.info("agent_deregistered", agent_id=agent_id, kept_queued=keep_queued, queues=queues)

    def discard_queued(self, agent_id: str) -> int:
        """Delete, unstored, what a deregistered agent queued for the workers before leaving
        (an agent found compromised after its deregistration); returns how many of its
        departures went (0: nothing was waiting). Its writes as a registered agent, if it is
        registered again, are not touched. Audited."""
        gone = self.registry.departures.discard(agent_id)
        self.audit.record(AuditEvent.QUEUED_DISCARDED, actor=AUDIT_ACTOR, subject=agent_id,
                          departures=gone)  # fmt: skip
        log.info("agent_queued_discarded", agent_id=agent_id, departures=gone)
        return gone

    def set_clearance(self, agent_id: str, clearance: Zone | str) -> AgentInfo:
        """Grant (raise) or revoke (lower) a registered agent's clearance; audited as
        ``granted`` or ``revoked``. With Redis ACLs (``security.redis_acl``) the broker applies
        it at once: the agent's connections are closed and it resubscribes as now cleared.
        Without them it applies when the agent next attaches. Raises AgentNotFound,
        InvalidInput."""
        zone = checked_zone(clearance)
        info, prior = self.registry.set_clearance(agent_id, zone, resign=self._resign)
        self._follow_entry(info)
        if zone != prior:
            self.audit.record(
                AuditEvent.GRANTED if zone > prior else AuditEvent.REVOKED,
                actor=AUDIT_ACTOR,
                subject=info.agent_id,
                zone=zone.value,
                previous=prior.value,
            )
        log.info("clearance_changed", agent_id=info.agent_id, clearance=zone.value)
        return info

    def set_compartments(self, agent_id: str, compartments: Sequence[str]) -> AgentInfo:
        """Give a registered agent exactly ``compartments`` (configured names); what it gains
        is audited ``granted``, what it loses ``revoked`` (with the compartments named). With
        Redis ACLs the broker applies it at once, as for :meth:`set_clearance`. Records of a
        compartment it lost that it already holds stay in its local memory (as with a lowered
        clearance); nothing more reaches it. Raises AgentNotFound, InvalidInput (nothing
        changed) for an unknown compartment."""
        info, prior = self.registry.set_compartments(agent_id, compartments, resign=self._resign)
        self._follow_entry(info)
        for event, names in (
            (AuditEvent.GRANTED, missing(prior, info.compartments)),
            (AuditEvent.REVOKED, missing(info.compartments, prior)),
        ):
            if names:
                self.audit.record(
                    event, actor=AUDIT_ACTOR, subject=info.agent_id, compartments=names
                )
        log.info("compartments_changed", agent_id=info.agent_id, compartments=info.compartments)
        return info

    @property
    def _resign(self) -> Callable[[AgentInfo], AgentInfo] | None:
        """How a changed registry entry is signed again (None with security off)."""
        return None if self.security is None else self.security.signed

    def _follow_entry(self, info: AgentInfo) -> None:
        """After an operator changed ``info``'s entry: receivers here read it afresh and, with
        Redis ACLs, the agent's user gets its rules (its connections close)."""
        if self.security is None:
            return
        self.security.senders.forget(info.agent_id)
        if self.security.acl is not None:
            self.security.acl.restrict(
                info.agent_id, info.clearance, compartments=info.compartments
            )

    # -- zone keys ------------------------------------------------------------------------------

    def _rotation(self) -> KeyRotation:
        if self.rotation is None:
            raise InvalidInput("zone keys exist only with security on", field="security.enabled")
        return self.rotation

    def zone_keys(self, zone: Zone | str) -> list[KeyInfo]:
        """Every data key of ``zone``, retired ones included, oldest first."""
        return self._rotation().keyring.keys(zone)

    def rotate_key(self, zone: Zone | str) -> KeyInfo:
        """Make a new active data key for ``zone`` (audited ``key_rotated``): new content is
        sealed under it, older content stays readable. Agents re-seal their local stores at
        their next heartbeat; the workers re-seal the zone store with task ``hivemem.reseal``
        (:meth:`hivemem.workers.fleet.Fleet.reseal`). Raises InvalidInput with security off."""
        return self._rotation().rotate(zone, actor=AUDIT_ACTOR)

    def key_holders(self, zone: Zone | str) -> list[str]:
        """Who may keep content of ``zone`` sealed: the agents cleared for it and the workers."""
        zone = checked_zone(zone)
        cleared = [info.agent_id for info in self.registry.list() if info.clearance >= zone]
        return [*cleared, WORKER_SENDER]

    def retire_key(self, zone: Zone | str, key_id: str, *, force: bool = False) -> list[str]:
        """Delete an old data key of ``zone`` for good (audited ``key_retired``). Raises
        KeyStillInUse (nothing changes) while an agent cleared for the zone, or the workers,
        have not re-sealed since the key stopped being active, or the zone's ingest queues hold
        writes under it that the workers have not stored yet (the holder ``"ingest queue"``) —
        unless ``force``, which makes what they still keep under it unreadable; returns those
        holders (empty unless forced).
        Raises InvalidInput for the active key, KeyUnavailable for an unknown one."""
        rotation = self._rotation()
        return rotation.retire(
            zone, key_id, holders=self.key_holders(zone), actor=AUDIT_ACTOR, force=force
        )

    # -- direct hand-over -----------------------------------------------------------------------

    def share_knowledge(
        self, from_agent: str, to_agent: str, record: MemoryRecord | str
    ) -> MemoryRecord:
        """Hand one record of ``from_agent`` (attached here) to ``to_agent`` directly, whatever
        the levels either shares or receives. The copy ``to_agent`` stores has
        ``received_from=from_agent``. Raises AgentNotFound, MemoryNotFound, or ClearanceDenied
        when the record's zone is above ``to_agent``'s clearance (nothing is sent; the refusal
        is audited as ``denied_read``), CompartmentDenied (a ClearanceDenied, audited the same)
        when the record carries a compartment ``to_agent`` does not hold, PolicyDenied when the
        zone's policy keeps the record's level to each agent."""
        sender = self.agent(from_agent)
        receiver = self.registry.get(to_agent)
        record_id = record if isinstance(record, str) else record.id
        full = sender.memory.get(record_id, with_vectors=True)
        self.policies.check_share(full.zone, full.level)
        lacking = missing(receiver.compartments, full.compartments)
        if full.zone > receiver.clearance or lacking:
            self.audit.record(
                AuditEvent.DENIED_READ,
                actor=from_agent,
                subject=to_agent,
                zone=full.zone.value,
                record_id=full.id,
                clearance=receiver.clearance.value,
                **({"compartments": lacking} if lacking else {}),
            )
            if full.zone > receiver.clearance:
                raise ClearanceDenied(to_agent, full.zone.value, receiver.clearance.value)
            raise CompartmentDenied(to_agent, full.zone.value, receiver.clearance.value, lacking)
        sender.hand_over(to_agent, full.id)
        log.info("knowledge_shared", from_agent=from_agent, to_agent=to_agent, record_id=full.id)
        return full

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every attached agent, the connection, and the embedded server if we started
        it. Idempotent."""
        try:
            for agent in list(self._attached.values()):
                agent.close()
        finally:
            self._attached.clear()
            self.audit.close()
            self.bus.client.close()
            if self.server is not None:
                self.server.stop()
                self.server = None

    def __enter__(self) -> SharedMemoryPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""``SharedMemoryPool``: agents register, and the levels they share reach each other.

The pool owns the Redis connection (``redis_url``, or a ``redis-server`` it starts and stops
itself), the agent registry and the bus. Agents attached in this process live under
``<data_dir>/agents/<agent_id>``; several processes may each attach their own agents to the same
Redis. See :mod:`hivemem.agents.sync` for how records travel.

The pool is a facade: attaching agents (:mod:`hivemem.pool.attachment`), the registry's
administration (:mod:`hivemem.pool.registration`) and the zone keys
(:mod:`hivemem.pool.zone_keys`) are done by the services it holds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import redis
import structlog

from hivemem.agents.agent import Agent
from hivemem.agents.directory import StoreDirectory
from hivemem.agents.inputs import items_of, record_id_of
from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.adapters.redis_errors import REDIS_DOWN, redis_client, unavailable
from hivemem.pool.adapters.redis_registry import AgentRegistry, check_zone_ladder
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.attachment import Attacher
from hivemem.pool.compartments import missing
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import (
    AgentNotFound,
    ClearanceDenied,
    CompartmentDenied,
    HivememError,
    InvalidInput,
    ZoneLadderMismatch,
)
from hivemem.pool.ids import check_agent_id
from hivemem.pool.ports import Embedder
from hivemem.pool.records import MemoryRecord
from hivemem.pool.redis_server import DirectoryBusy, EmbeddedRedis
from hivemem.pool.registration import Registrar
from hivemem.pool.settings import HivememSettings
from hivemem.pool.stack_file import running_stack
from hivemem.pool.zone_keys import ZoneKeys, ingest_rotation, key_rotation
from hivemem.pool.zone_policy import ZonePolicies
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.data_keys import KeyInfo
from hivemem.security.ingest_keys import IngestKeyInfo
from hivemem.security.pool_security import PoolSecurity

log = structlog.get_logger(__name__)

#: The actor of the audit entries the pool API writes (registrations, deregistrations).
AUDIT_ACTOR = "pool"


#: How long a process waits for another one's embedded Redis on its data directory to stop,
#: or for `hivemem up` starting there to publish its stack.
EMBEDDED_WAIT_S = 30.0


def _embedded(data_dir: Path) -> tuple[EmbeddedRedis | None, str]:
    """A redis-server of our own on ``data_dir`` and its URL; or, when another process runs
    one there, the stack's URL once ``hivemem up`` publishes it (None: not ours), waiting up
    to :data:`EMBEDDED_WAIT_S` for either. Raises DirectoryBusy after that."""
    server = EmbeddedRedis(data_dir / "redis", appendonly=True)
    deadline = time.monotonic() + EMBEDDED_WAIT_S
    while True:
        try:
            return server.start(), server.url
        except DirectoryBusy:
            if (stack := running_stack(data_dir)) is not None:
                return None, stack.redis_url
            if time.monotonic() >= deadline:
                raise
            log.info("pool_waiting_for_embedded_redis", directory=str(data_dir / "redis"))
            time.sleep(0.2)


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
            else key_rotation(
                self.security,
                client,
                self.bus,
                self.registry,
                self.audit,
                namespace=pool.namespace,
            )
        )
        #: The zones' rules (``settings.zone_policies``).
        self.policies = ZonePolicies(settings.zone_policies)
        self._registrar = Registrar(
            self.registry,
            self.bus,
            self.audit,
            security=self.security,
            agent_dir=self.agent_dir,
            actor=AUDIT_ACTOR,
        )
        self._attacher = Attacher(
            settings,
            self.bus,
            self.registry,
            self.audit,
            security=self.security,
            rotation=self.rotation,
            policies=self.policies,
            agent_dir=self.agent_dir,
            redis_url=redis_url,
            record=lambda info: self._registrar.record(info)[0],
            embedder=embedder,
        )
        self._zone_keys = ZoneKeys(
            self.rotation,
            self.registry,
            actor=AUDIT_ACTOR,
            ingest=None
            if self.security is None
            else ingest_rotation(self.security, self.bus, self.registry, self.audit),
        )
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
            server, url = _embedded(settings.data_dir)
        client = redis_client(url, command_timeout_s=settings.pool.command_timeout_s)
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
        optional = (
            {}
            if receive_levels is None
            else {"receive_levels": items_of(receive_levels, object, field="receive_levels")}
        )
        info = AgentInfo(
            agent_id=agent_id,
            display_name=display_name or agent_id,
            capabilities=items_of(capabilities, object, field="capabilities"),
            clearance=clearance,
            compartments=items_of(compartments, object, field="compartments"),
            share_levels=items_of(share_levels, object, field="share_levels"),
            sync_interval=sync_interval,
            **optional,
        )
        if self._held(agent_id) is not None:
            raise InvalidInput(f"agent {agent_id} is already attached here", field="agent_id")
        StoreDirectory.check_free(self.agent_dir(agent_id))  # before the registry changes
        info, _ = self._registrar.record(info)
        return self._attach(info)  # which provisions its Redis user

    def register(self, info: AgentInfo) -> tuple[AgentInfo, bool]:
        """Register ``info`` without attaching it (or update an agent of the same clearance);
        returns the stored info and whether the agent is new. A new agent is audited as
        ``registered``; an update (a restart, new shares) is not. With Redis ACLs its Redis
        user is provisioned (attaching provisions it afresh). Raises RegistrationConflict."""
        return self._registrar.register(info)

    def attach(self, agent_id: str) -> Agent:
        """Attach an agent registered earlier (by any process) here, as registered. Raises
        AgentNotFound, InvalidInput when it is attached here already, StoreLocked when another
        process has it attached."""
        if self._held(check_agent_id(agent_id)) is not None:
            raise InvalidInput(f"agent {agent_id} is already attached here", field="agent_id")
        return self._attach(self.registry.get(agent_id))

    def _held(self, agent_id: str) -> Agent | None:
        """The agent attached here, unless it was closed (then it is attached here no more)."""
        found = self._attached.get(agent_id)
        if found is not None and found.closed:
            del self._attached[agent_id]
            return None
        return found

    def _attach(self, info: AgentInfo) -> Agent:
        agent = self._attacher.attach(info)
        self._attached[info.agent_id] = agent
        return agent

    def agent_dir(self, agent_id: str) -> Path:
        return self.settings.data_dir / "agents" / check_agent_id(agent_id)

    def agent(self, agent_id: str) -> Agent:
        """The agent attached in this process; raises AgentNotFound."""
        found = self._held(check_agent_id(agent_id))
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
        registry and drop its inbox. A process of it running elsewhere stops receiving: with
        Redis ACLs its user is deleted; without, its receiver finds its entry gone (announced,
        as for :meth:`set_clearance`). Raises AgentNotFound.

        ``keep_queued``: the writes it queued for the workers are still stored (they were
        acknowledged; :mod:`hivemem.pool.adapters.departures`); False deletes them unstored,
        and those it queued before earlier deregistrations (an agent whose key or host is
        compromised: it holds every zone's ingest lock meanwhile, waiting up to a minute for
        each, so that no drain stores what it deletes; QueuesBusy, nothing changed, when one
        stays taken).

        Redis out of reach midway raises PoolUnavailable; the agent may then be out of the
        registry already. Calling this again ends that deregistration as it began (its
        ``keep_queued``), with its audit entry; so does registering the agent again."""
        keep_queued = self._registrar.keeps_queued(agent_id, keep_queued)  # or AgentNotFound
        quiet = contextlib.nullcontext() if keep_queued else self.registry.departures.quiet()
        with quiet:
            attached = self._attached.pop(check_agent_id(agent_id), None)
            if attached is not None:
                attached.close()
            self._registrar.deregister(agent_id, keep_queued=keep_queued)

    def discard_queued(self, agent_id: str) -> int:
        """Delete, unstored, what a deregistered agent queued for the workers before leaving
        (an agent found compromised after its deregistration); returns how many of its
        departures went (0: nothing was waiting). Its writes as a registered agent, if it is
        registered again, are not touched. Audited."""
        return self._registrar.discard_queued(agent_id)

    def set_clearance(self, agent_id: str, clearance: Zone | str) -> AgentInfo:
        """Grant (raise) or revoke (lower) a registered agent's clearance; audited as
        ``granted`` or ``revoked``. With Redis ACLs (``security.redis_acl``) the broker applies
        it at once: the agent's connections are closed and it resubscribes as now cleared.
        Without them the pool announces the change and the agent's running receivers, in any
        process, resubscribe as now cleared when the notice reaches them (before any message
        sent after this returns), at the latest at their next heartbeat
        (``pool.heartbeat_interval_s``) if they missed it. Either way, a clearance raised
        above the one a running agent attached with applies when it next attaches (its local
        store seals to those zones). Raises AgentNotFound, InvalidInput."""
        return self._registrar.set_clearance(agent_id, clearance)

    def set_compartments(self, agent_id: str, compartments: Sequence[str]) -> AgentInfo:
        """Give a registered agent exactly ``compartments`` (configured names); what it gains
        is audited ``granted``, what it loses ``revoked`` (with the compartments named). With
        Redis ACLs the broker applies it at once, without them the receivers, as for
        :meth:`set_clearance`. Records of a compartment it lost that it already holds stay in
        its local memory (as with a lowered clearance); nothing more reaches it. Raises
        AgentNotFound, InvalidInput (nothing changed) for an unknown compartment or anything
        but a list of names."""
        names = items_of(compartments, str, field="compartments")
        return self._registrar.set_compartments(agent_id, names)

    # -- zone keys ------------------------------------------------------------------------------

    def zone_keys(self, zone: Zone | str) -> list[KeyInfo]:
        """Every data key of ``zone``, retired ones included, oldest first."""
        return self._zone_keys.keys(zone)

    def rotate_key(self, zone: Zone | str) -> KeyInfo:
        """Make a new active data key for ``zone`` (audited ``key_rotated``): new content is
        sealed under it, older content stays readable. Agents re-seal their local stores at
        their next heartbeat; the workers re-seal the zone store with task ``hivemem.reseal``
        (:meth:`hivemem.workers.fleet.Fleet.reseal`). Raises InvalidInput with security off."""
        return self._zone_keys.rotate(zone)

    def key_holders(self, zone: Zone | str) -> list[str]:
        """Who may keep content of ``zone`` sealed: the agents cleared for it and the workers."""
        return self._zone_keys.holders(zone)

    def retire_key(self, zone: Zone | str, key_id: str, *, force: bool = False) -> list[str]:
        """Delete an old data key of ``zone`` for good (audited ``key_retired``). Raises
        KeyStillInUse (nothing changes) while an agent cleared for the zone, or the workers,
        have not re-sealed since the key stopped being active, or the zone's ingest queues hold
        writes under it that the workers have not stored yet (the holder ``"ingest queue"``) —
        unless ``force``, which makes what they still keep under it unreadable; returns those
        holders (empty unless forced).
        Raises InvalidInput for the active key, KeyUnavailable for an unknown one."""
        return self._zone_keys.retire(zone, key_id, force=force)

    def ingest_keys(self) -> list[IngestKeyInfo]:
        """The workers' ingest keys (agents seal their ingest queues to the current one),
        retired ones included, oldest first. Raises InvalidInput with security off."""
        return self._zone_keys.ingest_keys()

    def ingest_key_behind(self, key_id: str) -> list[str]:
        """What may still need the old ingest key ``key_id`` (what :meth:`retire_ingest_key`
        would wait for; empty for the current key)."""
        return self._zone_keys.ingest_behind(key_id)

    def rotate_ingest_key(self) -> IngestKeyInfo:
        """Make a new current workers' ingest key (audited ``key_rotated``, zone
        ``workers-ingest``): agents seal to it within a second; the workers still open what
        was sealed to older keys until those are retired. Raises InvalidInput with security
        off."""
        return self._zone_keys.rotate_ingest()

    def retire_ingest_key(self, key_id: str, *, force: bool = False) -> list[str]:
        """Delete an old workers' ingest key for good (audited ``key_retired``). Raises
        IngestKeyStillInUse (nothing changes) until ``security.ingest_retire_grace_s`` has
        passed since it was replaced (``"agents sealing"``) and while the ingest queues hold
        messages sealed to it that the workers have not stored (``"ingest queue"``), unless
        ``force``, which loses those writes; returns what was behind (empty unless forced).
        Raises InvalidInput for the current key or with security off, KeyUnavailable for an
        unknown one."""
        return self._zone_keys.retire_ingest(key_id, force=force)

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
        record_id = record_id_of(record)
        sender = self.agent(from_agent)
        receiver = self.registry.get(to_agent)
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

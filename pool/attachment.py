"""Attaching a registered agent in this process: the pool's side of building an ``Agent``.

An attached agent's memory opens under the directory the pool gives it, gated by its clearance,
compartments and the zones' rules, and sealed with security on. Its identity holds its key (and,
with Redis ACLs, its own Redis user and connection). What passed or was rotated while it was
away (retention, re-sealing under new zone keys) is caught up at attach and at every heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hivemem.agents.agent import Agent
from hivemem.agents.identity import Identity, SecureIdentity
from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.outbox import Outbox
from hivemem.agents.retention import LocalRetention
from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.adapters.redis_errors import redis_client
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import missing
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import PlainCodec
from hivemem.pool.errors import ClearanceDenied, CompartmentDenied
from hivemem.pool.ports import Embedder, LocalIndex
from hivemem.pool.settings import HivememSettings
from hivemem.pool.zone_policy import ZonePolicies
from hivemem.security.audit import AuditLog
from hivemem.security.content_seal import ContentSeal
from hivemem.security.key_rotation import KeyRotation
from hivemem.security.label_tokens import LabelTokens
from hivemem.security.local_reseal import LocalReseal
from hivemem.security.pool_security import PoolSecurity
from hivemem.security.sealed_index import SealedIndex
from hivemem.security.sealing import Sealer


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


class Attacher:
    """Builds the ``Agent`` of a registered agent attached in this process, wired to the pool's
    bus, registry, audit log and (when not None) security layer and key rotation."""

    def __init__(
        self,
        settings: HivememSettings,
        bus: RedisBus,
        registry: AgentRegistry,
        audit: AuditLog,
        *,
        security: PoolSecurity | None,
        rotation: KeyRotation | None,
        policies: ZonePolicies,
        agent_dir: Callable[[str], Path],
        redis_url: str,
        record: Callable[[AgentInfo], AgentInfo],
        embedder: Embedder | None = None,
    ) -> None:
        """``security`` and ``rotation``: None with security off; ``agent_dir(agent_id)``: where
        the agent's memory and key live; ``redis_url``: the pool's Redis, which an agent with its
        own Redis user connects to as that user; ``record(info)``: registers ``info`` with this
        directory's key (:meth:`~hivemem.pool.registration.Registrar.record`)."""
        self._settings = settings
        self._bus = bus
        self._registry = registry
        self._audit = audit
        self._security = security
        self._rotation = rotation
        self._policies = policies
        self._agent_dir = agent_dir
        self._redis_url = redis_url
        self._record = record
        self._embedder = embedder

    def attach(self, info: AgentInfo) -> Agent:
        """The agent of ``info``, attached here (see
        :meth:`hivemem.pool.shared.SharedMemoryPool.register_agent`); what passed or was rotated
        while it was away is caught up first. Raises StoreLocked when another process has it
        attached."""
        security = self._security
        seal = (
            None
            if security is None
            else ContentSeal(
                Sealer(security.keyring, clearance=info.clearance),
                LabelTokens(security.keyring, security.options.clear_metadata_keys),
            )
        )
        sealed: list[SealedIndex] = []  # the memory's sealed index, once it is open
        identities: list[Identity] = []  # the agent's, once made: its entry follows grants
        memory = HierarchicalMemory(
            self._agent_dir(info.agent_id),
            settings=self._settings,
            embedder=self._embedder,
            owner=info.agent_id,
            wrap_index=None if seal is None else lambda index: _kept(sealed, index, seal),
            write_gate=lambda zone, compartments: self._check_write(
                identities[0].info if identities else info, zone, compartments
            ),
            read_gate=lambda zone, compartments: _check_read(
                identities[0].info if identities else info, zone, compartments
            ),
        )
        outbox = Outbox(memory.path)
        try:
            identity, bus = self._secured(info)
            identities.append(identity)
            chores: list[Callable[[], int]] = [LocalRetention(memory, self._policies).run]
            if self._rotation is not None and sealed:
                zones = [zone for zone in Zone if zone <= info.clearance]
                chores.append(
                    LocalReseal(
                        info.agent_id, zones, sealed[0], memory.hold_writes(), self._rotation,
                        waiting=lambda: (p.body for p in outbox.peek(len(outbox))),
                    ).run
                )  # fmt: skip
            for chore in chores:  # what passed or was rotated while the agent was away
                chore()
        except BaseException:
            outbox.close()
            memory.close()
            raise
        return Agent(
            info, memory, bus, self._registry, self._settings.pool, identity=identity,
            relay=self._bus, upkeep=lambda: [chore() for chore in chores], outbox=outbox,
        )  # fmt: skip

    def _check_write(self, info: AgentInfo, zone: Zone, compartments: Sequence[str]) -> None:
        """Raise PolicyDenied, ClearanceDenied or CompartmentDenied unless ``info``'s agent (its
        entry as the agent follows it: a clearance lowered, a compartment revoked, apply to its
        writes at once) may write a record of ``zone`` carrying ``compartments``."""
        self._policies.check_write(zone, info.agent_id, info.clearance)
        _check_read(info, zone, compartments)

    def _secured(self, info: AgentInfo) -> tuple[Identity, RedisBus]:
        """The agent's identity (its key, issued here when this data directory has none) and
        its own bus: with ACLs, a connection as its own Redis user, provisioned afresh."""
        security = self._security
        if security is None:
            return Identity(info, PlainCodec(), self._policies), self._bus
        key = security.agent_key(self._agent_dir(info.agent_id))
        if info.public_key != key.public_key:  # this directory's key: registered (and audited)
            info = self._record(info)
        identity = SecureIdentity(
            info, key, security, self._registry, self._audit, policies=self._policies
        )
        for zone in Zone:  # hold the zones' keys, so that writes go on while Redis is away
            if zone <= info.clearance:
                security.keyring.active(zone)
        if security.acl is None:
            return identity, self._bus
        credentials = security.acl.provision(
            info.agent_id, info.clearance, compartments=info.compartments
        )
        identity.redis_password = credentials.password
        pool = self._settings.pool
        client = redis_client(
            credentials.url(self._redis_url), command_timeout_s=pool.command_timeout_s
        )
        bus = RedisBus(
            client,
            namespace=pool.namespace,
            maxlen=pool.stream_maxlen,
            script_loader=self._bus.client,
        )
        return identity, bus

"""The operator's side of the agent registry: registering and deregistering agents, and changing
their clearance and compartments, with the audit entries and the Redis ACL rules that go with
each change.

With security on, every entry written here carries the agent's public key and the pool
administrator's signature.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from hivemem.pool.adapters.redis_bus import RedisBus, access_topic, inbox_topic
from hivemem.pool.adapters.redis_errors import REDIS_DOWN, redis_errors
from hivemem.pool.adapters.redis_registry import (
    AccessChange,
    AgentRegistry,
    Departing,
    Registration,
    access_of,
)
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import missing
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import AgentNotFound
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.pool_security import PoolSecurity

log = structlog.get_logger(__name__)


def audit_registration(
    audit: AuditLog, actor: str, info: AgentInfo, done: Registration, **details: object
) -> None:
    """Audit what :meth:`AgentRegistry.registered` did: a new entry is ``registered``; a new
    key ends the old key's registration (``deregistered``, ``reason: new_key``) and starts the
    new one; an update of the same key is not audited. ``details`` go with ``registered``."""
    if done is Registration.REKEYED:
        audit.record(AuditEvent.DEREGISTERED, actor=actor, subject=info.agent_id,
                     kept_queued=True, reason="new_key",
                     resumed=details.get("resumed", False))  # fmt: skip
    if done is not Registration.UPDATED:
        audit.record(AuditEvent.REGISTERED, actor=actor, subject=info.agent_id,
                     zone=info.clearance.value, **details)  # fmt: skip


def register_audited(
    registry: AgentRegistry, audit: AuditLog, actor: str, info: AgentInfo, **details: object
) -> tuple[AgentInfo, Registration]:
    """:meth:`AgentRegistry.registered`, then :func:`audit_registration`. What looks like an
    update may be the retry of a registration or a new key whose audit entry was never written
    (its reply lost, its process stopped: :meth:`AgentRegistry.pending`): that one is audited
    now, ``resumed``. Returns the stored info and what the registration did."""
    info, done = registry.registered(info)
    if done is Registration.UPDATED:
        earlier = registry.pending(info.agent_id)
        if isinstance(earlier, Registration):
            done, details = earlier, {**details, "resumed": True}
    audit_registration(audit, actor, info, done, **details)
    if done is not Registration.UPDATED:
        registry.audited(info.agent_id, done)
    return info, done


class Registrar:
    """The registry calls of :class:`hivemem.pool.shared.SharedMemoryPool`, which documents
    each; their audit entries name ``actor``."""

    def __init__(
        self,
        registry: AgentRegistry,
        bus: RedisBus,
        audit: AuditLog,
        *,
        security: PoolSecurity | None,
        agent_dir: Callable[[str], Path],
        actor: str,
    ) -> None:
        """``security``: None with security off; ``agent_dir(agent_id)``: where the agent's key
        lives."""
        self._registry = registry
        self._bus = bus
        self._audit = audit
        self._security = security
        self._agent_dir = agent_dir
        self._actor = actor

    def record(self, info: AgentInfo) -> tuple[AgentInfo, bool]:
        """Put ``info`` in the registry (with its key and the admin's signature when security
        is on) and audit a new agent, or a new key (the agent attached from another directory:
        its old key's registration ends, see :meth:`AgentRegistry.registered`); returns the
        stored info and whether the agent is new. Raises RegistrationConflict."""
        if self._security is not None:
            key = self._security.agent_key(self._agent_dir(info.agent_id))
            info = self._security.signed(info.model_copy(update={"public_key": key.public_key}))
        self._end_departure(info.agent_id)
        info, done = register_audited(
            self._registry,
            self._audit,
            self._actor,
            info,
            share_levels=[level.value for level in info.share_levels],
            **({"compartments": info.compartments} if info.compartments else {}),
        )
        log.info("agent_registered", agent_id=info.agent_id, clearance=info.clearance.value)
        return info, done is Registration.NEW

    def _end_departure(self, agent_id: str) -> None:
        """Before an agent out of the registry is registered again: end its deregistration if
        that did not end (:meth:`deregister`), so that its audit entry comes first and its old
        inbox goes."""
        departing = self._registry.pending(agent_id)
        if not isinstance(departing, Departing) or self._registry.exists(agent_id):
            return
        departures = self._registry.departures
        with contextlib.nullcontext() if departing.keep else departures.quiet():
            self._departed(agent_id, departing, resumed=True)

    def register(self, info: AgentInfo) -> tuple[AgentInfo, bool]:
        """:meth:`record`, and with Redis ACLs the agent's Redis user provisioned."""
        info, created = self.record(info)
        if self._security is not None and self._security.acl is not None:
            self._security.acl.provision(
                info.agent_id, info.clearance, compartments=info.compartments
            )
        return info, created

    def keeps_queued(self, agent_id: str, keep_queued: bool) -> bool:
        """Whether deregistering the agent keeps what it queued: ``keep_queued``, or, for an
        agent whose deregistration did not end (see :meth:`deregister`), what that one chose.
        Raises AgentNotFound when it is neither registered nor departing."""
        if self._registry.exists(agent_id):
            return keep_queued
        departing = self._registry.pending(agent_id)
        if not isinstance(departing, Departing):
            raise AgentNotFound(agent_id)
        return departing.keep

    def deregister(self, agent_id: str, *, keep_queued: bool = True) -> None:
        """Remove a registered agent, detached in this process, from the registry and drop its
        inbox; ``keep_queued`` as for the pool's ``deregister``. An agent out of the registry
        whose deregistration did not end (its reply was lost, or its process stopped before
        the audit entry) has the rest done now, as that one chose (:meth:`keeps_queued`)."""
        # Its Redis user first: a process of it running elsewhere must queue nothing more.
        if self._security is not None and self._security.acl is not None:
            self._security.acl.remove(agent_id)
        with redis_errors():
            try:
                departing = self._registry.depart(agent_id, keep_queued=keep_queued)
                resumed = False
            except AgentNotFound:
                found = self._registry.pending(agent_id)
                if not isinstance(found, Departing):
                    raise
                departing, resumed = found, True
            self._departed(agent_id, departing, resumed=resumed)
        self._announce(agent_id)

    def _departed(self, agent_id: str, departing: Departing, *, resumed: bool) -> None:
        """What follows a deregistration's step in Redis (``resumed``: done by a later call
        than the one that took that step): the agent's earlier departures discarded when it
        kept nothing queued, its inbox dropped, the audit entry; then its note deleted."""
        if not departing.keep:
            self._registry.departures.discard_now(agent_id)
        self._bus.drop_topic(inbox_topic(agent_id))
        if self._security is not None:
            self._security.senders.forget(agent_id)
        self._audit.record(
            AuditEvent.DEREGISTERED,
            actor=self._actor,
            subject=agent_id,
            kept_queued=departing.keep,
            queues=departing.queues,
            resumed=resumed,
        )
        self._registry.audited(agent_id, departing)
        log.info("agent_deregistered", agent_id=agent_id, kept_queued=departing.keep,
                 queues=departing.queues, resumed=resumed)  # fmt: skip

    def discard_queued(self, agent_id: str) -> int:
        """Delete what a deregistered agent queued before leaving (see the pool's
        ``discard_queued``); returns how many departures went."""
        with redis_errors():
            gone = self._registry.departures.discard(agent_id)
        self._audit.record(AuditEvent.QUEUED_DISCARDED, actor=self._actor, subject=agent_id,
                           departures=gone)  # fmt: skip
        log.info("agent_queued_discarded", agent_id=agent_id, departures=gone)
        return gone

    def set_clearance(self, agent_id: str, clearance: Zone | str) -> AgentInfo:
        """Grant or revoke ``clearance``; audited ``granted`` or ``revoked``."""
        zone = checked_zone(clearance)
        info, prior = self._registry.update_access(agent_id, {"clearance": zone}, self._resign)
        self._follow_entry(info)
        self._audit_access(info, AccessChange(access_of(prior)))
        log.info("clearance_changed", agent_id=info.agent_id, clearance=zone.value)
        self._announce(info.agent_id)
        return info

    def set_compartments(self, agent_id: str, compartments: Sequence[str]) -> AgentInfo:
        """Give exactly ``compartments``; what is gained is audited ``granted``, what is lost
        ``revoked``."""
        changes: dict[str, object] = {"compartments": list(compartments)}
        info, prior = self._registry.update_access(agent_id, changes, self._resign)
        self._follow_entry(info)
        self._audit_access(info, AccessChange(access_of(prior)))
        log.info("compartments_changed", agent_id=info.agent_id, compartments=info.compartments)
        self._announce(info.agent_id)
        return info

    def _audit_access(self, info: AgentInfo, change: AccessChange) -> None:
        """Audit how ``info``'s access differs from what it was before ``change``, or before
        an earlier change not audited (its reply lost, its process stopped: the registry
        noted it), which is then marked ``resumed``; then delete the note."""
        noted = self._registry.pending(info.agent_id)
        before = noted if isinstance(noted, AccessChange) else change
        resumed = before != change
        if info.clearance != before.clearance:
            self._audit.record(
                AuditEvent.GRANTED if info.clearance > before.clearance else AuditEvent.REVOKED,
                actor=self._actor,
                subject=info.agent_id,
                zone=info.clearance.value,
                previous=before.clearance.value,
                resumed=resumed,
            )
        for event, names in (
            (AuditEvent.GRANTED, missing(before.compartments, info.compartments)),
            (AuditEvent.REVOKED, missing(info.compartments, before.compartments)),
        ):
            if names:
                self._audit.record(event, actor=self._actor, subject=info.agent_id,
                                   compartments=names, resumed=resumed)  # fmt: skip
        if isinstance(noted, AccessChange):
            self._registry.audited(info.agent_id, noted)

    @property
    def _resign(self) -> Callable[[AgentInfo], AgentInfo] | None:
        """How a changed registry entry is signed again (None with security off)."""
        return None if self._security is None else self._security.signed

    def _announce(self, agent_id: str) -> None:
        """Without Redis ACLs, after the agent's entry changed or went: tell its running
        receivers, wherever they run, to read it again at once (with ACLs the broker closed
        their connections). Redis away here is logged, not raised: the change is made, and
        each receiver reads its entry at its next heartbeat anyway."""
        if self._security is None or self._security.acl is not None:
            return
        try:
            self._bus.notify(access_topic(agent_id))
        except REDIS_DOWN as error:
            log.warning("agent_access_notice_lost", agent_id=agent_id, error=type(error).__name__)

    def _follow_entry(self, info: AgentInfo) -> None:
        """After an operator changed ``info``'s entry: this process's sender checks read it
        afresh and, with Redis ACLs, the agent's user gets its rules (its connections close)."""
        if self._security is None:
            return
        self._security.senders.forget(info.agent_id)
        if self._security.acl is not None:
            self._security.acl.restrict(
                info.agent_id, info.clearance, compartments=info.compartments
            )

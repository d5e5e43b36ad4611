"""Who an agent's sync threads act as: its registry entry and the codec its messages go through.

:class:`Identity` is the plain one (security off: version-1 envelopes, nothing checked).
:class:`SecureIdentity` seals, signs and checks with the pool's security layer, follows the
agent's registry entry (when the broker says its clearance changed and, without Redis ACLs, when
the pool announces a change and at every heartbeat: :meth:`SecureIdentity.changed`), and audits
every message a check refused (``rejected_message``: who refused what from whom and why, never
content).
"""

from __future__ import annotations

from typing import cast

import structlog
from pydantic import SecretStr

from hivemem.pool.adapters.redis_bus import Delivery, access_topic
from hivemem.pool.adapters.redis_registry import AgentRegistry, access_of
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import EnvelopeCodec
from hivemem.pool.errors import AgentNotFound, HivememError, InvalidIdentifier, MessageRejected
from hivemem.pool.failures import described
from hivemem.pool.ids import check_agent_id
from hivemem.pool.zone_policy import ZonePolicies
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.ingest_seal import IngestSealer
from hivemem.security.pool_security import PoolSecurity
from hivemem.security.signing import SigningKey
from hivemem.security.wire import SecureCodec

log = structlog.get_logger(__name__)


class Identity:
    """An agent as its sync threads see it (plain: no checks, nothing to reload)."""

    def __init__(
        self, info: AgentInfo, codec: EnvelopeCodec, policies: ZonePolicies | None = None
    ) -> None:
        self.info = info
        self.codec = codec
        #: The zones' policies: which levels travel, who may write where.
        self.policies = policies or ZonePolicies()
        #: Where the pool announces that the agent's entry changed, for the receiver to read it
        #: then (see :meth:`changed`); None: no announcement to follow.
        self.notice_topic: str | None = None

    def sender_may_write(self, sender: str, zone: Zone) -> bool:
        """Whether ``sender`` holds the clearance ``zone``'s policy takes to write there (plain:
        the registry is not consulted, so always True)."""
        del sender, zone
        return True

    def reload(self) -> AgentInfo:
        """The agent's current registry entry, as :meth:`changed` takes it on (the codec
        follows it); raises as it does."""
        return self.changed() or self.info

    def changed(self) -> AgentInfo | None:
        """The agent's registry entry, taken on (the codec follows it), when its clearance or
        compartments are no longer those of :attr:`info`; else None (plain: always). Raises
        AgentNotFound when the agent is no longer registered (or registered again with
        another key)."""
        return None

    def outgoing(self, body: bytes, *, ingest: bool) -> bytes:
        """``body`` as it goes to Redis, ``ingest``: to an ingest queue (plain: unchanged)."""
        del ingest
        return body

    def reauthorize(self) -> None:
        """Called when Redis refused the agent's login (a restarted Redis lost its ACL users):
        restore the agent's user if it is still registered with the key this process holds (an
        entry with another key is another process's registration of the id: its password is
        not this process's to put back)."""

    def rejected(self, error: MessageRejected, topic: str, delivery: Delivery) -> None:
        """Called for each message a security check refused (nothing of it was applied)."""
        log.warning(
            "pool_message_rejected",
            agent_id=self.info.agent_id,
            topic=topic,
            seq=delivery.seq,
            reason=error.reason,
        )


class SecureIdentity(Identity):
    """An agent with its signing key, under the pool's security layer."""

    def __init__(
        self,
        info: AgentInfo,
        key: SigningKey,
        security: PoolSecurity,
        registry: AgentRegistry,
        audit: AuditLog,
        *,
        policies: ZonePolicies | None = None,
    ) -> None:
        super().__init__(info, security.agent_codec(info, key), policies)
        self._key = key
        self._security = security
        self._registry = registry
        self._audit = audit
        #: The agent's Redis user's password, when it connects as its own user.
        self.redis_password: SecretStr | None = None
        self._ingest = IngestSealer(security.keyring)
        if security.acl is None:  # with ACLs, the broker closes the connections instead
            self.notice_topic = access_topic(info.agent_id)
        #: The registry entry last taken on (:attr:`info` is it, its clearance capped).
        self._entry = info
        #: The clearance the agent attached with: its local store seals to those zones only,
        #: so a raised clearance applies when it attaches again.
        self._ceiling = info.clearance

    def _own(self, entry: AgentInfo) -> AgentInfo:
        """``entry`` if it is still this agent's, with the key this process holds; else
        AgentNotFound: the id was deregistered and registered again with another key, by a
        process this one must not receive for."""
        if entry.public_key != self._key.public_key:
            raise AgentNotFound(entry.agent_id)
        return entry

    def _adopt(self, entry: AgentInfo) -> AgentInfo:
        """Take on the registry ``entry``: its compartments, and its clearance up to the one
        the agent attached with (a raise beyond it is logged, for the next attach)."""
        self._entry = info = entry
        if entry.clearance > self._ceiling:
            log.warning("pool_clearance_raise_deferred", agent_id=entry.agent_id,
                        clearance=entry.clearance.value, until="attach")  # fmt: skip
            info = entry.model_copy(update={"clearance": self._ceiling})
        self.info = info
        self.codec = self._security.agent_codec(info, self._key)
        return info

    def changed(self) -> AgentInfo | None:
        """As :meth:`Identity.changed`, in one registry read. An entry without the
        administrator's valid signature is not taken on (logged; None): without Redis ACLs
        any process with the pool's credentials can write the registry. A clearance raised
        beyond the one the agent attached with is held back (:meth:`_adopt`)."""
        entry = self._own(self._registry.get(self.info.agent_id))
        if access_of(entry) == access_of(self._entry):
            return None
        if not self._security.admin.verify_entry(
            entry.agent_id, entry.clearance, entry.public_key, entry.registry_signature,
            compartments=entry.compartments,
        ):  # fmt: skip
            log.error("pool_registry_entry_unsigned", agent_id=entry.agent_id)
            return None
        held = access_of(self.info)
        info = self._adopt(entry)
        return None if access_of(info) == held else info

    def outgoing(self, body: bytes, *, ingest: bool) -> bytes:
        """``body`` sealed again if Redis was away when it was sealed, or stamped again if it
        waited in the outbox (:meth:`SecureCodec.refreshed`) and, for an ingest queue, sealed
        to the workers (:mod:`hivemem.security.ingest_seal`: the zone's other agents hold the
        zone's key). PoolUnavailable while a key it takes cannot be read."""
        body = cast("SecureCodec", self.codec).refreshed(body)  # always one here
        return self._ingest.seal(body) if ingest else body

    def sender_may_write(self, sender: str, zone: Zone) -> bool:
        floor = self.policies.write_floor(zone)
        if floor == zone:
            return True  # the codec checked the sender's clearance against the zone already
        facts = self._security.senders(sender)
        return facts is not None and facts.clearance >= floor

    def reauthorize(self) -> None:
        acl = self._security.acl
        if acl is None or self.redis_password is None:
            return
        try:
            info = self._own(self._registry.get(self.info.agent_id))
        except AgentNotFound:
            return  # deregistered, or registered again with another key: locked out for good
        acl.provision(
            info.agent_id,
            info.clearance,
            compartments=info.compartments,
            password=self.redis_password,
        )
        log.warning("pool_agent_user_restored", agent_id=info.agent_id)

    def rejected(self, error: MessageRejected, topic: str, delivery: Delivery) -> None:
        super().rejected(error, topic, delivery)
        try:
            claimed = check_agent_id(delivery.sender)
        except InvalidIdentifier:
            claimed = "unknown"
        try:
            self._audit.record(
                AuditEvent.REJECTED_MESSAGE,
                actor=self.info.agent_id,
                subject=claimed,
                reason=error.reason,
                topic=topic,
                seq=delivery.seq,
            )
        except HivememError as failure:  # the refusal is logged above; the receiver must go on
            log.error(
                "pool_rejection_not_audited", agent_id=self.info.agent_id, **described(failure)
            )

"""Whether an agent applies what reached it: :func:`admitted`, the receiver's judgement of one
delivery.

A delivery is applied when the agent's codec decodes it (version-2 frames: checked, opened), it
is on the topic its envelope belongs on, within the agent's clearance and compartments, its
sender may write in its zone, and its vectors decode. What is refused is logged; what a
security check refused is audited too (:meth:`~hivemem.agents.identity.Identity.rejected`).
Nothing here raises for a bad message: only Redis or the keyring failing escape, for the
receiver to back off and read the message again.
"""

from __future__ import annotations

import structlog

from hivemem.agents.identity import Identity
from hivemem.pool.adapters.redis_bus import Delivery, inbox_topic, zone_topic
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import missing
from hivemem.pool.envelope import Envelope
from hivemem.pool.errors import InvalidMessage, MessageRejected, SecurityMismatch
from hivemem.pool.ports import Vector

log = structlog.get_logger(__name__)


class LateDelivery(Exception):
    """A live delivery outside the age window (``stale``): the receiver reads it from the
    topic's stream instead, where its age is judged against when Redis appended it. A receiver
    that was paused (a suspended VM, a long stop) reads genuine messages late; refusing them
    and moving past them lost them for good. One appended late (a replay, a message dated
    long ago) is refused there as ``stale``."""


def admitted(
    topic: str, delivery: Delivery, *, info: AgentInfo, identity: Identity, live: bool
) -> tuple[Envelope, list[Vector | None]] | None:
    """The delivery's envelope and its records' vectors, or None (logged; audited when a
    security check refused it) when it must be skipped. Raises LateDelivery for a live
    delivery outside the age window."""
    if delivery.sender == info.agent_id:
        return None  # our own write, already here: not even decoded
    try:
        envelope = identity.codec.decode(delivery.data, live=live, appended_at=delivery.appended_at)
    except MessageRejected as error:
        if live and error.reason == "stale":
            raise LateDelivery from None
        identity.rejected(error, topic, delivery)
        return None
    except SecurityMismatch as error:
        log.error(
            "pool_security_mismatch",
            agent_id=info.agent_id,
            topic=topic,
            seq=delivery.seq,
            error=str(error),
        )
        return None
    except InvalidMessage as error:
        log.warning(
            "pool_message_skipped",
            agent_id=info.agent_id,
            topic=topic,
            seq=delivery.seq,
            reason=str(error)[:200],
        )
        return None
    if envelope.sender == info.agent_id:
        return None  # our own write, already here
    expected = (
        inbox_topic(info.agent_id)
        if envelope.to is not None
        else zone_topic(envelope.zone, envelope.compartments)
    )
    reason = None
    if topic != expected:
        reason = "envelope does not belong on this topic"
    elif envelope.zone > info.clearance:
        reason = "above clearance"
    elif missing(info.compartments, envelope.compartments):
        reason = "outside compartments"
    if reason is not None:
        log.warning(
            "pool_message_skipped",
            agent_id=info.agent_id,
            topic=topic,
            seq=delivery.seq,
            sender=envelope.sender,
            zone=envelope.zone.value,
            reason=reason,
        )
        return None
    if envelope.records and not identity.sender_may_write(envelope.sender, envelope.zone):
        refused = MessageRejected("write_clearance", "sender below the zone's write clearance")
        identity.rejected(refused, topic, delivery)
        return None
    try:
        return envelope, envelope.vectors()
    except InvalidMessage as error:
        log.warning("pool_message_skipped", agent_id=info.agent_id, topic=topic,
                    seq=delivery.seq, reason=str(error))  # fmt: skip
        return None

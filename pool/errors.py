"""The one exception tree of hivemem.

Every error the package raises on purpose derives from :class:`HivememError`. Errors about bad
input also derive from :class:`ValueError`, so callers that already catch ``ValueError`` keep
working. Each class says when it is raised; its attributes carry the structured facts (ids,
fields), never the plaintext content of a memory.
"""

from __future__ import annotations

from collections.abc import Sequence


class HivememError(Exception):
    """Root of every error hivemem raises on purpose."""


class InvalidInput(HivememError, ValueError):
    """Raised when an argument is malformed; nothing was changed.

    ``field`` names the offending argument or model field (dotted for nested ones).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidIdentifier(InvalidInput):
    """Raised when an id (record, user, session, agent, run) does not match its pattern."""


class InvalidContent(InvalidInput):
    """Raised when memory content is empty, only whitespace, or longer than the configured limit."""


class InvalidFilter(InvalidInput):
    """Raised when a filter names an unknown field, an unknown operator, or a value of the wrong
    type for its operator."""


class InvalidSearchConfig(InvalidInput):
    """Raised when a search configuration or preset name is unknown or inconsistent."""


class MemoryNotFound(HivememError, KeyError):
    """Raised when a record id is not in this memory (or was deleted, for operations that need a
    live record)."""

    def __init__(self, record_id: str) -> None:
        super().__init__(record_id)
        self.record_id = record_id

    def __str__(self) -> str:
        return f"no memory with id {self.record_id}"


class SupersessionConflict(HivememError):
    """Raised when superseding a record that is no longer current (it was superseded or deleted
    in the meantime). ``current_id`` is the head of its version chain, if any."""

    def __init__(self, record_id: str, current_id: str | None) -> None:
        super().__init__(f"memory {record_id} is not current (current version: {current_id})")
        self.record_id = record_id
        self.current_id = current_id


class MemoryClosed(HivememError):
    """Raised when a memory is used after :meth:`close`."""


class StoreLocked(HivememError):
    """Raised when a persist directory is already open in another memory (this process or
    another one): one directory, one writer."""

    def __init__(self, path: str, why: str = "is in use by another memory") -> None:
        super().__init__(f"persist directory {path} {why}")
        self.path = path


class StoreIncompatible(HivememError):
    """Raised when a persist directory, or a zone store collection, was written with another
    embedding model, vector dimension or schema (or the server refuses a well-formed request)."""


class EmbeddingModelMissing(HivememError):
    """Raised when the offline embedding model files are not installed; the message says which
    package provides them. hivemem never downloads a model at run time."""


class PoolUnavailable(HivememError):
    """Raised when the pool cannot reach or start its Redis server. Writes already acknowledged
    are safe in the agents' outboxes and go out when Redis is back."""


class AgentNotFound(HivememError, KeyError):
    """Raised when an agent id is not registered in the pool (or not attached in this process,
    for operations that need its local memory)."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(agent_id)
        self.agent_id = agent_id

    def __str__(self) -> str:
        return f"no agent {self.agent_id} in the pool"


class RegistrationConflict(HivememError):
    """Raised when registering an agent id that exists with another clearance (change a
    clearance explicitly, never by re-registering)."""


class ClearanceDenied(HivememError):
    """Raised when an operation would give an agent a record above its clearance. ``agent_id``
    and ``zone`` say who and what; nothing was sent or changed."""

    def __init__(self, agent_id: str, zone: str, clearance: str) -> None:
        super().__init__(
            f"agent {agent_id} (clearance {clearance}) may not receive a {zone} record"
        )
        self.agent_id = agent_id
        self.zone = zone
        self.clearance = clearance


class CompartmentDenied(ClearanceDenied):
    """Raised when an operation would give an agent, or have it write, a record in a compartment
    it does not hold. ``missing`` names those compartments; nothing was sent or changed."""

    def __init__(self, agent_id: str, zone: str, clearance: str, missing: Sequence[str]) -> None:
        super().__init__(agent_id, zone, clearance)
        self.args = (
            f"agent {agent_id} does not hold compartment(s) {', '.join(missing)} of the record",
        )
        self.missing = tuple(missing)


class PolicyDenied(HivememError):
    """Raised when a zone's policy forbids what was asked (writing below its write clearance,
    sharing a level it keeps to each agent); ``field`` names what; nothing changed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidMessage(InvalidInput):
    """Raised (and caught by the receiver, which logs and skips) for a pool message that is not
    a well-formed envelope of a known version."""


class MessageTooLarge(InvalidMessage):
    """Raised when what would go in one pool message is larger than a message may be
    (``size_bytes`` over ``limit_bytes``): by a codec for an envelope no receiver would read, by
    the sender for an item that fits in no message alone (``item_ids``: its record or tombstone
    id). Nothing was sent."""

    def __init__(self, size_bytes: int, limit_bytes: int, item_ids: Sequence[str] = ()) -> None:
        super().__init__(f"a message of {size_bytes} bytes, over the limit of {limit_bytes}")
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        self.item_ids = tuple(item_ids)


class StoreUnavailable(HivememError):
    """Raised when the zone store's Qdrant server cannot be reached or cannot serve (connection
    refused, 5xx, overloaded); the worker task that needed it is retried."""


class StoreBusy(HivememError):
    """Raised when the embedded zone store stayed open in another worker process for longer than
    ``workers.store_open_timeout_s``; the task that needed it is retried."""


class QueuesBusy(HivememError):
    """Raised when the workers kept draining a zone's ingest queues for longer than an operation
    that must not race them would wait (discarding what an agent queued); nothing changed: try
    again."""


class StrategyFailed(HivememError):
    """Raised by a consolidation strategy that could not produce a valid result (the LLM
    strategy catches it and falls back to the offline one)."""


class AuditConflict(HivememError):
    """Raised when an audit entry could not be appended because other writers kept moving the
    log's head through every attempt (``attempts``); nothing was appended."""

    def __init__(self, attempts: int) -> None:
        super().__init__(f"audit entry not appended: the head moved on each of {attempts} tries")
        self.attempts = attempts


class AuditLogCorrupt(HivememError):
    """Raised when the audit log's Redis keys hold something hivemem never writes (an entry that
    is not a well-formed entry, a malformed head, a stream that cannot take the next seq):
    someone wrote to them directly. The log's ``verify()`` says where."""


class MessageRejected(InvalidMessage):
    """Raised (and caught by the receiver, which audits and skips) for a well-formed pool message
    that fails the security checks. ``reason`` is one of ``unsigned``, ``forged``, ``tampered``,
    ``replayed``, ``stale``, ``revoked``, ``over_clearance``, ``unknown_key``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"message rejected ({reason}): {message}")
        self.reason = reason


class SecurityMismatch(HivememError):
    """Raised when a sealed, signed (version-2) message reaches a process whose security is
    off: the pool's processes disagree on ``HIVEMEM_SECURITY__ENABLED``. Nothing of it was
    applied; the workers stop at it (their ingest fails until the setting agrees)."""


class ZoneLadderMismatch(HivememError):
    """Raised when a process's zones (``HIVEMEM_ZONES``) differ from the ladder the pool's Redis
    holds (set by the first process that connected): clearances compared on two ladders could
    let a record reach an agent not cleared for it. Nothing was read or written."""


class KeyUnavailable(HivememError):
    """Raised when a data key is asked for that does not exist, was retired, or belongs to a
    zone above the caller's clearance, or when sealed content's subject was forgotten (its
    secret shredded, or the content sealed under an earlier secret of that subject id);
    ``zone`` and ``key_id`` say which."""

    def __init__(self, zone: str, key_id: str, why: str) -> None:
        super().__init__(f"key {key_id} of zone {zone} is unavailable: {why}")
        self.zone = zone
        self.key_id = key_id
        self.why = why


#: How a retirement names the zone's ingest queue among the holders it waits for (agent ids
#: hold no space, so no agent has this name).
INGEST_QUEUE = "ingest queue"


class KeyStillInUse(HivememError):
    """Raised when a zone's data key is to be retired while ``holders`` (agents, the workers,
    :data:`INGEST_QUEUE`) may still keep content sealed under it: they have not re-sealed since
    it stopped being active, or the workers have not stored the writes queued under it. Nothing
    changed."""

    def __init__(self, zone: str, key_id: str, holders: list[str]) -> None:
        shown = ", ".join(holders[:10]) + (" ..." if len(holders) > 10 else "")
        wait = " (the ingest queue: let the workers store it)" if INGEST_QUEUE in holders else ""
        super().__init__(
            f"key {key_id} of zone {zone} may still seal content of {shown}: re-seal first"
            f"{wait}, or force the retirement"
        )
        self.zone = zone
        self.key_id = key_id
        self.holders = holders


class KeyRotationConflict(HivememError):
    """Raised when a rotation of a zone's data key, or of the workers' ingest key, found on
    each of ``attempts`` tries that another rotation had made another key current since it
    read which one was: nothing changed by it; rotate again."""

    def __init__(self, zone: str, attempts: int) -> None:
        super().__init__(
            f"keys of {zone} not rotated: other rotations landed first {attempts} times"
        )
        self.zone = zone
        self.attempts = attempts


class SealBroken(HivememError):
    """Raised when sealed content does not authenticate: the ciphertext, its nonce, or what it
    is bound to (zone, key id, record) was altered, or the wrong key was used."""

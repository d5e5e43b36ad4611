"""Identifier rules. Ids reach Qdrant filters and (later) Redis keys, so they are validated in the
models and again in every adapter that builds a key or a filter from them.
"""

from __future__ import annotations

import re
import uuid

from hivemem.pool.errors import InvalidIdentifier

#: user, session, agent and run ids: a letter or digit, then letters, digits and ``_ . : @ -``.
SCOPE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
#: pool agent ids: like scope ids without ``:`` and ``@``, which Redis key patterns (and the ACLs
#: built from them) use as separators; so no agent id's keys fall under another's pattern.
AGENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: tags and entity references: words, spaces and ``_ . : @ / -``, at most 64 characters.
LABEL_PATTERN = re.compile(r"[\w][\w .:@/-]{0,63}")
#: metadata keys: identifier-like, so that ``metadata.<key>`` is an unambiguous payload path.
METADATA_KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: zone and compartment names: they become parts of Redis keys and channels, ACL patterns and
#: collection names, so no separator and no glob character.
VOCABULARY_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")


def new_record_id() -> str:
    """A fresh random record id (canonical UUID4 text)."""
    return str(uuid.uuid4())


def check_record_id(value: object, *, field: str = "id") -> str:
    """Return ``value`` as a canonical lower-case UUID string, or raise InvalidIdentifier."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{field} must be a UUID string", field=field)
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidIdentifier(f"{field} is not a UUID: {value[:80]!r}", field=field) from None
    canonical = str(parsed)
    if canonical != value.lower():
        raise InvalidIdentifier(f"{field} must be in canonical UUID form", field=field)
    return canonical


def check_scope_id(value: object, *, field: str) -> str:
    """Return ``value`` if it is a valid user/session/agent/run id, or raise InvalidIdentifier."""
    if not isinstance(value, str) or not SCOPE_ID_PATTERN.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidIdentifier(
            f"{field} must match {SCOPE_ID_PATTERN.pattern}: {shown!r}", field=field
        )
    return value


def check_agent_id(value: object, *, field: str = "agent_id") -> str:
    """Return ``value`` if it is a valid pool agent id, or raise InvalidIdentifier."""
    if not isinstance(value, str) or not AGENT_ID_PATTERN.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidIdentifier(
            f"{field} must match {AGENT_ID_PATTERN.pattern}: {shown!r}", field=field
        )
    return value


def check_label(value: object, *, field: str) -> str:
    """Return ``value`` if it is a valid tag or entity reference, or raise InvalidIdentifier."""
    if not isinstance(value, str) or not LABEL_PATTERN.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidIdentifier(
            f"{field} must match {LABEL_PATTERN.pattern}: {shown!r}", field=field
        )
    return value


def check_metadata_key(value: object, *, field: str = "metadata") -> str:
    """Return ``value`` if it is a valid metadata key, or raise InvalidIdentifier."""
    if not isinstance(value, str) or not METADATA_KEY_PATTERN.fullmatch(value):
        raise InvalidIdentifier(
            f"{field} keys must match {METADATA_KEY_PATTERN.pattern}: {str(value)[:80]!r}",
            field=field,
        )
    return value


def check_vocabulary_name(value: object, *, kind: str, field: str) -> str:
    """Return ``value`` if it is a valid name of a ``kind`` (zone, compartment), or raise
    InvalidIdentifier."""
    if not isinstance(value, str) or not VOCABULARY_NAME_PATTERN.fullmatch(value):
        raise InvalidIdentifier(
            f"{kind} name {str(value)[:40]!r} must be 1-32 of a-z, 0-9 and _, starting with a "
            "letter",
            field=field,
        )
    return value

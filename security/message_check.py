"""The receiver's security check of one pool message, and the replay guard it uses.

:meth:`MessageCheck.check` rejects a message by raising :class:`MessageRejected` with the first
reason that applies, in this order:

1. ``unsigned``: no signature.
2. ``revoked``: the sender is not in the registry (never registered, or deregistered).
3. ``forged``: the sender's registry entry lacks a valid admin signature over (agent id,
   clearance, compartments, public key), or has no public key; or the message signature does
   not verify over the signed bytes with that key.
4. ``stale``: sent more than ``max_age_s`` ago, or more than ``max_skew_s`` in the future.
5. ``over_clearance``: the message's zone is above the sender's clearance, or it carries a
   compartment the sender does not hold.
6. ``replayed``: the sender already sent this message id within the guard's window.

The replay guard is consulted last, once the signature verified, so forged copies cannot fill
it with ids and get genuine messages rejected. It remembers ids per sender, so no agent can
pre-empt another's ids. The signed bytes must cover the message id, sender, zone and
``sent_at`` (a version-2 frame's signed digest does). Rejection messages name ids, zone and reason,
never content.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from hivemem.pool.compartments import missing
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, MessageRejected
from hivemem.security.signing import is_public_key, verify_entry, verify_signature

#: How many expired ids one call forgets at most: pruning keeps up with any arrival rate (one
#: id in, up to this many out) while no call pays for a long quiet period at once.
_PRUNE_PER_CALL = 32
#: Registry entries whose admin signature was checked, kept per process.
_ENTRY_CACHE_SIZE = 1024
_ID_CHARS_SHOWN = 64


def _check_aware(sent_at: datetime, now: datetime) -> None:
    if sent_at.tzinfo is None or now.tzinfo is None:
        raise InvalidInput("sent_at and now must be timezone-aware", field="sent_at")


class ReplayGuard:
    """Message ids seen recently. An id is remembered for ``window_s`` seconds after the later
    of its ``sent_at`` and the time it was seen (``now``); at most ``max_entries`` ids are held,
    the oldest dropped first. Use a window at least the receiver's ``max_age_s``, so a message
    is either remembered or stale. Thread-safe; each call costs O(1)."""

    def __init__(self, window_s: float, *, max_entries: int = 1_000_000) -> None:
        if not window_s > 0:
            raise InvalidInput("window_s must be positive", field="window_s")
        if max_entries < 1:
            raise InvalidInput("max_entries must be at least 1", field="max_entries")
        self.window_s = float(window_s)
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when remembered (epoch s)
        self._lock = threading.Lock()

    def check_and_remember(self, message_id: str, sent_at: datetime, now: datetime) -> bool:
        """False if ``message_id`` was seen within the window (a replay; nothing changes), else
        remember it and return True. InvalidInput if ``sent_at`` or ``now`` is not
        timezone-aware."""
        _check_aware(sent_at, now)
        now_s = now.timestamp()
        stamp = max(sent_at.timestamp(), now_s)
        with self._lock:
            self._prune(now_s)
            seen = self._seen.get(message_id)
            if seen is not None:
                if now_s < seen + self.window_s:
                    return False
                self._seen.move_to_end(message_id)  # expired but not yet forgotten: renew
            self._seen[message_id] = stamp
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
        return True

    def forget(self, message_id: str) -> None:
        """Forget ``message_id`` (a message that was checked but could not be applied: when it
        comes again, it is no replay)."""
        with self._lock:
            self._seen.pop(message_id, None)

    def _prune(self, now_s: float) -> None:
        """Forget up to ``_PRUNE_PER_CALL`` expired ids from the oldest end (stops at the first
        id still in its window: one remembered with a later ``sent_at`` may hold expired ones
        behind it for at most the clock skew the receiver allows)."""
        seen = self._seen
        for _ in range(_PRUNE_PER_CALL):
            if not seen:
                return
            oldest = next(iter(seen))
            if now_s < seen[oldest] + self.window_s:
                return
            del seen[oldest]

    def __len__(self) -> int:
        """How many ids are held (expired ones not yet forgotten included)."""
        return len(self._seen)


@dataclass(frozen=True, slots=True)
class SenderFacts:
    """What the receiver knows of a sender from the registry: its entry and the admin's
    signature of it."""

    agent_id: str
    clearance: Zone
    public_key: str | None
    registry_signature: str | None
    #: The compartments the sender holds.
    compartments: tuple[str, ...] = ()


def _guard_key(sender_id: str, message_id: str) -> str:
    """What the replay guard remembers of a message: ids are unique per sender only."""
    return f"{sender_id}/{message_id}"


def _shown(message_id: str) -> str:
    return repr(message_id[:_ID_CHARS_SHOWN])


class MessageCheck:
    """The per-message check of a receiver (see the module docstring for the reasons and their
    order). Thread-safe. Registry entries' admin signatures are verified once per distinct
    entry and cached, since entries rarely change."""

    def __init__(
        self, *, admin_public_key: str, max_age_s: float, max_skew_s: float, guard: ReplayGuard
    ) -> None:
        """Raises InvalidInput for a malformed admin key, a non-positive ``max_age_s``, a
        negative ``max_skew_s``, or a guard whose window is shorter than ``max_age_s`` (a replay
        after the window would pass as fresh)."""
        if not is_public_key(admin_public_key):
            raise InvalidInput("admin_public_key is not a public key", field="admin_public_key")
        if not max_age_s > 0:
            raise InvalidInput("max_age_s must be positive", field="max_age_s")
        if not max_skew_s >= 0:
            raise InvalidInput("max_skew_s must not be negative", field="max_skew_s")
        if guard.window_s < max_age_s:
            raise InvalidInput("the replay window must be at least max_age_s", field="guard")
        self.admin_public_key = admin_public_key
        self.max_age_s = float(max_age_s)
        self.max_skew_s = float(max_skew_s)
        self.guard = guard
        self._entries: dict[tuple[str, Zone, str | None, str | None, tuple[str, ...]], bool] = {}

    def check(
        self,
        *,
        sender: SenderFacts | None,
        zone: Zone,
        message_id: str,
        sent_at: datetime,
        signed_bytes: bytes,
        signature: str | bytes | None,
        now: datetime,
        compartments: Sequence[str] = (),
    ) -> None:
        """Return if the message may be applied; raise MessageRejected (``reason``) if not.
        InvalidInput if ``sent_at`` or ``now`` is not timezone-aware."""
        if not signature:
            raise MessageRejected("unsigned", f"message {_shown(message_id)} has no signature")
        if sender is None:
            raise MessageRejected(
                "revoked", f"message {_shown(message_id)} comes from no registered agent"
            )
        who = f"message {_shown(message_id)} from {sender.agent_id}"
        if sender.public_key is None or not self._entry_ok(sender):
            raise MessageRejected("forged", f"{who}: the registry entry is not admin-signed")
        if not verify_signature(sender.public_key, signature, signed_bytes):
            raise MessageRejected("forged", f"{who}: the signature does not verify")
        _check_aware(sent_at, now)
        age_s = (now - sent_at).total_seconds()
        if age_s > self.max_age_s or -age_s > self.max_skew_s:
            raise MessageRejected("stale", f"{who}: sent_at is {age_s:.0f} s from now")
        if zone > sender.clearance:
            raise MessageRejected(
                "over_clearance", f"{who}: zone {zone} above clearance {sender.clearance}"
            )
        if missing(sender.compartments, compartments):
            raise MessageRejected(
                "over_clearance", f"{who}: a compartment the sender does not hold"
            )
        if not self.guard.check_and_remember(_guard_key(sender.agent_id, message_id), sent_at, now):
            raise MessageRejected("replayed", f"{who}: already received")

    def release(self, sender_id: str, message_id: str) -> None:
        """Undo what a passed :meth:`check` remembered of a message the receiver then failed to
        apply for a reason of its own (Redis away): read again, it must not pass for a replay."""
        self.guard.forget(_guard_key(sender_id, message_id))

    def _entry_ok(self, sender: SenderFacts) -> bool:
        """Whether the sender's registry entry carries a valid admin signature (cached)."""
        entry = (
            sender.agent_id,
            sender.clearance,
            sender.public_key,
            sender.registry_signature,
            sender.compartments,
        )
        ok = self._entries.get(entry)
        if ok is None:
            ok = verify_entry(self.admin_public_key, *entry[:4], compartments=sender.compartments)
            if len(self._entries) >= _ENTRY_CACHE_SIZE:
                self._entries.clear()  # a registry this large churns; start over
            self._entries[entry] = ok
        return ok

"""One agent's side of the pool: what leaves it (outbox → Redis, :mod:`hivemem.agents.sending`)
and what reaches it (Redis → memory, :mod:`hivemem.agents.receiving`), and what both threads
share here: back-off while Redis is away, and telling the broker's ACL refusals apart.

**Sending.** :class:`~hivemem.agents.sending.ShareObserver` sees every write of the agent's memory
before the write is acknowledged; the records and tombstones of a level in ``share_levels`` become
envelopes (one per zone, compartments, user and write, at most ``send_batch`` records and
``message_max_bytes`` each) committed to the outbox, and so do all of them for the agent's
ingest queue in the zone, which the workers drain into the zone store (``pool.ingest``). Each
write is noted in the outbox before the local index changes, so that the next process finishes
what a killed one left half done (:mod:`hivemem.agents.write_ahead`).
:class:`~hivemem.agents.sending.Sender`, a thread, moves them to Redis: at once when
``sync_interval`` is 0, else everything that accumulated once per interval, in one round trip per
topic (of at most ``send_batch`` messages and ``message_max_bytes``). A message leaves the
outbox only after Redis acknowledged it; while Redis is unreachable the sender waits with
exponential back-off (``retry_initial_s`` doubling to ``retry_max_s``) and tries again, never
spinning.

**Receiving.** :class:`~hivemem.agents.receiving.Receiver`, a thread, subscribes to the channel of
every zone at or below the agent's clearance, to its inbox and (one glob per zone) to the
compartment topics it may read, then reads each topic's stream from its cursor (catch-up), then
applies live messages. A compartment topic it has not seen before is followed from its first live
message, or found in the pool's topic set when the receiver (re)connects. Sequence numbers are
contiguous per topic, so a live message beyond ``cursor + 1`` means a gap, filled from the stream; a
stream trimmed past the cursor, or a new epoch (Redis lost its data), makes it re-bootstrap from
what the stream holds, with a warning in the logs. A message that does not decode, comes from the
wrong zone or is above the clearance (or outside the compartments) is logged (without content) and
skipped, and the cursor moves past it (:func:`~hivemem.agents.admission.admitted` judges each); a
lost connection, or a key the keyring cannot fetch, is retried with back-off, then the receiver
subscribes and catches up again. Redis refusing a write (out of memory) is logged; neither thread
stops for it. The cursor is stored after the records are applied, and applying is
idempotent, so a crash in between costs a re-apply only.
"""

from __future__ import annotations

import threading

import redis
import structlog

from hivemem.pool.settings import PoolSettings

log = structlog.get_logger(__name__)

#: What Redis raises while it cannot be reached.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


def is_denied(error: redis.ResponseError) -> bool:
    """True for the broker's refusal by ACL: NOPERM, or its wording for a command a script ran
    (``can't publish to the channel``, ``can't access at least one of the keys``)."""
    if isinstance(error, redis.exceptions.NoPermissionError):
        return True
    text = str(error)
    return "NOPERM" in text or "can't publish" in text or "can't access" in text


class Backoff:
    """Exponential waits between retries, interruptible by ``stop``."""

    def __init__(self, settings: PoolSettings, stop: threading.Event) -> None:
        self._initial_s = settings.retry_initial_s
        self._max_s = settings.retry_max_s
        self._halt = stop
        self.wait_s = 0.0

    def failed(self, event: str, **context: object) -> None:
        """Log ``event`` (a warning, with the wait ahead), then wait."""
        self.wait_s = min(self._max_s, max(self._initial_s, self.wait_s * 2))
        log.warning(event, retry_in_s=round(self.wait_s, 3), **context)
        self._halt.wait(self.wait_s)

    def succeeded(self) -> None:
        self.wait_s = 0.0

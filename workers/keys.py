"""The Redis keys the workers keep, under the pool's namespace ``ns``:

- ``ns:cursor:<queue>`` — ``"<epoch> <seq>"``: the last message of an ingest queue stored
  (``ingest:<zone>:agent:<id>``, and ``ingest:<zone>``, the shared queue of earlier versions;
  outside ``ns:ingest:*``, which agents may write);
- ``ns:consolidate:<zone>:users`` — the users of the zone with episodes waiting (or a rebuild);
- ``ns:consolidate:<zone>:<user>:pending`` — ids of the user's episodes not yet consolidated;
- ``ns:consolidate:<zone>:<user>:plan`` — the run in progress (JSON; see consolidation.py);
- ``ns:consolidate:<zone>:<user>:queued`` — set while a consolidation task is queued (dedupe);
- ``ns:consolidate:<zone>:<user>:rebuild`` — set when a derived record was deleted: the next run
  makes the levels above the traces again, even with no episode waiting;
- ``ns:consolidate:<zone>:<user>:spent`` — ids of derived records a delete of their sources took
  with it (a run that makes the same sources again gives the record a new id);
- ``ns:versions:<zone>:awaiting`` — a hash: id of a record not stored yet → id of the stored
  version that replaced it (see version_links.py);
- ``ns:lock:ingest:<zone>``, ``ns:lock:consolidate:<zone>:<user>``,
  ``ns:lock:forget:<user>`` (held for a whole forget of the user) and
  ``ns:lock:store:<zone>:<user>`` (held while a batch of the user's stored records is rewritten
  from what was read of it) — the locks;
- ``ns:forget:<zone>:<user>`` — a forget's journal, a hash: the tombstone of each record it
  removed there (ids and scopes, no content), one field each, until the forget is audited (see
  forget_journal.py).

User ids are validated scope ids (no spaces, no wildcards), so they are safe inside keys. None
of these keys falls under an agent's ACL patterns (``ns:zone:<zone>:*``,
``ns:ingest:<zone>:agent:<id>:*``, ``ns:agent:<id>:*``): agents cannot move the workers' place
or take their locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hivemem.pool.adapters.redis_bus import ingest_cursor_key, ingest_lock_key
from hivemem.pool.enums import Zone
from hivemem.pool.ids import check_scope_id
from hivemem.pool.records import MemoryRecord


@dataclass(frozen=True, slots=True)
class WorkerKeys:
    namespace: str

    def ingest_cursor(self, topic: str) -> str:
        return ingest_cursor_key(self.namespace, topic)

    def ingest_lock(self, zone: Zone) -> str:
        return ingest_lock_key(self.namespace, zone)

    def awaiting(self, zone: Zone) -> str:
        return f"{self.namespace}:versions:{zone.value}:awaiting"

    def users(self, zone: Zone) -> str:
        return f"{self.namespace}:consolidate:{zone.value}:users"

    def _scope(self, zone: Zone, user_id: str) -> str:
        user = check_scope_id(user_id, field="user_id")
        return f"{self.namespace}:consolidate:{zone.value}:{user}"

    def pending(self, zone: Zone, user_id: str) -> str:
        return f"{self._scope(zone, user_id)}:pending"

    def plan(self, zone: Zone, user_id: str) -> str:
        return f"{self._scope(zone, user_id)}:plan"

    def queued(self, zone: Zone, user_id: str) -> str:
        return f"{self._scope(zone, user_id)}:queued"

    def rebuild(self, zone: Zone, user_id: str) -> str:
        return f"{self._scope(zone, user_id)}:rebuild"

    def spent(self, zone: Zone, user_id: str) -> str:
        return f"{self._scope(zone, user_id)}:spent"

    def forget_journal(self, zone: Zone, user_id: str) -> str:
        user = check_scope_id(user_id, field="user_id")
        return f"{self.namespace}:forget:{zone.value}:{user}"

    def consolidate_lock(self, zone: Zone, user_id: str) -> str:
        user = check_scope_id(user_id, field="user_id")
        return f"{self.namespace}:lock:consolidate:{zone.value}:{user}"

    def store_lock(self, zone: Zone, user_id: str) -> str:
        user = check_scope_id(user_id, field="user_id")
        return f"{self.namespace}:lock:store:{zone.value}:{user}"

    def forget_lock(self, user_id: str) -> str:
        user = check_scope_id(user_id, field="user_id")
        return f"{self.namespace}:lock:forget:{user}"


def add_pending(
    pipe: Any, keys: WorkerKeys, zone: Zone, episodes: Sequence[MemoryRecord]
) -> list[str]:
    """Queue ``episodes`` for consolidation on the pipeline ``pipe`` (their users' pending
    sets, and the zone's users); returns the users, in order of first appearance."""
    by_user: dict[str, list[str]] = {}
    for record in episodes:
        by_user.setdefault(record.scope.user_id, []).append(record.id)
    for user_id, ids in by_user.items():
        pipe.sadd(keys.pending(zone, user_id), *ids)
        pipe.sadd(keys.users(zone), user_id)
    return list(by_user)


def add_rebuild(pipe: Any, keys: WorkerKeys, zone: Zone, user_ids: Sequence[str]) -> None:
    """Have each user (on the pipeline ``pipe``) consolidated again even with no episode
    waiting: the next run makes the levels above the traces again from what is left. A marker
    take_plan.lua turns into an empty plan, and forget_user.lua keeps the user due while it is
    set (a run in progress leaves it for the run after)."""
    for user_id in user_ids:
        pipe.set(keys.rebuild(zone, user_id), 1)
        pipe.sadd(keys.users(zone), user_id)

"""A forget's journal: what it removed of a user in each zone, kept in Redis until the forget is
audited.

A forget can stop anywhere after it began removing: a Redis error or a lost reply, a worker's
crash, ScopeBusy in a later zone. The store then no longer returns the removed records (a scan
never returns tombstones), so without a journal the next call of the same forget (the task's
retry, or the operator's) would find nothing: it would publish no tombstone, the agents would
keep their copies (in clear, with security off), and its receipt and audit entry would count
nothing. With it, that call publishes the tombstones no agent may have received yet, and counts
what the earlier call removed.

``ns:forget:<zone>:<user>``, a hash the workers alone may touch (see keys.py):

- ``tombstones``: JSON, the tombstones of every record the forget took from the zone: ids,
  scopes, levels, compartments and times, no content, nothing sealed under the user's secret
  (so a call after the shred still publishes them);
- ``archived``: JSON, the ids among them that were archived;
- ``redis_keys_deleted``: how many of the user's consolidation keys the forget deleted there;
- ``published``: ``1`` once every tombstone in it was published.

It is written before the zone store is touched, and deleted once the forget is audited, if its
tombstones were all published (a forget of the same user that ran meanwhile may have added
some: that one ends it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis
from pydantic import TypeAdapter

from hivemem.pool.enums import Zone
from hivemem.pool.records import Tombstone
from hivemem.workers.keys import WorkerKeys

_LUA = Path(__file__).parent / "lua"
_TOMBSTONES = TypeAdapter(list[Tombstone])
_IDS = TypeAdapter(list[str])


@dataclass(frozen=True)
class ZoneJournal:
    """What a forget removed of a user in one zone so far."""

    tombstones: Mapping[str, Tombstone] = field(default_factory=dict)
    archived: frozenset[str] = frozenset()
    redis_keys_deleted: int = 0
    published: bool = False

    @property
    def live_records(self) -> int:
        return len(self.tombstones.keys() - self.archived)

    def adding(self, found: Sequence[Tombstone], archived: Sequence[str]) -> ZoneJournal:
        """This journal with what a call found now, none of it published yet. A record noted
        before keeps the tombstone noted then (a call that stopped may have stored it)."""
        return ZoneJournal(
            tombstones={**{t.id: t for t in found}, **self.tombstones},
            archived=self.archived | set(archived),
            redis_keys_deleted=self.redis_keys_deleted,
        )

    def unpublished_after(self, earlier: ZoneJournal | None) -> list[Tombstone]:
        """The tombstones of this journal that no call may have published yet, ``earlier``
        being what the journal held before this call (None: nothing)."""
        if earlier is None or not earlier.published:
            return list(self.tombstones.values())
        return [t for i, t in self.tombstones.items() if i not in earlier.tombstones]


class ForgetJournal:
    """Reads and writes the forget journals (see the module docstring)."""

    def __init__(self, client: redis.Redis, keys: WorkerKeys) -> None:
        self._client = client
        self._keys = keys
        self._drop_state = client.register_script((_LUA / "forget_state.lua").read_text())
        self._done = client.register_script((_LUA / "forget_done.lua").read_text())

    def read(self, zone: Zone, user_id: str) -> ZoneJournal | None:
        """What an earlier call of the forget noted in ``zone``; None when there is none."""
        raw = cast(
            "dict[bytes, bytes]", self._client.hgetall(self._keys.forget_journal(zone, user_id))
        )
        if not raw:
            return None
        tombstones = _TOMBSTONES.validate_json(raw.get(b"tombstones", b"[]"))
        return ZoneJournal(
            tombstones={t.id: t for t in tombstones},
            archived=frozenset(_IDS.validate_json(raw.get(b"archived", b"[]"))),
            redis_keys_deleted=int(raw.get(b"redis_keys_deleted", b"0")),
            published=raw.get(b"published") == b"1",
        )

    def write(self, zone: Zone, user_id: str, journal: ZoneJournal) -> None:
        """Note ``journal``'s tombstones, not published yet (its count of keys is left as
        Redis holds it: :meth:`drop_state` adds to it)."""
        self._client.hset(
            self._keys.forget_journal(zone, user_id),
            mapping={
                "tombstones": _TOMBSTONES.dump_json(list(journal.tombstones.values())),
                "archived": _IDS.dump_json(sorted(journal.archived)),
                "published": "0",
            },
        )

    def drop_state(self, zone: Zone, user_id: str) -> int:
        """Delete the user's consolidation keys in ``zone`` and take the user off its waiting
        list, in one step; returns how many keys the forget deleted there, earlier calls
        included."""
        keys = self._keys
        deleted = self._drop_state(
            keys=[
                keys.forget_journal(zone, user_id),
                keys.users(zone),
                keys.pending(zone, user_id),
                keys.plan(zone, user_id),
                keys.queued(zone, user_id),
                keys.rebuild(zone, user_id),
                keys.spent(zone, user_id),
            ],
            args=[user_id],
        )
        return int(deleted)

    def published(self, zone: Zone, user_id: str) -> None:
        """Note that every tombstone of the journal in ``zone`` was published."""
        self._client.hset(self._keys.forget_journal(zone, user_id), "published", "1")

    def done(self, user_id: str, zones: Sequence[Zone]) -> None:
        """The forget was audited: delete its journals in ``zones`` whose tombstones were all
        published."""
        self._done(keys=[self._keys.forget_journal(zone, user_id) for zone in zones])

"""A forget's journal: what it removed of a user in each zone, kept in Redis until the forget is
audited.

A forget can stop anywhere after it began removing: a Redis error or a lost reply, a worker's
crash, ScopeBusy in a later zone. The store then no longer returns the removed records (a scan
never returns tombstones), so without a journal the next call of the same forget (the task's
retry, or the operator's) would find nothing: it would publish no tombstone, the agents would
keep their copies (in clear, with security off), and its receipt and audit entry would count
nothing. With it, that call publishes the tombstones no agent may have received yet, and counts
what the earlier call removed.

``ns:forget:<zone>:<user>``, a hash the workers alone may touch (see keys.py), one field per
record, so that a user with millions of records makes no value near Redis's limit of a string
(512 MB) and no call rewrites what an earlier one noted:

- ``t:<id>``: the JSON tombstone of a record the forget took from the zone: id, scope, level,
  compartments and time, no content, nothing sealed under the user's secret (so a call after
  the shred still publishes it);
- ``a:<id>``: present when that record was archived;
- ``redis_keys_deleted``: how many of the user's consolidation keys the forget deleted there;
- ``published``: ``1`` once every tombstone in it was published.

A call writes the records no earlier call noted, :data:`CHUNK` fields a command, before the
zone store is touched; ``published`` goes back to ``0`` in the command of the first chunk, so
that a call stopped anywhere leaves no tombstone counted as published that was not. It reads
the journal back with HSCAN, about :data:`CHUNK` fields a call. Journals written before this
layout hold ``tombstones`` and ``archived``, two JSON lists: they are read as well. The
journal is deleted once the forget is audited, if its tombstones were all published.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis
from pydantic import TypeAdapter

from hivemem.pool.enums import Zone
from hivemem.pool.records import Tombstone
from hivemem.workers.keys import WorkerKeys

#: The most fields a call writes to a journal in one command, and about as many as it reads
#: back in one HSCAN call.
CHUNK = 1_000

_LUA = Path(__file__).parent / "lua"
_TOMBSTONE = TypeAdapter(Tombstone)
_TOMBSTONES = TypeAdapter(list[Tombstone])
_IDS = TypeAdapter(list[str])
#: The prefixes of a record's fields: its tombstone, and the mark of an archived record.
_TOMBSTONE_FIELD = "t:"
_ARCHIVED_FIELD = "a:"


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
        """What earlier calls of the forget noted in ``zone``; None when there is none."""
        key = self._keys.forget_journal(zone, user_id)
        tombstones: dict[str, Tombstone] = {}
        archived: set[str] = set()
        other: dict[str, bytes] = {}
        fields = cast("Iterator[tuple[bytes, bytes]]", self._client.hscan_iter(key, count=CHUNK))
        for raw, value in fields:
            name = raw.decode()
            if name.startswith(_TOMBSTONE_FIELD):
                tombstone = _TOMBSTONE.validate_json(value)
                tombstones[tombstone.id] = tombstone
            elif name.startswith(_ARCHIVED_FIELD):
                archived.add(name.removeprefix(_ARCHIVED_FIELD))
            else:
                other[name] = value
        if not tombstones and not other:
            return None
        # A journal of the earlier layout: one JSON list each (see the module docstring).
        legacy = _TOMBSTONES.validate_json(other.get("tombstones", b"[]"))
        tombstones = {**{t.id: t for t in legacy}, **tombstones}
        archived |= set(_IDS.validate_json(other.get("archived", b"[]")))
        return ZoneJournal(
            tombstones=tombstones,
            archived=frozenset(archived),
            redis_keys_deleted=int(other.get("redis_keys_deleted", b"0")),
            published=other.get("published") == b"1",
        )

    def write(
        self, zone: Zone, user_id: str, journal: ZoneJournal, earlier: ZoneJournal | None
    ) -> None:
        """Note what ``journal`` holds beyond ``earlier`` (what :meth:`read` returned before
        this call), not published yet: CHUNK records a command, the first one also setting
        ``published`` back to 0. Its count of keys is left as Redis holds it (:meth:`drop_state`
        adds to it)."""
        before = earlier or ZoneJournal()
        fields = [
            (f"{_TOMBSTONE_FIELD}{i}", _TOMBSTONE.dump_json(t).decode())
            for i, t in journal.tombstones.items()
            if i not in before.tombstones
        ]
        fields += [
            (f"{_ARCHIVED_FIELD}{i}", "1") for i in sorted(journal.archived - before.archived)
        ]
        key = self._keys.forget_journal(zone, user_id)
        self._client.hset(key, mapping={"published": "0", **dict(fields[:CHUNK])})
        for start in range(CHUNK, len(fields), CHUNK):
            self._client.hset(key, mapping=dict(fields[start : start + CHUNK]))

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
        published (one that is not was written by a forget of the user that ran beside this
        one, its lock lapsed: that one ends it)."""
        self._done(keys=[self._keys.forget_journal(zone, user_id) for zone in zones])

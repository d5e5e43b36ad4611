"""What consolidation derived from a deleted record: :func:`derived_from`, and
:func:`delete_derived`, which deletes it.

A trace states its episodes' facts word for word; a category and the domain profile summarise
what lies below them. So a record's text lives on in every derived record above it, and in
their earlier versions. Deleting the record (a tombstone reaching the ingest) deletes those
too, all the way up, and what remains of their sources is consolidated again.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import EnvelopeCodec
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.workers.keys import WorkerKeys, add_pending, add_rebuild
from hivemem.workers.publishing import publish_as_workers

#: Levels of derivation followed at most (episode, trace, category, domain, with versions).
_MAX_STEPS = 64


def _naming(store: ZoneStore, zone: Zone, episodes: Sequence[MemoryRecord]) -> set[str]:
    """The live traces of the episodes' users that name one of them as a source, linked or
    not: a run may have written one after the episode was read."""
    by_user: dict[str, set[str]] = {}
    for episode in episodes:
        by_user.setdefault(episode.scope.user_id, set()).add(episode.id)
    found: set[str] = set()
    for user_id, ids in sorted(by_user.items()):
        where = And(
            all=[
                Cond(field="scope.user_id", op="eq", value=user_id),
                Cond(field="level", op="eq", value=Level.TRACE),
            ]
        )
        found |= {r.id for r in store.scan(zone, where) if ids & set(r.sources)}
    return found


def derived_from(
    store: ZoneStore, zone: Zone, deleted: Sequence[MemoryRecord], *, unlinked: bool = False
) -> tuple[list[MemoryRecord], list[MemoryRecord]]:
    """For the stored records ``deleted`` (about to be tombstoned): the records derived from
    them, directly or not (``consolidated_into``, upwards), with the versions those superseded;
    and the remaining sources of those, which lose their consolidation link. Both empty, with
    no read, when no deleted record was consolidated (the common case). ``unlinked``: start
    instead from the live traces that name a deleted episode as a source, whether the episode
    links to them or not (one read of the user's traces; its links were followed before)."""
    gone = {r.id for r in deleted}
    doomed: dict[str, MemoryRecord] = {}
    if unlinked:
        first = _naming(store, zone, [r for r in deleted if r.level is Level.EPISODE])
    else:
        first = {i for r in deleted for i in r.consolidated_into}
    frontier = sorted(first - gone)
    seen = gone | set(frontier)
    for _ in range(_MAX_STEPS):
        if not frontier:
            break
        above: set[str] = set()
        for record in store.get(zone, frontier):
            doomed[record.id] = record
            if record.supersedes is not None:
                above.add(record.supersedes)
            above.update(record.consolidated_into)
        frontier = sorted(above - seen)
        seen |= above
    if not doomed:
        return [], []
    sources = {s for record in doomed.values() for s in record.sources} - gone - doomed.keys()
    remaining = store.get(zone, sorted(sources)) if sources else []
    return list(doomed.values()), remaining


def delete_derived(
    store: ZoneStore,
    zone: Zone,
    deleted: Sequence[MemoryRecord],
    *,
    client: redis.Redis,
    keys: WorkerKeys,
    bus: RedisBus,
    codec: EnvelopeCodec,
    batch: int,
    max_bytes: int,
    unlinked: bool = False,
) -> tuple[list[MemoryRecord], list[MemoryRecord]]:
    """Delete what consolidation derived from the records ``deleted`` (as they were stored,
    with their ``consolidated_into``): the remaining episodes are queued again first, then the
    agents are sent the derived records' tombstones, then the store loses them (a user left
    with no episode to queue gets a run over what is left: :func:`add_rebuild`). Each step is
    idempotent, so a worker dying midway is made good by doing it all again. Returns the
    records deleted and the episodes queued again. ``unlinked``: see :func:`derived_from`."""
    doomed, remaining = derived_from(store, zone, deleted, unlinked=unlinked)
    if not doomed:
        return [], []
    episodes = [r for r in remaining if r.level is Level.EPISODE and r.is_current]
    # Left without what summarised them (a trace or category deleted directly): their users
    # get a run over what is left even though no episode waits.
    bereft = {r.scope.user_id for r in remaining if r.level is not Level.EPISODE}
    with client.pipeline(transaction=True) as pipe:
        requeued = add_pending(pipe, keys, zone, episodes)
        add_rebuild(pipe, keys, zone, sorted(bereft - set(requeued)))
        for record in doomed:  # made again from the same sources, it takes a new id
            pipe.sadd(keys.spent(zone, record.scope.user_id), record.id)
        pipe.execute()
    gone = [Tombstone.of(r) for r in doomed]
    publish_as_workers(bus, zone, [], gone, batch=batch, max_bytes=max_bytes, codec=codec)
    store.update_fields(zone, {r.id: {"consolidated_into": []} for r in remaining})
    store.put_tombstones(zone, gone)
    return doomed, episodes

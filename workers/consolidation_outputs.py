"""A consolidation run's outputs in the zone store (see :mod:`hivemem.workers.consolidation`):
:func:`live` and :func:`as_stored` say which of them the store already holds, :func:`write_outputs`
stores the rest and links everything (provenance both ways, versions).

An output whose id the store already holds is not written again: a live one keeps its content
and time (the same sources; a resumed run, or a later run over the same group), and one deleted
since (a tombstone: its user deleted it) stays deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from hivemem.pool.enums import Tier, Zone
from hivemem.pool.errors import MemoryNotFound
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord, Tombstone

#: How often the outputs' marks are tried, presence read afresh each time (see _update_live).
_UPDATE_ATTEMPTS = 3


def live(store: ZoneStore, zone: Zone, outputs: list[MemoryRecord]) -> list[MemoryRecord]:
    """``outputs`` but those whose id the store holds as a tombstone: deleted since an
    earlier run made them, they stay deleted, and none of their words go up a level."""
    held = store.presence(zone, [r.id for r in outputs])
    return [r for r in outputs if held.get(r.id) is not True]


def as_stored(
    store: ZoneStore, zone: Zone, outputs: Sequence[MemoryRecord], held: dict[str, bool]
) -> list[MemoryRecord]:
    """The outputs as the store holds them, for the agents: an output the store already
    held keeps its stored copy (the same sources, so the same record; a resumed run, or a
    later run over the same group), and one deleted since (a tombstone) is not sent.
    ``held`` is :meth:`ZoneStore.presence` of the outputs."""
    live_ids = [i for i, tombstone in held.items() if not tombstone]
    stored = {r.id: r for r in store.get(zone, live_ids, with_vectors=True)} if live_ids else {}
    return [stored.get(r.id, r) for r in outputs if not held.get(r.id, False)]


def write_outputs(
    store: ZoneStore,
    zone: Zone,
    prior_categories: Sequence[MemoryRecord],
    *,
    fresh: Sequence[MemoryRecord],
    traces: Sequence[MemoryRecord],
    categories: Sequence[MemoryRecord],
    domain_record: MemoryRecord | None,
    episodes: Sequence[MemoryRecord],
    now: datetime,
) -> list[Tombstone]:
    """Store the ``fresh`` outputs (those the store does not hold yet: one it holds, live
    or deleted, is never written again, so that a deleted output does not come back and a
    stored one keeps its content and time) and the links (each step idempotent); returns
    the tombstones of retired categories, for the agents."""
    if fresh:
        store.upsert(zone, fresh)
    updates: dict[str, dict[str, object]] = {}
    into_trace = {s: t.id for t in traces for s in t.sources}
    for episode in episodes:
        tier = Tier.SHORT_TERM if episode.tier is not Tier.ARCHIVE else episode.tier
        updates[episode.id] = {"consolidated_into": [into_trace[episode.id]], "tier": tier}
    for category in categories:
        for trace_id in category.sources:
            updates[trace_id] = {"consolidated_into": [category.id]}
        if domain_record is not None:
            updates[category.id] = {"consolidated_into": [domain_record.id]}
    successors = {r.supersedes: r.id for r in categories if r.supersedes}
    current = {r.id for r in categories}
    retired: list[Tombstone] = []
    for prior in prior_categories:
        if prior.id in current:
            continue
        updates[prior.id] = {"superseded_at": now, "superseded_by": successors.get(prior.id)}
        if prior.id not in successors:
            retired.append(Tombstone.of(prior))
    if domain_record is not None and domain_record.supersedes is not None:
        updates[domain_record.supersedes] = {
            "superseded_at": now,
            "superseded_by": domain_record.id,
        }
    _update_live(store, zone, updates)
    return retired


def _update_live(store: ZoneStore, zone: Zone, updates: dict[str, dict[str, object]]) -> None:
    """``updates`` of the records live in ``zone``. One archived or deleted between reading
    their presence and updating them (by a lifecycle task beside this run, on a Qdrant server)
    is skipped: presence is read again, up to _UPDATE_ATTEMPTS times in all."""
    for attempt in range(1, _UPDATE_ATTEMPTS + 1):
        present = store.presence(zone, list(updates))
        live = {k: v for k, v in updates.items() if present.get(k) is False}
        try:
            store.update_fields(zone, live)
        except MemoryNotFound:
            if attempt == _UPDATE_ATTEMPTS:
                raise
        else:
            return

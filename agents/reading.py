"""How one agent's memory answers: :class:`Reader`, the service behind
:class:`~hivemem.agents.memory.HierarchicalMemory`'s reads (a record, its history, listings,
searches and statistics).

Reads take no lock: they run concurrently with writes and see every write that returned before
they started. A record fetched by id, and each search hit when the search config tracks access,
is counted as accessed (tier promotion and retention read those counts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from hivemem.agents import versions
from hivemem.agents.access import AccessTracker
from hivemem.agents.inputs import check_time
from hivemem.agents.ranking import SearchHit
from hivemem.agents.scoping import owned_by
from hivemem.agents.search import Searcher, visible
from hivemem.agents.search_config import SearchConfig, preset
from hivemem.agents.stats import MemoryStats, compute_stats
from hivemem.pool.errors import InvalidSearchConfig
from hivemem.pool.filters import MemoryFilter, parse_filter
from hivemem.pool.ids import check_record_id
from hivemem.pool.ports import LocalIndex
from hivemem.pool.records import MemoryRecord, Scope

#: A filter as callers give it: a MemoryFilter, its fields, or None for none.
FilterArg = MemoryFilter | dict[str, Any] | None


class Reader:
    """Answers the reads of one memory."""

    def __init__(
        self,
        index: LocalIndex,
        searcher: Searcher,
        access: AccessTracker,
        clock: Callable[[], datetime],
    ) -> None:
        self._index = index
        self._searcher = searcher
        self._access = access
        self._clock = clock

    def get(self, record_id: str, *, with_vectors: bool) -> MemoryRecord:
        """The record ``record_id``, counted as accessed (see HierarchicalMemory.get)."""
        check_record_id(record_id, field="record_id")
        record = versions.require(self._index, record_id, with_vectors=with_vectors)
        self._access.touch([record.id], self._clock())
        return record

    def history(self, record_id: str) -> list[MemoryRecord]:
        """Every surviving version of the record, oldest first (see
        HierarchicalMemory.get_history)."""
        check_record_id(record_id, field="record_id")
        return versions.chain(self._index, record_id)

    def list_memories(
        self,
        target: Scope,
        filter: FilterArg,
        as_of: datetime | None,
        *,
        include_superseded: bool,
        exact: bool,
    ) -> list[MemoryRecord]:
        """Records visible from ``target``, newest first (by ``recorded_at``; see
        HierarchicalMemory.list_memories)."""
        where = visible(
            target,
            parse_filter(filter),
            exact=exact,
            as_of=check_time(as_of, field="as_of"),
            include_superseded=include_superseded,
        )
        return sorted(self._index.scan(where), key=lambda r: (r.recorded_at, r.id), reverse=True)

    def search(
        self,
        query: str,
        target: Scope,
        filter: FilterArg,
        config: SearchConfig | str | None,
        as_of: datetime | None,
        *,
        overrides: dict[str, Any],
        default_preset: str,
    ) -> list[SearchHit]:
        """Memories relevant to ``query`` visible from ``target``, best first (see
        HierarchicalMemory.search, which checks ``query``). ``default_preset`` names the
        config used when ``config`` is None."""
        chosen = self._config(config, overrides, default_preset)
        flt = parse_filter(filter)
        when = check_time(as_of, field="as_of")
        now = self._clock()
        hits = self._searcher.search(query, target, chosen, flt, as_of=when, now=now)
        if chosen.track_access and hits:
            self._access.touch([h.record.id for h in hits], now)
        return hits

    def stats(self, target: Scope | None) -> MemoryStats:
        """The stats of ``target``, or of everything when it is None (see
        HierarchicalMemory.stats)."""
        return compute_stats(self._index, [] if target is None else owned_by(target))

    def _config(
        self, config: SearchConfig | str | None, overrides: dict[str, Any], default_preset: str
    ) -> SearchConfig:
        """The search config ``config`` names (a SearchConfig, its fields or a preset's name;
        None: ``default_preset``) with ``overrides`` applied; InvalidSearchConfig otherwise."""
        if config is None:
            config = default_preset
        if isinstance(config, Mapping):
            config = SearchConfig.model_validate(config)
        if not isinstance(config, str | SearchConfig):
            raise InvalidSearchConfig("config is a SearchConfig, its fields or a preset's name")
        base = preset(config) if isinstance(config, str) else config
        return base.with_(**overrides) if overrides else base

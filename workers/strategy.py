"""The consolidation strategy port: how a scope's records become the next level up.

A strategy groups records and writes what each group says; the consolidation service
(:mod:`hivemem.workers.consolidation`) does everything else: it picks the inputs, derives each
output's id from its sources, gives it vectors, zone, scope and bookkeeping, links both ways,
writes and publishes. A strategy never does I/O on the stores.

Contract of every method: each :class:`Draft` names at least one source, every source is one of
the inputs, and no input is the source of two drafts (the service checks this and raises
:class:`~hivemem.pool.errors.StrategyFailed` otherwise). ``traces`` and ``categories`` must give
every input a draft: an input left out would never be consolidated.

Custom strategies implement this Protocol and are named in the settings as ``module:Class``
(``HIVEMEM_WORKERS__CONSOLIDATION__STRATEGY=mypkg.strategies:MyStrategy``); the class is built
with the :class:`~hivemem.pool.settings.ConsolidationSettings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from hivemem.pool.enums import Category
from hivemem.pool.ports import Vector
from hivemem.pool.records import MemoryRecord


@dataclass(frozen=True, slots=True)
class Sources:
    """The records a strategy consolidates, with their dense vectors as unit rows (same order)."""

    records: Sequence[MemoryRecord]
    vectors: Vector

    def __post_init__(self) -> None:
        if self.vectors.shape[0] != len(self.records):
            raise ValueError("one vector row per record")

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, positions: Sequence[int]) -> Sources:
        rows = np.asarray(positions, dtype=np.intp)
        return Sources([self.records[i] for i in positions], self.vectors[rows])


@dataclass(frozen=True, slots=True)
class Draft:
    """A consolidated record before the service makes it a MemoryRecord: what it says, which
    inputs it consolidates (ids), and how it is classified."""

    content: str
    sources: tuple[str, ...]
    category: Category = Category.FACT
    importance: float = 0.5
    tags: tuple[str, ...] = field(default=())
    entities: tuple[str, ...] = field(default=())


class ConsolidationStrategy(Protocol):
    """Turns episodes into traces, traces into categories, categories into a domain profile."""

    #: A short name, recorded in each output's metadata (``strategy``).
    name: str

    def traces(self, episodes: Sources) -> list[Draft]:
        """Group episodes by topic or entity; each trace states the group's facts."""
        ...

    def categories(self, traces: Sources) -> list[Draft]:
        """Group traces into summarised concepts."""
        ...

    def domain(self, user_id: str, categories: Sources) -> Draft:
        """One profile of the user from all their categories (every category is a source)."""
        ...

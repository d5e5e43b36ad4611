"""The default consolidation strategy: offline, deterministic, no model call.

- **Traces**: episodes in time order are grouped by embedding (a greedy leader clustering at
  ``trace_similarity``, at most ``episodes_per_trace`` each). A trace names its topic (the
  group's keyphrases against the scope's other episodes), its entities (entity refs, then
  capitalised names in the text) and states its facts: the episodes closest to the group's
  centre, verbatim (shortened past 240 characters), most central first.
- **Categories**: traces grouped the same way at ``category_similarity`` (at most
  ``traces_per_category``, then merged down to ``max_categories``); a category is a concept
  named by its keyphrases, listing the topics of its traces.
- **Domain**: the user's profile: the main concepts (largest categories first), stated
  preferences, and the names that recur.

Category and importance of an output: the most common category among its sources (ties go to
the earlier member of :class:`~hivemem.pool.enums.Category`) and the highest importance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from hivemem.pool.enums import Category
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import ConsolidationSettings
from hivemem.workers.clustering import (
    centre,
    document_frequencies,
    keyphrases,
    leader_clusters,
    merge_smallest,
    names,
)
from hivemem.workers.strategy import Draft, Sources

_FACT_CHARS = 240
_FACTS_PER_TRACE = 3
_KEYPHRASES = 4
_ENTITIES = 6
_TOPICS_PER_CATEGORY = 8
_CONCEPTS_PER_DOMAIN = 8
_PREFERENCES_PER_DOMAIN = 5


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _summary(
    lines: Sequence[str],
    records: Sequence[MemoryRecord],
    tags: Sequence[str],
    entities: Sequence[str],
) -> Draft:
    """A trace or category drafted from ``records``: their majority category and highest
    importance."""
    return Draft(
        content="\n".join(lines),
        sources=tuple(r.id for r in records),
        category=_majority(records),
        importance=max(r.importance for r in records),
        tags=tuple(tags),
        entities=tuple(entities),
    )


def _majority(records: Sequence[MemoryRecord]) -> Category:
    counts = Counter(r.category for r in records)
    order = list(Category)
    return max(counts, key=lambda c: (counts[c], -order.index(c)))


def _topic_of(record: MemoryRecord) -> str:
    """What a trace or category is about: its "Topic:"/"Concept:" line, else its tags, else the
    start of its content (outputs of other strategies have no such line)."""
    first = record.content.split("\n", 1)[0]
    for prefix in ("Topic: ", "Concept: "):
        if first.startswith(prefix):
            return first.removeprefix(prefix).rstrip(".")
    return ", ".join(record.tags[:_KEYPHRASES]) or _shorten(record.content, 60)


class OfflineStrategy:
    """:class:`~hivemem.workers.strategy.ConsolidationStrategy` without any model call."""

    name = "offline"

    def __init__(self, settings: ConsolidationSettings) -> None:
        self.settings = settings

    def traces(self, episodes: Sources) -> list[Draft]:
        order = sorted(
            range(len(episodes)),
            key=lambda i: (episodes.records[i].recorded_at, episodes.records[i].id),
        )
        ordered = episodes.subset(order)
        groups = leader_clusters(
            ordered.vectors,
            threshold=self.settings.trace_similarity,
            max_size=self.settings.episodes_per_trace,
        )
        texts = [r.content for r in ordered.records]
        df = document_frequencies(texts)
        return [self._trace(ordered.subset(g), df, len(texts)) for g in groups]

    def _trace(self, group: Sources, df: Counter[str], corpus_size: int) -> Draft:
        records = group.records
        texts = [r.content for r in records]
        topic_words = keyphrases(texts, df, corpus_size, _KEYPHRASES)
        entities = names(texts, [e for r in records for e in r.entities], _ENTITIES)
        closeness = group.vectors @ centre(group.vectors)
        central = sorted(range(len(records)), key=lambda i: (-closeness[i], records[i].id))
        facts = [_shorten(texts[i], _FACT_CHARS) for i in central[:_FACTS_PER_TRACE]]
        topic = ", ".join(topic_words) if topic_words else _shorten(texts[central[0]], 60)
        lines = [f"Topic: {topic}."]
        if entities:
            lines.append(f"About: {', '.join(entities)}.")
        lines.append("Facts: " + " | ".join(facts))
        if len(records) > len(facts):
            lines.append(f"({len(records)} episodes in all.)")
        return _summary(lines, records, topic_words, entities)

    def categories(self, traces: Sources) -> list[Draft]:
        order = sorted(range(len(traces)), key=lambda i: traces.records[i].id)
        ordered = traces.subset(order)
        groups = leader_clusters(
            ordered.vectors,
            threshold=self.settings.category_similarity,
            max_size=self.settings.traces_per_category,
        )
        groups = merge_smallest(ordered.vectors, groups, self.settings.max_categories)
        texts = [r.content for r in ordered.records]
        df = document_frequencies(texts)
        return [self._category(ordered.subset(g), df, len(texts)) for g in groups]

    def _category(self, group: Sources, df: Counter[str], corpus_size: int) -> Draft:
        records = group.records
        concept_words = keyphrases([r.content for r in records], df, corpus_size, _KEYPHRASES)
        topics = list(dict.fromkeys(_topic_of(r) for r in records))
        entities = names([], [e for r in records for e in r.entities], _ENTITIES)
        concept = ", ".join(concept_words) if concept_words else topics[0]
        lines = [f"Concept: {concept}."]
        lines.append("Topics: " + "; ".join(topics[:_TOPICS_PER_CATEGORY]) + ".")
        if entities:
            lines.append(f"About: {', '.join(entities)}.")
        return _summary(lines, records, concept_words, entities)

    def domain(self, user_id: str, categories: Sources) -> Draft:
        records = sorted(categories.records, key=lambda r: (-len(r.sources), r.id))
        concepts = [_topic_of(r) for r in records[:_CONCEPTS_PER_DOMAIN]]
        preferences = [
            _shorten(r.content, 160) for r in records if r.category is Category.PREFERENCE
        ][:_PREFERENCES_PER_DOMAIN]
        entities = names([], [e for r in records for e in r.entities], _ENTITIES)
        lines = [f"Profile of {user_id}.", "Main concepts: " + "; ".join(concepts) + "."]
        if preferences:
            lines.append("Preferences: " + " | ".join(preferences))
        if entities:
            lines.append(f"Recurring names: {', '.join(entities)}.")
        tags: list[str] = list(dict.fromkeys(t for r in records for t in r.tags))
        return Draft(
            content="\n".join(lines),
            sources=tuple(r.id for r in categories.records),
            category=Category.INSIGHT,
            importance=float(np.max([r.importance for r in records])) if records else 0.5,
            tags=tuple(tags[: _KEYPHRASES * 2]),
            entities=tuple(entities),
        )

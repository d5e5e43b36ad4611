"""The contract a consolidation strategy's drafts must keep (see
:mod:`hivemem.workers.strategy`): :func:`check_drafts`, and :func:`labels`, the valid labels
among a draft's words. A draft that breaks it makes the run fall back to the offline strategy."""

from __future__ import annotations

from collections.abc import Sequence

from hivemem.pool.errors import HivememError, StrategyFailed
from hivemem.pool.ids import check_label
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.workers.strategy import Draft, Sources

#: The longest content a derived record keeps (a draft's is cut to it).
MAX_CONTENT_CHARS = 8_000


def labels(values: Sequence[str]) -> list[str]:
    """The valid labels among ``values`` (a strategy's words may not all be labels), deduped."""
    kept: list[str] = []
    for value in values:
        try:
            label = check_label(value, field="label")
        except ValueError:
            continue
        if label not in kept:
            kept.append(label)
    return kept[:64]


def _check_fields(draft: Draft) -> None:
    """StrategyFailed unless the draft's content, category, importance and labels make a valid
    record (as _derive makes it): found here, a bad one falls back to offline; found in
    _derive, it would fail the run, and every later run resumes the same plan."""
    try:
        MemoryRecord(
            content=draft.content.strip()[:MAX_CONTENT_CHARS],
            scope=Scope(user_id="check"),
            category=draft.category,
            importance=min(1.0, max(0.0, float(draft.importance))),
            tags=labels(draft.tags),
            entities=labels(draft.entities),
        )
    except (HivememError, ValueError, TypeError) as error:
        raise StrategyFailed(f"a draft that makes no valid record: {error}"[:300]) from None


def check_drafts(drafts: Sequence[Draft], sources: Sources) -> None:
    """The strategy contract (see hivemem.workers.strategy); raises StrategyFailed."""
    known = {r.id for r in sources.records}
    seen: set[str] = set()
    for draft in drafts:
        if not isinstance(draft, Draft) or not draft.sources:
            raise StrategyFailed("a draft without sources")
        if not isinstance(draft.content, str) or not draft.content.strip():
            raise StrategyFailed("a draft without content")
        _check_fields(draft)
        for source in draft.sources:
            if source not in known:
                raise StrategyFailed("a draft names a source that is not an input")
            if source in seen:
                raise StrategyFailed("an input is the source of two drafts")
            seen.add(source)
    if seen != known:
        raise StrategyFailed(f"{len(known - seen)} inputs were left out")

"""Fusion of dense and sparse rankings, and the final weighting by recency and importance.

Pure functions over ids and scores: no store, no I/O. Scores are "higher is better".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from hivemem.agents.search_config import SearchConfig
from hivemem.pool.ports import ScoredId
from hivemem.pool.records import MemoryRecord


@dataclass(frozen=True, slots=True)
class Candidate:
    """A fused candidate: its fused score and, when the dense lookup found it, its cosine."""

    id: str
    score: float
    similarity: float | None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result. ``score`` is in [0, 1] after weighting (higher is better);
    ``similarity`` is the dense cosine similarity when known."""

    record: MemoryRecord
    score: float
    similarity: float | None


def _rrf(lists: Sequence[tuple[Sequence[ScoredId], float]], k: int) -> dict[str, float]:
    fused: dict[str, float] = {}
    for ranking, weight in lists:
        for rank, hit in enumerate(ranking):
            fused[hit.id] = fused.get(hit.id, 0.0) + weight / (k + rank + 1)
    return fused


def _score_sum(lists: Sequence[tuple[Sequence[ScoredId], float]]) -> dict[str, float]:
    fused: dict[str, float] = {}
    for ranking, weight in lists:
        if not ranking:
            continue
        top, bottom = ranking[0].score, ranking[-1].score
        span = top - bottom
        for hit in ranking:
            normalised = (hit.score - bottom) / span if span > 0 else 1.0
            fused[hit.id] = fused.get(hit.id, 0.0) + weight * normalised
    return fused


def fuse(
    dense: Sequence[ScoredId], sparse: Sequence[ScoredId], config: SearchConfig
) -> list[Candidate]:
    """One ranking from the dense and sparse ones, best first, per ``config``."""
    similarity = {hit.id: hit.score for hit in dense}
    if config.mode == "dense":
        return [Candidate(h.id, h.score, h.score) for h in dense]
    if config.mode == "sparse":
        return [Candidate(h.id, h.score, None) for h in sparse]
    lists = [(dense, config.dense_weight), (sparse, config.sparse_weight)]
    fused = _rrf(lists, config.rrf_k) if config.fusion == "rrf" else _score_sum(lists)
    if config.min_similarity is not None:
        fused = {i: s for i, s in fused.items() if i in similarity}
    ordered = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
    return [Candidate(i, s, similarity.get(i)) for i, s in ordered]


def weigh(
    candidates: Sequence[Candidate],
    records: Mapping[str, MemoryRecord],
    config: SearchConfig,
    now: datetime,
) -> list[SearchHit]:
    """Final hits: the fused score scaled to [0, 1] by the best one, blended with recency
    (half-life decay of ``recorded_at``) and importance by their configured shares."""
    present = [c for c in candidates if c.id in records]
    if not present:
        return []
    best = max(c.score for c in present) or 1.0
    relevance_share = 1.0 - config.recency_weight - config.importance_weight
    hits = []
    for candidate in present:
        record = records[candidate.id]
        score = relevance_share * max(candidate.score, 0.0) / best
        if config.recency_weight:
            age_s = max((now - record.recorded_at).total_seconds(), 0.0)
            score += config.recency_weight * math.pow(0.5, age_s / config.recency_half_life_s)
        if config.importance_weight:
            score += config.importance_weight * record.importance
        hits.append(SearchHit(record, score, candidate.similarity))
    hits.sort(key=lambda h: (-h.score, h.record.id))
    return hits

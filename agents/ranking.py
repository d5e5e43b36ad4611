"""Fusion of dense and sparse rankings, and the final weighting by recency and importance.

Pure functions over ids and scores: no store, no I/O. Scores are "higher is better".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from hivemem.agents.search_config import SearchConfig
from hivemem.pool.ports import Neighbourhood, ScoredId
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
    """Weighted sum of min-max normalised scores; a list of equal scores normalises to 1."""
    fused: dict[str, float] = {}
    for ranking, weight in lists:
        if not ranking or weight == 0:
            continue
        top = max(hit.score for hit in ranking)
        bottom = min(hit.score for hit in ranking)
        span = top - bottom
        for hit in ranking:
            normalised = (hit.score - bottom) / span if span > 0 else 1.0
            fused[hit.id] = fused.get(hit.id, 0.0) + weight * normalised
    return fused


def _session_prior(
    fused: dict[str, float], session: Mapping[str, str | None], boost: float
) -> None:
    """Add ``boost`` times the best score in each candidate's session (a record without a session
    is its own group): memories of the conversation that matches best rise together."""
    best: dict[str, float] = {}
    for record_id, score in fused.items():
        group = session.get(record_id) or record_id
        best[group] = max(best.get(group, 0.0), score)
    for record_id in fused:
        fused[record_id] += boost * best[session.get(record_id) or record_id]


def _neighbour_smoothing(
    fused: dict[str, float], follows: Mapping[str, str | None], weight: float
) -> None:
    """Add ``weight`` times the better of a candidate's two neighbours (the memory it follows
    and the one following it, when they are candidates too)."""
    neighbour: dict[str, float] = {}
    for record_id, previous in follows.items():
        if previous is not None and previous in fused and record_id in fused:
            neighbour[record_id] = max(neighbour.get(record_id, 0.0), fused[previous])
            neighbour[previous] = max(neighbour.get(previous, 0.0), fused[record_id])
    for record_id, lent in neighbour.items():
        fused[record_id] += weight * lent


def fuse(
    dense: Sequence[ScoredId],
    sparse: Sequence[ScoredId],
    config: SearchConfig,
    neighbourhoods: Mapping[str, Neighbourhood] | None = None,
    *,
    limit: int | None = None,
) -> list[Candidate]:
    """One ranking from the dense and sparse ones, best first, per ``config``; its first
    ``limit`` candidates when a limit is given.

    Hybrid: the weighted sum of min-max normalised scores (or RRF), then the session prior and
    neighbour smoothing when configured (they need the candidates' ``neighbourhoods``; a
    candidate without one counts as alone). ``min_similarity`` keeps only dense candidates
    (whose cosine passed the threshold in the store)."""
    similarity = {hit.id: hit.score for hit in dense}
    lists = [(dense, config.dense_weight), (sparse, config.sparse_weight)]
    if config.mode == "dense":
        lists = [(dense, 1.0)]
    elif config.mode == "sparse":
        lists = [(sparse, 1.0)]
    fused = _rrf(lists, config.rrf_k) if config.fusion == "rrf" else _score_sum(lists)
    if config.min_similarity is not None:
        fused = {i: s for i, s in fused.items() if i in similarity}
    near = neighbourhoods or {}
    if config.session_boost:
        sessions = {i: n.session_id for i, n in near.items()}
        _session_prior(fused, sessions, config.session_boost)
    if config.neighbor_weight:
        follows = {i: n.follows for i, n in near.items()}
        _neighbour_smoothing(fused, follows, config.neighbor_weight)
    ordered = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
    return [Candidate(i, s, similarity.get(i)) for i, s in ordered[:limit]]


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

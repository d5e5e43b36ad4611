"""Fusion and weighting, as pure functions over scored ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hivemem.agents.ranking import Candidate, fuse, weigh
from hivemem.agents.search_config import SearchConfig
from hivemem.pool.ports import Neighbourhood, ScoredId
from hivemem.pool.records import MemoryRecord, Scope

PLAIN = SearchConfig(session_boost=0.0, neighbor_weight=0.0)


def _ids(candidates: list[Candidate]) -> list[str]:
    return [c.id for c in candidates]


def test_score_fusion_sums_normalised_scores() -> None:
    """A memory high in both rankings beats memories high in one."""
    dense = [ScoredId("a", 0.9), ScoredId("b", 0.8), ScoredId("c", 0.1)]
    sparse = [ScoredId("b", 12.0), ScoredId("c", 2.0), ScoredId("a", 1.0)]
    fused = fuse(dense, sparse, PLAIN)
    assert _ids(fused) == ["b", "a", "c"]
    assert fused[0].similarity == 0.8


def test_rrf_fusion_uses_ranks() -> None:
    """RRF ignores score scales: ranks alone decide."""
    dense = [ScoredId("a", 0.99), ScoredId("b", 0.98)]
    sparse = [ScoredId("b", 100.0), ScoredId("a", 0.1)]
    fused = fuse(dense, sparse, PLAIN.with_(fusion="rrf"))
    assert fused[0].score == fused[1].score


def test_min_similarity_keeps_only_dense_candidates() -> None:
    """With a similarity floor, keyword-only candidates (never above it) are dropped."""
    dense = [ScoredId("a", 0.7)]
    sparse = [ScoredId("b", 9.0), ScoredId("a", 1.0)]
    assert _ids(fuse(dense, sparse, PLAIN.with_(min_similarity=0.5))) == ["a"]


def test_session_prior_lifts_the_best_sessions_memories() -> None:
    """A weak match in the session of the best match overtakes an equal match elsewhere."""
    dense = [
        ScoredId("hit", 0.9),
        ScoredId("near", 0.5),
        ScoredId("far", 0.5),
        ScoredId("low", 0.1),
    ]
    near = {
        "hit": Neighbourhood("s1", None),
        "near": Neighbourhood("s1", None),
        "far": Neighbourhood("s2", None),
        "low": Neighbourhood("s3", None),
    }
    fused = fuse(dense, [], PLAIN.with_(mode="dense", session_boost=0.5), near)
    assert _ids(fused)[:3] == ["hit", "near", "far"]
    assert fused[1].score > fused[2].score


def test_neighbours_lend_relevance_both_ways() -> None:
    """The turns just before and after a strong match rise above an unrelated equal match."""
    dense = [
        ScoredId("answer", 0.9),
        ScoredId("question", 0.3),
        ScoredId("after", 0.3),
        ScoredId("elsewhere", 0.31),
        ScoredId("floor", 0.0),
    ]
    near = {
        "answer": Neighbourhood("s1", "question"),
        "question": Neighbourhood("s1", None),
        "after": Neighbourhood("s1", "answer"),
        "elsewhere": Neighbourhood("s2", None),
        "floor": Neighbourhood("s3", None),
    }
    fused = fuse(dense, [], PLAIN.with_(mode="dense", neighbor_weight=0.3), near)
    ranked = _ids(fused)
    assert ranked[0] == "answer"
    assert ranked.index("question") < ranked.index("elsewhere")
    assert ranked.index("after") < ranked.index("elsewhere")


def test_weighting_blends_recency_and_importance() -> None:
    """Final scores lie in [0, 1]; recency and importance shares reorder equal relevance."""
    now = datetime(2026, 3, 1, tzinfo=UTC)
    old = MemoryRecord(
        content="x",
        scope=Scope(user_id="u"),
        importance=0.9,
        recorded_at=now - timedelta(days=90),
        valid_from=now - timedelta(days=90),
    )
    new = MemoryRecord(
        content="x", scope=Scope(user_id="u"), importance=0.1, recorded_at=now, valid_from=now
    )
    candidates = [Candidate(old.id, 1.0, None), Candidate(new.id, 1.0, None)]
    records = {old.id: old, new.id: new}
    recent = weigh(candidates, records, SearchConfig(recency_weight=0.5), now)
    important = weigh(candidates, records, SearchConfig(importance_weight=0.5), now)
    assert recent[0].record.id == new.id
    assert important[0].record.id == old.id
    assert all(0.0 <= h.score <= 1.0 for h in recent + important)
    assert weigh(candidates, {}, SearchConfig(), now) == []

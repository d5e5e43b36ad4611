"""Search behaviour as data: :class:`SearchConfig` and its named presets.

The default ("balanced") was chosen on the LoCoMo development split (bench/locomo.py): hybrid
search fusing min-max normalised dense and BM25 scores half and half, a session prior (memories
of the best matching session rise together) and neighbour smoothing (a memory lends part of its
score to the turns just before and after it). On conversational memory this lifted recall@10
from 0.55 (BM25) to above 0.7; parameters sat on wide plateaus when tuned on part of the data.

Scores are "higher is better". ``min_similarity`` is a threshold on the dense cosine similarity
between query and memory, in [-1, 1]; in hybrid mode a result must also be among the dense
candidates above it. It has no meaning for pure keyword (sparse) search, where setting it is an
error.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from hivemem.pool.base import Model
from hivemem.pool.errors import InvalidSearchConfig


class SearchConfig(Model):
    """How a search retrieves, fuses and ranks candidates. Strict: a field given as text (or a
    number given as a bool) is refused, not converted."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)
    error = InvalidSearchConfig

    #: dense (embedding similarity), sparse (BM25 keywords) or hybrid (both, fused).
    mode: Literal["dense", "sparse", "hybrid"] = "hybrid"
    #: Fusion of the dense and sparse rankings: the weighted sum of min-max normalised scores
    #: ("score"), or reciprocal rank fusion ("rrf").
    fusion: Literal["score", "rrf"] = "score"
    #: RRF constant: a candidate at rank r contributes weight / (rrf_k + r).
    rrf_k: int = Field(default=60, ge=1)
    #: The two rankings' weights, relative to each other; bounded so that their weighted sums
    #: stay finite (two weights of 1e308 made every score NaN).
    dense_weight: float = Field(default=0.5, ge=0.0, le=1_000.0)
    sparse_weight: float = Field(default=0.5, ge=0.0, le=1_000.0)
    #: Share of the best fused score in a candidate's session added to it (session prior).
    session_boost: float = Field(default=0.5, ge=0.0, le=10.0)
    #: Share of the better neighbour's score (previous or next memory of the same session)
    #: added to a candidate (neighbour smoothing).
    neighbor_weight: float = Field(default=0.3, ge=0.0, le=10.0)
    #: Where BM25 term rarity (IDF) is measured: over the whole memory (fast), or over the
    #: query user's records only (no statistics cross the user partition; ~0.3 ms slower per
    #: search at 100k records).
    idf_scope: Literal["memory", "user"] = "memory"
    #: Candidates fetched per retrieval method before fusion (at least ``top_k``; with recency
    #: or importance weights, at least the shortlist they re-rank).
    candidates: int = Field(default=50, ge=1, le=10_000)
    top_k: int = Field(default=10, ge=1, le=1_000)
    min_similarity: float | None = Field(default=None, ge=-1.0, le=1.0)
    #: Share of the final score given to recency (exponential decay of age) and importance.
    recency_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    recency_half_life_s: float = Field(default=30 * 24 * 3600.0, gt=0.0)
    importance_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    include_superseded: bool = False
    exact_scope: bool = False
    #: Count each returned memory as accessed (feeds tier promotion and retention).
    track_access: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.mode == "sparse" and self.min_similarity is not None:
            raise InvalidSearchConfig(
                "min_similarity needs dense similarity (mode dense or hybrid)"
            )
        if self.recency_weight + self.importance_weight > 1.0:
            raise InvalidSearchConfig("recency_weight + importance_weight must not exceed 1")
        if self.mode == "hybrid" and self.dense_weight == 0 and self.sparse_weight == 0:
            raise InvalidSearchConfig("hybrid search needs a positive weight")
        return self

    def with_(self, **changes: object) -> SearchConfig:
        """A validated copy with ``changes`` applied."""
        return SearchConfig(**{**self.model_dump(), **changes})


BALANCED = SearchConfig()
SEMANTIC = SearchConfig(mode="dense", session_boost=0.0, neighbor_weight=0.0)
KEYWORD = SearchConfig(mode="sparse", session_boost=0.0, neighbor_weight=0.0)
#: Each memory on its own: hybrid fusion without session prior or neighbour smoothing.
ISOLATED = SearchConfig(session_boost=0.0, neighbor_weight=0.0)
RECENT = SearchConfig(recency_weight=0.3, recency_half_life_s=7 * 24 * 3600.0)
IMPORTANT = SearchConfig(importance_weight=0.3)

PRESETS: dict[str, SearchConfig] = {
    "balanced": BALANCED,
    "semantic": SEMANTIC,
    "keyword": KEYWORD,
    "isolated": ISOLATED,
    "recent": RECENT,
    "important": IMPORTANT,
}


def preset(name: str) -> SearchConfig:
    """The preset called ``name``; raises InvalidSearchConfig for an unknown name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidSearchConfig(
            f"unknown search preset {name[:40]!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None

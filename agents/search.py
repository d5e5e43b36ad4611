"""Search over the local index: scope and filter conditions, dense/sparse lookups in one engine
call, fusion, then weighting (see :mod:`hivemem.agents.ranking`)."""

from __future__ import annotations

from datetime import datetime

from hivemem.agents.ranking import SearchHit, fuse, weigh
from hivemem.agents.scoping import scope_conditions
from hivemem.agents.search_config import SearchConfig
from hivemem.agents.sessions import NeighbourhoodCache
from hivemem.pool.filters import And, Cond, Expr, MemoryFilter, Or
from hivemem.pool.ports import Embedder, LocalIndex, NearestRequest, ScoredId, SparseEncoder
from hivemem.pool.records import Scope

#: With weighting on, this many fused candidates per requested result are re-ranked.
_RERANK_FACTOR = 3
#: Visibility expressions kept per searcher (see Searcher._visible).
_WHERE_CACHE = 256


def time_conditions(*, as_of: datetime | None, include_superseded: bool) -> list[Expr]:
    """Validity conditions. ``as_of`` selects what was recorded, not yet superseded and valid at
    that instant; otherwise only current (not superseded) records, unless asked for."""
    if as_of is None:
        if include_superseded:
            return []
        return [Cond(field="superseded_at", op="eq", value=None)]
    return [
        Cond(field="recorded_at", op="lte", value=as_of),
        Cond(field="valid_from", op="lte", value=as_of),
        Or(
            any=[
                Cond(field="valid_until", op="eq", value=None),
                Cond(field="valid_until", op="gt", value=as_of),
            ]
        ),
        Or(
            any=[
                Cond(field="superseded_at", op="eq", value=None),
                Cond(field="superseded_at", op="gt", value=as_of),
            ]
        ),
    ]


def visible(
    scope: Scope,
    flt: MemoryFilter,
    *,
    exact: bool,
    as_of: datetime | None,
    include_superseded: bool,
) -> And:
    """Everything a query in ``scope`` may see, narrowed by ``flt`` and validity."""
    return And(
        all=[
            *scope_conditions(scope, exact=exact),
            *flt.to_expr().all,
            *time_conditions(as_of=as_of, include_superseded=include_superseded),
        ]
    )


class Searcher:
    """Runs searches for one memory."""

    def __init__(
        self,
        index: LocalIndex,
        embedder: Embedder,
        sparse: SparseEncoder,
        neighbourhoods: NeighbourhoodCache,
    ) -> None:
        self._index = index
        self._embedder = embedder
        self._sparse = sparse
        self._neighbourhoods = neighbourhoods
        self._wheres: dict[tuple[object, ...], And] = {}

    def _visible(
        self, scope: Scope, flt: MemoryFilter, config: SearchConfig, as_of: datetime | None
    ) -> And:
        """:func:`visible`, kept for queries asked again (same scope, filter and validity).
        Building and validating the expression costs ~0.1 ms; returning the same immutable
        object also lets the index reuse its translation of it."""
        key = (
            scope,
            flt.model_dump_json(),
            config.exact_scope,
            config.include_superseded,
            as_of,
        )
        where = self._wheres.get(key)
        if where is None:
            where = visible(
                scope,
                flt,
                exact=config.exact_scope,
                as_of=as_of,
                include_superseded=config.include_superseded,
            )
            if len(self._wheres) >= _WHERE_CACHE:
                self._wheres.clear()
            self._wheres[key] = where
        return where

    def search(
        self,
        query: str,
        scope: Scope,
        config: SearchConfig,
        flt: MemoryFilter,
        *,
        as_of: datetime | None,
        now: datetime,
    ) -> list[SearchHit]:
        """Best first; at most ``config.top_k`` hits."""
        where = self._visible(scope, flt, config, as_of)
        weighting = config.recency_weight or config.importance_weight
        wanted = config.top_k * (_RERANK_FACTOR if weighting else 1)
        fetched = max(config.candidates, wanted)  # each lookup, so top_k hits can be found
        requests = []
        if config.mode in ("dense", "hybrid"):
            requests.append(
                NearestRequest(
                    "dense",
                    self._embedder.embed_query(query),
                    where,
                    fetched,
                    config.min_similarity,
                )
            )
        if config.mode in ("sparse", "hybrid"):
            terms = self._sparse.encode_query(query)
            if terms.indices:
                corpus = None
                if config.idf_scope == "user":
                    corpus = And(all=[Cond(field="scope.user_id", op="eq", value=scope.user_id)])
                requests.append(NearestRequest("sparse", terms, where, fetched, idf_corpus=corpus))
        results = self._index.nearest(requests) if requests else []
        dense: list[ScoredId] = []
        sparse: list[ScoredId] = []
        for request, result in zip(requests, results, strict=True):
            (dense if request.using == "dense" else sparse).extend(result)
        near = None
        if config.session_boost or config.neighbor_weight:
            near = self._neighbourhoods.lookup(list({h.id: None for h in dense + sparse}))
        shortlist = fuse(dense, sparse, config, near, limit=wanted)
        records = {r.id: r for r in self._index.get([c.id for c in shortlist])}
        return weigh(shortlist, records, config, now)[: config.top_k]

"""Qdrant Edge shards as hivemem lays them out: their configuration, their payload indexes, and
reading them page by page or counted by a field's values; shared by the agents' index
(:mod:`hivemem.pool.adapters.edge_index`) and the zone archive
(:mod:`hivemem.pool.adapters.edge_archive`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from qdrant_edge import (
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FacetRequest,
    Filter,
    HnswIndexConfig,
    Modifier,
    PayloadSchemaType,
    ScrollRequest,
    UpdateOperation,
)

from hivemem.pool.adapters.edge_codec import DENSE, FIELD_KEYS, INDEXED_FIELDS, SPARSE
from hivemem.pool.adapters.edge_filters import to_edge_filter
from hivemem.pool.errors import InvalidFilter
from hivemem.pool.filters import And

_SCHEMA = {
    "keyword": PayloadSchemaType.Keyword,
    "float": PayloadSchemaType.Float,
    "integer": PayloadSchemaType.Integer,
    "datetime": PayloadSchemaType.Datetime,
}
_SCROLL_PAGE = 512
#: A segment whose dense vectors pass this size (KB, ~650 records) is turned into an immutable
#: one when the index is compacted (see EdgeIndex.compact).
_COMPACT_KB = 1_000


def shard_config(dim: int) -> EdgeConfig:
    """The shard's configuration, given at creation and at every load.

    One search thread: handing a query to a pool of several threads measured slower (at 100k
    records, dense + sparse lookup p50 0.67-0.75 ms with one thread, 0.82-0.86 with the default
    pool, 0.97 with two).

    Compaction (``EdgeIndex.compact``, Edge's optimizers, which only run when called) turns
    the appendable segment, once past ``_COMPACT_KB``, into an immutable one, and rewrites an
    immutable segment as soon as it holds one removed point (a removed point's bytes stay in
    an immutable segment until it is rewritten). No HNSW graph is ever built (``m=0``):
    filtered lookups touch ~1,000 points per user, which a plain scan scores faster than a
    graph is built (minutes at 100k on 2 cores)."""
    return EdgeConfig(
        vectors={DENSE: EdgeVectorParams(size=dim, distance=Distance.Cosine)},
        sparse_vectors={SPARSE: EdgeSparseVectorParams(modifier=Modifier.Idf)},
        max_search_threads=1,
        hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000, payload_m=0),
        optimizers=EdgeOptimizersConfig(
            indexing_threshold=_COMPACT_KB, deleted_threshold=1e-9, vacuum_min_vector_number=1
        ),
    )


def create_payload_indexes(shard: EdgeShard) -> None:
    """An index on every payload key filters use (:data:`INDEXED_FIELDS`)."""
    for key, kind in INDEXED_FIELDS.items():
        shard.update(UpdateOperation.create_field_index(key, _SCHEMA[kind]))


def facet_counts(
    shard: Callable[[], EdgeShard], lock: threading.Lock, field: str, where: And
) -> dict[str, int]:
    """How many points of ``shard()`` matching ``where`` hold each value of the keyword field
    ``field``. Raises InvalidFilter for a field that is not one."""
    key = FIELD_KEYS.get(field, field)
    if INDEXED_FIELDS.get(key) != "keyword":
        raise InvalidFilter(f"cannot count by {field[:80]!r}", field="field")
    edge_filter: Filter = to_edge_filter(where)
    with lock:
        response = shard().facet(FacetRequest(key, limit=1_000_000, exact=True, filter=edge_filter))
    return {str(hit.value): int(hit.count) for hit in response.hits}


def scroll_points(
    shard: Callable[[], EdgeShard],
    lock: threading.Lock,
    edge_filter: Filter,
    *,
    with_payload: bool | list[str],
    with_vector: bool,
    page: int = _SCROLL_PAGE,
) -> Iterator[Any]:
    """Every point of ``shard()`` matching ``edge_filter``, page by page, ``lock`` taken per
    page (so that other calls interleave)."""
    offset: Any = None
    while True:
        with lock:
            points, offset = shard().scroll(
                ScrollRequest(
                    filter=edge_filter,
                    limit=page,
                    offset=offset,
                    with_payload=with_payload,
                    with_vector=with_vector,
                )
            )
        yield from points
        if offset is None:
            return

"""Sparse BM25 term vectors, computed by Qdrant Edge's built-in BM25 (Rust, offline).

Documents get BM25 term-frequency weights (``k1``, ``b`` and an assumed average length); queries
get weight 1 per distinct term. The index applies IDF, so a sparse dot product is the BM25 score.
Terms are lower-cased, stemmed (Snowball, English) and hashed to ids (murmur3, the same ids as
fastembed's ``Qdrant/bm25``); stop words are the ``stopwords`` package's English list, given
inline. Measured: 4 us per document, against 37 us for fastembed's Python implementation with
identical output.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence

import stopwords
from qdrant_edge import Bm25, Bm25Config, StopwordsSet
from qdrant_edge import SparseVector as EdgeSparse

from hivemem.pool.records import SparseVector


class Bm25Encoder:
    """BM25 sparse encoder; stateless apart from its parameters, safe across threads."""

    def __init__(self, *, k1: float = 0.9, b: float = 0.4, avg_len: float = 12.0) -> None:
        words = set(stopwords.get_stopwords("english"))
        config = Bm25Config(
            k=k1, b=b, avg_len=avg_len, language="english", stopwords=StopwordsSet(custom=words)
        )
        self._model = Bm25(config)

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """One sparse vector per text (term ids sorted ascending; empty for stop-word-only text)."""
        return [_to_sparse(self._model.embed_document(text)) for text in texts]

    def encode_query(self, text: str) -> SparseVector:
        """The query's distinct terms, weight 1 each."""
        return _to_sparse(self._model.embed_query(text))


def _to_sparse(vector: EdgeSparse) -> SparseVector:
    """Edge returns Python ints and floats, in practice with term ids already ascending: then
    the lists are taken as they are (this runs for every record written)."""
    indices, values = vector.indices, vector.values
    if not all(map(operator.lt, indices, itertools.islice(indices, 1, None))):
        pairs = sorted(zip(indices, values, strict=True))
        indices, values = [i for i, _ in pairs], [v for _, v in pairs]
    return SparseVector.model_construct(indices=indices, values=values)

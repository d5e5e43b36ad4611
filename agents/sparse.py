"""Sparse BM25 term vectors with fastembed, offline.

Documents get BM25 term-frequency weights (``k1``, ``b`` and an assumed average length); queries
get weight 1 per distinct term. The index applies IDF, so a sparse dot product is the BM25 score.
Terms are stemmed (Snowball, English) and hashed to ids; stop words come from the ``stopwords``
package, inline, so nothing is read from a model hub.
"""

from __future__ import annotations

from collections.abc import Sequence

import stopwords
from fastembed import SparseTextEmbedding

from hivemem.pool.records import SparseVector

BM25_MODEL = "Qdrant/bm25"


class Bm25Encoder:
    """BM25 sparse encoder; stateless apart from its parameters, safe across threads."""

    def __init__(self, *, k1: float = 0.9, b: float = 0.4, avg_len: float = 12.0) -> None:
        words = set(stopwords.get_stopwords("english"))
        self._model = SparseTextEmbedding(
            BM25_MODEL, k=k1, b=b, avg_len=avg_len, stopwords=words, specific_model_path="."
        )

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """One sparse vector per text (term ids sorted ascending; empty for stop-word-only text)."""
        return [_to_sparse(e.indices, e.values) for e in self._model.embed(list(texts))]

    def encode_query(self, text: str) -> SparseVector:
        """The query's distinct terms, weight 1 each."""
        embedding = next(iter(self._model.query_embed(text)))
        return _to_sparse(embedding.indices, embedding.values)


def _to_sparse(indices: object, values: object) -> SparseVector:
    pairs = sorted(zip(list(indices), list(values), strict=True))  # type: ignore[call-overload]
    return SparseVector.model_construct(
        indices=[int(i) for i, _ in pairs], values=[float(v) for _, v in pairs]
    )

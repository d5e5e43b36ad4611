"""Deterministic grouping of unit vectors, and the words and names that describe a group.

Used by the offline consolidation strategy (:mod:`hivemem.workers.offline`); no randomness and no
I/O, so the same inputs always give the same groups.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import stopwords

from hivemem.pool.ids import LABEL_PATTERN
from hivemem.pool.ports import Vector

_WORD = re.compile(r"[a-z][a-z'-]{2,}")
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-zA-Z0-9]+(?:\s+[A-Z][a-zA-Z0-9]+)*)")
_STOP = frozenset(stopwords.get_stopwords("english")) | {
    "i'm", "it's", "don't", "i've", "i'll", "that's", "also", "really", "just", "like", "get",
    "got", "one", "would", "could", "much", "many", "lot", "yeah", "thing", "things", "know",
    "think", "going", "want", "well", "see", "said", "say", "make", "made", "way", "time",
}  # fmt: skip


def leader_clusters(
    vectors: Vector, *, threshold: float, max_size: int, capacity_hint: int = 64
) -> list[list[int]]:
    """Group rows (unit vectors, in the order given) greedily: each row joins the most similar
    open group whose centre it reaches with cosine ``>= threshold``, else starts a group.
    A group holds ``max_size`` rows at most. Returns the groups as lists of row positions, in
    order of creation, each in row order."""
    count, dim = vectors.shape
    sums = np.zeros((max(capacity_hint, 1), dim), dtype=np.float32)
    centres = np.zeros_like(sums)
    sizes: list[int] = []
    groups: list[list[int]] = []
    open_mask = np.zeros(sums.shape[0], dtype=bool)
    for row in range(count):
        vector = vectors[row]
        best = -1
        if groups:
            similarity = centres[: len(groups)] @ vector
            similarity[~open_mask[: len(groups)]] = -np.inf
            candidate = int(np.argmax(similarity))
            if similarity[candidate] >= threshold:
                best = candidate
        if best < 0:
            best = len(groups)
            if best == sums.shape[0]:
                sums = np.concatenate([sums, np.zeros_like(sums)])
                centres = np.concatenate([centres, np.zeros_like(centres)])
                open_mask = np.concatenate([open_mask, np.zeros_like(open_mask)])
            groups.append([])
            sizes.append(0)
            open_mask[best] = True
        groups[best].append(row)
        sizes[best] += 1
        sums[best] += vector
        norm = float(np.linalg.norm(sums[best]))
        centres[best] = sums[best] / norm if norm > 0 else sums[best]
        if sizes[best] >= max_size:
            open_mask[best] = False
    return groups


def merge_smallest(vectors: Vector, groups: list[list[int]], limit: int) -> list[list[int]]:
    """Merge groups until at most ``limit`` remain: repeatedly the smallest group (latest first
    among equals) into the group whose centre is closest to its own."""
    groups = [list(g) for g in groups]
    while len(groups) > limit:
        centres = np.stack([_centre(vectors, g) for g in groups])
        smallest = min(range(len(groups)), key=lambda i: (len(groups[i]), -i))
        similarity = centres @ centres[smallest]
        similarity[smallest] = -np.inf
        target = int(np.argmax(similarity))
        groups[target] = sorted(groups[target] + groups[smallest])
        del groups[smallest]
    return groups


def _centre(vectors: Vector, positions: Sequence[int]) -> Vector:
    total = vectors[np.asarray(positions, dtype=np.intp)].sum(axis=0)
    norm = float(np.linalg.norm(total))
    unit: Vector = (total / norm if norm > 0 else total).astype(np.float32)
    return unit


def centre(vectors: Vector) -> Vector:
    """The unit-length mean direction of the rows."""
    return _centre(vectors, range(vectors.shape[0]))


def words(text: str) -> list[str]:
    """Lower-case content words of ``text`` (stop words and short words left out)."""
    return [w.strip("'-") for w in _WORD.findall(text.lower()) if w not in _STOP]


def keyphrases(
    group: Sequence[str], corpus_df: Counter[str], corpus_size: int, k: int
) -> list[str]:
    """The ``k`` words that best tell ``group`` (texts) apart from the corpus: term frequency in
    the group times inverse document frequency in the corpus; ties broken alphabetically."""
    tf: Counter[str] = Counter()
    for text in group:
        tf.update(set(words(text)))
    scored = [
        (count * math.log((1 + corpus_size) / (1 + corpus_df[word])), word)
        for word, count in tf.items()
        if LABEL_PATTERN.fullmatch(word)
    ]
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [word for _, word in scored[:k]]


def document_frequencies(texts: Sequence[str]) -> Counter[str]:
    df: Counter[str] = Counter()
    for text in texts:
        df.update(set(words(text)))
    return df


def names(texts: Sequence[str], given: Sequence[str], k: int) -> list[str]:
    """Up to ``k`` entity names: the records' own entity refs first, then capitalised phrases
    found mid-sentence in the texts, most frequent first (ties alphabetically)."""
    counts: Counter[str] = Counter(given)
    for text in texts:
        counts.update(m.group(1) for m in _NAME.finditer(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked if LABEL_PATTERN.fullmatch(name)][:k]

"""The zone vector transform: a secret rotation of dense vectors and a secret permutation of
sparse term ids that keep search working and can be undone with the key."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from hivemem.agents.embedding import FastEmbedder
from hivemem.agents.sparse import Bm25Encoder
from hivemem.pool.errors import InvalidInput
from hivemem.security import vector_transform
from hivemem.security.vector_transform import SPARSE_INDEX_LIMIT, VectorTransform

DIM = 384
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MAX_ID = SPARSE_INDEX_LIMIT - 1


@pytest.fixture(scope="module")
def vt() -> VectorTransform:
    return VectorTransform(KEY, DIM)


def _unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    rows = rng.standard_normal((n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _rotation(transform: VectorTransform) -> npt.NDArray[np.float32]:
    """Q itself: the image of the identity matrix."""
    return transform.forward_dense(np.eye(transform.dim, dtype=np.float32))


def _sparse_dot(a: tuple[list[int], list[float]], b: tuple[list[int], list[float]]) -> float:
    weights = dict(zip(*b, strict=True))
    return sum(value * weights.get(index, 0.0) for index, value in zip(*a, strict=True))


def _random_ids(rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
    return rng.choice(SPARSE_INDEX_LIMIT, size=n, replace=False).astype(np.int64)


# Dense


def test_rotation_is_orthogonal(vt: VectorTransform) -> None:
    """Q Qᵀ and Qᵀ Q are the identity within float32 rounding."""
    q = _rotation(vt).astype(np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(DIM), atol=2e-6)
    np.testing.assert_allclose(q.T @ q, np.eye(DIM), atol=2e-6)


def test_dot_products_and_norms_are_preserved(vt: VectorTransform) -> None:
    """The Gram matrix and the norms of a random batch (of any lengths) survive the rotation."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((300, DIM)) * rng.uniform(0.1, 10, (300, 1))).astype(np.float32)
    y = vt.forward_dense(x).astype(np.float64)
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), norms, rtol=1e-5)
    scale = np.outer(norms, norms)
    np.testing.assert_allclose((y @ y.T) / scale, (x64 @ x64.T) / scale, atol=1e-5)


def test_inverse_dense_round_trips_one_vector_and_a_batch(vt: VectorTransform) -> None:
    """inverse_dense(forward_dense(x)) is x, for a (dim,) vector and an (n, dim) batch."""
    rng = np.random.default_rng(2)
    batch = _unit_rows(rng, 100)
    np.testing.assert_allclose(vt.inverse_dense(vt.forward_dense(batch)), batch, atol=2e-6)
    one = batch[0]
    back = vt.inverse_dense(vt.forward_dense(one))
    assert back.shape == (DIM,)
    np.testing.assert_allclose(back, one, atol=2e-6)


def test_forward_dense_returns_new_float32_array_of_same_shape(vt: VectorTransform) -> None:
    """Float64 or list input gives float32 output of the input's shape; the input is untouched."""
    x = np.random.default_rng(3).standard_normal((4, DIM))
    kept = x.copy()
    y = vt.forward_dense(x)
    assert y.dtype == np.float32
    assert y.shape == (4, DIM)
    np.testing.assert_array_equal(x, kept)
    from_list = vt.forward_dense(x[0].tolist())
    assert from_list.shape == (DIM,)
    np.testing.assert_allclose(from_list, y[0], rtol=1e-5, atol=1e-5)  # float32 sums, any order
    assert vt.forward_dense(np.zeros((0, DIM))).shape == (0, DIM)


def test_same_key_gives_the_same_transform_without_the_cache() -> None:
    """Two instances of one key agree even when the second rebuilds Q and the tables."""
    first = VectorTransform(KEY, DIM)
    vector_transform._rotation.cache_clear()
    vector_transform._round_tables.cache_clear()
    second = VectorTransform(KEY, DIM)
    np.testing.assert_array_equal(_rotation(first), _rotation(second))
    ids = list(range(0, 10_000, 7))
    assert first.forward_sparse(ids, [1.0] * len(ids)) == second.forward_sparse(
        ids, [1.0] * len(ids)
    )


def test_different_keys_give_unrelated_transforms(vt: VectorTransform) -> None:
    """Another key gives another rotation (far from the first) and another permutation."""
    other = VectorTransform(OTHER_KEY, DIM)
    q, r = _rotation(vt), _rotation(other)
    assert np.abs(q - r).max() > 0.1
    # Q1ᵀ Q2 is itself a random rotation: no entry is near ±1.
    assert np.abs(q.T @ r).max() < 0.5
    ids = list(range(1000))
    mine, theirs = vt.forward_sparse(ids, [1.0] * 1000), other.forward_sparse(ids, [1.0] * 1000)
    assert len(set(mine[0]) & set(theirs[0])) < 5


def test_derivation_is_pinned_to_known_values() -> None:
    """The derivation is part of the stored format: these values must never change, or stored
    vectors could no longer be searched or inverted."""
    small = VectorTransform(KEY, 8)
    first_row = [-0.674838662, -0.297905296, 0.197706118, 0.622385502]
    np.testing.assert_allclose(_rotation(small)[0, :4], first_row, atol=1e-6)
    mapped = [small.forward_sparse([i], [1.0])[0][0] for i in (0, 1, MAX_ID)]
    assert mapped == [835_248_360, 1_990_691_610, 2_396_883_643]


def test_transformed_vectors_do_not_resemble_originals(vt: VectorTransform) -> None:
    """The mean |cos(x, Qx)| is near that of unrelated random directions (~0.04 at dim 384)."""
    x = _unit_rows(np.random.default_rng(4), 1000)
    cosines = np.sum(x * vt.forward_dense(x), axis=1)
    assert float(np.mean(np.abs(cosines))) < 0.06


def test_nearest_neighbour_rankings_are_unchanged(vt: VectorTransform) -> None:
    """On 2,000 unit vectors and 50 queries, every cosine is kept within 1e-5 and every
    query's top 10 is identical, in order, once both sides are transformed."""
    rng = np.random.default_rng(5)
    corpus, queries = _unit_rows(rng, 2000), _unit_rows(rng, 50)
    before = queries @ corpus.T
    after = vt.forward_dense(queries) @ vt.forward_dense(corpus).T
    np.testing.assert_allclose(after, before, atol=1e-5)
    top = 10
    np.testing.assert_array_equal(
        np.argsort(-after, axis=1)[:, :top], np.argsort(-before, axis=1)[:, :top]
    )


def test_top_hit_of_real_embeddings_is_unchanged(embedder: FastEmbedder) -> None:
    """With the real embedder, each query's best sentence and its score survive the transform."""
    transform = VectorTransform(KEY, embedder.dim)
    sentences = [
        "The deploy pipeline failed because the staging database ran out of disk.",
        "Alice prefers tea over coffee in the afternoon.",
        "Our refund policy allows returns within 30 days of purchase.",
        "The cat slept on the warm laptop keyboard all morning.",
        "Quarterly revenue grew by twelve percent, driven by enterprise sales.",
    ]
    queries = ["why did the release break?", "what does Alice drink?", "can I return an item?"]
    docs = embedder.embed_documents(sentences)
    stored = transform.forward_dense(docs)
    for expected, query in enumerate(queries):
        vector = embedder.embed_query(query)
        plain = docs @ vector
        secret = stored @ transform.forward_dense(vector)
        assert int(np.argmax(plain)) == int(np.argmax(secret)) == expected
        np.testing.assert_allclose(secret, plain, atol=1e-5)


# Sparse


def test_sparse_round_trip_on_random_ids(vt: VectorTransform) -> None:
    """inverse_sparse(forward_sparse(v)) gives back v's ids (sorted) and values exactly."""
    rng = np.random.default_rng(6)
    ids = _random_ids(rng, 1000)
    values = rng.uniform(0.1, 5.0, 1000)
    out_ids, out_values = vt.forward_sparse(ids, values)
    back_ids, back_values = vt.inverse_sparse(out_ids, out_values)
    order = np.argsort(ids)
    assert back_ids == ids[order].tolist()
    assert back_values == values[order].tolist()
    assert out_ids != back_ids


def test_sparse_permutation_has_no_collisions_on_100k_ids(vt: VectorTransform) -> None:
    """100,000 distinct random ids, and the 100,000 ids from 0, map to 200,000 distinct ids in
    [0, 2**32): a bijection on what was sampled."""
    rng = np.random.default_rng(7)
    sampled = _random_ids(rng, 100_000)
    low = np.arange(100_000, dtype=np.int64)
    out_sampled, _ = vt.forward_sparse(sampled, np.ones(100_000))
    out_low, _ = vt.forward_sparse(low, np.ones(100_000))
    images = set(out_sampled) | set(out_low)
    expected = len(set(sampled.tolist()) | set(low.tolist()))
    assert len(images) == expected
    assert min(images) >= 0
    assert max(images) <= MAX_ID


def test_sparse_dot_products_are_preserved(vt: VectorTransform) -> None:
    """Two sparse vectors sharing some ids have the same dot product after the permutation."""
    rng = np.random.default_rng(8)
    shared, only_a, only_b = np.split(_random_ids(rng, 90), 3)
    a_ids, b_ids = np.concatenate([shared, only_a]), np.concatenate([shared, only_b])
    a = (a_ids.tolist(), rng.uniform(0, 3, 60).tolist())
    b = (b_ids.tolist(), rng.uniform(0, 3, 60).tolist())
    before = _sparse_dot(a, b)
    assert before > 0
    after = _sparse_dot(vt.forward_sparse(*a), vt.forward_sparse(*b))
    assert after == pytest.approx(before, rel=1e-12)


def test_sparse_output_is_sorted_with_values_aligned(vt: VectorTransform) -> None:
    """The output ids strictly increase and each value sits beside its own id's image."""
    rng = np.random.default_rng(9)
    ids = _random_ids(rng, 50).tolist()
    values = [float(v) for v in rng.uniform(0, 1, 50)]
    out_ids, out_values = vt.forward_sparse(ids, values)
    assert all(a < b for a, b in itertools.pairwise(out_ids))
    one_by_one = {vt.forward_sparse([i], [v])[0][0]: v for i, v in zip(ids, values, strict=True)}
    assert dict(zip(out_ids, out_values, strict=True)) == one_by_one


def test_sparse_edge_ids_zero_and_max(vt: VectorTransform) -> None:
    """Ids 0 and 2**32 - 1 map into range and back; numpy uint32 input works like a list."""
    ids = np.array([0, MAX_ID], dtype=np.uint32)
    out_ids, out_values = vt.forward_sparse(ids, [1.5, 2.5])
    assert all(0 <= i <= MAX_ID for i in out_ids)
    assert vt.inverse_sparse(out_ids, out_values) == ([0, MAX_ID], [1.5, 2.5])
    assert vt.forward_sparse([], []) == ([], [])


def test_bm25_scores_of_real_text_are_unchanged(vt: VectorTransform) -> None:
    """Real BM25 vectors: every query-document sparse dot product is the same after transforming
    both sides, so the best document is too."""
    encoder = Bm25Encoder()
    docs = encoder.encode_documents(
        ["the staging database ran out of disk", "tea or coffee for Alice", "refunds in 30 days"]
    )
    query = encoder.encode_query("why is the database disk full")
    plain = [_sparse_dot((query.indices, query.values), (d.indices, d.values)) for d in docs]
    q_t = vt.forward_sparse(query.indices, query.values)
    secret = [_sparse_dot(q_t, vt.forward_sparse(d.indices, d.values)) for d in docs]
    assert secret == pytest.approx(plain)
    assert int(np.argmax(secret)) == 0


# Invalid input


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "k" * 32, bytearray(32)])
def test_key_must_be_32_bytes(key: Any) -> None:
    """A key that is not exactly 32 bytes is refused."""
    with pytest.raises(InvalidInput) as raised:
        VectorTransform(key, DIM)
    assert raised.value.field == "key"


@pytest.mark.parametrize("dim", [0, -1, 4097, True, 3.0, "384"])
def test_dim_must_be_an_int_in_range(dim: Any) -> None:
    """dim is an int in [1, 4096]."""
    with pytest.raises(InvalidInput) as raised:
        VectorTransform(KEY, dim)
    assert raised.value.field == "dim"


@pytest.mark.parametrize(
    "x",
    [
        np.zeros(DIM - 1),
        np.zeros((2, DIM + 1)),
        np.zeros((1, 1, DIM)),
        np.zeros(()),
        np.array(["a"] * DIM),
        np.full(DIM, np.nan),
        np.full(DIM, 1e39),  # finite in float64, infinite in float32
        np.zeros(DIM, dtype=bool),
    ],
    ids=["short", "long", "3d", "scalar", "text", "nan", "overflow", "bool"],
)
def test_bad_dense_input_is_refused(vt: VectorTransform, x: Any) -> None:
    """Wrong dimension or rank, non-numeric or non-finite vectors raise InvalidInput, both ways."""
    with pytest.raises(InvalidInput):
        vt.forward_dense(x)
    with pytest.raises(InvalidInput):
        vt.inverse_dense(x)


@pytest.mark.parametrize(
    ("indices", "values", "field"),
    [
        ([-1], [1.0], "indices"),
        ([SPARSE_INDEX_LIMIT], [1.0], "indices"),
        ([2**70], [1.0], "indices"),
        ([1.0], [1.0], "indices"),
        ([3, 3], [1.0, 2.0], "indices"),
        ([1, 2], [1.0], "indices"),
        ([[1, 2]], [[1.0, 2.0]], "indices"),
        ([1], [float("nan")], "values"),
        ([1], ["x"], "values"),
    ],
    ids=["negative", "limit", "huge", "float", "duplicate", "lengths", "2d", "nan", "text"],
)
def test_bad_sparse_input_is_refused(
    vt: VectorTransform, indices: Any, values: Any, field: str
) -> None:
    """Out-of-range, non-integer or repeated ids and non-finite values raise InvalidInput."""
    with pytest.raises(InvalidInput) as raised:
        vt.forward_sparse(indices, values)
    assert raised.value.field == field
    with pytest.raises(InvalidInput):
        vt.inverse_sparse(indices, values)


def test_repr_shows_no_key_material(vt: VectorTransform) -> None:
    """The repr names the dimension only."""
    assert repr(vt) == "VectorTransform(dim=384)"

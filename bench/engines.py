"""Which in-process engine for the agent-local index: Qdrant Edge vs qdrant-client local mode.

    python bench/engines.py [--n 10000] [--users 10] [--queries 200]

Same points (random unit 384-d vectors, BM25-like sparse vectors, a user id, an importance and
a category) in both engines; the same user-filtered queries: dense, and hybrid (dense + sparse
prefetch, RRF). Reports upsert rate and query p50/p99 per engine. The last line printed is the
JSON summary. qdrant-client local mode evaluates filters in Python per point, so expect it to
fall behind as N grows (it took 1.8 s per filtered query at 100k on this machine class).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

DIM = 384


def timed(run: Callable[[int], object], count: int) -> dict[str, float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        run(i)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((args.n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    terms = [sorted(random.Random(i).sample(range(30_000), 12)) for i in range(args.n)]
    ids = [str(uuid.UUID(int=i + 1)) for i in range(args.n)]
    payloads = [
        {"user_id": f"u{i % args.users}", "importance": float(i % 10) / 10} for i in range(args.n)
    ]
    queries = rng.standard_normal((args.queries, DIM)).astype(np.float32)
    summary: dict[str, object] = {"n": args.n, "users": args.users}

    with tempfile.TemporaryDirectory() as workdir:
        shard = qe.EdgeShard.create(
            str(Path(workdir) / "edge"),
            qe.EdgeConfig(
                vectors={"dense": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)},
                sparse_vectors={"sparse": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            ),
        )
        shard.update(qe.UpdateOperation.create_field_index("user_id", qe.PayloadSchemaType.Keyword))
        started = time.perf_counter()
        for start in range(0, args.n, 256):
            points = [
                qe.Point(
                    ids[i],
                    {"dense": vectors[i], "sparse": qe.SparseVector(terms[i], [1.0] * 12)},
                    payloads[i],
                )
                for i in range(start, min(start + 256, args.n))
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))
        edge_upsert = args.n / (time.perf_counter() - started)

        def edge_filter(i: int) -> qe.Filter:
            return qe.Filter(
                must=[qe.FieldCondition("user_id", match=qe.MatchValue(f"u{i % args.users}"))]
            )

        def edge_dense(i: int) -> object:
            return shard.query(
                qe.QueryRequest(
                    query=qe.Query.Nearest(queries[i].tolist(), using="dense"),
                    filter=edge_filter(i),
                    limit=10,
                )
            )

        def edge_hybrid(i: int) -> object:
            prefetch = [
                qe.Prefetch(
                    query=qe.Query.Nearest(queries[i].tolist(), using="dense"),
                    limit=50,
                    filter=edge_filter(i),
                ),
                qe.Prefetch(
                    query=qe.Query.Nearest(
                        qe.SparseVector(terms[i][:3], [1.0] * 3), using="sparse"
                    ),
                    limit=50,
                    filter=edge_filter(i),
                ),
            ]
            return shard.query(
                qe.QueryRequest(prefetches=prefetch, query=qe.Fusion.Rrf(k=60), limit=10)
            )

        summary["edge"] = {
            "upsert_per_s": round(edge_upsert),
            "dense": timed(edge_dense, args.queries),
            "hybrid": timed(edge_hybrid, args.queries),
        }
        shard.close()

        client = QdrantClient(path=str(Path(workdir) / "local"))
        client.create_collection(
            "bench",
            vectors_config={
                "dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)
            },
            sparse_vectors_config={
                "sparse": models.SparseVectorParams(modifier=models.Modifier.IDF)
            },
        )
        started = time.perf_counter()
        for start in range(0, args.n, 256):
            client.upsert(
                "bench",
                [
                    models.PointStruct(
                        id=ids[i],
                        vector={
                            "dense": vectors[i].tolist(),
                            "sparse": models.SparseVector(indices=terms[i], values=[1.0] * 12),
                        },
                        payload=payloads[i],
                    )
                    for i in range(start, min(start + 256, args.n))
                ],
            )
        local_upsert = args.n / (time.perf_counter() - started)

        def local_filter(i: int) -> models.Filter:
            return models.Filter(
                must=[
                    models.FieldCondition(
                        key="user_id", match=models.MatchValue(value=f"u{i % args.users}")
                    )
                ]
            )

        def local_dense(i: int) -> object:
            return client.query_points(
                "bench",
                query=queries[i].tolist(),
                using="dense",
                query_filter=local_filter(i),
                limit=10,
            )

        def local_hybrid(i: int) -> object:
            return client.query_points(
                "bench",
                prefetch=[
                    models.Prefetch(
                        query=queries[i].tolist(), using="dense", limit=50, filter=local_filter(i)
                    ),
                    models.Prefetch(
                        query=models.SparseVector(indices=terms[i][:3], values=[1.0] * 3),
                        using="sparse",
                        limit=50,
                        filter=local_filter(i),
                    ),
                ],
                query=models.FusionQuery(fusion=models.Fusion.RRF),
                limit=10,
            )

        count = max(args.queries // 10, 10)  # local mode is slow: fewer queries suffice
        summary["qdrant_client_local"] = {
            "upsert_per_s": round(local_upsert),
            "dense": timed(local_dense, count),
            "hybrid": timed(local_hybrid, count),
        }
        client.close()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Add and search latency of one agent's memory, against the raw embedding cost in the same run.

    python bench/latency.py [--n 100000] [--users 100] [--queries 1000]

Loads N synthetic memories spread over the users with ``add_many`` (bulk rate), then measures
single adds and filtered hybrid searches (default settings, user scope plus a category and an
importance filter). The raw costs are measured in the same process: query embedding p50 (in
blocks alternating with the search blocks) and the bulk document embedding rate on texts of the
same generator (half before the load, half after it). Targets at N = 100,000: search p50 <=
embed p50 + 3 ms, search p99 <= 25 ms, bulk add >= 0.85 x raw embedding rate. The last line
printed is the JSON summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hivemem.agents.embedding import FastEmbedder, shared_embedder
from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.enums import Category
from hivemem.pool.settings import HivememSettings

PEOPLE = ["Ana", "Bo", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lina"]
VERBS = [
    "likes",
    "visited",
    "booked",
    "cancelled",
    "asked about",
    "recommended",
    "bought",
    "reviewed",
]
THINGS = [
    "a vegetarian restaurant near the river",
    "the quarterly budget report",
    "green tea from Kyoto",
    "a flight to Lisbon in March",
    "the new onboarding checklist",
    "a used road bike",
    "tickets for the jazz festival",
    "a standing desk for the home office",
    "the dentist appointment",
    "a book about distributed systems",
    "hiking boots in size 42",
    "the team offsite in Porto",
    "a birthday gift for her sister",
    "the apartment lease renewal",
    "a Spanish course on Tuesdays",
]
TAILS = ["last week", "yesterday", "for the weekend", "after the meeting", "with a colleague", ""]
QUESTIONS = [
    "what does {p} like to drink",
    "where is {p} travelling",
    "what did {p} buy recently",
    "which appointments does {p} have",
    "what is {p} planning for the weekend",
    "what did {p} ask about the budget",
]


def memory_text(rng: random.Random) -> str:
    return (
        f"{rng.choice(PEOPLE)} {rng.choice(VERBS)} {rng.choice(THINGS)} {rng.choice(TAILS)}".strip()
    )


_BLOCK = 50


def timed_embedding(embedder: FastEmbedder, texts: list[str]) -> float:
    """Seconds the embedder takes for ``texts`` in one bulk call."""
    began = time.perf_counter()
    embedder.embed_documents(texts)
    return time.perf_counter() - began


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument(
        "--raw-sample", type=int, default=4_000, help="texts for the raw embedding rate"
    )
    args = parser.parse_args()
    rng = random.Random(7)
    categories = list(Category)

    with tempfile.TemporaryDirectory(prefix="hivemem-latency-") as workdir:
        settings = HivememSettings(data_dir=Path(workdir) / "data")
        embedder = shared_embedder(settings.embedding, settings.data_dir)

        # Raw bulk embedding on the same generator's texts, half before the load and half
        # after it: the machine's speed drifts over minutes, and this brackets the load.
        sample = [memory_text(rng) for _ in range(args.raw_sample)]
        embedder.embed_documents(sample[:64])  # warm-up
        raw_s = timed_embedding(embedder, sample[: len(sample) // 2])
        questions = [
            rng.choice(QUESTIONS).format(p=rng.choice(PEOPLE)) for _ in range(args.queries)
        ]

        with HierarchicalMemory(
            Path(workdir) / "memory", settings=settings, embedder=embedder
        ) as memory:
            items = [
                {
                    "content": memory_text(rng),
                    "scope": {"user_id": f"user-{i % args.users:03d}"},
                    "category": rng.choice(categories),
                    "importance": round(rng.random(), 2),
                    "tags": [rng.choice(["work", "home", "travel", "health"])],
                }
                for i in range(args.n)
            ]
            started = time.perf_counter()
            memory.add_many(items, progress=True)
            add_bulk_per_s = args.n / (time.perf_counter() - started)
            del items  # the inputs are the benchmark's, not the memory's: free them
            gc.collect()
            raw_s += timed_embedding(embedder, sample[len(sample) // 2 :])
            embed_bulk_per_s = len(sample) / raw_s

            add_ms = []
            for i in range(200):
                text = memory_text(rng)
                started = time.perf_counter()
                memory.add(text, user_id=f"user-{i % args.users:03d}")
                add_ms.append((time.perf_counter() - started) * 1000)

            flt = {"categories": ["fact", "event", "preference", "decision"], "importance_min": 0.2}
            for question in questions[:20]:  # warm-up
                memory.search(question, user_id="user-000", filter=flt)
            # Searches and raw query embeddings alternate in blocks of 50, so that both are
            # sampled under the same machine conditions (each block runs like its own loop).
            search_ms: list[float] = []
            embed_ms: list[float] = []
            hits_seen = 0
            for start in range(0, len(questions), _BLOCK):
                block = list(enumerate(questions))[start : start + _BLOCK]
                for _, question in block:
                    began = time.perf_counter()
                    embedder.embed_query(question)
                    embed_ms.append((time.perf_counter() - began) * 1000)
                for i, question in block:
                    began = time.perf_counter()
                    hits = memory.search(question, user_id=f"user-{i % args.users:03d}", filter=flt)
                    search_ms.append((time.perf_counter() - began) * 1000)
                    hits_seen += len(hits)
            stats = memory.stats()

    embed_p50 = statistics.median(embed_ms)
    summary = {
        "n": args.n,
        "users": args.users,
        "stored": stats.total,
        "embed_p50_ms": round(embed_p50, 2),
        "search_p50_ms": round(statistics.median(search_ms), 2),
        "search_p99_ms": round(percentile(search_ms, 0.99), 2),
        "add_p50_ms": round(statistics.median(add_ms), 2),
        "add_bulk_per_s": round(add_bulk_per_s, 1),
        "embed_bulk_per_s": round(embed_bulk_per_s, 1),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "mean_hits": round(hits_seen / len(questions), 2),
    }
    summary["targets"] = {
        "search_p50_within_embed_plus_3ms": summary["search_p50_ms"] <= embed_p50 + 3,
        "search_p99_le_25ms": summary["search_p99_ms"] <= 25,
        "bulk_add_ge_0.85_raw": add_bulk_per_s >= 0.85 * embed_bulk_per_s,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

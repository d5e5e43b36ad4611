"""Retrieval quality on a LoCoMo split, through hivemem's public API, against plain BM25.

    python bench/locomo.py [--turns TURNS.jsonl] [--queries QUERIES.jsonl]

Defaults read the development split from ../shared/bench-data/locomo-dev (the data is never
copied into the project). Per conversation, every turn becomes a memory of that conversation's
user (content: "speaker: text [image: caption]"; valid from the session's date; session id = the
LoCoMo session), in turn order. Each question is searched with the default settings at user
scope. The same memory texts are also ranked by a plain BM25 (k1 1.2, b 0.75, lower-cased word
tokens, no stemming or stop words) in the same run, as the baseline.

Metrics per question: recall@k = share of its evidence turns in the top k; MRR = 1 / rank of the
first evidence turn within the top 50 (0 when absent). Averaged overall and by category. The last
line printed is the JSON summary.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.settings import HivememSettings

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "bench-data" / "locomo-dev"
KS = (1, 5, 10)
DEPTH = 50


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def content_of(turn: dict[str, Any]) -> str:
    text = f"{turn['speaker']}: {turn['text']}"
    if turn.get("image_caption"):
        text += f" [image: {turn['image_caption']}]"
    return text


def safe_id(value: object) -> str:
    """A LoCoMo conversation or session name as a valid hivemem scope id."""
    return re.sub(r"[^A-Za-z0-9_.:@-]", "-", str(value)) or "x"


def as_utc(stamp: str) -> datetime:
    parsed = datetime.fromisoformat(stamp)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class PlainBm25:
    """Okapi BM25 over lower-cased word tokens of one conversation's memories."""

    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.docs = [collections.Counter(re.findall(r"\w+", t.lower())) for t in texts]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(len(self.lengths), 1)
        self.df = collections.Counter(term for d in self.docs for term in d)
        self.k1, self.b = k1, b

    def rank(self, query: str) -> list[int]:
        n = len(self.docs)
        scores = [0.0] * n
        for term in set(re.findall(r"\w+", query.lower())):
            df = self.df.get(term)
            if not df:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            for i, doc in enumerate(self.docs):
                tf = doc.get(term)
                if tf:
                    norm = self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg)
                    scores[i] += idf * tf * (self.k1 + 1) / (tf + norm)
        return sorted(range(n), key=lambda i: (-scores[i], i))[:DEPTH]


def score(ranked: list[str], evidence: set[str]) -> dict[str, float]:
    row = {f"recall@{k}": len(set(ranked[:k]) & evidence) / len(evidence) for k in KS}
    row["mrr"] = next((1 / (i + 1) for i, t in enumerate(ranked) if t in evidence), 0.0)
    return row


def summarise(rows: list[dict[str, Any]], prefix: str = "") -> dict[str, Any]:
    keys = [f"recall@{k}" for k in KS] + ["mrr"]

    def mean(subset: list[dict[str, Any]]) -> dict[str, float]:
        return {f"{prefix}{k}": round(sum(r[k] for r in subset) / len(subset), 4) for k in keys}

    by_category = collections.defaultdict(list)
    for row in rows:
        by_category[row["category_name"]].append(row)
    return {
        **mean(rows),
        f"{prefix}by_category": {c: mean(rs) for c, rs in sorted(by_category.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=Path, default=DEFAULT_DIR / "locomo_dev_turns.jsonl")
    parser.add_argument("--queries", type=Path, default=DEFAULT_DIR / "locomo_dev_queries.jsonl")
    args = parser.parse_args()
    turns, queries = load(args.turns), load(args.queries)
    by_conv: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for turn in turns:
        by_conv[turn["conv_id"]].append(turn)

    ours: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hivemem-locomo-") as workdir:
        settings = HivememSettings(data_dir=Path(workdir) / "data")
        with HierarchicalMemory(Path(workdir) / "memory", settings=settings) as memory:
            started = time.perf_counter()
            turn_of: dict[str, str] = {}
            bm25: dict[str, tuple[PlainBm25, list[str]]] = {}
            for conv_id, conv_turns in by_conv.items():
                records = memory.add_many(
                    [
                        {
                            "content": content_of(t),
                            "scope": {
                                "user_id": safe_id(conv_id),
                                "session_id": safe_id(t["session"]),
                            },
                            "valid_from": as_utc(t["timestamp"]),
                        }
                        for t in conv_turns
                    ]
                )
                turn_of.update(
                    {r.id: t["turn_id"] for r, t in zip(records, conv_turns, strict=True)}
                )
                bm25[conv_id] = (
                    PlainBm25([content_of(t) for t in conv_turns]),
                    [t["turn_id"] for t in conv_turns],
                )
            add_s = time.perf_counter() - started
            started = time.perf_counter()
            for query in queries:
                evidence = set(query["evidence"])
                if not evidence:
                    continue
                hits = memory.search(
                    query["question"],
                    user_id=safe_id(query["conv_id"]),
                    top_k=DEPTH,
                    track_access=False,
                )
                meta = {"category_name": query.get("category_name", str(query.get("category")))}
                ours.append({**meta, **score([turn_of[h.record.id] for h in hits], evidence)})
                index, turn_ids = bm25[query["conv_id"]]
                baseline.append(
                    {
                        **meta,
                        **score([turn_ids[i] for i in index.rank(query["question"])], evidence),
                    }
                )
            search_s = time.perf_counter() - started

    summary = {
        "split": str(args.turns.parent.name),
        "turns": len(turns),
        "queries": len(ours),
        **summarise(ours),
        **summarise(baseline, prefix="bm25_"),
        "add_s": round(add_s, 1),
        "search_s": round(search_s, 1),
        "target_recall@10": 0.70,
    }
    summary["meets_target"] = summary["recall@10"] >= 0.70
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ingest and offline consolidation end to end through a real worker process, and a lifecycle
pass, against baselines measured in the same run.

    python bench/consolidate.py --episodes 10000 --scopes 1 [--lifecycle 100000]

Security is off (plain envelopes; ``bench/security.py`` measures the sealed and signed path).
An embedded redis-server and one `hivemem worker` process (Celery prefork, one pool process: the
embedded zone store belongs to one process at a time) with the embedded Qdrant Edge zone store.

- **Ingest**: ``--episodes`` episodes of ``--scopes`` users (round robin), with real MiniLM
  vectors (embedded before anything is timed), are put on the PUBLIC ingest queue as agents put
  them (envelopes of 256 records, one Redis round trip per 64 envelopes). Then one
  ``hivemem.ingest`` task is sent; ``ingest_per_s`` = episodes / (time until the worker's cursor
  passed the last message). Baseline: ``store_upsert_per_s``, the same records upserted
  straight into a fresh zone store in this process (no Redis, no decoding).
- **Consolidation**: one ``hivemem.consolidate_due`` sweep queues a consolidation per scope;
  ``consolidate_s`` = time until no scope has a plan or pending episodes left. Counts of the
  current traces, categories and domain profiles, and ``episodes_lost``: episodes not in the
  store, or not consolidated into exactly one trace (must be 0).
- **Lifecycle** (``--lifecycle N``): N records with controlled timestamps written straight to the
  INTERNAL zone store (a third old, cold and unimportant: archived by the default policy; a third
  important and unaccessed for weeks: refreshed; the rest recent), then one ``hivemem.lifecycle``
  task over that zone: ``lifecycle_s``. Baseline: ``lifecycle_dry_run_s``, the same pass as a
  dry run (selection only) before it.

Targets (2 cores): consolidate_s <= 30 for 10,000 episodes in 1 scope and in 100 scopes;
ingest_per_s >= 2,000; lifecycle_s <= 60 at 100,000 records. The last line printed is the JSON
summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import structlog

# The word lists of the latency benchmark (this folder is on sys.path when a bench script runs).
from latency import memory_text

from hivemem.agents.embedding import shared_embedder
from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.filters import And, Cond
from hivemem.pool.records import MemoryRecord, Scope, utc_now
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import (
    ConsolidationSettings,
    HivememSettings,
    SecuritySettings,
    WorkerSettings,
)
from hivemem.workers.app import make_app
from hivemem.workers.keys import WorkerKeys
from hivemem.workers.runtime import WorkerRuntime, open_zone_store

TARGET_CONSOLIDATE_S = 30.0
TARGET_INGEST_PER_S = 2_000.0
TARGET_LIFECYCLE_S = 60.0
ENVELOPE_RECORDS = 256
ENVELOPES_PER_CALL = 64
REPO = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> float:
    """Seconds until ``condition()`` held (raises on timeout)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("the worker did not finish in time")
        time.sleep(poll_s)
    return time.perf_counter() - start


def episodes(count: int, scopes: int, settings: HivememSettings) -> list[MemoryRecord]:
    rng = random.Random(7)
    texts = [memory_text(rng) for _ in range(count)]
    embedder = shared_embedder(settings.embedding, settings.data_dir)
    vectors = embedder.embed_documents(texts)
    now = utc_now()
    return [
        MemoryRecord(
            content=text,
            vector=vectors[i].tolist(),
            scope=Scope(user_id=f"user{i % scopes}", session_id=f"s{i % (scopes * 3)}"),
            recorded_at=now - timedelta(seconds=count - i),
        )
        for i, text in enumerate(texts)
    ]


def store_baseline(records: list[MemoryRecord], settings: HivememSettings, root: Path) -> float:
    """Records per second upserted straight into a fresh embedded zone store."""
    baseline = settings.model_copy(update={"data_dir": root / "baseline"})
    store = open_zone_store(baseline)
    try:
        start = time.perf_counter()
        for i in range(0, len(records), ENVELOPE_RECORDS):
            store.upsert(Zone.PUBLIC, records[i : i + ENVELOPE_RECORDS])
        return len(records) / (time.perf_counter() - start)
    finally:
        store.close()


def enqueue(runtime: WorkerRuntime, records: list[MemoryRecord]) -> int:
    """Put the records on the PUBLIC ingest queue as agents do; returns the last seq."""
    messages = []
    for i in range(0, len(records), ENVELOPE_RECORDS):
        envelope = make_envelope(
            sender="bench", zone=Zone.PUBLIC, records=records[i : i + ENVELOPE_RECORDS]
        )
        messages.append((envelope.message_id, envelope.encode()))
    last = 0
    for i in range(0, len(messages), ENVELOPES_PER_CALL):
        seqs = runtime.bus.publish(
            ingest_topic(Zone.PUBLIC), "bench", messages[i : i + ENVELOPES_PER_CALL]
        )
        last = seqs[-1]
    return last


def count_level(runtime: WorkerRuntime, level: Level, zone: Zone = Zone.PUBLIC) -> int:
    where = And(
        all=[
            Cond(field="level", op="eq", value=level),
            Cond(field="superseded_at", op="eq", value=None),
        ]
    )
    with runtime.store.session():
        return runtime.store.count(zone, where)


def lost(runtime: WorkerRuntime, ids: list[str]) -> int:
    with runtime.store.session():
        stored = runtime.store.get(Zone.PUBLIC, ids)
        traces = runtime.store.scan(
            Zone.PUBLIC, And(all=[Cond(field="level", op="eq", value=Level.TRACE)])
        )
        in_traces: dict[str, int] = {}
        for trace in traces:
            for source in trace.sources:
                in_traces[source] = in_traces.get(source, 0) + 1
    good = {r.id for r in stored if len(r.consolidated_into) == 1 and in_traces.get(r.id) == 1}
    return len(ids) - len(good)


def lifecycle_records(count: int) -> list[MemoryRecord]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    now = utc_now()
    records = []
    for i in range(count):
        kind = i % 3
        old = now - timedelta(days=60 if kind == 0 else 20 if kind == 1 else 1)
        records.append(
            MemoryRecord(
                content=f"lifecycle record {i} about the quarterly plan",
                vector=vectors[i].tolist(),
                scope=Scope(user_id=f"user{i % 100}"),
                importance=0.1 if kind == 0 else 0.9 if kind == 1 else 0.5,
                recorded_at=old,
                last_accessed_at=old,
                level=Level.TRACE if i % 5 == 0 else Level.EPISODE,
            )
        )
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--scopes", type=int, default=1)
    parser.add_argument("--lifecycle", type=int, default=0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    root = Path(tempfile.mkdtemp(prefix="hivemem-bench-"))
    summary: dict[str, Any] = {
        "bench": "consolidate",
        "episodes": args.episodes,
        "scopes": args.scopes,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    with EmbeddedRedis(root / "redis") as server:
        settings = HivememSettings(
            data_dir=root / "fleet",
            redis_url=server.url,
            # Plain envelopes, as written above: the workers' own cost. With security on (the
            # default) they would refuse them as unsigned; bench/security.py measures that path.
            security=SecuritySettings(enabled=False),
            workers=WorkerSettings(
                consolidation=ConsolidationSettings(threshold=10**9), store_idle_close_s=0.5
            ),
        )
        records = episodes(args.episodes, args.scopes, settings)
        summary["store_upsert_per_s"] = round(store_baseline(records, settings, root))
        env = {**os.environ, **settings.environment(), "HF_HUB_OFFLINE": "1"}
        log = (root / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "hivemem.cli", "worker", "--concurrency=1"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        runtime = WorkerRuntime(settings)
        app = make_app(settings)
        try:
            keys = WorkerKeys(settings.pool.namespace)
            # The worker is up once it answers (nothing is due yet: a no-op).
            app.send_task("hivemem.consolidate_due").get(timeout=120)
            last = enqueue(runtime, records)
            cursor = keys.ingest_cursor(ingest_topic(Zone.PUBLIC))

            def ingested() -> bool:
                raw = runtime.client.get(cursor)
                return raw is not None and int(raw.split()[1]) >= last

            app.send_task("hivemem.ingest", args=["public"])
            elapsed = wait_until(ingested, 600)
            summary["ingest_s"] = round(elapsed, 2)
            summary["ingest_per_s"] = round(args.episodes / elapsed)

            def done() -> bool:
                return not runtime.client.exists(keys.users(Zone.PUBLIC))

            start = time.perf_counter()
            app.send_task("hivemem.consolidate_due")
            wait_until(done, 1200, poll_s=0.05)
            summary["consolidate_s"] = round(time.perf_counter() - start, 2)
            time.sleep(settings.workers.store_idle_close_s * 2)  # let the worker hand it over
            summary["traces"] = count_level(runtime, Level.TRACE)
            summary["categories"] = count_level(runtime, Level.CATEGORY)
            summary["domains"] = count_level(runtime, Level.DOMAIN)
            summary["episodes_lost"] = lost(runtime, [r.id for r in records])
            if args.lifecycle:
                items = lifecycle_records(args.lifecycle)
                with runtime.store.session():
                    for i in range(0, len(items), 2000):
                        runtime.store.upsert(Zone.INTERNAL, items[i : i + 2000])
                runtime.store.close()
                del runtime.store
                kwargs = {"zones": ["internal"]}
                start = time.perf_counter()
                dry = app.send_task("hivemem.lifecycle", kwargs={**kwargs, "dry_run": True})
                dry_report = dry.get(timeout=600)
                summary["lifecycle_dry_run_s"] = round(time.perf_counter() - start, 2)
                start = time.perf_counter()
                real = app.send_task("hivemem.lifecycle", kwargs=kwargs).get(timeout=600)
                summary["lifecycle_s"] = round(time.perf_counter() - start, 2)
                summary["lifecycle_records"] = args.lifecycle
                summary["lifecycle_actions"] = {
                    o["policy"]: len(o["ids"]) for o in real["outcomes"]
                }
                summary["lifecycle_dry_equals_real"] = [
                    (o["policy"], len(o["ids"])) for o in dry_report["outcomes"]
                ] == [(o["policy"], len(o["ids"])) for o in real["outcomes"]]
        finally:
            worker.terminate()
            worker.wait(30)
            log.close()
            app.close()
            runtime.close()
    targets = {
        "consolidate_s": TARGET_CONSOLIDATE_S,
        "ingest_per_s": TARGET_INGEST_PER_S,
    }
    met = {
        "consolidate_s": summary["consolidate_s"] <= TARGET_CONSOLIDATE_S,
        "ingest_per_s": summary["ingest_per_s"] >= TARGET_INGEST_PER_S,
        "episodes_lost": summary["episodes_lost"] == 0,
    }
    if args.lifecycle:
        targets["lifecycle_s"] = TARGET_LIFECYCLE_S
        met["lifecycle_s"] = summary["lifecycle_s"] <= TARGET_LIFECYCLE_S
    summary["targets"] = targets
    summary["met"] = met
    print(json.dumps(summary))
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

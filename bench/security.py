"""Cost of the security layer: sync latency and bulk add rate with it on and off, in one run.

    python bench/security.py [--sync 400] [--bulk 5000] [--runs 3] [--profile auto]

One embedded redis-server holds two pools side by side: ``plain`` (namespace ``bench-plain``,
``security.enabled`` off: version-1 envelopes, clear content) and ``secure`` (namespace
``bench-secure``, the defaults: every message sealed with AES-256-GCM under the zone's data key
and the user's subject secret, signed with Ed25519 and checked on receipt, local stores sealed,
each agent connected as its own Redis ACL user). Both processes share the master and admin key
files, as an operator's processes of one pool do. The sensitivity classifier runs in both modes
(it does not depend on ``security.enabled``).

- **Sync** (``sync_*_ms_{plain,secure}``): in each pool, agent "a" (this process, clearance
  INTERNAL, shares CATEGORY, ``sync_interval`` 0) adds one CATEGORY record in zone INTERNAL; t0
  is taken when ``add()`` returns. Agent "b" (clearance INTERNAL) in a spawned peer process
  takes t1 in its ``on_receive`` listener, i.e. once the record is verified, opened and stored
  (sealed again) in its memory. One-way latency = t1 - t0 on CLOCK_MONOTONIC (system-wide on
  Linux). One record at a time; blocks of ``--block`` alternate between the modes (the order
  flips every block) so that both see the same machine conditions. ``add_*_ms`` is how long
  ``add()`` itself took (the sender's sealing and signing happen inside it). Its two legs, per
  mode: ``sync_reach_p50_us``, from t0 until the pub/sub message reached the peer's receiver
  thread (sending, Redis, delivery), and ``sync_receive_p50_us``, from there to t1 (the
  receiver's checks, opening and storing); the peer stamps the arrival by wrapping
  ``Receiver._on_live`` (measurement only: the message is handled exactly as before).
- **Bulk add** (``add_bulk_per_s_{plain,secure}``): a fresh agent in a fresh pool (namespace and
  data directory of its own; shares CATEGORY) adds ``--bulk`` INTERNAL CATEGORY records over
  ``--users`` users with one ``add_many``; rate = records / (time until ``flush()`` returned,
  i.e. Redis acknowledged every message). Before the clock starts it adds one record per user
  and flushes (so zone keys and subject secrets exist, as for a pool in use). ``--runs`` runs
  per mode in the order plain, secure, secure, plain, ...; the median is reported. The peer has
  exited by then: nothing receives, so the rate is the sender's alone.

Dense vectors are computed once before the timed parts (``add()`` then costs no embedding; the
receiver never embeds). With ``--profile auto`` and the secure bulk rate more than
``target_pct`` below the plain one (or ``--profile always``), one more secure bulk run is
profiled (cProfile, the calling thread only: validation, indexing, sealing into the local store
and the outbox; not the sender thread's publishing) and its top entries go to stderr and the
summary. Target: security costs at most 15 % (latency up, rate down). The last line printed is
the JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import multiprocessing as mp
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

# This folder is on sys.path when a bench script runs: the helpers shared by the bench scripts,
# the percentile of the latency benchmark, and the peer process (agent "b", security_peer.py).
from common import CachedEmbedder, Events, machine_facts, quiet_logs, text_of
from latency import percentile
from security_peer import MODES, mode_settings, peer_main

from hivemem.agents.agent import Agent
from hivemem.agents.embedding import shared_embedder
from hivemem.pool.enums import Level, Zone
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import EmbeddingSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.key_provider import LocalKeyProvider
from hivemem.security.signing import AdminSigner

PROBE_USER = "u"
TARGET_PCT = 15.0
PROFILE_TOP = 15


def note(message: str) -> None:
    print(f"[security] {message}", file=sys.stderr, flush=True)


def probe_text(n: int) -> str:
    return f"sync probe {n}: {text_of(n)}"


def bulk_items(count: int, start: int, *, distinct: int, users: int) -> list[dict[str, Any]]:
    return [
        {
            "content": text_of((start + i) % distinct),
            "scope": {"user_id": f"user-{(start + i) % users:04d}"},
            "level": Level.CATEGORY,
            "zone": Zone.INTERNAL,
        }
        for i in range(count)
    ]


def measure_sync(
    senders: dict[str, Agent], events: Events, args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    """Per mode: ``sync`` (t1 - t0) and ``add`` (add() duration) samples in ms, and the count
    of probes the peer did not report within 5 s (``missing``)."""

    def probe(mode: str, n: int) -> tuple[float, float] | None:
        called = time.monotonic_ns()
        record = senders[mode].memory.add(
            probe_text(n),
            user_id=PROBE_USER,
            agent_id="a",
            level=Level.CATEGORY,
            zone=Zone.INTERNAL,
            metadata={"probe": n},
        )
        acked = time.monotonic_ns()
        if record.zone != Zone.INTERNAL:
            raise RuntimeError(f"probe {n} was lifted to {record.zone}")
        event = events.wait(lambda e: e[0] == "sync" and e[1] == mode and e[2] == n)
        if event is None:
            return None
        # The two legs of the sync time: to the peer's receiver thread, then within it.
        legs[mode]["reach"].append((event[4] - acked) / 1e3)
        legs[mode]["receive"].append((event[3] - event[4]) / 1e3)
        return (event[3] - acked) / 1e6, (acked - called) / 1e6

    legs: dict[str, dict[str, list[float]]] = {m: {"reach": [], "receive": []} for m in MODES}
    note(f"sync warm-up: {args.warmup} probes per mode")
    for mode in MODES:
        for n in range(args.warmup):
            probe(mode, n)
    note(f"sync: {args.sync} probes per mode, alternating blocks of {args.block}")
    samples: dict[str, dict[str, list[float]]] = {
        mode: {"sync": [], "add": [], "missing": [0.0]} for mode in MODES
    }
    end = args.warmup + args.sync
    for block, start in enumerate(range(args.warmup, end, args.block)):
        for mode in MODES if block % 2 == 0 else MODES[::-1]:
            for n in range(start, min(start + args.block, end)):
                measured = probe(mode, n)
                if measured is None:
                    samples[mode]["missing"][0] += 1
                else:
                    samples[mode]["sync"].append(measured[0])
                    samples[mode]["add"].append(measured[1])
    medians = (f"{m} {statistics.median(samples[m]['sync']):.2f} ms" for m in MODES)
    note("  sync p50: " + ", ".join(medians))
    for mode in MODES:  # the measured probes' legs, after the warm-up
        samples[mode]["reach_us"] = legs[mode]["reach"][args.warmup :]
        samples[mode]["receive_us"] = legs[mode]["receive"][args.warmup :]
    return samples


def bulk_run(
    root: Path,
    url: str,
    embedder: CachedEmbedder,
    args: argparse.Namespace,
    *,
    mode: str,
    run: int,
    profiler: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """One bulk add by a fresh agent in a fresh pool (namespace and data directory of its
    own): ``per_s`` until flush() returned, ``add_only_per_s`` until add_many() returned
    (records/s), whether everything was flushed, and how many records the classifier lifted."""
    name = f"bulk-{mode}-{run}"
    settings = mode_settings(mode, root, url, name, f"bench-{name}")
    warm = bulk_items(args.users, 0, distinct=args.distinct, users=args.users)
    items = bulk_items(args.bulk, args.users, distinct=args.distinct, users=args.users)
    with SharedMemoryPool.connect(settings, embedder=embedder) as pool:
        agent = pool.register_agent(
            "w", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY], sync_interval=0.0
        )
        agent.wait_connected(30.0)
        agent.memory.add_many(warm, progress=False)  # zone keys and subject secrets exist
        agent.flush(60.0)
        gc.collect()
        began = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        stored = agent.memory.add_many(items, progress=False)
        added = time.perf_counter()
        flushed = agent.flush(300.0)
        done = time.perf_counter()
        if profiler is not None:
            profiler.disable()
    return {
        "per_s": args.bulk / (done - began),
        "add_only_per_s": args.bulk / (added - began),
        "flushed": flushed,
        "lifted": sum(1 for record in stored if record.zone != Zone.INTERNAL),
    }


def profile_top(profiler: cProfile.Profile) -> list[list[Any]]:
    """The top entries by cumulative time: [function, calls, tottime s, cumtime s]; the
    listings by cumulative and by own time go to stderr."""
    stats = pstats.Stats(profiler, stream=sys.stderr)
    stats.sort_stats("cumulative").print_stats(PROFILE_TOP)
    stats.sort_stats("tottime").print_stats(PROFILE_TOP)
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = sorted(table.items(), key=lambda item: item[1][3], reverse=True)
    top = []
    for (path, line, function), (_, calls, tottime, cumtime, _) in rows[:PROFILE_TOP]:
        where = f"{Path(path).name}:{line}({function})" if line else function
        top.append([where, calls, round(tottime, 3), round(cumtime, 3)])
    return top


def summarize(
    args: argparse.Namespace,
    samples: dict[str, dict[str, list[float]]],
    bulk: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """The JSON summary's measures (overheads in %: latency up, rate down)."""

    def p(values: list[float], q: float) -> float:
        return round(percentile(values, q), 3)

    sync_p50 = {mode: percentile(samples[mode]["sync"], 0.5) for mode in MODES}
    sync_overhead = (sync_p50["secure"] - sync_p50["plain"]) / sync_p50["plain"] * 100
    rates = {mode: statistics.median(r["per_s"] for r in bulk[mode]) for mode in MODES}
    add_overhead = (rates["plain"] - rates["secure"]) / rates["plain"] * 100
    return {
        "sync_p50_ms_plain": p(samples["plain"]["sync"], 0.5),
        "sync_p50_ms_secure": p(samples["secure"]["sync"], 0.5),
        "sync_reach_p50_us": {m: round(percentile(samples[m]["reach_us"], 0.5), 1) for m in MODES},
        "sync_receive_p50_us": {
            m: round(percentile(samples[m]["receive_us"], 0.5), 1) for m in MODES
        },
        "sync_p99_ms_plain": p(samples["plain"]["sync"], 0.99),
        "sync_p99_ms_secure": p(samples["secure"]["sync"], 0.99),
        "add_p50_ms_plain": p(samples["plain"]["add"], 0.5),
        "add_p50_ms_secure": p(samples["secure"]["add"], 0.5),
        "add_bulk_per_s_plain": round(rates["plain"], 1),
        "add_bulk_per_s_secure": round(rates["secure"], 1),
        "add_bulk_runs_per_s": {m: [round(r["per_s"], 1) for r in bulk[m]] for m in MODES},
        "add_only_per_s": {
            m: round(statistics.median(r["add_only_per_s"] for r in bulk[m]), 1) for m in MODES
        },
        "sync_overhead_pct": round(sync_overhead, 1),
        "add_bulk_overhead_pct": round(add_overhead, 1),
        "target_pct": TARGET_PCT,
        "within_target": sync_overhead <= TARGET_PCT and add_overhead <= TARGET_PCT,
        "sync_probes": {m: len(samples[m]["sync"]) for m in MODES},
        "sync_missing": {m: int(samples[m]["missing"][0]) for m in MODES},
        "bulk_all_flushed": all(r["flushed"] for m in MODES for r in bulk[m]),
        "bulk_lifted": sum(r["lifted"] for m in MODES for r in bulk[m]),
        "params": {
            "sync": args.sync,
            "warmup": args.warmup,
            "block": args.block,
            "bulk": args.bulk,
            "runs": args.runs,
            "users": args.users,
            "distinct": args.distinct,
            "zone": Zone.INTERNAL.value,
            "level": Level.CATEGORY.value,
        },
        "timing": "sync: t0 when add() returns (vectors precomputed), t1 in the peer's"
        " on_receive, CLOCK_MONOTONIC; bulk: add_many until flush() returns, median of runs",
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sync", type=int, default=400, help="sync probes per mode")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured probes per mode")
    parser.add_argument("--block", type=int, default=50, help="probes per alternating block")
    parser.add_argument("--bulk", type=int, default=5_000, help="records per bulk add")
    parser.add_argument("--runs", type=int, default=3, help="bulk runs per mode")
    parser.add_argument("--users", type=int, default=100, help="users the bulk records spread over")
    parser.add_argument("--distinct", type=int, default=2_000, help="distinct bulk texts")
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto")
    args = parser.parse_args()
    if min(args.sync, args.block, args.bulk, args.runs, args.users, args.distinct) < 1:
        parser.error("counts must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    quiet_logs()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    began = time.monotonic()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="hivemem-security-") as workdir:
        root = Path(workdir)
        LocalKeyProvider.create_file(root / "keys" / "master.key")
        AdminSigner.from_file(root / "keys" / "admin.key")  # made before the peer: no race
        server = EmbeddedRedis(root / "redis").start()
        context = mp.get_context("spawn")
        command_out, command_in = context.Pipe(duplex=False)  # (reader, writer)
        event_out, event_in = context.Pipe(duplex=False)
        peer = context.Process(
            target=peer_main, args=(str(root), server.url, command_out, event_in), name="peer-b"
        )
        pools: list[SharedMemoryPool] = []
        try:
            peer.start()
            command_out.close()
            event_in.close()
            events = Events(event_out)
            embedder = CachedEmbedder(shared_embedder(EmbeddingSettings(), root))
            note("embedding the texts once (outside the timed parts)")
            embedder.preload([probe_text(n) for n in range(args.warmup + args.sync)])
            embedder.preload([text_of(i) for i in range(args.distinct)])
            senders = {}
            for mode in MODES:
                settings = mode_settings(mode, root, server.url, f"sender-{mode}", f"bench-{mode}")
                pools.append(SharedMemoryPool.connect(settings, embedder=embedder))
                senders[mode] = pools[-1].register_agent(
                    "a", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY], sync_interval=0.0
                )
                senders[mode].wait_connected(30.0)
            if not events.kind("started", 120.0)[1]:
                raise RuntimeError("the peer did not connect")
            samples = measure_sync(senders, events, args)

            # Nothing receives while the bulk adds run: they measure the sender alone.
            command_in.send(("exit",))
            peer.join(30.0)
            while pools:
                pools.pop().close()
            note(f"bulk add: {args.bulk} records, {args.runs} fresh agents per mode")
            bulk: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
            for run in range(args.runs):
                for mode in MODES if run % 2 == 0 else MODES[::-1]:
                    result = bulk_run(root, server.url, embedder, args, mode=mode, run=run)
                    bulk[mode].append(result)
                    note(f"  {mode} run {run}: {bulk[mode][-1]['per_s']:.0f} records/s")
            summary = summarize(args, samples, bulk)
            if args.profile == "always" or (
                args.profile == "auto" and summary["add_bulk_overhead_pct"] > TARGET_PCT
            ):
                note("profiling one more secure bulk add (cProfile, the calling thread)")
                profiler = cProfile.Profile()
                extra = {"mode": "secure", "run": args.runs, "profiler": profiler}
                bulk_run(root, server.url, embedder, args, **extra)
                summary["profile_secure_bulk_top_cumulative"] = profile_top(profiler)
            with redis.Redis.from_url(server.url) as client:
                summary.update(machine_facts(client))
        finally:
            with contextlib.suppress(OSError):
                command_in.send(("exit",))
            peer.join(30.0)
            if peer.is_alive():
                peer.terminate()
                peer.join(10.0)
            while pools:
                pools.pop().close()
            server.cleanup()

    # Other work on the machine skews latency tails: the 1-minute load before and after.
    summary["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    summary["elapsed_s"] = round(time.monotonic() - began, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

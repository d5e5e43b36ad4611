"""What the workers publish, on a real Redis, real Qdrant Edge zone shards and a real agent: a
consolidation whose outputs together exceed ``pool.message_max_bytes`` goes out as several
messages, each within it (and each Redis round trip too), and an agent receives every output."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from hivemem.pool.adapters.redis_bus import zone_topic
from hivemem.pool.enums import Level, Zone
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.workers.contract import MAX_CONTENT_CHARS
from hivemem.workers.offline import OfflineStrategy
from hivemem.workers.runtime import WorkerRuntime
from hivemem.workers.strategy import Draft, Sources
from tests.waiting import holds, wait_for

ZONE = Zone.PUBLIC
#: The smallest message size the settings allow (bytes).
MAX_BYTES = 4 * 1024 * 1024
EPISODES = 256
#: Characters of each episode, as many as a derived record keeps: random CJK ones, 3 bytes each
#: in UTF-8, which sealing's compression cannot shrink much. Its trace (the same text) and the
#: trace's vector come to some 25 KB sealed, 6 MB for the run's first 256 outputs.
EPISODE_CHARS = MAX_CONTENT_CHARS
#: The CJK unified ideographs episodes are drawn from.
IDEOGRAPHS = [chr(c) for c in range(0x4E00, 0x9FA5)]


def ignore(user_id: str) -> None:
    """An ``on_due`` for drains whose consolidations do not matter here (run by hand)."""


class VerbatimStrategy(OfflineStrategy):
    """The offline strategy, but one trace per episode, stating it in full."""

    name = "verbatim"

    def traces(self, episodes: Sources) -> list[Draft]:
        return [Draft(content=r.content, sources=(r.id,)) for r in episodes.records]


@pytest.fixture
def runtime(worker_settings: Callable[..., HivememSettings]) -> Iterator[WorkerRuntime]:
    """A runtime consolidating with VerbatimStrategy, messages of at most MAX_BYTES."""
    strategy = f"{__name__}:VerbatimStrategy"
    settings = worker_settings(consolidation={"strategy": strategy, "threshold": 10**6})
    pool = settings.pool.model_copy(update={"message_max_bytes": MAX_BYTES})
    made = WorkerRuntime(settings.model_copy(update={"pool": pool}))
    yield made
    made.close()


def test_large_consolidation_outputs_go_out_in_messages_within_the_limit(
    make_pool: Callable[..., SharedMemoryPool], runtime: WorkerRuntime
) -> None:
    """Traces of about 6 MB in all reach the zone's topic as messages of at most
    ``message_max_bytes`` each, published in round trips of at most that much (but one message),
    and a reader agent holds every trace (before, they went out as one message per 256
    records: about 6 MB, past the limit the settings set for one message)."""
    writer = make_pool("writer").register_agent(
        "writer", clearance=Zone.SECRET, share_levels=[Level.EPISODE]
    )
    reader = make_pool("reader").register_agent("reader", clearance=Zone.SECRET)
    for i in range(EPISODES):
        text = "".join(random.Random(i).choices(IDEOGRAPHS, k=EPISODE_CHARS))
        writer.memory.add(text, user_id="alice", zone=ZONE)
    assert writer.flush(timeout_s=60.0)
    runtime.ingest.drain(ZONE, on_due=ignore)

    report = runtime.consolidation.consolidate(ZONE, "alice")

    assert len(report.traces) == EPISODES
    topic = zone_topic(ZONE)
    deliveries = runtime.bus.read(topic, 0, limit=10_000).deliveries
    ours = [d for d in deliveries if d.sender == "hivemem-workers"]
    sizes = [len(d.data) for d in ours]
    assert len(ours) > 1, sizes
    assert max(sizes) <= MAX_BYTES
    assert sum(sizes) > MAX_BYTES
    assert wait_for(lambda: all(holds(reader, t) for t in report.traces), timeout_s=60.0)

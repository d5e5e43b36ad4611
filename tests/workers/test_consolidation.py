"""Consolidation in process (no Celery): agents' episodes ingested from the pool become traces,
categories and a domain profile that make sense, with provenance both ways, derived ids, the
highest zone of their sources, and delivery to the agents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import structlog

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.filters import And, Cond
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.pool.shared import SharedMemoryPool
from hivemem.workers.consolidation import ConsolidationService
from hivemem.workers.drafting import derived_id
from hivemem.workers.offline import OfflineStrategy
from hivemem.workers.runtime import WorkerRuntime
from hivemem.workers.strategy import Draft, Sources
from tests.waiting import holds, wait_for
from tests.workers.interleave import Interleave

TOPICS = {
    "cooking": [
        "I baked sourdough bread with a new starter this weekend",
        "The sourdough starter needs feeding with flour and water every day",
        "My pasta recipe uses fresh eggs and semolina flour",
        "I roasted vegetables with olive oil and garlic for dinner",
        "Baking bread at home: the oven must be very hot for a good crust",
        "I made tomato sauce for the pasta from fresh tomatoes and basil",
    ],
    "travel": [
        "I booked a flight to Lisbon for the first week of June",
        "The hotel in Lisbon is near the old town and the river",
        "I need a passport renewal before the trip to Japan",
        "The train from Tokyo to Kyoto takes about two hours",
        "I packed my suitcase for the flight and checked in online",
        "Airport security lines in Lisbon were long this morning",
    ],
    "programming": [
        "I fixed a bug in the Python service where the Redis connection pool leaked",
        "The unit tests for the parser fail on Windows paths",
        "I refactored the database layer to use async queries in Python",
        "Deploying the service to Kubernetes needs a new Helm chart",
        "The Python code review found a race condition in the cache",
        "I wrote a Rust function to parse log files faster than the Python one",
    ],
}


def write(agent: Agent, items: list[tuple[str, str]], zone: Zone, **fields: Any) -> dict[str, str]:
    """Add episodes (content, topic) for user u1; returns record id → topic."""
    topic_of = {}
    for content, topic in items:
        record = agent.memory.add(content, user_id="u1", zone=zone, **fields)
        topic_of[record.id] = topic
    assert agent.flush()
    return topic_of


def ingest(runtime: WorkerRuntime, zone: Zone) -> list[str]:
    due: list[str] = []
    runtime.ingest.drain(zone, on_due=due.append)
    return due


def level_records(runtime: WorkerRuntime, zone: Zone, level: Level) -> list[MemoryRecord]:
    where = And(
        all=[
            Cond(field="level", op="eq", value=level),
            Cond(field="superseded_at", op="eq", value=None),
        ]
    )
    return list(runtime.store.scan(zone, where))


@pytest.fixture
def pool(make_pool: Callable[..., SharedMemoryPool]) -> SharedMemoryPool:
    return make_pool("agents")


def test_offline_hierarchy_groups_episodes_by_topic(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Episodes on three topics become topic-pure traces, categories that do not mix topics,
    and one profile naming them; every episode is in exactly one trace and kept (demoted)."""
    runtime = make_runtime(consolidation={"threshold": 18})
    agent = pool.register_agent("writer", clearance=Zone.SECRET)
    items = [(c, t) for t, contents in TOPICS.items() for c in contents]
    items = items[0::3] + items[1::3] + items[2::3]  # interleaved in time
    topic_of = write(agent, items, Zone.INTERNAL)
    assert ingest(runtime, Zone.INTERNAL) == ["u1"]
    report = runtime.consolidation.consolidate(Zone.INTERNAL, "u1")
    assert report.episodes == 18

    traces = level_records(runtime, Zone.INTERNAL, Level.TRACE)
    assert sorted(r.id for r in traces) == sorted(report.traces)
    for trace in traces:
        assert len({topic_of[s] for s in trace.sources}) == 1, trace.content
        assert trace.id == derived_id(Level.TRACE, Zone.INTERNAL, "u1", trace.sources)
        assert trace.scope.user_id == "u1"
        assert trace.scope.session_id is None
        assert trace.metadata["strategy"] == "offline"
    covered = [s for t in traces for s in t.sources]
    assert sorted(covered) == sorted(topic_of)
    episodes = runtime.store.get(Zone.INTERNAL, list(topic_of))
    into = {t.id for t in traces}
    assert len(episodes) == 18
    for episode in episodes:
        assert len(episode.consolidated_into) == 1
        assert episode.consolidated_into[0] in into
        assert episode.tier is Tier.SHORT_TERM

    categories = level_records(runtime, Zone.INTERNAL, Level.CATEGORY)
    trace_topic = {t.id: topic_of[t.sources[0]] for t in traces}
    for category in categories:
        assert len({trace_topic[s] for s in category.sources}) == 1, category.content
    assert {trace_topic[s] for c in categories for s in c.sources} == set(TOPICS)
    [domain] = level_records(runtime, Zone.INTERNAL, Level.DOMAIN)
    assert sorted(domain.sources) == sorted(c.id for c in categories)
    assert domain.content.startswith("Profile of u1.")
    for word in ("sourdough", "lisbon", "python"):
        assert word in domain.content.lower() or any(word in c.content.lower() for c in categories)


def test_outputs_reach_the_agents_and_carry_the_highest_zone(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Traces, categories and the profile go out on the zone's channel: a cleared agent
    receives them, one below the zone does not; they are in the zone of their sources."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    writer = pool.register_agent("writer", clearance=Zone.CONFIDENTIAL)
    reader = pool.register_agent("reader", clearance=Zone.CONFIDENTIAL)
    low = pool.register_agent("low", clearance=Zone.INTERNAL)
    assert reader.wait_connected()
    assert low.wait_connected()
    write(writer, [(c, "travel") for c in TOPICS["travel"]], Zone.CONFIDENTIAL)
    assert ingest(runtime, Zone.CONFIDENTIAL) == []  # below the threshold
    assert runtime.consolidation.due(Zone.CONFIDENTIAL) == ["u1"]
    report = runtime.consolidation.consolidate(Zone.CONFIDENTIAL, "u1")
    assert runtime.consolidation.due(Zone.CONFIDENTIAL) == []
    produced = {*report.traces, *report.categories, report.domain}

    def got(agent: Agent) -> set[str]:
        return {r.id for r in agent.memory.list_memories(user_id="u1") if r.id in produced}

    assert wait_for(lambda: got(reader) == produced, timeout_s=15.0)
    for record in [reader.memory.get(i) for i in produced]:
        assert record.zone is Zone.CONFIDENTIAL
        assert record.received_from == "hivemem-workers"
    assert got(low) == set()


def test_a_second_run_with_nothing_new_writes_nothing(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Consolidating twice makes the records once; new episodes add traces and a new profile
    version that supersedes the old one."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    agent = pool.register_agent("writer", clearance=Zone.SECRET)
    write(agent, [(c, "cooking") for c in TOPICS["cooking"]], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    first = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    again = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert again.episodes == 0
    assert again.traces == []
    assert again.domain is None
    write(agent, [(c, "travel") for c in TOPICS["travel"]], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    second = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert second.episodes == 6
    assert not set(second.traces) & set(first.traces)
    [domain] = level_records(runtime, Zone.PUBLIC, Level.DOMAIN)
    assert domain.id == second.domain
    assert domain.supersedes == first.domain
    [old] = runtime.store.get(Zone.PUBLIC, [first.domain or ""])
    assert old.superseded_by == second.domain
    traces = level_records(runtime, Zone.PUBLIC, Level.TRACE)
    assert len(traces) == len(first.traces) + len(second.traces)


class BrokenStrategy:
    """Leaves an episode out: breaks the contract."""

    name = "broken"

    def __init__(self, settings: object) -> None:
        self.settings = settings

    def traces(self, episodes: Sources) -> list[Draft]:
        return [Draft(content="all but one", sources=tuple(r.id for r in episodes.records[1:]))]

    def categories(self, traces: Sources) -> list[Draft]:
        return [Draft(content="everything", sources=tuple(r.id for r in traces.records))]

    def domain(self, user_id: str, categories: Sources) -> Draft:
        ids = tuple(r.id for r in categories.records)
        return Draft(content=f"{user_id}", sources=ids, category=Category.INSIGHT)


class BadFieldsStrategy(BrokenStrategy):
    """Covers every episode, but with a category that is none: no valid record."""

    name = "bad-fields"

    def traces(self, episodes: Sources) -> list[Draft]:
        everything = tuple(r.id for r in episodes.records)
        return [Draft(content="all", sources=everything, category="nonsense")]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("strategy", "name"), [("BrokenStrategy", "broken"), ("BadFieldsStrategy", "bad-fields")]
)
def test_a_strategy_that_breaks_the_contract_falls_back_to_offline(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime], strategy: str, name: str
) -> None:
    """A custom strategy named module:Class is used; when it leaves an input out, or drafts
    what makes no valid record (before, that failed the run and every later run resumed the
    same plan: the user's consolidation was stuck), the offline strategy does that step
    instead (logged), and no episode is lost."""
    runtime = make_runtime(consolidation={"threshold": 1000, "strategy": f"{__name__}:{strategy}"})
    agent = pool.register_agent("writer", clearance=Zone.SECRET)
    topic_of = write(agent, [(c, "programming") for c in TOPICS["programming"]], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    with structlog.testing.capture_logs() as logs:
        report = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    failed = [e for e in logs if e["event"] == "consolidation_strategy_failed"]
    assert [(e["strategy"], e["step"]) for e in failed] == [(name, "traces")]
    traces = runtime.store.get(Zone.PUBLIC, report.traces)
    assert sorted(s for t in traces for s in t.sources) == sorted(topic_of)
    [category] = runtime.store.get(Zone.PUBLIC, report.categories)
    assert category.content == "everything"  # the custom strategy's own step, kept


def test_labels_above_public_are_only_those_the_sources_carry(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Labels are stored in clear beside the sealed content. Above PUBLIC, a derived record's
    tags and entities are only labels its sources already carry (the strategy's keyphrases and
    names drawn from sealed content would put that content's words in clear); in PUBLIC the
    strategy's labels are kept."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    agent = pool.register_agent("writer", clearance=Zone.SECRET)
    cooking = [(c, "cooking") for c in TOPICS["cooking"]]
    write(agent, cooking, Zone.INTERNAL, tags=["kitchen"])
    write(agent, cooking, Zone.PUBLIC)
    for zone in (Zone.INTERNAL, Zone.PUBLIC):
        ingest(runtime, zone)
        runtime.consolidation.consolidate(zone, "u1")
    levels = (Level.TRACE, Level.CATEGORY, Level.DOMAIN)
    derived = {
        zone: [r for level in levels for r in level_records(runtime, zone, level)]
        for zone in (Zone.INTERNAL, Zone.PUBLIC)
    }
    assert derived[Zone.INTERNAL]
    assert all(set(r.tags) <= {"kitchen"} for r in derived[Zone.INTERNAL])
    assert all(r.entities == [] for r in derived[Zone.INTERNAL])
    public_words = {t for r in derived[Zone.PUBLIC] for t in (*r.tags, *r.entities)}
    assert "sourdough" in public_words or "flour" in public_words or "pasta" in public_words


def test_a_deleted_output_stays_deleted_and_a_kept_one_unchanged(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A category deleted by its user (at an agent; the tombstone reaches the store) is not
    made again by a later run over the same traces (it came back live before); and a category
    the later run makes again is not rewritten (its content and time are kept)."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    writer = pool.register_agent("writer", clearance=Zone.SECRET)
    write(writer, [(c, t) for t in ("cooking", "travel") for c in TOPICS[t]], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    first = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert len(first.categories) >= 2
    victim, *others = first.categories
    assert wait_for(lambda: holds(writer, victim))
    before = {r.id: r for r in runtime.store.get(Zone.PUBLIC, others)}
    writer.memory.delete(victim)
    assert writer.flush()
    ingest(runtime, Zone.PUBLIC)
    assert runtime.store.presence(Zone.PUBLIC, [victim]) == {victim: True}

    write(writer, [(c, "programming") for c in TOPICS["programming"]], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    second = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert victim not in second.categories  # the same traces, the same id: left out
    assert runtime.store.presence(Zone.PUBLIC, [victim]) == {victim: True}
    after = {r.id: r for r in runtime.store.get(Zone.PUBLIC, others)}
    for kept in set(others) & set(second.categories):
        assert after[kept].content == before[kept].content
        assert after[kept].recorded_at == before[kept].recorded_at


def test_deleting_an_episode_deletes_its_words_from_what_was_derived(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A trace states its episodes' facts word for word, and the category and profile above it
    summarise them. Deleting an episode deletes those derived records too (in the store and at
    the agents), and the next run consolidates what remains again, without the deleted text."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    writer = pool.register_agent("writer", clearance=Zone.SECRET, share_levels=[Level.EPISODE])
    reader = pool.register_agent("reader", clearance=Zone.SECRET)
    assert reader.wait_connected()
    secret = "My bank PIN for the sourdough bakery account is 4417 please remember"
    items = [(c, "cooking") for c in [secret, *TOPICS["cooking"]]]
    ids = list(write(writer, items, Zone.PUBLIC))
    ingest(runtime, Zone.PUBLIC)
    first = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert first.domain is not None
    levels = (Level.TRACE, Level.CATEGORY, Level.DOMAIN)

    def derived_text() -> str:
        return " ".join(
            r.content for level in levels for r in level_records(runtime, Zone.PUBLIC, level)
        )

    def reader_text() -> str:
        return " ".join(r.content for r in reader.memory.list_memories(user_id="u1", limit=1000))

    assert "4417" in derived_text()
    assert wait_for(lambda: holds(reader, first.domain or "") and "4417" in reader_text())

    writer.memory.delete(ids[0])
    assert writer.flush()
    ingest(runtime, Zone.PUBLIC)

    assert "4417" not in derived_text()
    assert wait_for(lambda: "4417" not in reader_text())
    assert runtime.store.presence(Zone.PUBLIC, [first.domain]) == {first.domain: True}
    second = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert second.episodes > 0  # the deleted one's trace-mates, consolidated again
    assert second.domain is not None
    traces = {t.id for t in level_records(runtime, Zone.PUBLIC, Level.TRACE)}
    rest = runtime.store.get(Zone.PUBLIC, ids[1:])
    assert len(rest) == len(TOPICS["cooking"])
    assert all(len(e.consolidated_into) == 1 and e.consolidated_into[0] in traces for e in rest)
    assert "4417" not in derived_text()
    assert "sourdough" in derived_text().lower()


#: What :class:`DeletingMidRun` does while a run holds its sources, per step (set by tests).
MID_RUN: dict[str, list[Callable[[], None]]] = {"traces": [], "categories": []}


class DeletingMidRun(OfflineStrategy):
    """The offline strategy, with whatever the test set in :data:`MID_RUN` done before the
    step's drafts are made: a record deleted (and ingested) while the run holds it."""

    name = "deleting-mid-run"

    def traces(self, episodes: Sources) -> list[Draft]:
        while MID_RUN["traces"]:
            MID_RUN["traces"].pop()()
        return super().traces(episodes)

    def categories(self, traces: Sources) -> list[Draft]:
        while MID_RUN["categories"]:
            MID_RUN["categories"].pop()()
        return super().categories(traces)


def test_an_episode_deleted_during_a_run_leaves_nothing_derived_from_it(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """The ingest takes no scope lock, so a delete can land while a run holds the episode: the
    run's trace (and what it derived from it) would have kept the deleted words. The run finds
    the episode deleted once it has written, deletes what it derived from it (store and agents)
    and queues the trace-mates again."""
    runtime = make_runtime(
        consolidation={"threshold": 1000, "strategy": f"{__name__}:DeletingMidRun"}
    )
    writer = pool.register_agent("writer", clearance=Zone.SECRET, share_levels=[Level.EPISODE])
    reader = pool.register_agent("reader", clearance=Zone.SECRET)
    assert reader.wait_connected()
    secret = "My bank PIN for the sourdough bakery account is 4417 please remember"
    ids = list(write(writer, [(c, "cooking") for c in [secret, *TOPICS["cooking"]]], Zone.PUBLIC))
    ingest(runtime, Zone.PUBLIC)

    def delete_the_pin() -> None:
        writer.memory.delete(ids[0])
        assert writer.flush()
        ingest(runtime, Zone.PUBLIC)

    MID_RUN["traces"].append(delete_the_pin)
    with structlog.testing.capture_logs() as logs:
        report = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert not MID_RUN["traces"]  # the delete happened inside the run
    levels = (Level.TRACE, Level.CATEGORY, Level.DOMAIN)
    derived = [r for level in levels for r in level_records(runtime, Zone.PUBLIC, level)]
    assert all("4417" not in r.content for r in derived)
    assert [e["event"] for e in logs].count("consolidation_source_deleted") == 1
    assert report.domain is not None
    assert runtime.store.presence(Zone.PUBLIC, [report.domain]) == {report.domain: True}
    members = runtime.client.smembers(runtime.keys.pending(Zone.PUBLIC, "u1"))
    pending = {m.decode() for m in members}
    assert pending  # the PIN's trace-mates, queued again
    assert pending <= set(ids[1:])
    again = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert again.domain is not None
    traces = {t.id for t in level_records(runtime, Zone.PUBLIC, Level.TRACE)}
    rest = runtime.store.get(Zone.PUBLIC, ids[1:])
    assert len(rest) == len(TOPICS["cooking"])
    assert all(len(e.consolidated_into) == 1 and e.consolidated_into[0] in traces for e in rest)
    assert (
        "sourdough"
        in " ".join(r.content for r in level_records(runtime, Zone.PUBLIC, Level.TRACE)).lower()
    )
    assert all(
        "4417" not in r.content
        for level in levels
        for r in level_records(runtime, Zone.PUBLIC, level)
    )
    assert wait_for(lambda: holds(reader, again.domain or ""))
    assert all(
        "4417" not in r.content for r in reader.memory.list_memories(user_id="u1", limit=1000)
    )


def test_a_lone_episode_deleted_during_a_run_leaves_the_user_due_for_a_rebuild(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """The run's only episode is deleted while the run holds it: the run deletes its trace and
    the categories and profile above, with nothing to queue again. The user stays due (the
    run's own plan must not swallow the rebuild), and the next run makes categories and a
    profile from the traces left."""
    runtime = make_runtime(
        consolidation={"threshold": 1000, "strategy": f"{__name__}:DeletingMidRun"}
    )
    writer = pool.register_agent("writer", clearance=Zone.SECRET)
    items = [(c, topic) for topic in ("cooking", "travel") for c in TOPICS[topic]]
    write(writer, items, Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    assert runtime.consolidation.consolidate(Zone.PUBLIC, "u1").domain is not None
    [lone] = write(writer, [("My bank PIN is 4417", "other")], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)

    def delete_it() -> None:
        writer.memory.delete(lone)
        assert writer.flush()
        ingest(runtime, Zone.PUBLIC)

    MID_RUN["traces"].append(delete_it)
    runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert not MID_RUN["traces"]
    assert runtime.consolidation.due(Zone.PUBLIC) == ["u1"]
    rebuilt = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert rebuilt.episodes == 0
    assert rebuilt.domain is not None
    assert runtime.store.presence(Zone.PUBLIC, [rebuilt.domain]) == {rebuilt.domain: False}
    categories = level_records(runtime, Zone.PUBLIC, Level.CATEGORY)
    assert {s for c in categories for s in c.sources} == {
        t.id for t in level_records(runtime, Zone.PUBLIC, Level.TRACE)
    }
    assert all("4417" not in r.content for r in categories)
    assert runtime.consolidation.due(Zone.PUBLIC) == []


def test_a_trace_deleted_during_a_run_takes_the_runs_categories_and_is_rebuilt_without(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A trace of an earlier run, deleted directly while a run makes categories from it: none
    of its words stay in a live category or profile (the run deletes what it made from it, or
    leaves out a category the delete took), and the user stays due; the next run (no episode
    waiting) makes categories and a profile again from the traces left."""
    runtime = make_runtime(
        consolidation={"threshold": 1000, "strategy": f"{__name__}:DeletingMidRun"}
    )
    writer = pool.register_agent("writer", clearance=Zone.SECRET)
    secret = "My bank PIN for the sourdough bakery account is 4417 please remember"
    items = [(c, "cooking") for c in [secret, *TOPICS["cooking"]]]
    write(writer, [*items, *[(c, "travel") for c in TOPICS["travel"]]], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    first = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert first.domain is not None
    [pin_trace] = [
        t for t in level_records(runtime, Zone.PUBLIC, Level.TRACE) if "4417" in t.content
    ]
    assert wait_for(lambda: holds(writer, pin_trace.id))
    write(writer, [("I booked a table for dinner in Lisbon on Friday", "travel")], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)

    def delete_the_trace() -> None:
        writer.memory.delete(pin_trace.id)
        assert writer.flush()
        ingest(runtime, Zone.PUBLIC)

    MID_RUN["categories"].append(delete_the_trace)
    runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert not MID_RUN["categories"]  # the delete happened inside the run
    above = [
        r
        for level in (Level.CATEGORY, Level.DOMAIN)
        for r in level_records(runtime, Zone.PUBLIC, level)
    ]
    assert all(pin_trace.id not in r.sources for r in above)
    assert all("PIN" not in r.content and "4417" not in r.content for r in above)
    assert runtime.consolidation.due(Zone.PUBLIC) == ["u1"]  # a rebuild is asked for

    third = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert third.episodes == 0
    assert third.domain is not None
    categories = level_records(runtime, Zone.PUBLIC, Level.CATEGORY)
    live_traces = {t.id for t in level_records(runtime, Zone.PUBLIC, Level.TRACE)}
    assert pin_trace.id not in live_traces
    assert {s for c in categories for s in c.sources} == live_traces
    assert runtime.consolidation.due(Zone.PUBLIC) == []


def test_a_delete_finds_a_trace_written_before_its_episode_was_linked(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """The window a run's own look cannot close: a run has written its trace but not yet
    linked the episode to it when the ingest reads the deleted episode. Once the tombstone is
    stored, the ingest looks for the user's traces that name the episode, linked or not, and
    deletes them."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    writer = pool.register_agent("writer", clearance=Zone.SECRET)
    secret = "My bank PIN for the sourdough bakery account is 4417 please remember"
    [episode_id] = write(writer, [(secret, "cooking")], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    [episode] = runtime.store.get(Zone.PUBLIC, [episode_id], with_vectors=True)
    trace = MemoryRecord(
        id=derived_id(Level.TRACE, Zone.PUBLIC, "u1", [episode_id]),
        content=secret,
        level=Level.TRACE,
        scope={"user_id": "u1"},
        sources=[episode_id],
        vector=episode.vector,
    )
    runtime.store.upsert(Zone.PUBLIC, [trace])  # written, the episode not linked to it yet
    assert episode.consolidated_into == []

    writer.memory.delete(episode_id)
    assert writer.flush()
    ingest(runtime, Zone.PUBLIC)

    assert runtime.store.presence(Zone.PUBLIC, [trace.id]) == {trace.id: True}
    assert level_records(runtime, Zone.PUBLIC, Level.TRACE) == []


def test_a_trace_deleted_directly_has_the_levels_above_it_made_again(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Deleting a trace (not its episodes) deletes the category and profile that summarised
    it; no episode is queued again, yet the user is due, and the next run makes categories
    and a profile from the traces left. The deleted trace stays deleted."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    writer = pool.register_agent("writer", clearance=Zone.SECRET)
    items = [(c, topic) for topic in ("cooking", "travel") for c in TOPICS[topic]]
    write(writer, items, Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    first = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert first.domain is not None
    assert len(first.traces) >= 2
    doomed = first.traces[0]
    assert wait_for(lambda: holds(writer, doomed))
    writer.memory.delete(doomed)
    assert writer.flush()
    ingest(runtime, Zone.PUBLIC)
    assert runtime.store.presence(Zone.PUBLIC, [first.domain]) == {first.domain: True}
    assert runtime.consolidation.due(Zone.PUBLIC) == ["u1"]

    second = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert second.episodes == 0
    assert second.domain is not None
    assert second.domain != first.domain
    left = {t.id for t in level_records(runtime, Zone.PUBLIC, Level.TRACE)}
    assert doomed not in left
    assert left == set(first.traces) - {doomed}
    categories = level_records(runtime, Zone.PUBLIC, Level.CATEGORY)
    assert categories
    assert {s for c in categories for s in c.sources} == left
    assert runtime.consolidation.due(Zone.PUBLIC) == []


def test_a_run_takes_at_most_a_plans_worth_and_leaves_the_rest_pending(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """With more pending episodes than ``max_plan_episodes``, a run takes that many (its time
    and memory are bounded) and reports the rest, which stay pending and due; the next run
    takes them."""
    runtime = make_runtime(consolidation={"threshold": 1000, "max_plan_episodes": 4})
    agent = pool.register_agent("writer", clearance=Zone.SECRET)
    written = write(agent, [(c, "travel") for c in TOPICS["travel"]], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    first = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert (first.episodes, first.remaining) == (4, 2)
    assert runtime.consolidation.due(Zone.PUBLIC) == ["u1"]
    second = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    assert (second.episodes, second.remaining) == (2, 0)
    assert runtime.consolidation.due(Zone.PUBLIC) == []
    episodes = runtime.store.get(Zone.PUBLIC, list(written))
    assert all(len(e.consolidated_into) == 1 for e in episodes)


def test_a_group_made_again_after_a_restore_is_a_new_version_not_a_cycle(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A trace archived (its category gets a new version without it), then restored (the next
    run groups the same traces as the first version): the category made then is a new version
    with an id of its own. Before, it took the first version's id: rewritten, that version
    superseded its own successor (a cycle, the review found); kept as stored, it stayed
    superseded and the restored trace was in no current category."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    agent = pool.register_agent("writer", clearance=Zone.SECRET)
    write(agent, [(c, "cooking") for c in TOPICS["cooking"]], Zone.PUBLIC)
    ingest(runtime, Zone.PUBLIC)
    first = runtime.consolidation.consolidate(Zone.PUBLIC, "u1")
    [category] = runtime.store.get(Zone.PUBLIC, first.categories[:1])
    trace = category.sources[0]
    runtime.archive.archive(Zone.PUBLIC, [trace])
    for step, topic in enumerate(("travel", "programming")):
        if step == 1:
            runtime.archive.restore(Zone.PUBLIC, [trace])
        write(agent, [(c, topic) for c in TOPICS[topic]], Zone.PUBLIC)
        ingest(runtime, Zone.PUBLIC)
        runtime.consolidation.consolidate(Zone.PUBLIC, "u1")

    every = list(
        runtime.store.scan(
            Zone.PUBLIC, And(all=[Cond(field="level", op="eq", value=Level.CATEGORY)])
        )
    )
    by_id = {r.id: r for r in every}
    for record in every:  # follow each chain back: it ends, without meeting itself
        seen = {record.id}
        step = record
        while step.supersedes is not None and step.supersedes in by_id:
            step = by_id[step.supersedes]
            assert step.id not in seen, "a version chain loops"
            seen.add(step.id)
    assert not by_id[category.id].is_current  # the first version stays history
    current = [r for r in every if r.is_current]
    assert trace in {s for r in current for s in r.sources}


def test_an_episode_deleted_while_the_run_marks_its_sources_is_skipped(
    make_runtime: Callable[..., WorkerRuntime], make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """A delete that takes no scope lock (the ingest's, a retention's) removes one of the run's
    episodes between the run's reading of their presence and its marking them: the run reads
    presence again and ends as for any source deleted meanwhile (what it derived from it goes,
    its trace-mates wait again), instead of failing with MemoryNotFound (a task failed for good,
    and a resumed run made other traces beside the first's). The next run takes the others."""
    runtime = make_runtime()
    writer = make_pool("writer").register_agent(
        "writer", clearance=Zone.SECRET, share_levels=[Level.EPISODE]
    )
    texts = [f"alice bakes sourdough bread on {day}" for day in ("monday", "tuesday", "friday")]
    ids = [writer.memory.add(t, user_id="alice", zone=Zone.PUBLIC).id for t in texts]
    assert writer.flush()
    runtime.ingest.drain(Zone.PUBLIC, on_due=lambda _user: None)
    victim, others = ids[0], ids[1:]
    [record] = runtime.store.get(Zone.PUBLIC, [victim])
    deleting = Interleave(
        runtime.store,
        "update_fields",
        lambda: runtime.store.put_tombstones(Zone.PUBLIC, [Tombstone.of(record)]),
    )
    offline = OfflineStrategy(runtime.settings.workers.consolidation)
    racing = ConsolidationService(
        runtime.client, runtime.bus, deleting, runtime.keys, offline, offline,  # type: ignore[arg-type]
        lock_ttl_s=3, send_batch=64, message_max_bytes=runtime.settings.pool.message_max_bytes,
        codec=runtime.codec,
    )  # fmt: skip

    first = racing.consolidate(Zone.PUBLIC, "alice")

    assert deleting.fired
    assert first.remaining == len(others)
    assert runtime.store.get(Zone.PUBLIC, first.traces) == []
    second = runtime.consolidation.consolidate(Zone.PUBLIC, "alice")
    [trace] = runtime.store.get(Zone.PUBLIC, second.traces)
    assert sorted(trace.sources) == sorted(others)
    assert all(r.consolidated_into == [trace.id] for r in runtime.store.get(Zone.PUBLIC, others))

"""Search: modes, presets, thresholds, filters, time travel and weighting."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.search_config import PRESETS, SearchConfig, preset
from hivemem.pool.errors import InvalidFilter, InvalidInput, InvalidSearchConfig
from tests.conftest import Clock

FACTS = [
    "Maya adopted a grey cat named Pixel",
    "Maya is training for the Berlin marathon in September",
    "Maya's favourite food is ramen",
    "Maya works night shifts as a nurse",
    "The quarterly report is due on Friday",
]


@pytest.fixture
def maya(memory: HierarchicalMemory) -> HierarchicalMemory:
    memory.add_many(FACTS, user_id="maya")
    return memory


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_every_mode_finds_the_obvious_memory(maya: HierarchicalMemory, mode: str) -> None:
    """Dense, sparse and hybrid search each rank the memory about the cat first."""
    hits = maya.search("Pixel the cat", user_id="maya", mode=mode)
    assert hits[0].record.content == FACTS[0]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_idf_can_be_measured_within_the_user(memory: HierarchicalMemory) -> None:
    """Keyword search finds the user's record whether term rarity is measured over the whole
    memory or within the user (where another user's 30 uses of the word do not count)."""
    memory.add_many([f"invoice number {i} was paid" for i in range(30)], user_id="billing")
    memory.add_many(["Pat's invoice is overdue", "Pat likes hiking"], user_id="pat")
    for scope in ("memory", "user"):
        hits = memory.search("invoice", user_id="pat", config="keyword", idf_scope=scope)
        assert [h.record.content for h in hits] == ["Pat's invoice is overdue"]


def test_dense_search_understands_paraphrase(maya: HierarchicalMemory) -> None:
    """Dense search matches meaning without shared words."""
    hits = maya.search("what pet does she have", user_id="maya", mode="dense", top_k=1)
    assert hits[0].record.content == FACTS[0]


def test_presets_by_name_and_unknown_preset(maya: HierarchicalMemory) -> None:
    """Every preset runs by name; an unknown name raises InvalidSearchConfig."""
    for name in PRESETS:
        assert maya.search("marathon", user_id="maya", config=name)
    with pytest.raises(InvalidSearchConfig):
        maya.search("marathon", user_id="maya", config="fastest")
    assert preset("keyword").mode == "sparse"


def test_top_k_and_min_similarity(maya: HierarchicalMemory) -> None:
    """top_k caps the hits; min_similarity drops those below the cosine threshold."""
    assert len(maya.search("Maya", user_id="maya", top_k=2)) == 2
    strict = maya.search("running a marathon", user_id="maya", min_similarity=0.45)
    assert strict
    assert all(h.similarity is not None and h.similarity >= 0.45 for h in strict)
    assert len(strict) < len(maya.search("running a marathon", user_id="maya"))


def test_top_k_beyond_the_candidates_finds_that_many(memory: HierarchicalMemory) -> None:
    """Each lookup fetches at least top_k candidates: asking for more hits than
    ``candidates`` (50) gets as many as match, in every mode. It got at most 50 dense hits
    (95 fused) before."""
    memory.add_many([f"Nia's note number {i} about gardening" for i in range(130)], user_id="nia")
    for mode in ("dense", "sparse", "hybrid"):
        assert len(memory.search("gardening note", user_id="nia", top_k=120, mode=mode)) == 120
    weighted = memory.search("gardening note", user_id="nia", top_k=100, recency_weight=0.5)
    assert len(weighted) == 100


@pytest.mark.parametrize(
    "bad",
    [
        {"top_k": 0},
        {"mode": "fuzzy"},
        {"min_similarity": 2.0},
        {"mode": "sparse", "min_similarity": 0.2},
        {"recency_weight": 0.7, "importance_weight": 0.7},
    ],
)
def test_bad_search_config_is_rejected(maya: HierarchicalMemory, bad: dict[str, object]) -> None:
    """Inconsistent or out-of-range search settings raise InvalidSearchConfig."""
    with pytest.raises(InvalidSearchConfig):
        maya.search("cat", user_id="maya", **bad)


def test_bad_query_and_filter_are_rejected(maya: HierarchicalMemory) -> None:
    """An empty query raises InvalidInput; a malformed filter raises InvalidFilter."""
    with pytest.raises(InvalidInput):
        maya.search("  ", user_id="maya")
    with pytest.raises(InvalidFilter):
        maya.search(
            "cat", user_id="maya", filter={"where": {"field": "colour", "op": "eq", "value": 1}}
        )
    with pytest.raises(InvalidFilter):
        maya.search("cat", user_id="maya", filter={"levels": ["chapter"]})


def test_filters_through_the_public_api(memory: HierarchicalMemory, clock: Clock) -> None:
    """Level, category, importance, tags, entities, time and metadata filters all narrow."""
    memory.add(
        "deploy failed on friday",
        user_id="ops",
        category="event",
        importance=0.9,
        tags=["incident"],
        entities=["svc:api"],
        metadata={"severity": 3, "team": "core"},
    )
    clock.advance(days=2)
    memory.add(
        "deploy succeeded on monday",
        user_id="ops",
        category="event",
        importance=0.4,
        tags=["release"],
        entities=["svc:web"],
        metadata={"severity": 1, "team": "web"},
    )
    memory.add("deploy windows are tuesdays", user_id="ops", level="trace", category="decision")

    def found(**flt: object) -> set[str]:
        return {
            h.record.content.split()[1] for h in memory.search("deploy", user_id="ops", filter=flt)
        }

    assert found(levels=["trace"]) == {"windows"}
    assert found(categories=["event"]) == {"failed", "succeeded"}
    assert found(importance_min=0.8) == {"failed"}
    assert found(tags_any=["release"]) == {"succeeded"}
    assert found(entities_any=["svc:api"]) == {"failed"}
    start = datetime(2026, 1, 2, tzinfo=UTC)
    assert found(times={"recorded_at": {"after": start}}) == {"succeeded", "windows"}
    assert found(where={"field": "metadata.severity", "op": "gte", "value": 2}) == {"failed"}
    assert found(where={"expr": {"field": "metadata.team", "op": "eq", "value": "core"}}) == {
        "succeeded",
        "windows",
    }
    either = {
        "any": [
            {"field": "metadata.team", "op": "eq", "value": "web"},
            {"field": "level", "op": "eq", "value": "trace"},
        ]
    }
    assert found(where=either) == {"succeeded", "windows"}


def test_as_of_time_travel(memory: HierarchicalMemory, clock: Clock) -> None:
    """as_of returns what was recorded, valid and not yet superseded at that instant."""
    before_anything = clock.now - timedelta(seconds=1)
    v1 = memory.add("Noor's manager is Omar", user_id="noor")
    clock.advance(days=10)
    middle = clock.now
    clock.advance(days=10)
    v2 = memory.supersede(v1.id, "Noor's manager is Priya")

    def top(**kw: object) -> list[str]:
        return [h.record.id for h in memory.search("who is Noor's manager", user_id="noor", **kw)]

    assert top() == [v2.id]
    assert top(as_of=middle) == [v1.id]
    assert top(as_of=clock.now) == [v2.id]
    assert top(as_of=before_anything) == []
    assert set(top(include_superseded=True)) == {v1.id, v2.id}


def test_valid_until_bounds_time_travel(memory: HierarchicalMemory, clock: Clock) -> None:
    """A fact with an end of validity is not returned as of a time after it."""
    end = clock.now + timedelta(days=3)
    memory.add("Quinn is on parental leave", user_id="quinn", valid_until=end)
    assert memory.search("leave", user_id="quinn", as_of=end - timedelta(hours=1))
    assert memory.search("leave", user_id="quinn", as_of=end + timedelta(hours=1)) == []


def test_recency_and_importance_weighting(memory: HierarchicalMemory, clock: Clock) -> None:
    """With weighting, the newer (or more important) of two equally relevant memories wins."""
    old = memory.add("Rosa's locker is number 12", user_id="rosa", importance=0.9)
    clock.advance(days=60)
    new = memory.add("Rosa's locker is number 12", user_id="rosa", importance=0.1)
    recent = memory.search("Rosa locker", user_id="rosa", config="recent")
    important = memory.search("Rosa locker", user_id="rosa", config="important")
    assert recent[0].record.id == new.id
    assert important[0].record.id == old.id
    assert all(0.0 <= h.score <= 1.0 for h in recent + important)


def test_search_config_is_data() -> None:
    """A SearchConfig round-trips through plain data and with_() validates changes."""
    config = SearchConfig(mode="dense", top_k=3)
    assert SearchConfig.model_validate(config.model_dump()) == config
    with pytest.raises(InvalidSearchConfig):
        config.with_(candidates=0)

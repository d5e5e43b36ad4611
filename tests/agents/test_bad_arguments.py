"""Bad arguments to the memory's public calls: each raises one of hivemem's typed errors (an
InvalidInput) and changes nothing, however far into a batch the bad item sits."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidContent, InvalidFilter, InvalidInput, InvalidSearchConfig
from hivemem.pool.filters import And

EVERYTHING = And(all=[])
#: Year 1 at +01:00: a datetime with no UTC time.
NO_UTC_TIME = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
SURROGATE = "note \ud800"

Call = Callable[[HierarchicalMemory], object]

CALLS: dict[str, tuple[Call, type[InvalidInput]]] = {
    "content with a lone surrogate": (
        lambda m: m.add(SURROGATE, user_id="u"),
        InvalidContent,
    ),
    "metadata with a lone surrogate": (
        lambda m: m.add("fine", user_id="u", metadata={"a": SURROGATE}),
        InvalidContent,
    ),
    "metadata list with a lone surrogate": (
        lambda m: m.add("fine", user_id="u", metadata={"a": ["x", SURROGATE]}),
        InvalidContent,
    ),
    "content given as bytes": (lambda m: m.add(b"abc", user_id="u"), InvalidInput),
    "an importance given as a bool": (
        lambda m: m.add("fine", user_id="u", importance=True),
        InvalidInput,
    ),
    "an importance given as text": (
        lambda m: m.add("fine", user_id="u", importance="0.9"),
        InvalidInput,
    ),
    "a top_k given as text": (lambda m: m.search("q", user_id="u", top_k="5"), InvalidSearchConfig),
    "a search flag given as text": (
        lambda m: m.search("q", user_id="u", include_superseded="no"),
        InvalidSearchConfig,
    ),
    "a batch given as one string": (lambda m: m.add_many("abc", user_id="u"), InvalidInput),
    "a batch given as a dict": (lambda m: m.add_many({"content": "x"}, user_id="u"), InvalidInput),
    "a batch given as None": (lambda m: m.add_many(None, user_id="u"), InvalidInput),
    "a session id without its user": (
        lambda m: m.add_many([{"content": "x", "scope": {"user_id": "v"}}], session_id="bad id!"),
        InvalidInput,
    ),
    "a search query with a lone surrogate": (
        lambda m: m.search(SURROGATE, user_id="u"),
        InvalidInput,
    ),
    "a search config of another type": (
        lambda m: m.search("q", user_id="u", config=5),
        InvalidSearchConfig,
    ),
    "a search config with an unknown field": (
        lambda m: m.search("q", user_id="u", config={"top": 5}),
        InvalidSearchConfig,
    ),
    "an infinite search weight": (
        lambda m: m.search("q", user_id="u", dense_weight=float("inf")),
        InvalidSearchConfig,
    ),
    # With them, one record might fit in no sync message (the metadata is bounded too).
    "more sources than MAX_SOURCES": (
        lambda m: m.add("summary", user_id="u", sources=[str(uuid.uuid4()) for _ in range(10_001)]),
        InvalidInput,
    ),
    "search weights whose sum overflows": (
        lambda m: m.search("q", user_id="u", dense_weight=1e308, sparse_weight=1e308),
        InvalidSearchConfig,
    ),
    "as_of with no UTC time": (
        lambda m: m.search("q", user_id="u", as_of=NO_UTC_TIME),
        InvalidInput,
    ),
    "as_of of another type": (lambda m: m.search("q", user_id="u", as_of=[1]), InvalidInput),
    "list as_of with no UTC time": (
        lambda m: m.list_memories(user_id="u", as_of=NO_UTC_TIME),
        InvalidInput,
    ),
    "a fractional limit": (lambda m: m.list_memories(user_id="u", limit=1.5), InvalidInput),
    "a limit given as text": (lambda m: m.list_memories(user_id="u", limit="5"), InvalidInput),
    "a filter time with no UTC time": (
        lambda m: m.search(
            "q", user_id="u", filter={"times": {"recorded_at": {"after": NO_UTC_TIME}}}
        ),
        InvalidFilter,
    ),
    "a filter integer beyond 64 bits": (
        lambda m: m.search(
            "q",
            user_id="u",
            filter={"where": {"field": "metadata.t", "op": "contains", "value": 2**70}},
        ),
        InvalidFilter,
    ),
    "a filter text with a lone surrogate": (
        lambda m: m.list_memories(
            user_id="u", filter={"where": {"field": "metadata.t", "op": "eq", "value": SURROGATE}}
        ),
        InvalidFilter,
    ),
    "expire with a zone given as text": (
        lambda m: m.expire("nowhere", datetime.now(UTC)),  # type: ignore[arg-type]
        InvalidInput,
    ),
    "expire before a time with no UTC time": (
        lambda m: m.expire(Zone.PUBLIC, NO_UTC_TIME),
        InvalidFilter,
    ),
    "a token budget given as text": (
        lambda m: m.build_context("q", user_id="u", token_budget="100"),
        InvalidInput,
    ),
    "a token counter that is no function": (
        lambda m: m.build_context("q", user_id="u", count_tokens=5),
        InvalidInput,
    ),
    "stats of a session without its user": (lambda m: m.stats(session_id="bad id!"), InvalidInput),
    "a token counter giving text": (
        lambda m: m.build_context("q", user_id="u", count_tokens=lambda _text: "5"),
        InvalidInput,
    ),
    "a token counter giving a negative count": (
        lambda m: m.build_context("q", user_id="u", count_tokens=lambda _text: -100),
        InvalidInput,
    ),
    "a list flag given as text": (
        lambda m: m.list_memories(user_id="u", include_superseded="no"),
        InvalidInput,
    ),
    "an exact_scope given as text": (
        lambda m: m.list_memories(user_id="u", exact_scope="false"),
        InvalidInput,
    ),
    # None would match every memory of the user outside a session, and promote them all.
    "end_session without a session": (
        lambda m: m.end_session(user_id="u", session_id=None),  # type: ignore[arg-type]
        InvalidInput,
    ),
    "end_session with a session given as bytes": (
        lambda m: m.end_session(user_id="u", session_id=b"s1"),  # type: ignore[arg-type]
        InvalidInput,
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_bad_argument_raises_a_typed_error_and_changes_nothing(
    memory: HierarchicalMemory, name: str
) -> None:
    call, error = CALLS[name]
    kept = memory.add("already here", user_id="u")
    with pytest.raises(error):
        call(memory)
    assert memory._index.count(EVERYTHING) == 1
    assert memory.get(kept.id).content == "already here"


@pytest.mark.parametrize("position", [0, 299, 1030])
def test_a_lone_surrogate_anywhere_in_a_batch_stores_nothing(
    memory: HierarchicalMemory, position: int
) -> None:
    """Before, such an item passed validation and failed at the index or the embedder, after
    the chunks before it were stored (and shared)."""
    items: list[Any] = [f"item {i}" for i in range(1031)]
    items[position] = {"content": "bad", "metadata": {"a": SURROGATE}} if position else SURROGATE
    with pytest.raises(InvalidContent, match=f"item {position}"):
        memory.add_many(items, user_id="u")
    assert memory._index.count(EVERYTHING) == 0


def test_a_batch_may_come_from_a_generator(memory: HierarchicalMemory) -> None:
    stored = memory.add_many((f"note {i}" for i in range(3)), user_id="u")
    assert [r.content for r in stored] == ["note 0", "note 1", "note 2"]


def test_a_search_config_may_be_given_as_its_fields(memory: HierarchicalMemory) -> None:
    memory.add("sailing on the lake", user_id="u")
    hits = memory.search("sailing", user_id="u", config={"mode": "sparse", "top_k": 1})
    assert [h.record.content for h in hits] == ["sailing on the lake"]

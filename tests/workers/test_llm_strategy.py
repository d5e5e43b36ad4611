"""The LLM consolidation strategy against a real local OpenAI-compatible server: what it sends,
which replies it accepts, and that each draft it cannot get falls back alone, logged without
content."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
import structlog
from pydantic import SecretStr

from hivemem.pool.enums import Category, Zone
from hivemem.pool.errors import StrategyFailed
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.settings import LlmSettings
from hivemem.workers.llm import LlmStrategy
from hivemem.workers.prompts import (
    MAX_SOURCE_CHARS,
    MAX_SOURCES,
    MAX_SOURCES_CHARS,
    trace_prompt,
)
from hivemem.workers.strategy import Draft, Sources
from tests.workers.llm_server import ChatServer, Reply, chat, error

START = datetime(2026, 1, 1, tzinfo=UTC)
CLIENT = httpx.Client()
GOOD = {
    "content": "Alice prefers invoices by email.",
    "category": "preference",
    "importance": 0.8,
    "entities": ["Alice"],
    "tags": ["billing"],
}


class PairStrategy:
    """A fallback that groups its inputs in pairs, in input order."""

    name = "pairs"

    def __init__(self, *, sources_of_domain: tuple[str, ...] | None = None) -> None:
        self._domain_sources = sources_of_domain

    def traces(self, episodes: Sources) -> list[Draft]:
        return self._pairs("trace", episodes)

    def categories(self, traces: Sources) -> list[Draft]:
        return self._pairs("category", traces)

    def domain(self, user_id: str, categories: Sources) -> Draft:
        sources = self._domain_sources or tuple(r.id for r in categories.records)
        return Draft(
            content=f"fallback profile of {user_id}", sources=sources, category=Category.CONTEXT
        )

    @staticmethod
    def _pairs(level: str, inputs: Sources) -> list[Draft]:
        ids = [r.id for r in inputs.records]
        return [
            Draft(content=f"fallback {level} {i // 2}", sources=tuple(ids[i : i + 2]))
            for i in range(0, len(ids), 2)
        ]


def sources(*contents: str) -> Sources:
    """Records with these contents, each a minute older than the next."""
    records = [
        MemoryRecord(content=c, scope=Scope(user_id="u1"), valid_from=START + timedelta(minutes=i))
        for i, c in enumerate(contents)
    ]
    return Sources(records, np.zeros((len(records), 4), dtype=np.float32))


def strategy(server: ChatServer | None, **settings: Any) -> LlmStrategy:
    """An LlmStrategy on ``server`` (none: no base_url) over PairStrategy, retrying at once."""
    base = {"base_url": server.base_url if server else None, "model": "test-model"}
    return LlmStrategy(
        LlmSettings(**(base | settings)), PairStrategy(), client=CLIENT, retry_wait_s=0.0
    )


def fallbacks(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "consolidation_llm_fallback"]


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def _close_client() -> Iterator[None]:
    yield
    CLIENT.close()


def test_a_valid_reply_writes_each_trace(server: ChatServer) -> None:
    """Each fallback group becomes one request; its draft has the model's text and the group's
    sources, and the request names the model, the key, temperature 0 and a JSON format."""
    server.script(chat(GOOD), chat(GOOD | {"content": "Bob moved to Lyon.", "category": "fact"}))
    episodes = sources("alice likes email", "alice hates paper", "bob moved", "bob in lyon")
    llm = strategy(server, api_key=SecretStr("sk-test"))
    drafts = llm.traces(episodes)
    ids = [r.id for r in episodes.records]
    assert drafts == [
        Draft(
            content="Alice prefers invoices by email.",
            sources=(ids[0], ids[1]),
            category=Category.PREFERENCE,
            importance=0.8,
            entities=("Alice",),
            tags=("billing",),
        ),
        Draft(
            content="Bob moved to Lyon.",
            sources=(ids[2], ids[3]),
            category=Category.FACT,
            importance=0.8,
            entities=("Alice",),
            tags=("billing",),
        ),
    ]
    assert len(server.requests) == 2
    first = server.requests[0]
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.body["model"] == "test-model"
    assert first.body["temperature"] == 0
    assert first.body["response_format"] == {"type": "json_object"}
    user = first.body["messages"][-1]["content"]
    assert "alice likes email" in user
    assert "alice hates paper" in user
    assert "bob moved" not in user
    assert llm.name == "llm"


def test_a_fenced_reply_is_accepted(server: ChatServer) -> None:
    """A JSON object inside a ```json fenced block is read like a bare one."""
    server.script(chat("Here it is:\n```json\n" + json.dumps(GOOD) + "\n```"))
    drafts = strategy(server).traces(sources("one", "two"))
    assert drafts[0].content == GOOD["content"]


def test_invalid_json_is_retried_then_the_draft_falls_back(server: ChatServer) -> None:
    """A reply that is not JSON is retried ``retries`` times, then the fallback's draft is kept
    and the fallback logged with its reason and the attempt count."""
    server.script(*[chat("{not json")] * 3)
    episodes = sources("one", "two")
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, retries=2).traces(episodes)
    assert drafts == PairStrategy().traces(episodes)
    assert len(server.requests) == 3
    [event] = fallbacks(logs)
    assert event["log_level"] == "warning"
    assert (event["level"], event["reason"], event["attempts"]) == ("trace", "invalid_json", 3)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (chat({k: v for k, v in GOOD.items() if k != "content"}), "invalid_reply"),
        (chat(GOOD | {"content": "   "}), "invalid_reply"),
        (chat(GOOD | {"content": "x" * 4001}), "invalid_reply"),
        (chat(GOOD | {"category": "gossip"}), "invalid_reply"),
        (chat(GOOD | {"importance": "very"}), "invalid_reply"),
        (chat(GOOD | {"entities": 5}), "invalid_reply"),
        (chat("[1, 2]"), "invalid_json"),
        (Reply(body=b'{"choices": []}'), "malformed_response"),
        (Reply(body=b"<html>not json</html>"), "malformed_response"),
        (error(404), "http_status"),
    ],
    ids=[
        "missing-content",
        "blank-content",
        "long-content",
        "unknown-category",
        "bad-importance",
        "bad-entities",
        "array",
        "no-choices",
        "html",
        "404",
    ],
)
def test_a_reply_failing_validation_falls_back(
    server: ChatServer, reply: Reply, reason: str
) -> None:
    """A reply the response model rejects (or no usable reply at all) is a failed attempt."""
    server.script(reply)
    episodes = sources("one", "two")
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, retries=0).traces(episodes)
    assert drafts == PairStrategy().traces(episodes)
    assert len(server.requests) == 1
    [event] = fallbacks(logs)
    assert (event["reason"], event["attempts"]) == (reason, 1)


def test_a_reply_slower_than_the_timeout_falls_back(server: ChatServer) -> None:
    """A reply later than ``timeout_s`` counts as failed; after the retries the draft falls back
    without waiting for the slow server."""
    server.script(chat(GOOD, delay_s=5.0), chat(GOOD, delay_s=5.0))
    episodes = sources("one", "two")
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, timeout_s=0.3, retries=1).traces(episodes)
    assert time.monotonic() - started < 3.0
    assert drafts == PairStrategy().traces(episodes)
    assert len(server.requests) == 2
    [event] = fallbacks(logs)
    assert (event["reason"], event["attempts"]) == ("timeout", 2)


def test_a_reply_sent_a_byte_at_a_time_is_cut_off_at_the_timeout(server: ChatServer) -> None:
    """``timeout_s`` bounds the whole request: a server that sends its reply a byte every
    50 ms (about 15 s for this reply) is cut off after about 0.5 s. Each network read was timed
    alone before, so the request took as long as the server dripped."""
    dripping = chat(GOOD)
    server.script(Reply(body=dripping.body, drip_s=0.05))
    episodes = sources("one", "two")
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, timeout_s=0.5, retries=0).traces(episodes)
    assert time.monotonic() - started < 3.0
    assert drafts == PairStrategy().traces(episodes)
    [event] = fallbacks(logs)
    assert (event["reason"], event["detail"]) == ("timeout", "the whole request")


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_timeout(server: ChatServer) -> None:
    """A server that sends even its status line and headers a byte every 50 ms is given up on
    at ``timeout_s`` too (the request runs on a thread of its own): httpx waited for the
    headers read by read, 8 s here with a 0.5 s timeout."""
    server.script(Reply(body=chat(GOOD).body, header_drip_s=0.05))
    episodes = sources("one", "two")
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, timeout_s=0.5, retries=0).traces(episodes)
    assert time.monotonic() - started < 2.5
    assert drafts == PairStrategy().traces(episodes)
    [event] = fallbacks(logs)
    assert (event["reason"], event["detail"]) == ("timeout", "the whole request")


def test_an_endpoint_found_down_is_not_asked_for_a_while(server: ChatServer) -> None:
    """Three drafts in a row whose every attempt timed out stop the asking: the next drafts
    fall back at once (reason ``endpoint_down``, no request), instead of each waiting out its
    timeouts."""
    server.script(*[chat(GOOD, delay_s=5.0)] * 6)
    episodes = sources(*(f"note {n}" for n in range(10)))  # five drafts
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, timeout_s=0.2, retries=1).traces(episodes)
    assert time.monotonic() - started < 3.0
    assert drafts == PairStrategy().traces(episodes)
    assert len(server.requests) == 6  # three drafts, two attempts each
    reasons = [e["reason"] for e in fallbacks(logs)]
    assert reasons == ["timeout"] * 3 + ["endpoint_down"] * 2
    assert any(e["event"] == "consolidation_llm_endpoint_down" for e in logs)


def test_a_reply_nested_too_deep_is_invalid_json(server: ChatServer) -> None:
    """A reply whose content nests past the parser's limit is invalid JSON for that draft
    alone (retried, then the fallback's): it raised RecursionError through the whole step."""
    server.script(chat("[" * 100_000), chat("[" * 100_000), chat(GOOD))
    episodes = sources("one", "two", "three", "four")
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, retries=1).traces(episodes)
    assert drafts[0] == PairStrategy().traces(episodes)[0]
    assert drafts[1].content == GOOD["content"]
    assert [e["reason"] for e in fallbacks(logs)] == ["invalid_json"]


def test_an_http_500_is_retried_and_the_retry_succeeds(server: ChatServer) -> None:
    """A server error followed by a valid reply gives the model's draft, with no fallback."""
    server.script(error(500), chat(GOOD))
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, retries=1).traces(sources("one", "two"))
    assert drafts[0].content == GOOD["content"]
    assert len(server.requests) == 2
    assert not fallbacks(logs)


def test_only_the_failing_draft_falls_back(server: ChatServer) -> None:
    """One group's failure leaves the other groups' model drafts in place."""
    server.script(chat(GOOD), chat(GOOD | {"category": "rumour"}))
    episodes = sources("one", "two", "three", "four")
    drafts = strategy(server, retries=0).traces(episodes)
    assert drafts[0].content == GOOD["content"]
    assert drafts[1] == PairStrategy().traces(episodes)[1]


def test_safe_fixes_are_made_to_a_reply(server: ChatServer) -> None:
    """Importance is clamped, the category matched case-insensitively, invalid or duplicate
    labels dropped, and a lone tag string taken as a list of one."""
    server.script(
        chat(
            GOOD
            | {
                "category": " Preference ",
                "importance": 7,
                "entities": ["Alice", "", "two\nlines", 3, "Alice", "x" * 100, " Bob "],
                "tags": "billing",
                "extra": "ignored",
            }
        ),
        chat(GOOD | {"importance": -0.5}),
    )
    drafts = strategy(server).traces(sources("one", "two", "three", "four"))
    assert drafts[0].category is Category.PREFERENCE
    assert drafts[0].importance == 1.0
    assert drafts[0].entities == ("Alice", "Bob")
    assert drafts[0].tags == ("billing",)
    assert drafts[1].importance == 0.0


def test_categories_ask_once_per_group_and_domain_once(server: ChatServer) -> None:
    """Categories send one request per fallback group; the domain sends one with every category
    and the user id."""
    server.script(chat(GOOD), chat(GOOD), chat(GOOD | {"content": "Alice runs a bakery."}))
    llm = strategy(server)
    traces = sources("t1", "t2", "t3")
    assert [len(d.sources) for d in llm.categories(traces)] == [2, 1]
    categories = sources("c1 about bread", "c2 about invoices")
    profile = llm.domain("alice-1", categories)
    assert profile.content == "Alice runs a bakery."
    assert profile.sources == tuple(r.id for r in categories.records)
    assert len(server.requests) == 3
    messages = server.requests[2].body["messages"]
    assert "alice-1" in messages[0]["content"]
    assert "c1 about bread" in messages[1]["content"]
    assert "c2 about invoices" in messages[1]["content"]


def test_without_a_base_url_everything_falls_back_at_once() -> None:
    """No endpoint configured: the fallback's drafts, a no_endpoint warning, no attempt."""
    llm = strategy(None)
    episodes = sources("one", "two", "three")
    with structlog.testing.capture_logs() as logs:
        assert llm.traces(episodes) == PairStrategy().traces(episodes)
        assert llm.domain("u1", episodes) == PairStrategy().domain("u1", episodes)
    assert [(e["reason"], e["attempts"]) for e in fallbacks(logs)] == [("no_endpoint", 0)] * 3


def test_an_unreachable_endpoint_falls_back() -> None:
    """A refused connection is a transport failure, retried and then fallen back from."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = LlmStrategy(
        LlmSettings(base_url=f"http://127.0.0.1:{port}/v1", retries=1),
        PairStrategy(),
        retry_wait_s=0.0,
    )
    episodes = sources("one", "two")
    with structlog.testing.capture_logs() as logs:
        assert llm.traces(episodes) == PairStrategy().traces(episodes)
    llm.close()
    [event] = fallbacks(logs)
    assert (event["reason"], event["detail"], event["attempts"]) == ("transport", "ConnectError", 2)


def test_no_api_key_sends_no_authorization(server: ChatServer) -> None:
    """Without an api key no Authorization header is sent (local servers need none)."""
    server.script(chat(GOOD))
    strategy(server).traces(sources("one"))
    assert "authorization" not in server.requests[0].headers


def test_fallback_logs_carry_no_content(server: ChatServer) -> None:
    """Whatever failed, no log event holds a source's content, the reply, or the api key."""
    secret = "the vault code is 4512"
    echoed = GOOD | {"content": secret, "category": "gossip"}
    server.script(
        error(500, secret), chat(secret), chat(echoed), chat("```json\n" + secret + "\n```")
    )
    with structlog.testing.capture_logs() as logs:
        drafts = strategy(server, retries=3, api_key=SecretStr("sk-hidden")).traces(
            sources(secret, "another private note")
        )
    assert drafts[0].content == "fallback trace 0"
    assert len(server.requests) == 4
    assert fallbacks(logs)
    text = repr(logs)
    assert "4512" not in text
    assert "private note" not in text
    assert "sk-hidden" not in text


def test_the_prompt_lists_sources_oldest_first(server: ChatServer) -> None:
    """Sources reach the model in valid-time order, whatever order the fallback gave."""
    server.script(chat(GOOD))
    episodes = sources("older fact", "newer fact")
    reversed_inputs = Sources(list(reversed(episodes.records)), episodes.vectors[::-1])
    strategy(server).traces(reversed_inputs)
    user = server.requests[0].body["messages"][-1]["content"]
    assert user.index("older fact") < user.index("newer fact")


def test_a_fallback_draft_naming_an_unknown_input_raises(server: ChatServer) -> None:
    """A fallback breaking the port's contract is StrategyFailed, not a request."""
    llm = LlmStrategy(
        LlmSettings(base_url=server.base_url),
        PairStrategy(sources_of_domain=("not-an-input",)),
        client=CLIENT,
    )
    with pytest.raises(StrategyFailed):
        llm.domain("u1", sources("one"))
    assert not server.requests


def test_prompts_are_bounded() -> None:
    """Many long sources: at most MAX_SOURCES shown, each cut, the total within budget, and the
    rest counted."""
    messages = trace_prompt([f"{i} " + "word " * 5_000 for i in range(100)])
    user = messages[-1]["content"]
    shown = user.splitlines()[1:-1]
    assert len(shown) == MAX_SOURCES
    assert all(len(line) <= MAX_SOURCE_CHARS + 8 for line in shown)
    assert len(user) <= MAX_SOURCES_CHARS + 100 * 8 + 100
    assert user.endswith(f"({100 - MAX_SOURCES} more not shown)")
    assert len(messages[0]["content"]) < 2_000


@pytest.mark.parametrize(
    ("held_back", "reason", "allowed"),
    [
        ({"zone": Zone.INTERNAL}, "zone", {"max_zone": Zone.INTERNAL}),
        ({"compartments": ["hr"]}, "compartments", {"compartments": ["hr"]}),
    ],
)
def test_groups_the_endpoint_may_not_read_never_leave_the_process(
    server: ChatServer, held_back: dict[str, object], reason: str, allowed: dict[str, object]
) -> None:
    """A group holding a record above ``max_zone`` (PUBLIC by default), or of a compartment
    the settings do not name, keeps the fallback's draft and sends nothing; allowing the zone
    or the compartment lets it go."""
    server.script(chat(GOOD))
    episodes = sources("alice likes email", "alice hates paper")
    held = Sources(
        [episodes.records[0], episodes.records[1].model_copy(update=held_back)],
        episodes.vectors,
    )
    with structlog.testing.capture_logs() as logs:
        [draft] = strategy(server).traces(held)
    assert draft.content == "fallback trace 0"
    assert server.requests == []
    assert [e["reason"] for e in fallbacks(logs)] == [reason]
    [draft] = strategy(server, **allowed).traces(held)
    assert draft.content == "Alice prefers invoices by email."
    assert len(server.requests) == 1

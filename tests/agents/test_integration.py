"""``with_memory`` around a real ``openai.OpenAI`` client talking to a local OpenAI-compatible
HTTP server (tests/workers/llm_server.py), over a real memory."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import structlog
from openai.types.chat import ChatCompletion

from hivemem.agents.integration import SOURCE, with_memory
from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.compartments import configure_compartments
from hivemem.pool.enums import Category, Level, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from tests.waiting import wait_for
from tests.workers.llm_server import ChatServer, Reply, chat


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as chat_server:
        yield chat_server


@pytest.fixture
def client(server: ChatServer) -> Iterator[openai.OpenAI]:
    """A real OpenAI client on the local server: no retries, short timeout."""
    with openai.OpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, timeout=10
    ) as real_client:
        yield real_client


def block(*items: dict[str, Any]) -> str:
    return f"<memory>{json.dumps(list(items))}</memory>"


def ask(wrapped: Any, question: str, **kwargs: Any) -> ChatCompletion:
    response: ChatCompletion = wrapped.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": question}], **kwargs
    )
    return response


def memory_message(server: ChatServer, request: int = -1) -> str:
    """The system message the wrapper added to a request the server received."""
    messages = server.requests[request].body["messages"]
    [added] = [m["content"] for m in messages if "<memory>" in m["content"]]
    return str(added)


def test_relevant_memories_are_injected(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """The search hits for the last user message reach the server in a system message placed
    after the caller's own system message."""
    memory.add("Alice prefers green tea", user_id="alice", category="preference")
    memory.add("Alice lives in Lyon", user_id="alice")
    server.script(chat("Green tea, then."))
    wrapped = with_memory(client, user_id="alice", memory=memory)
    wrapped.chat.completions.create(
        model="test-model",
        messages=[
            {"role": "system", "content": "You are a barista."},
            {"role": "user", "content": "Where am I?"},
            {"role": "assistant", "content": "Somewhere."},
            {"role": "user", "content": "What should I drink this afternoon?"},
        ],
    )
    sent = server.requests[0].body["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You are a barista."
    assert "Alice prefers green tea" in sent[1]["content"]
    assert "preference, fact, context" in sent[1]["content"]


def test_a_block_is_stored_and_stripped(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """The block's memories are stored as episodes of the scope with their category and
    importance, and the caller receives the reply without the block."""
    reply = "Noted, oolong it is.\n\n" + block(
        {"content": "Bob prefers oolong tea", "category": "Preference", "importance": 0.9},
        {"content": "Bob decided to quit coffee", "category": "DECISION", "importance": 7},
        {"content": "Bob is in a hurry today", "category": "mood", "importance": "0.2"},
    )
    server.script(chat(reply + "\n"))
    wrapped = with_memory(client, user_id="bob", agent_id="barista", session_id="s1", memory=memory)
    response = ask(wrapped, "I'd like oolong from now on, no more coffee.")
    assert isinstance(response, ChatCompletion)
    assert response.choices[0].message.content == "Noted, oolong it is."
    stored = {r.content: r for r in memory.list_memories(user_id="bob", agent_id="barista")}
    assert set(stored) == {
        "Bob prefers oolong tea",
        "Bob decided to quit coffee",
        "Bob is in a hurry today",
    }
    tea = stored["Bob prefers oolong tea"]
    coffee = stored["Bob decided to quit coffee"]
    hurry = stored["Bob is in a hurry today"]
    assert (tea.category, tea.importance) == (Category.PREFERENCE, 0.9)
    assert (coffee.category, coffee.importance) == (Category.DECISION, 1.0)
    assert (hurry.category, hurry.importance) == (Category.CONTEXT, 0.2)
    for record in stored.values():
        assert record.level is Level.EPISODE
        assert record.metadata == {"source": SOURCE}
        assert (record.scope.user_id, record.scope.session_id, record.scope.agent_id) == (
            "bob",
            "s1",
            "barista",
        )


def test_a_later_call_recalls_what_an_earlier_one_stored(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """What the first reply's block held is injected into the second request."""
    server.script(
        chat("Got it. " + block({"content": "Carol is allergic to peanuts", "category": "fact"})),
        chat("Here is a peanut-free recipe."),
    )
    wrapped = with_memory(client, user_id="carol", agent_id="chef", memory=memory)
    ask(wrapped, "Please remember that I'm allergic to peanuts.")
    assert "Carol is allergic to peanuts" not in memory_message(server, 0)
    ask(wrapped, "Suggest a snack for me, given my allergies.")
    assert "Carol is allergic to peanuts" in memory_message(server, 1)


def test_a_malformed_block_stores_nothing_and_is_stripped(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """Invalid JSON in a block: the reply still comes back without the block, nothing is
    stored, and the warning holds no content."""
    server.script(chat('Sure. <memory>[{"content": "Dave\'s PIN is 8512", </memory>'))
    wrapped = with_memory(client, user_id="dave", memory=memory)
    with structlog.testing.capture_logs() as logs:
        response = ask(wrapped, "My PIN is 8512.")
    assert response.choices[0].message.content == "Sure."
    assert memory.list_memories(user_id="dave") == []
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert (warning["event"], warning["reason"]) == ("memory_block_invalid", "invalid_json")
    assert "8512" not in repr(logs)


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,  # nested past the parser's recursion limit
        '[{"content": "Dave likes tea", "importance": ' + "9" * 5_000 + "}]",  # too many digits
    ],
    ids=["too deep", "a 5000-digit number"],
)
def test_degenerate_model_output_stores_nothing_and_raises_nothing(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory, body: str
) -> None:
    """Output a model may degenerate into: the block is invalid JSON (logged), the reply
    comes back without it. create() raised RecursionError and ValueError before."""
    server.script(chat(f"Sure. <memory>{body}</memory>"))
    response = ask(with_memory(client, user_id="dave", memory=memory), "Remember this.")
    assert response.choices[0].message.content == "Sure."
    assert memory.list_memories(user_id="dave") == []


def test_a_huge_importance_counts_as_none(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """An importance too large for a float is read as no importance (0.5), as a non-number
    is: it raised OverflowError from create() before."""
    huge = int("1" + "0" * 400)
    server.script(chat("Noted. " + block({"content": "Dave likes tea", "importance": huge})))
    ask(with_memory(client, user_id="dave", memory=memory), "I like tea.")
    [stored] = memory.list_memories(user_id="dave")
    assert stored.importance == 0.5


def test_a_reply_that_mentions_the_tag_keeps_its_text(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """An unclosed ``<memory>`` followed by prose is text about the tag: the reply comes back
    whole. Everything after the tag was cut away before."""
    text = "A custom element such as <memory> will not work there. Step 2: run npm install."
    server.script(chat(text))
    response = ask(with_memory(client, user_id="dave", memory=memory), "Can I cache it?")
    assert response.choices[0].message.content == text


def test_several_blocks_are_all_read(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """Every block of a reply is read and removed, the text around them kept in order; the
    valid items of a block survive an invalid sibling."""
    reply = (
        "First part. "
        + block({"content": "Erin works night shifts", "category": "fact"})
        + "\nSecond part.\n"
        + block({"content": "Erin likes jazz", "category": "preference"}, {"category": "fact"})
        + "\n<MEMORY>not json</MEMORY>"
    )
    server.script(chat(reply))
    response = ask(with_memory(client, user_id="erin", memory=memory), "Tell me about music.")
    assert response.choices[0].message.content == "First part.\n\nSecond part."
    stored = {r.content for r in memory.list_memories(user_id="erin")}
    assert stored == {"Erin works night shifts", "Erin likes jazz"}


def test_a_reply_without_block_is_unchanged(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """No block: the reply is returned exactly as sent and nothing is stored."""
    server.script(chat("  Hello!\n"))
    response = ask(with_memory(client, user_id="fay", memory=memory), "Hi")
    assert response.choices[0].message.content == "  Hello!\n"
    assert memory.list_memories(user_id="fay") == []


def test_every_choice_is_stripped_and_a_memory_stored_once(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """With several choices, each loses its block; the same memory in two choices, or one
    already injected, is not stored again."""
    memory.add("Gus owns a cat named Miso", user_id="gus")
    item = {"content": "Gus  plays chess", "category": "fact"}
    repeated = {"content": "gus owns a cat named miso", "category": "entity"}
    choices = [
        {"index": i, "message": {"role": "assistant", "content": f"Choice {i}. " + block(*it)}}
        for i, it in enumerate([(item,), ({**item, "content": "Gus plays chess"}, repeated)])
    ]
    body = {"id": "chatcmpl-test", "object": "chat.completion", "choices": choices}
    server.script(Reply(body=json.dumps(body).encode()))
    response = ask(with_memory(client, user_id="gus", memory=memory), "What about my cat?", n=2)
    assert [c.message.content for c in response.choices] == ["Choice 0.", "Choice 1."]
    contents = sorted(r.content for r in memory.list_memories(user_id="gus"))
    assert contents == ["Gus  plays chess", "Gus owns a cat named Miso"]


def test_the_callers_messages_are_not_changed(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """The messages list and its messages are as the caller built them after the call."""
    memory.add("Hana speaks Japanese", user_id="hana")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Which languages do I speak?"}]},
    ]
    before = copy.deepcopy(messages)
    server.script(chat("Japanese."))
    wrapped = with_memory(client, user_id="hana", memory=memory)
    wrapped.chat.completions.create(model="test-model", messages=messages)
    assert messages == before
    assert "Hana speaks Japanese" in memory_message(server)


def test_other_attributes_are_the_clients(
    client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """Everything but chat.completions.create is the wrapped client's own."""
    wrapped = with_memory(client, user_id="ivy", memory=memory)
    assert wrapped.client is client
    assert wrapped.base_url == client.base_url
    assert wrapped.models is client.models
    assert wrapped.chat.completions.with_raw_response is client.chat.completions.with_raw_response
    assert wrapped.with_options is not None
    assert wrapped.memory is memory


def test_users_are_isolated(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """User V's memories are never injected into user U's requests, and U's block is stored
    under U only."""
    memory.add("Victor's door code is 4711", user_id="victor", importance=1.0)
    server.script(chat("I don't know it. " + block({"content": "Uma forgot her door code"})))
    ask(with_memory(client, user_id="uma", memory=memory), "What is the door code?")
    assert "4711" not in json.dumps(server.requests[0].body)
    assert [r.content for r in memory.list_memories(user_id="victor")] == [
        "Victor's door code is 4711"
    ]
    assert [r.content for r in memory.list_memories(user_id="uma")] == ["Uma forgot her door code"]


def test_zones_bound_what_is_sent_and_what_is_stored(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """A memory above ``max_zone`` is never sent; a memory stored after an INTERNAL one was
    injected is INTERNAL too (no write down)."""
    memory.add("Jon's salary is 90k", user_id="jon", zone=Zone.INTERNAL)
    server.script(chat("No idea."), chat("Right. " + block({"content": "Jon asked for a raise"})))
    ask(with_memory(client, user_id="jon", memory=memory), "What is my salary?")
    assert "90k" not in memory_message(server, 0)
    internal = with_memory(client, user_id="jon", memory=memory, max_zone="internal")
    ask(internal, "Given my salary, should I ask for a raise?")
    assert "90k" in memory_message(server, 1)
    [raise_request] = memory.list_memories(user_id="jon", filter={"categories": ["context"]})
    assert raise_request.zone is Zone.INTERNAL


def test_what_a_later_call_stores_keeps_the_zone_of_what_an_earlier_call_sent(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """The conversation's history brings an INTERNAL memory sent in one call into the next
    request, even when that call's recall does not find it: what the model writes then is
    stored INTERNAL too (the wrapper's zone only rises). It was stored PUBLIC (a write down)."""
    memory.add("Project Falcon's budget is 2.4 million euros", user_id="ali", zone=Zone.INTERNAL)
    for chatter in ("Ali says thanks after each meeting", "Ali signs off with a smiley"):
        memory.add(chatter, user_id="ali")
    server.script(
        chat("It is 2.4 million euros."),
        chat("See you! " + block({"content": "Ali's project Falcon has 2.4 million euros"})),
    )
    wrapped = with_memory(client, user_id="ali", memory=memory, max_zone="internal", top_k=2)
    history = [{"role": "user", "content": "What is the budget of Project Falcon?"}]
    first = wrapped.chat.completions.create(model="test-model", messages=history)
    assert "2.4 million" in memory_message(server, 0)
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "thanks, see you after the meeting!"},
    ]
    wrapped.chat.completions.create(model="test-model", messages=history)
    assert "2.4 million" not in memory_message(server, 1)  # not recalled this time
    [stored] = memory.list_memories(user_id="ali", filter={"where": {
        "field": "metadata.source", "op": "eq", "value": SOURCE}})  # fmt: skip
    assert stored.zone is Zone.INTERNAL


def test_compartment_records_leave_room_for_memories_that_may_be_sent(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """Records of a compartment the wrapper does not list are left out before the top_k cut,
    not after it: twelve better-matching hr records no longer crowd out the one memory that
    may be sent."""
    configure_compartments(("hr",))
    for n in range(12):
        memory.add(f"Eva's salary review number {n} is confidential", user_id="eva",
                   compartments=["hr"])  # fmt: skip
    memory.add("Eva's salary is paid on the 25th", user_id="eva")
    server.script(chat("On the 25th."))
    ask(with_memory(client, user_id="eva", memory=memory, top_k=10), "Eva's salary review?")
    sent = memory_message(server, 0)
    assert "paid on the 25th" in sent
    assert "confidential" not in sent


def test_a_record_in_a_compartment_is_sent_only_when_listed(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """Need-to-know text reaches the model's server only for the compartments the wrapper
    lists (default none), as the workers' LLM strategy does; what is stored after one was
    sent carries its compartment."""
    configure_compartments(("hr", "legal"))
    memory.add("Dana's salary is 250000", user_id="dana", compartments=["hr"])
    memory.add("Dana works in Aarhus", user_id="dana")
    server.script(
        chat("No idea."),
        chat("Still no idea."),
        chat("I see. " + block({"content": "Dana wants a raise"})),
    )
    ask(with_memory(client, user_id="dana", memory=memory), "What is Dana's salary?")
    assert "250000" not in memory_message(server, 0)
    assert "Aarhus" in memory_message(server, 0)
    legal = with_memory(client, user_id="dana", memory=memory, compartments=["legal"])
    hr = with_memory(client, user_id="dana", memory=memory, compartments=["hr"])
    ask(legal, "What is Dana's salary?")
    assert "250000" not in memory_message(server, 1)
    ask(hr, "Should Dana ask for a raise, given her salary?")
    assert "250000" in memory_message(server, 2)
    [stored] = memory.list_memories(user_id="dana", filter={"categories": ["context"]})
    assert stored.compartments == ["hr"]
    with pytest.raises(InvalidInput, match="unknown compartment"):
        with_memory(client, user_id="dana", memory=memory, compartments=["nuclear"])


def test_streaming_and_async_clients_are_refused(
    server: ChatServer, client: openai.OpenAI, memory: HierarchicalMemory
) -> None:
    """stream=True and an asynchronous client raise InvalidInput and send nothing."""
    wrapped = with_memory(client, user_id="kim", memory=memory)
    with pytest.raises(InvalidInput) as streaming:
        ask(wrapped, "Hello", stream=True)
    assert streaming.value.field == "stream"
    async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")
    with pytest.raises(InvalidInput) as asynchronous:
        with_memory(async_client, user_id="kim", memory=memory)
    assert asynchronous.value.field == "client"
    assert server.requests == []


def test_bad_arguments_are_refused(client: openai.OpenAI, memory: HierarchicalMemory) -> None:
    """Invalid ids, budgets and zones, or neither memory nor agent id, raise InvalidInput."""
    bad: list[dict[str, Any]] = [
        {"user_id": "no spaces allowed", "memory": memory},
        {"user_id": "lea", "memory": memory, "top_k": 0},
        {"user_id": "lea", "memory": memory, "token_budget": 0},
        {"user_id": "lea", "memory": memory, "zone": "secret"},
        {"user_id": "lea", "memory": memory, "max_zone": "top"},
        {"user_id": "lea"},
    ]
    for kwargs in bad:
        with pytest.raises(InvalidInput):
            with_memory(client, **kwargs)


def test_a_memory_opened_by_the_wrapper_is_closed_by_it(
    server: ChatServer, client: openai.OpenAI, settings: HivememSettings
) -> None:
    """Without memory=, the wrapper opens <data_dir>/agents/<agent_id> and closes it on exit;
    what it stored is there when the directory is opened again."""
    server.script(chat("OK. " + block({"content": "Max collects stamps"})))
    with with_memory(client, user_id="max", agent_id="wrapper-owned", settings=settings) as wrapped:
        ask(wrapped, "I collect stamps.")
        assert wrapped.memory.path == settings.data_dir / "agents" / "wrapper-owned"
    with HierarchicalMemory(wrapped.memory.path, settings=settings) as reopened:
        [record] = reopened.list_memories(user_id="max")
    assert (record.content, record.scope.agent_id) == ("Max collects stamps", "wrapper-owned")


def test_an_agents_memories_are_shared_through_the_pool(
    server: ChatServer, client: openai.OpenAI, make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """Given a pool agent, the wrapper stores into its memory under its id, and the pool
    delivers what the agent shares to the other agents."""
    pool = make_pool()
    writer = pool.register_agent("writer", share_levels=[Level.EPISODE])
    reader = pool.register_agent("reader")
    assert reader.wait_connected()
    server.script(chat("Noted. " + block({"content": "Nora's invoices go to accounting"})))
    ask(with_memory(client, user_id="nora", memory=writer), "Send my invoices to accounting.")
    assert wait_for(lambda: bool(reader.memory.list_memories(user_id="nora")))
    [received] = reader.memory.list_memories(user_id="nora")
    assert (received.content, received.scope.agent_id) == (
        "Nora's invoices go to accounting",
        "writer",
    )
    assert received.received_from == "writer"


def test_an_item_the_agent_may_not_write_costs_no_reply(
    server: ChatServer, client: openai.OpenAI, make_pool: Callable[..., SharedMemoryPool]
) -> None:
    """A PUBLIC agent's model writes an item the classifier lifts to INTERNAL (an e-mail
    address): the agent may not write it, so it is skipped and logged, the other item is
    stored and the caller gets the reply. The whole call raised PolicyDenied before, after the
    model had answered."""
    agent = make_pool().register_agent("desk", clearance=Zone.PUBLIC)
    server.script(chat("Done. " + block(
        {"content": "Alice's e-mail is alice@example.com"}, {"content": "Alice is vegetarian"}
    )))  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        reply = ask(with_memory(client, user_id="alice", memory=agent), "Note my details.")
    assert reply.choices[0].message.content == "Done."
    assert [r.content for r in agent.memory.list_memories(user_id="alice")] == [
        "Alice is vegetarian"
    ]
    assert any(e["event"] == "memory_item_skipped" and e["reason"] == "PolicyDenied" for e in logs)

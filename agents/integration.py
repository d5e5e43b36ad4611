"""``with_memory``: give any OpenAI-shaped chat client a memory, in one line.

The wrapper's ``chat.completions.create(**kwargs)`` calls the client's with one more system
message: the memories relevant to the last user message (searched in the wrapper's scope, within
a token budget) and how to hand over new memories in a ``<memory>`` block (see
:mod:`hivemem.agents.memory_block`). The model writes them inline, so there is no second model
call. Every block is removed from the reply the caller receives, and what the blocks held is
stored as EPISODE memories of the scope, with ``metadata.source = "with_memory"``. Everything
else, ``chat.completions.with_raw_response`` included, is the client's own, without memory.

Any object with ``client.chat.completions.create(messages=..., ...)`` returning an object with
``choices[i].message.content`` works (``openai.OpenAI``, and the clients of servers that copy its
API); hivemem does not depend on the ``openai`` package. Streaming (``stream=True``) and
asynchronous clients are refused with InvalidInput before any request is sent.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog

from hivemem.agents.agent import Agent
from hivemem.agents.context import build_context
from hivemem.agents.inputs import MemoryInput
from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.memory_block import BlockItem, extract, memory_prompt
from hivemem.agents.ranking import SearchHit
from hivemem.pool.compartments import checked_compartments, missing, union
from hivemem.pool.enums import Level, Zone, checked_zone
from hivemem.pool.errors import HivememError, InvalidInput
from hivemem.pool.filters import MemoryFilter
from hivemem.pool.ids import check_agent_id
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.settings import HivememSettings

log = structlog.get_logger(__name__)

#: ``metadata.source`` of every memory the wrapper stores.
SOURCE = "with_memory"
_LEADING_ROLES = frozenset({"system", "developer"})
#: Most hits a recall asks the search for while looking for ones it may send.
_MAX_ASKED = 1_000


class ChatCompletions(Protocol):
    """``client.chat.completions``: only ``create`` is needed."""

    def create(self, *args: Any, **kwargs: Any) -> Any: ...


class Chat(Protocol):
    """``client.chat``: only ``completions`` is needed."""

    @property
    def completions(self) -> ChatCompletions: ...


class ChatClient(Protocol):
    """An OpenAI-shaped client: ``client.chat.completions.create(...)``."""

    @property
    def chat(self) -> Chat: ...


ClientT = TypeVar("ClientT", bound=ChatClient)


def _field(message: object, name: str) -> object:
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def _text(content: object) -> str:
    """The text of a message's content: a string, or a list of parts of which the text ones
    count (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(_field(p, "text")) for p in content if _field(p, "type") == "text")
    return ""


@dataclass(frozen=True, slots=True)
class _Turn:
    """One call's messages as sent, the zone and compartments its stored memories get, and the
    injected texts."""

    messages: list[Any]
    zone: Zone
    injected: frozenset[str]
    compartments: tuple[str, ...] = ()


class _HighWater:
    """The highest zone and every compartment of what a wrapper sent to the model so far. The
    conversation's history carries that text into later calls (each request sends it again), so
    what the model writes in any later call may come from it. Only rises. Thread-safe."""

    def __init__(self, zone: Zone) -> None:
        self._lock = threading.Lock()
        self.zone = zone
        self.compartments: tuple[str, ...] = ()

    def raised(self, records: Sequence[MemoryRecord]) -> tuple[Zone, tuple[str, ...]]:
        """Raised by ``records`` (sent now); the zone and compartments after."""
        with self._lock:
            self.zone = Zone.highest([self.zone, *(r.zone for r in records)])
            self.compartments = union([self.compartments, *(r.compartments for r in records)])
            return self.zone, self.compartments


@dataclass(frozen=True, slots=True)
class ChatMemory:
    """What happens around one call: recall before it (:meth:`prepare`), storing after it
    (:meth:`absorb`). ``max_zone`` and ``compartments`` bound what is sent to the model (a
    record in a compartment not listed is never sent); ``zone`` is the lowest zone of what is
    stored, raised to the highest zone this wrapper has injected so far, and what is stored
    carries the compartments of everything it injected (no write down: the conversation's
    history brings what one call injected into every later one)."""

    memory: HierarchicalMemory
    scope: Scope
    top_k: int = 10
    token_budget: int = 800
    zone: Zone = Zone.PUBLIC
    max_zone: Zone = Zone.PUBLIC
    compartments: tuple[str, ...] = ()
    seen: _HighWater = field(default_factory=lambda: _HighWater(Zone.PUBLIC))

    def prepare(self, messages: list[Any]) -> _Turn:
        """``messages`` with the memory system message after the leading system (and developer)
        messages; the caller's list and messages are left untouched."""
        users = [m for m in messages if _field(m, "role") == "user"]
        query = _text(_field(users[-1], "content")) if users else ""
        text, injected = "", frozenset[str]()
        records: list[MemoryRecord] = []
        if query.strip():
            context = build_context(self._recalled(query), token_budget=self.token_budget)
            records = [h.record for h in context.hits]
            text = context.text
            injected = frozenset(_key(r.content) for r in records)
        zone, compartments = self.seen.raised(records)
        at = 0
        while at < len(messages) and _field(messages[at], "role") in _LEADING_ROLES:
            at += 1
        sent = [*messages[:at], memory_prompt(text), *messages[at:]]
        log.debug("memories_injected", memories=len(injected), user_id=self.scope.user_id)
        return _Turn(sent, Zone.highest([self.zone, zone]), injected, compartments)

    def _recalled(self, query: str) -> list[SearchHit]:
        """The best ``top_k`` hits of ``query`` that may be sent: of zones up to ``max_zone``
        and compartments all held. Compartments are no search filter, so the search asks for
        more hits while those it found filled its limit and too few of them may be sent."""
        readable = MemoryFilter(zones=[z for z in Zone if z <= self.max_zone])
        asked = self.top_k
        while True:
            hits = self.memory.search(query, scope=self.scope, top_k=asked, filter=readable)
            allowed = [h for h in hits if not missing(self.compartments, h.record.compartments)]
            if len(allowed) >= self.top_k or len(hits) < asked or asked >= _MAX_ASKED:
                return allowed[: self.top_k]
            asked = min(asked * 4, _MAX_ASKED)

    def absorb(self, response: Any, turn: _Turn) -> list[MemoryRecord]:
        """Strip the blocks from every choice of ``response`` (in place) and store what they
        held, once per distinct content and never what was injected. Returns the stored records."""
        items: dict[str, BlockItem] = {}
        for choice in getattr(response, "choices", None) or ():
            message = getattr(choice, "message", None)
            content = getattr(message, "content", None)
            if message is None or not isinstance(content, str):
                continue
            extraction = extract(content)
            if extraction.blocks:
                message.content = extraction.visible
            for item in extraction.items:
                if _key(item.content) not in turn.injected:
                    items.setdefault(_key(item.content), item)
        if not items:
            return []
        limit = self.memory.settings.memory.max_content_chars
        inputs = [
            MemoryInput(
                content=item.content,
                level=Level.EPISODE,
                category=item.category,
                importance=item.importance,
                zone=turn.zone,
                compartments=list(turn.compartments),
                metadata={"source": SOURCE},
            )
            for item in items.values()
            if len(item.content) <= limit
        ]
        if len(inputs) < len(items):
            log.warning("memory_item_skipped", reason="too_long", items=len(items) - len(inputs))
        try:
            stored = self.memory.add_many(inputs, scope=self.scope, progress=False)
        except HivememError:  # one item refused (lifted above the agent's clearance...)
            stored = [record for item in inputs if (record := self._stored(item)) is not None]
        log.info("memories_extracted", stored=len(stored), user_id=self.scope.user_id)
        return stored

    def _stored(self, item: MemoryInput) -> MemoryRecord | None:
        """``item`` stored alone, or None when the memory refuses it (logged: the model's reply
        still reaches the caller, whatever its block held)."""
        try:
            return self.memory.add_many([item], scope=self.scope, progress=False)[0]
        except HivememError as error:
            log.warning("memory_item_skipped", reason=type(error).__name__,
                        user_id=self.scope.user_id)  # fmt: skip
            return None


def _key(content: str) -> str:
    return " ".join(content.split()).casefold()


class _Completions:
    def __init__(self, client: ChatClient, memory: ChatMemory) -> None:
        self._client = client
        self._memory = memory

    def create(self, **kwargs: Any) -> Any:
        """The client's ``create`` with memory; same arguments, same return type."""
        if kwargs.get("stream"):
            raise InvalidInput("with_memory does not support stream=True", field="stream")
        if "messages" not in kwargs:
            raise InvalidInput("create needs messages=", field="messages")
        turn = self._memory.prepare(list(kwargs["messages"]))
        response = self._client.chat.completions.create(**{**kwargs, "messages": turn.messages})
        if inspect.iscoroutine(response):
            response.close()  # never awaited: no request was sent
            raise InvalidInput("with_memory needs a synchronous client", field="client")
        self._memory.absorb(response, turn)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client.chat.completions, name)


class _Chat:
    def __init__(self, client: ChatClient, memory: ChatMemory) -> None:
        self._client = client
        self.completions = _Completions(client, memory)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client.chat, name)


class MemoryClient(Generic[ClientT]):
    """The wrapped client (see :func:`with_memory`). ``client`` is the original, ``memory``
    the memory it recalls from and stores to, ``scope`` where; any attribute this class does
    not define is the client's. close() closes the memory the wrapper opened itself (none when
    one was given) and never the client."""

    def __init__(
        self, client: ClientT, chat_memory: ChatMemory, owned: HierarchicalMemory | None
    ) -> None:
        self.client = client
        self.memory = chat_memory.memory
        self.scope = chat_memory.scope
        self.chat = _Chat(client, chat_memory)
        self._owned = owned

    def __getattr__(self, name: str) -> Any:
        if name == "client":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.client, name)

    def close(self) -> None:
        """Close the memory opened by :func:`with_memory`, if it opened one; idempotent."""
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> MemoryClient[ClientT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def with_memory(
    client: ClientT,
    *,
    user_id: str,
    agent_id: str | None = None,
    session_id: str | None = None,
    memory: HierarchicalMemory | Agent | None = None,
    settings: HivememSettings | None = None,
    top_k: int = 10,
    token_budget: int = 800,
    zone: Zone | str = Zone.PUBLIC,
    max_zone: Zone | str = Zone.PUBLIC,
    compartments: Sequence[str] = (),
) -> MemoryClient[ClientT]:
    """Wrap ``client`` so that its chat completions recall and store memories of the scope
    (``user_id``, ``session_id``, ``agent_id``).

    ``memory`` is a HierarchicalMemory or a pool Agent (its memory; what is stored is shared
    through the pool by the agent's share levels; ``agent_id`` defaults to the agent's). Without
    it the wrapper opens ``<settings.data_dir>/agents/<agent_id>`` and closes it on close();
    ``settings`` defaults to ``HivememSettings()``. At most ``top_k`` memories, within
    ``token_budget`` estimated tokens, are injected per call, only of zones up to ``max_zone``
    (their text goes to the model's server), and of records whose compartments are all in
    ``compartments`` (default none: a record in any compartment is never sent); stored
    memories get ``zone`` or the highest zone injected with them. Raises InvalidInput (nothing
    opened) for a bad argument or an asynchronous client."""
    if isinstance(memory, Agent):
        agent_id = agent_id or memory.agent_id
        memory = memory.memory
    scope = Scope(user_id=user_id, session_id=session_id, agent_id=agent_id)
    if not 1 <= top_k <= 1_000:
        raise InvalidInput("top_k must be in 1..1000", field="top_k")
    if token_budget < 1:
        raise InvalidInput("token_budget must be positive", field="token_budget")
    lowest, highest = checked_zone(zone), checked_zone(max_zone)
    if lowest > highest:
        raise InvalidInput(
            "zone is above max_zone: stored memories would never be recalled", field="zone"
        )
    sendable = checked_compartments(compartments)
    if inspect.iscoroutinefunction(inspect.unwrap(client.chat.completions.create)):
        raise InvalidInput("with_memory needs a synchronous client", field="client")
    owned = None
    if memory is None:
        if agent_id is None:
            raise InvalidInput("give memory= or an agent_id to open one", field="agent_id")
        settings = settings or HivememSettings()
        owned = memory = HierarchicalMemory(
            settings.data_dir / "agents" / check_agent_id(agent_id), settings=settings
        )
    chat_memory = ChatMemory(
        memory, scope, top_k, token_budget, lowest, highest, sendable, _HighWater(lowest)
    )
    return MemoryClient(client, chat_memory, owned)

"""The LLM consolidation strategy: any OpenAI-compatible chat endpoint writes what each group says.

Grouping stays with the fallback strategy (the offline one clusters by embedding,
deterministically); for each of its drafts the model is asked, with the draft's source contents
(oldest first), to write the content and classification (prompts in :mod:`hivemem.workers.prompts`).
The draft keeps the fallback's sources, so ids derived from them are the same whichever wrote it.

Each draft costs one request, ``POST {base_url}/chat/completions`` with temperature 0 and a JSON
response format. A request that fails (HTTP error or status, timeout, a reply that is not JSON or
fails its response model) is retried ``retries`` times; then that draft alone falls back to the
fallback's draft, and ``consolidation_llm_fallback`` is logged with the reason and the attempt
count, never any content. Without a ``base_url`` every draft falls back without a request.

``timeout_s`` bounds each whole request (a server that sends its reply a byte at a time is cut
off there), and a reply is read up to :data:`MAX_REPLY_BYTES`. When :data:`BREAKER_DRAFTS`
drafts in a row found the endpoint down (every attempt timed out or could not connect), the
strategy stops asking it for :data:`BREAKER_S` seconds (``consolidation_llm_endpoint_down``):
meanwhile drafts fall back at once (reason ``endpoint_down``), so a consolidation does not wait
out every draft's timeouts in turn.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import structlog
from pydantic import ValidationError

from hivemem.pool.compartments import missing
from hivemem.pool.errors import StrategyFailed
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import LlmSettings
from hivemem.workers.prompts import (
    CategoryReply,
    DomainReply,
    DraftReply,
    Messages,
    TraceReply,
    category_prompt,
    domain_prompt,
    trace_prompt,
)
from hivemem.workers.strategy import ConsolidationStrategy, Draft, Sources

log = structlog.get_logger(__name__)

#: Failures worth a pause before the retry (the endpoint is down or busy, not the reply bad).
_WAIT_BEFORE_RETRY = frozenset({"http_status", "timeout", "transport"})
#: Failures that say the endpoint is out of reach or hung, not that a reply was bad.
_DOWN = frozenset({"timeout", "transport"})
#: Drafts in a row whose every attempt found the endpoint down before the strategy stops asking
#: it (each such draft costs ``timeout_s`` per attempt, plus the pauses).
BREAKER_DRAFTS = 3
#: How long it stops asking then (seconds): drafts fall back at once; the first draft after
#: that asks again.
BREAKER_S = 60.0
#: What a request may take beyond ``timeout_s`` before it is given up on (its own deadline
#: check, reading the body, comes first).
_DEADLINE_GRACE_S = 0.5
#: The largest reply body read (bytes); a larger one is a failed attempt.
MAX_REPLY_BYTES = 4 * 1024 * 1024
_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL | re.IGNORECASE)


class _AttemptFailed(StrategyFailed):
    """One request gave nothing usable. ``reason`` is a short code and ``detail`` names fields,
    statuses or exception classes: both are safe to log (never content)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class LlmStrategy:
    """A :class:`~hivemem.workers.strategy.ConsolidationStrategy` writing drafts with an LLM.

    ``client`` is used as given (and left open); without one the strategy makes its own, closed by
    :meth:`close`. ``retry_wait_s`` is the pause before the first retry after an HTTP or network
    failure, doubled before each further one (a bad reply is retried at once).
    """

    name = "llm"

    def __init__(
        self,
        settings: LlmSettings,
        fallback: ConsolidationStrategy,
        *,
        client: httpx.Client | None = None,
        retry_wait_s: float = 0.5,
    ) -> None:
        self._settings = settings
        self._fallback = fallback
        self._url = None if settings.base_url is None else settings.base_url.rstrip("/")
        self._owns_client = client is None and self._url is not None
        self._client = httpx.Client() if self._owns_client else client
        self._retry_wait_s = retry_wait_s
        self._lock = threading.Lock()
        #: Drafts in a row that found the endpoint down, and until when it is not asked.
        self._down_drafts = 0
        self._down_until = 0.0

    def close(self) -> None:
        """Close the HTTP client if the strategy made it."""
        if self._owns_client and self._client is not None:
            self._client.close()

    def traces(self, episodes: Sources) -> list[Draft]:
        """The fallback's groups of episodes, each trace written by the model."""
        drafts = self._fallback.traces(episodes)
        return [self._rewrite("trace", d, episodes, trace_prompt, TraceReply) for d in drafts]

    def categories(self, traces: Sources) -> list[Draft]:
        """The fallback's groups of traces, each category written by the model."""
        drafts = self._fallback.categories(traces)
        return [
            self._rewrite("category", d, traces, category_prompt, CategoryReply) for d in drafts
        ]

    def domain(self, user_id: str, categories: Sources) -> Draft:
        """The fallback's domain draft, its profile written by the model."""
        draft = self._fallback.domain(user_id, categories)

        def prompt(contents: Sequence[str]) -> Messages:
            return domain_prompt(user_id, contents)

        return self._rewrite("domain", draft, categories, prompt, DomainReply)

    def _rewrite(
        self,
        level: str,
        draft: Draft,
        inputs: Sources,
        prompt: Callable[[Sequence[str]], Messages],
        reply_model: type[DraftReply],
    ) -> Draft:
        """``draft`` with the model's content and classification, or unchanged (and logged) when
        the model gave nothing valid. Raises StrategyFailed if the draft names an unknown input."""
        if self._url is None or self._client is None:
            log.warning("consolidation_llm_fallback", level=level, reason="no_endpoint", attempts=0)
            return draft
        sources = _sources_of(draft, inputs)
        if any(r.zone > self._settings.max_zone for r in sources):
            log.warning("consolidation_llm_fallback", level=level, reason="zone", attempts=0)
            return draft
        if any(missing(self._settings.compartments, r.compartments) for r in sources):
            log.warning(
                "consolidation_llm_fallback", level=level, reason="compartments", attempts=0
            )
            return draft
        if time.monotonic() < self._down_until:
            log.warning("consolidation_llm_fallback", level=level, reason="endpoint_down",
                        attempts=0)  # fmt: skip
            return draft
        messages = prompt([r.content for r in sources])
        attempts = 0
        failure = _AttemptFailed("no_attempt")
        for attempts in range(1, self._settings.retries + 2):
            try:
                reply = self._ask_by_deadline(self._client, self._url, messages, reply_model)
            except _AttemptFailed as exc:
                failure = exc
                log.debug(
                    "consolidation_llm_attempt_failed",
                    level=level,
                    reason=exc.reason,
                    detail=exc.detail,
                    attempt=attempts,
                )
                if attempts <= self._settings.retries and exc.reason in _WAIT_BEFORE_RETRY:
                    time.sleep(self._retry_wait_s * 2 ** (attempts - 1))
                continue
            self._reached(down=False)
            return Draft(
                content=reply.content,
                sources=draft.sources,
                category=reply.category,
                importance=reply.importance,
                tags=reply.tags,
                entities=reply.entities,
            )
        log.warning(
            "consolidation_llm_fallback",
            level=level,
            reason=failure.reason,
            detail=failure.detail,
            attempts=attempts,
            sources=len(draft.sources),
            model=self._settings.model,
        )
        self._reached(down=failure.reason in _DOWN)
        return draft

    def _reached(self, *, down: bool) -> None:
        """Count a draft that found the endpoint ``down`` (every attempt timed out or could not
        connect) or not; the :data:`BREAKER_DRAFTS`-th in a row stops the asking for a while."""
        with self._lock:
            self._down_drafts = self._down_drafts + 1 if down else 0
            if self._down_drafts >= BREAKER_DRAFTS:
                self._down_drafts = 0
                self._down_until = time.monotonic() + BREAKER_S
                log.warning("consolidation_llm_endpoint_down", model=self._settings.model,
                            drafts=BREAKER_DRAFTS, pause_s=BREAKER_S)  # fmt: skip

    def _ask_by_deadline(
        self, client: httpx.Client, url: str, messages: Messages, reply_model: type[DraftReply]
    ) -> DraftReply:
        """:meth:`_ask` on a thread of its own, given up on (``timeout``) once ``timeout_s``
        has passed: httpx times each network read alone, so a server that sends its headers a
        byte at a time would hold this thread as long as it likes. The thread given up on ends
        when the server does, or at httpx's own timeout between two bytes."""
        outcome: list[DraftReply | BaseException] = []

        def ask() -> None:
            try:
                outcome.append(self._ask(client, url, messages, reply_model))
            except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
                outcome.append(error)

        thread = threading.Thread(target=ask, name="hivemem-llm-request", daemon=True)
        thread.start()
        thread.join(self._settings.timeout_s + _DEADLINE_GRACE_S)
        if not outcome:
            raise _AttemptFailed("timeout", "the whole request")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _ask(
        self, client: httpx.Client, url: str, messages: Messages, reply_model: type[DraftReply]
    ) -> DraftReply:
        """One request to ``{url}/chat/completions``: the validated reply, or _AttemptFailed
        saying why not."""
        headers: dict[str, str] = {}
        if self._settings.api_key is not None:
            headers["Authorization"] = f"Bearer {self._settings.api_key.get_secret_value()}"
        body = {
            "model": self._settings.model,
            "messages": messages,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        }
        timeout_s = self._settings.timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            with client.stream(
                "POST", f"{url}/chat/completions", json=body, headers=headers, timeout=timeout_s
            ) as response:
                response.raise_for_status()
                raw = _read(response, deadline)
        except httpx.HTTPStatusError as exc:
            raise _AttemptFailed("http_status", str(exc.response.status_code)) from None
        except httpx.TimeoutException as exc:
            raise _AttemptFailed("timeout", type(exc).__name__) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _AttemptFailed("transport", type(exc).__name__) from None
        try:
            return reply_model.model_validate(_reply_object(raw))
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            fields = ", ".join(f"{'.'.join(map(str, e['loc'])) or '-'}:{e['type']}" for e in errors)
            raise _AttemptFailed("invalid_reply", fields) from None


def _sources_of(draft: Draft, inputs: Sources) -> list[MemoryRecord]:
    """The records ``draft`` consolidates, oldest first."""
    by_id = {r.id: r for r in inputs.records}
    unknown = [s for s in draft.sources if s not in by_id]
    if unknown:
        raise StrategyFailed(f"the fallback's draft names {len(unknown)} sources not in its input")
    records = [by_id[s] for s in draft.sources]
    return sorted(records, key=lambda r: (r.valid_from, r.recorded_at))


def _read(response: httpx.Response, deadline: float) -> bytes:
    """The body of ``response``, read by ``deadline`` (``time.monotonic``) and up to
    :data:`MAX_REPLY_BYTES`; else _AttemptFailed (``timeout``, ``reply_too_large``)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise _AttemptFailed("reply_too_large", f"over {MAX_REPLY_BYTES} bytes")
        if time.monotonic() > deadline:
            raise _AttemptFailed("timeout", "the whole request")
        chunks.append(chunk)
    return b"".join(chunks)


def _reply_object(raw: bytes) -> Any:
    """The JSON object in ``choices[0].message.content`` (a ```json fenced block is accepted)."""
    try:
        text = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError, RecursionError):
        raise _AttemptFailed("malformed_response") from None
    if not isinstance(text, str):
        raise _AttemptFailed("malformed_response", "content is not text")
    fenced = _FENCED.search(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        raise _AttemptFailed("invalid_json") from None
    if not isinstance(value, dict):
        raise _AttemptFailed("invalid_json", f"a JSON {type(value).__name__}, not an object")
    return value

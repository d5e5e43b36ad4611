"""The context builder: relevant memories as a prompt section, under a token budget.

Memories are taken in relevance order until the budget is spent, then rendered grouped by level
(most abstract first: domain, category, trace, episode) or by scope (user-wide first, then
session, agent and run specific). Tokens are estimated as one per four characters unless a
``count_tokens`` function is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from hivemem.agents.ranking import SearchHit
from hivemem.pool.enums import Level
from hivemem.pool.errors import InvalidInput
from hivemem.pool.records import MemoryRecord

GroupBy = Literal["level", "scope"]
_LEVEL_TITLES = {
    Level.DOMAIN: "Profile",
    Level.CATEGORY: "Known concepts",
    Level.TRACE: "Patterns",
    Level.EPISODE: "Episodes",
}
_SCOPE_TITLES = ("User", "Session", "Agent", "Run")


def estimate_tokens(text: str) -> int:
    """A rough token count: one token per four characters, at least one."""
    return max(1, (len(text) + 3) // 4)


@dataclass(frozen=True, slots=True)
class BuiltContext:
    """The prompt section, the hits it holds and its estimated token count."""

    text: str
    hits: tuple[SearchHit, ...]
    tokens: int


def _line(record: MemoryRecord) -> str:
    """One memory on one line: its whitespace (line breaks included) collapsed, so that a
    memory's text cannot start lines of its own (a heading, another dated memory)."""
    date = record.valid_from.date().isoformat()
    return f"- [{date}] {' '.join(record.content.split())}"


def _scope_group(record: MemoryRecord) -> str:
    scope = record.scope
    if scope.run_id is not None:
        return "Run"
    if scope.agent_id is not None and scope.session_id is None:
        return "Agent"
    if scope.session_id is not None:
        return "Session"
    return "User"


def build_context(
    hits: Sequence[SearchHit],
    *,
    token_budget: int,
    group_by: GroupBy = "level",
    title: str = "Relevant memories",
    count_tokens: Callable[[str], int] = estimate_tokens,
) -> BuiltContext:
    """Render ``hits`` (best first) into at most ``token_budget`` tokens. InvalidInput when
    ``count_tokens`` gives anything but a non-negative int."""
    count_tokens = _checked_counter(count_tokens)
    header = f"## {title}"
    used = count_tokens(header)
    chosen: list[SearchHit] = []
    for hit in hits:
        cost = count_tokens(_line(hit.record)) + 1
        if used + cost > token_budget:
            continue
        chosen.append(hit)
        used += cost
    while chosen:  # group headings cost tokens too: drop the least relevant until it fits
        text = _render(header, chosen, group_by)
        tokens = count_tokens(text)
        if tokens <= token_budget:
            return BuiltContext(text, tuple(chosen), tokens)
        chosen.pop()
    return BuiltContext("", (), 0)


def _checked_counter(count_tokens: Callable[[str], int]) -> Callable[[str], int]:
    def checked(text: str) -> int:
        tokens = count_tokens(text)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise InvalidInput(
                f"count_tokens must return a non-negative int, not {str(tokens)[:40]!r}",
                field="count_tokens",
            )
        return tokens

    return checked


def _render(header: str, chosen: Sequence[SearchHit], group_by: GroupBy) -> str:
    if group_by == "level":
        groups = {
            title: [h for h in chosen if h.record.level is level]
            for level, title in _LEVEL_TITLES.items()
        }
    else:
        groups = {
            name: [h for h in chosen if _scope_group(h.record) == name] for name in _SCOPE_TITLES
        }
    lines = [header]
    for name, members in groups.items():
        if members:
            lines.append(f"### {name}")
            lines.extend(_line(h.record) for h in members)
    return "\n".join(lines)

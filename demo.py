"""The main job for now: a short scenario on one agent's local memory, printed readably.

Two users, two sessions, a fact that changes (supersession and its history), a filtered search,
the context built for a prompt, session end bubbling, and stats. Returns 0 only when every step
behaved as expected.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.enums import Category, Level
from hivemem.pool.settings import HivememSettings

_CONVERSATION = [
    ("alice", "s1", "Alice prefers green tea and never drinks coffee.", Category.PREFERENCE, 0.8),
    (
        "alice",
        "s1",
        "Alice is planning a hiking trip to the Dolomites in July.",
        Category.EVENT,
        0.6,
    ),
    ("alice", "s1", "Alice lives in Lyon.", Category.FACT, 0.7),
    (
        "alice",
        "s1",
        "Alice asked for vegetarian restaurant ideas near the station.",
        Category.CONTEXT,
        0.3,
    ),
    ("bob", "s9", "Bob is allergic to peanuts.", Category.FACT, 0.9),
    ("bob", "s9", "Bob drinks two espressos every morning.", Category.PREFERENCE, 0.5),
]


def _check(console: Console, ok: bool, what: str) -> bool:
    console.print(f"[{'green' if ok else 'red'}]{'✓' if ok else '✗'}[/] {what}")
    return ok


def run_demo(settings: HivememSettings, console: Console | None = None) -> int:
    """Run the scenario in a fresh directory; 0 when every check passed, 1 otherwise."""
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="hivemem-demo-"))
    checks: list[bool] = []
    try:
        console.rule("[bold]hivemem: one agent's local hierarchical memory")
        with HierarchicalMemory(workdir / "agent", settings=settings) as memory:
            for user, session, text, category, importance in _CONVERSATION:
                memory.add(
                    text,
                    user_id=user,
                    session_id=session,
                    category=category,
                    importance=importance,
                    level=Level.EPISODE,
                )
            console.print(f"Added {len(_CONVERSATION)} episodes for two users.")

            hits = memory.search("what does she like to drink?", user_id="alice", session_id="s1")
            table = Table("score", "similarity", "memory", title="Search as alice, session s1")
            for hit in hits[:3]:
                table.add_row(f"{hit.score:.3f}", f"{hit.similarity or 0:.3f}", hit.record.content)
            console.print(table)
            checks.append(
                _check(
                    console, "green tea" in hits[0].record.content, "best hit is the tea preference"
                )
            )
            checks.append(
                _check(
                    console,
                    all(h.record.scope.user_id == "alice" for h in hits),
                    "no memory of bob is visible to alice",
                )
            )

            moved = memory.search("where does alice live", user_id="alice", top_k=1)[0].record
            new = memory.supersede(moved.id, "Alice moved from Lyon to Berlin.")
            history = memory.get_history(new.id)
            console.print("History: " + " → ".join(r.content for r in history))
            checks.append(
                _check(
                    console,
                    [r.id for r in history] == [moved.id, new.id],
                    "the changed fact keeps both versions",
                )
            )
            now_hit = memory.search("where does alice live", user_id="alice", top_k=1)[0]
            checks.append(
                _check(console, now_hit.record.id == new.id, "search returns the current version")
            )
            then_hit = memory.search(
                "where does alice live", user_id="alice", top_k=1, as_of=moved.recorded_at
            )[0]
            checks.append(
                _check(
                    console,
                    then_hit.record.id == moved.id,
                    "as_of the old time returns the old version",
                )
            )

            prefs = memory.search("drinks", user_id="bob", filter={"categories": ["preference"]})
            checks.append(
                _check(
                    console,
                    [h.record.category for h in prefs] == [Category.PREFERENCE],
                    "a category filter narrows bob's results to preferences",
                )
            )

            bubbled = memory.end_session(user_id="alice", session_id="s1")
            console.print(
                f"Session s1 ended: {len(bubbled)} important memories moved to alice's user scope."
            )
            checks.append(
                _check(
                    console,
                    bool(bubbled) and all(r.scope.session_id is None for r in bubbled),
                    "important session memories bubble up to user scope",
                )
            )

            context = memory.build_context(
                "plan a trip for alice", user_id="alice", token_budget=80
            )
            console.print(context.text)
            checks.append(
                _check(
                    console,
                    0 < context.tokens <= 80,
                    f"context fits its budget ({context.tokens} tokens)",
                )
            )

            stats = memory.stats()
            table = Table("count", "by level", "by tier", "by user", title="Stats")
            table.add_row(
                str(stats.total), str(stats.by_level), str(stats.by_tier), str(stats.by_user)
            )
            console.print(table)
            expected_alice = 4 + 1 + len(bubbled)  # episodes, the new version, the bubbled copies
            checks.append(
                _check(
                    console,
                    stats.by_user == {"alice": expected_alice, "bob": 2},
                    "stats count every version of every memory",
                )
            )
        with HierarchicalMemory(workdir / "agent", settings=settings) as reopened:
            checks.append(
                _check(
                    console,
                    reopened.stats().total == stats.total,
                    "reopening the directory sees everything",
                )
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    passed = sum(checks)
    console.rule(f"{passed}/{len(checks)} checks passed")
    return 0 if passed == len(checks) else 1

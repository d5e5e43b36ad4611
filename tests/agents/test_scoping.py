"""Scope inheritance, exact scopes, and users as a hard partition."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivemem.agents.memory import HierarchicalMemory


def _contents(hits: list) -> set[str]:  # type: ignore[type-arg]
    return {h.record.content for h in hits}


def test_narrow_queries_see_broader_memories(memory: HierarchicalMemory) -> None:
    """A query in (user, session, agent) sees user-level, its session's and its agent's
    memories, and none of another session or agent."""
    memory.add("user level: likes chess", user_id="u1")
    memory.add("session s1: asked about openings", user_id="u1", session_id="s1")
    memory.add("session s2: asked about endgames", user_id="u1", session_id="s2")
    memory.add("agent coach: suggested puzzles", user_id="u1", agent_id="coach")
    memory.add("agent other: suggested a tournament", user_id="u1", agent_id="other")
    memory.add("coach in s1: reviewed a game", user_id="u1", session_id="s1", agent_id="coach")
    seen = _contents(
        memory.search("chess", user_id="u1", session_id="s1", agent_id="coach", top_k=20)
    )
    assert seen == {
        "user level: likes chess",
        "session s1: asked about openings",
        "agent coach: suggested puzzles",
        "coach in s1: reviewed a game",
    }
    assert _contents(memory.search("chess", user_id="u1", top_k=20)) == {
        r.content for r in memory.list_memories(user_id="u1")
    }


def test_exact_scope_matches_only_that_scope(memory: HierarchicalMemory) -> None:
    """With exact_scope the record's scope must equal the query's, unset ids included."""
    memory.add("user level", user_id="u1")
    memory.add("in session", user_id="u1", session_id="s1")
    assert _contents(memory.search("level session", user_id="u1", exact_scope=True)) == {
        "user level"
    }
    exact = memory.search("level session", user_id="u1", session_id="s1", exact_scope=True)
    assert _contents(exact) == {"in session"}


def test_a_filter_cannot_widen_the_user_partition(memory: HierarchicalMemory) -> None:
    """Even a filter that asks for another user's records returns only the query user's."""
    memory.add("alice secret plan", user_id="alice")
    memory.add("bob secret plan", user_id="bob")
    sneaky = {
        "where": {
            "any": [
                {"field": "scope.user_id", "op": "eq", "value": "bob"},
                {"field": "scope.user_id", "op": "ne", "value": "alice"},
            ]
        }
    }
    assert memory.search("secret plan", user_id="alice", filter=sneaky) == []
    assert memory.list_memories(user_id="alice", filter=sneaky) == []


users = st.sampled_from(["ann", "ben", "cat"])
sessions = st.sampled_from([None, "s1", "s2"])


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.lists(
        st.tuples(users, sessions, st.sampled_from(["tea", "tax", "trip"])), max_size=12
    ),
    reader=users,
    session=sessions,
)
def test_no_query_of_one_user_returns_another_users_memory(
    memory: HierarchicalMemory,
    writes: list[tuple[str, str | None, str]],
    reader: str,
    session: str | None,
) -> None:
    """Whatever was written, search, list and context for user U hold only U's records."""
    memory.clear()
    for user, sess, word in writes:
        memory.add(f"{user} talked about {word}", user_id=user, session_id=sess)
    for word in ("tea", "tax", "trip"):
        for hit in memory.search(word, user_id=reader, session_id=session, top_k=50):
            assert hit.record.scope.user_id == reader
    for record in memory.list_memories(user_id=reader, session_id=session):
        assert record.scope.user_id == reader
    context = memory.build_context("tea tax trip", user_id=reader, session_id=session)
    assert all(h.record.scope.user_id == reader for h in context.hits)

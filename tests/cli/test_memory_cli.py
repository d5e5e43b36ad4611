"""``hivemem memory``: acting as a registered agent on its memory, against a real Redis."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from hivemem.agents.agent import Agent
from hivemem.agents.embedding import FastEmbedder
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from tests.cli.conftest import Run


@pytest.fixture
def alice(hivemem: Run, agent_id: Callable[[str], str]) -> str:
    """A registered agent that shares its episodes."""
    name = agent_id("alice")
    assert (
        hivemem("agents", "register", name, "--clearance", "internal", "--share", "episode").code
        == 0
    )
    return name


def add(hivemem: Run, agent: str, text: str, *options: str) -> str:
    done = hivemem("memory", "add", "--agent", agent, *options, text)
    assert done.code == 0, done.err
    return done.out.strip()


def test_add_then_search_finds_it(hivemem: Run, alice: str) -> None:
    """add prints the new id; search returns it first, with its score and record as JSON."""
    tea = add(
        hivemem, alice, "Alice prefers green tea", "--user", "u1", "--category", "preference",
        "--importance", "0.9", "--tag", "drinks", "--zone", "internal",
    )  # fmt: skip
    add(hivemem, alice, "Alice is planning a trip to Kyoto", "--user", "u1", "--session", "s1")
    add(hivemem, alice, "Bob drinks espresso", "--user", "u2")

    done = hivemem(
        "memory", "search", "--agent", alice, "--user", "u1", "what does she drink?", "--json"
    )
    assert done.code == 0, done.err
    hits = done.json()
    assert hits[0]["record"]["id"] == tea
    assert 0 < hits[0]["score"] <= 1
    record = hits[0]["record"]
    assert record["content"] == "Alice prefers green tea"
    assert record["scope"] == {
        "user_id": "u1",
        "session_id": None,
        "agent_id": alice,
        "run_id": None,
    }
    assert (record["category"], record["zone"], record["importance"]) == (
        "preference",
        "internal",
        0.9,
    )
    assert record["tags"] == ["drinks"]
    assert "vector" not in record
    assert all(h["record"]["scope"]["user_id"] == "u1" for h in hits)  # users are a partition

    table = hivemem("memory", "search", "--agent", alice, "--user", "u1", "tea")
    assert tea in table.out  # ids are printed whole, to be copied


def test_search_options(hivemem: Run, alice: str) -> None:
    """--category, --tag and --session narrow a search; --preset picks a preset; --top-k
    bounds it."""
    add(hivemem, alice, "Alice prefers green tea", "--user", "u1", "--category", "preference")
    add(hivemem, alice, "Alice drinks tea at noon", "--user", "u1", "--tag", "routine")
    add(hivemem, alice, "Alice had tea in Kyoto", "--user", "u1", "--session", "s1")
    add(hivemem, alice, "Alice had tea in Osaka", "--user", "u1", "--session", "s2")

    def found(*options: str) -> list[str]:
        argv = ["memory", "search", "--agent", alice, "--user", "u1", *options, "tea", "--json"]
        done = hivemem(*argv)
        assert done.code == 0, done.err
        return sorted(h["record"]["content"] for h in done.json())

    assert found("--category", "preference") == ["Alice prefers green tea"]
    assert found("--tag", "routine") == ["Alice drinks tea at noon"]
    assert "Alice had tea in Osaka" not in found("--session", "s1")
    assert len(found("--preset", "keyword", "--top-k", "2")) == 2


def test_update_get_and_history(hivemem: Run, alice: str) -> None:
    """update supersedes: get shows both versions, history lists them oldest first, search
    returns the current one."""
    old = add(hivemem, alice, "Alice prefers green tea", "--user", "u1", "--importance", "0.6")
    done = hivemem(
        "memory",
        "update",
        "--agent",
        alice,
        old,
        "Alice switched to oolong tea",
        "--importance",
        "0.7",
    )
    assert done.code == 0, done.err
    new = done.out.strip()
    assert new != old

    previous = hivemem("memory", "get", "--agent", alice, old, "--json").json()
    assert previous["superseded_by"] == new
    current = hivemem("memory", "get", "--agent", alice, new, "--json").json()
    assert (current["supersedes"], current["superseded_at"]) == (old, None)
    assert current["importance"] == 0.7
    assert current["content"] == "Alice switched to oolong tea"
    shown = hivemem("memory", "get", "--agent", alice, new)
    assert "oolong" in shown.out

    history = hivemem("memory", "history", "--agent", alice, new, "--json").json()
    assert [r["id"] for r in history] == [old, new]
    search = hivemem("memory", "search", "--agent", alice, "--user", "u1", "tea", "--json").json()
    assert [h["record"]["id"] for h in search] == [new]

    conflict = hivemem("memory", "update", "--agent", alice, old, "Alice drinks water")
    assert conflict.code == 1
    assert f"current version: {new}" in conflict.err


def test_list_and_stats(hivemem: Run, alice: str) -> None:
    """list shows a scope's memories newest first; stats counts them by level, user, session,
    agent."""
    add(hivemem, alice, "first", "--user", "u1")
    add(hivemem, alice, "second", "--user", "u1", "--session", "s1", "--level", "trace")
    add(hivemem, alice, "third [/] with brackets", "--user", "u2")

    listed = hivemem("memory", "list", "--agent", alice, "--user", "u1", "--json").json()
    assert [r["content"] for r in listed] == ["second", "first"]
    text = hivemem("memory", "list", "--agent", alice, "--user", "u2")
    assert "third [/] with brackets" in text.out  # content is text, never rich markup

    stats = hivemem("memory", "stats", "--agent", alice, "--json").json()
    assert (stats["total"], stats["current"], stats["superseded"]) == (3, 3, 0)
    assert stats["by_user"] == {"u1": 2, "u2": 1}
    assert stats["by_level"] == {"episode": 2, "trace": 1}
    assert stats["by_agent"] == {alice: 3}
    one_user = hivemem("memory", "stats", "--agent", alice, "--user", "u1", "--json").json()
    assert (one_user["total"], one_user["by_session"]) == (2, {"s1": 1})
    table = hivemem("memory", "stats", "--agent", alice)
    assert "by_user" in table.out
    assert "u1 2" in table.out
    lonely = hivemem("memory", "stats", "--agent", alice, "--session", "s1")
    assert lonely.code == 2
    assert "--user" in lonely.err


def test_forget_deletes_a_scope_here_and_in_other_agents(
    hivemem: Run, alice: str, agent_id: Callable[[str], str]
) -> None:
    """forget prints how many it deleted; the tombstones reach an agent that received the
    records, whose search then finds nothing either."""
    bob = agent_id("bob")
    assert hivemem("agents", "register", bob).code == 0
    assert hivemem("memory", "stats", "--agent", bob).code == 0  # bob's receiver starts
    add(hivemem, alice, "Alice prefers green tea", "--user", "u1", "--session", "s1")
    add(hivemem, alice, "Alice likes long walks", "--user", "u1")
    add(hivemem, alice, "Carol prefers coffee", "--user", "u3")

    received = hivemem("memory", "search", "--agent", bob, "--user", "u1", "tea", "--json").json()
    assert received[0]["record"]["received_from"] == alice

    session = hivemem("memory", "forget", "--agent", alice, "--user", "u1", "--session", "s1")
    assert session.out.strip() == "forgot 1 memories of user u1, session s1"
    user = hivemem("memory", "forget", "--agent", alice, "--user", "u1", "--json")
    assert user.json()["deleted"] == 1
    for agent in (alice, bob):
        hits = hivemem("memory", "search", "--agent", agent, "--user", "u1", "tea", "--json")
        assert hits.json() == [], agent
    assert hivemem("memory", "stats", "--agent", bob, "--json").json()["by_user"] == {"u3": 1}


def test_control_characters_in_content_reach_the_terminal_escaped(hivemem: Run, alice: str) -> None:
    """Content may come from any agent, an import or a model: list, search and get show its
    escape sequences (window title, clear screen, colours) as text, never raw; --json keeps the
    content as stored."""
    evil = "evil \x1b]0;pwned\x07 \x1b[2J clear \x9b31m red"
    record_id = add(hivemem, alice, evil, "--user", "u1")
    for command in (
        ["memory", "list", "--agent", alice, "--user", "u1"],
        ["memory", "search", "--agent", alice, "--user", "u1", "evil"],
        ["memory", "get", "--agent", alice, record_id],
    ):
        done = hivemem(*command)
        assert done.code == 0, done.err
        assert not {"\x1b", "\x07", "\x9b"} & set(done.out)
        assert "\\x1b[2J" in done.out.replace("\n", "")
    raw = hivemem("memory", "get", "--agent", alice, record_id, "--json")
    assert raw.json()["content"] == evil


def test_delete_removes_every_version(hivemem: Run, alice: str) -> None:
    """delete removes a memory and its older versions; get then exits 2."""
    old = add(hivemem, alice, "v1", "--user", "u1")
    new = hivemem("memory", "update", "--agent", alice, old, "v2").out.strip()
    done = hivemem("memory", "delete", "--agent", alice, new, "--json")
    assert sorted(done.json()["deleted"]) == sorted([old, new])
    gone = hivemem("memory", "get", "--agent", alice, old)
    assert gone.code == 2
    assert f"no memory with id {old}" in gone.err


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes, encoding: str = "utf-8") -> None:
    """Standard input holding ``data``, decoded strictly as ``encoding`` by its text layer."""
    stream = io.TextIOWrapper(io.BytesIO(data), encoding=encoding, errors="strict")
    monkeypatch.setattr("sys.stdin", stream)


def test_text_from_standard_input(
    hivemem: Run, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TEXT - reads the content from standard input as UTF-8, whatever its text layer's
    encoding, without its final newline."""
    stdin(monkeypatch, b"Alice keeps a diary\n")
    record = hivemem("memory", "add", "--agent", alice, "--user", "u1", "-", "--json").json()
    assert record["content"] == "Alice keeps a diary"
    stdin(monkeypatch, "Alice's café opens at 8\n".encode(), encoding="ascii")
    record = hivemem("memory", "add", "--agent", alice, "--user", "u1", "-", "--json").json()
    assert record["content"] == "Alice's café opens at 8"


def test_standard_input_that_is_not_utf8_is_a_usage_error(
    hivemem: Run, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that are no UTF-8 on standard input exit 2 with the offset of the first bad one
    (no traceback, whatever the locale's encoding), and nothing is written."""
    for command in (["add", "--user", "u1"], ["update", "0b7d4a2c-4f7e-4b3a-9a43-7a4f4e2d9c11"]):
        stdin(monkeypatch, b"caf\xe9 au lait\n")
        done = hivemem("memory", command[0], "--agent", alice, *command[1:], "-")
        assert done.code == 2, command
        assert "standard input is not UTF-8 text (invalid byte at offset 3)" in done.err
    assert hivemem("memory", "stats", "--agent", alice, "--json").json()["total"] == 0


def test_a_flush_timeout_must_be_a_finite_number_of_seconds(hivemem: Run, alice: str) -> None:
    """--flush-timeout of -1, 0, nan, inf, more than a day or no number exits 2 before
    anything is written (a negative one used to write, then exit 1; nan waited forever)."""
    for value in ("-1", "0", "nan", "inf", "-inf", "86401", "1e300", "soon"):
        done = hivemem(
            "memory", "add", "--agent", alice, "--user", "u1", "--flush-timeout", value, "x"
        )
        assert done.code == 2, value
        assert "argument --flush-timeout" in done.err, (value, done.err)
    assert hivemem("memory", "stats", "--agent", alice, "--json").json()["total"] == 0
    done = hivemem("memory", "add", "--agent", alice, "--user", "u1", "--flush-timeout", "2.5", "x")
    assert done.code == 0, done.err


def test_bad_input_is_a_usage_error(
    hivemem: Run, alice: str, agent_id: Callable[[str], str]
) -> None:
    """Unknown agent or memory, bad enum values, ids, numbers, presets: exit 2, nothing written."""
    cases = [
        (["add", "--agent", agent_id("ghost"), "--user", "u1", "x"], "no agent"),
        (["add", "--agent", alice, "--user", "u1", "--category", "gossip", "x"], "preference"),
        (["add", "--agent", alice, "--user", "u1", "--zone", "top", "x"], "confidential"),
        (["add", "--agent", alice, "--user", "u1", "--importance", "1.5", "x"], "importance"),
        (["add", "--agent", alice, "--user", "no spaces", "x"], "user_id"),
        (["add", "--agent", alice, "--user", "u1", "  "], "content"),
        (["add", "--agent", alice, "x"], "--user"),
        (["search", "--agent", alice, "--user", "u1", "--preset", "fast", "x"], "balanced"),
        (["search", "--agent", alice, "--user", "u1", "--level", "para", "x"], "episode"),
        (["get", "--agent", alice, "not-a-uuid"], "UUID"),
        (["history", "--agent", alice, "0b7d4a2c-4f7e-4b3a-9a43-7a4f4e2d9c11"], "no memory"),
    ]
    for argv, hint in cases:
        done = hivemem("memory", *argv)
        assert done.code == 2, argv
        assert hint in done.err, (argv, done.err)
    assert hivemem("memory", "stats", "--agent", alice, "--json").json()["total"] == 0


def test_an_agent_attached_elsewhere_is_named(
    hivemem: Run,
    alice: str,
    data_dir: Path,
    redis_server: EmbeddedRedis,
    embedder: FastEmbedder,
) -> None:
    """While another pool has the agent attached, memory commands exit 1 and say why."""
    settings = HivememSettings(data_dir=data_dir, redis_url=redis_server.url)
    with SharedMemoryPool.connect(settings, embedder=embedder) as other:
        assert other.attach(alice).wait_connected()  # running: its heartbeat is fresh
        done = hivemem("memory", "add", "--agent", alice, "--user", "u1", "x")
        assert done.code == 1
        assert f"agent {alice} is attached by another process" in done.err
        revoked = hivemem("agents", "revoke", alice)
        assert revoked.code == 0
        assert "its Redis user is removed and its connections closed" in revoked.err


def test_unacknowledged_writes_are_reported(
    hivemem: Run, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the pool does not acknowledge in time, add still prints the id, exits 1 and says
    the write is safe in the outbox."""

    def never_acknowledged(self: Agent, timeout_s: float = 10.0) -> bool:
        return False

    monkeypatch.setattr(Agent, "flush", never_acknowledged)
    done = hivemem("memory", "add", "--agent", alice, "--user", "u1", "x", "--flush-timeout", "0.1")
    assert done.code == 1
    assert len(done.out.strip()) == 36
    assert "safe in its outbox" in done.err


def test_every_command_has_help(offline: Run) -> None:
    """`hivemem memory COMMAND --help` exits 0 and shows the acting agent option."""
    commands = ["add", "update", "delete", "forget", "search", "get", "history", "list", "stats"]
    assert offline("memory", "--help").code == 0
    for command in commands:
        done = offline("memory", command, "--help")
        assert done.code == 0, command
        assert "--agent" in done.out, command

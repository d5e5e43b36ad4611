"""``hivemem export`` and ``hivemem import``: JSON Lines round trips, against a real Redis."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hivemem.pool.records import MemoryRecord
from tests.cli.conftest import Run

#: Fields an imported copy sets itself: where it came from and its tier in the new memory.
_RECEIVER_FIELDS = {"received_from", "tier"}


@pytest.fixture
def agents(hivemem: Run, agent_id: Callable[[str], str]) -> tuple[str, str]:
    """Two registered agents: alice (clearance internal) and bob (public)."""
    alice, bob = agent_id("alice"), agent_id("bob")
    assert hivemem("agents", "register", alice, "--clearance", "internal").code == 0
    assert hivemem("agents", "register", bob).code == 0
    return alice, bob


def add(hivemem: Run, agent: str, text: str, *options: str) -> str:
    done = hivemem("memory", "add", "--agent", agent, *options, text)
    assert done.code == 0, done.err
    return done.out.strip()


def records(path: Path) -> list[MemoryRecord]:
    return [MemoryRecord.model_validate_json(line) for line in path.read_text().splitlines()]


def comparable(record: MemoryRecord) -> dict[str, object]:
    return record.model_dump(exclude=_RECEIVER_FIELDS)


def test_export_then_import_into_another_agent(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path
) -> None:
    """Every version exported from one agent is imported into another with the same ids and
    fields; history and search work there; importing again stores nothing twice."""
    alice, bob = agents
    tea = add(hivemem, alice, "Alice prefers green tea", "--user", "u1", "--importance", "0.9")
    oolong = hivemem("memory", "update", "--agent", alice, tea, "Alice switched to oolong").out
    add(
        hivemem, alice, "Alice runs on Sundays", "--user", "u1", "--session", "s1", "--tag", "sport"
    )
    add(hivemem, alice, "Bob drinks espresso", "--user", "u2")
    out = tmp_path / "alice.jsonl"

    done = hivemem("export", "--agent", alice, "--include-history", str(out))
    assert done.code == 0, done.err
    assert done.out.strip() == f"exported 4 memories of agent {alice} to {out}"
    exported = records(out)
    assert len({r.id for r in exported}) == 4
    assert [r.recorded_at for r in exported] == sorted(r.recorded_at for r in exported)

    loaded = hivemem("import", "--agent", bob, str(out), "--json")
    assert loaded.code == 0, loaded.err
    assert loaded.json() == {"agent_id": bob, "records": 4, "imported": 4, "skipped": 0}

    again = tmp_path / "bob.jsonl"
    assert hivemem("export", "--agent", bob, "--include-history", str(again)).code == 0
    reexported = {r.id: r for r in records(again)}
    assert {r.id: comparable(r) for r in exported} == {
        i: comparable(r) for i, r in reexported.items()
    }
    assert {r.received_from for r in reexported.values()} == {alice}

    history = hivemem("memory", "history", "--agent", bob, oolong.strip(), "--json").json()
    assert [r["id"] for r in history] == [tea, oolong.strip()]
    hits = hivemem("memory", "search", "--agent", bob, "--user", "u1", "tea", "--json").json()
    assert hits[0]["record"]["content"] == "Alice switched to oolong"

    twice = hivemem("import", "--agent", bob, str(out), "--json").json()
    assert (twice["imported"], twice["skipped"]) == (0, 4)
    assert hivemem("memory", "stats", "--agent", bob, "--json").json()["total"] == 4


def test_export_one_user_current_only_to_standard_output(
    hivemem: Run, agents: tuple[str, str]
) -> None:
    """--user narrows the export; without --include-history only current versions go out; -
    writes to standard output and the summary to standard error."""
    alice, _ = agents
    old = add(hivemem, alice, "v1", "--user", "u1")
    new = hivemem("memory", "update", "--agent", alice, old, "v2").out.strip()
    add(hivemem, alice, "other user", "--user", "u2")
    done = hivemem("export", "--agent", alice, "--user", "u1", "-")
    assert done.code == 0, done.err
    assert [json.loads(line)["id"] for line in done.out.splitlines()] == [new]
    assert "exported 1 memories" in done.err


def test_export_pages_past_the_listing_limit(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export reads a user's records page by page (by recording time) and gets every one; when
    a whole page shares one instant it exits 1 instead of leaving records out."""
    alice, bob = agents
    monkeypatch.setattr("hivemem.cli.transfer._PAGE", 2)
    ids = {add(hivemem, alice, f"memory {i}", "--user", "u1") for i in range(5)}
    out = tmp_path / "paged.jsonl"
    assert hivemem("export", "--agent", alice, str(out)).code == 0
    assert {r.id for r in records(out)} == ids

    first = records(out)[0]
    lines = [
        first.model_copy(update={"id": f"{i:08d}-0000-4000-8000-000000000000"}).model_dump_json()
        for i in range(3)
    ]  # three records of one instant
    crowded = tmp_path / "crowded.jsonl"
    crowded.write_text("\n".join(lines) + "\n")
    assert hivemem("import", "--agent", bob, str(crowded)).code == 0
    stuck = hivemem("export", "--agent", bob, str(tmp_path / "stuck.jsonl"))
    assert stuck.code == 1
    assert "recorded at one instant" in stuck.err
    assert not (tmp_path / "stuck.jsonl").exists()


def test_import_from_standard_input(
    hivemem: Run, agents: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """IN.jsonl - reads the records from standard input."""
    alice, bob = agents
    add(hivemem, alice, "Alice prefers green tea", "--user", "u1")
    exported = hivemem("export", "--agent", alice, "-").out
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(exported.encode())))
    done = hivemem("import", "--agent", bob, "-")
    assert done.code == 0, done.err
    assert done.out.strip() == f"imported 1 memories into agent {bob}"


def test_a_bad_line_imports_nothing(hivemem: Run, agents: tuple[str, str], tmp_path: Path) -> None:
    """A file with bad lines (not JSON, a bad field, a duplicate id, a zone above the agent's
    clearance) exits 2 naming each line, and the agent's memory stays empty."""
    alice, bob = agents
    add(hivemem, alice, "fine", "--user", "u1")
    add(hivemem, alice, "confidential plans", "--user", "u1", "--zone", "internal")
    out = tmp_path / "alice.jsonl"
    assert hivemem("export", "--agent", alice, str(out)).code == 0
    good, internal = out.read_text().splitlines()
    broken = json.loads(good) | {"importance": 7}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good, "{not json", json.dumps(broken), "", good, internal]) + "\n")

    done = hivemem("import", "--agent", bob, str(path))
    assert done.code == 2
    assert "4 bad line(s)" in done.err
    assert f"{path}:2: " in done.err
    assert f"{path}:3: importance" in done.err
    assert f"{path}:5: id " in done.err
    assert "already on line 1" in done.err
    assert f"{path}:6: zone internal is above the clearance of agent {bob} (public)" in done.err
    assert f"{path}:1:" not in done.err
    assert hivemem("memory", "stats", "--agent", bob, "--json").json()["total"] == 0


def test_transfer_errors(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path, agent_id: Callable[[str], str]
) -> None:
    """A missing input file or an unknown agent exits 2; an export leaves no partial file when
    it fails."""
    alice, _ = agents
    missing = hivemem("import", "--agent", alice, str(tmp_path / "nope.jsonl"))
    assert missing.code == 2
    assert "cannot read" in missing.err
    ghost = agent_id("ghost")
    unknown = hivemem("export", "--agent", ghost, str(tmp_path / "out.jsonl"))
    assert unknown.code == 2
    assert f"no agent {ghost}" in unknown.err
    assert not (tmp_path / "out.jsonl").exists()
    unwritable = hivemem("export", "--agent", alice, str(tmp_path / "no-dir" / "out.jsonl"))
    assert unwritable.code == 1
    assert "cannot write" in unwritable.err


def test_both_commands_have_help(offline: Run) -> None:
    """`hivemem export --help` and `hivemem import --help` exit 0 and describe the format."""
    for command in ("export", "import"):
        done = offline(command, "--help")
        assert done.code == 0, command
        assert "MemoryRecord" in done.out, command

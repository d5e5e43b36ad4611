"""``hivemem export`` and ``hivemem import``: JSON Lines round trips, against a real Redis."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hivemem.cli import transfer
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
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


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_an_export_ended_by_a_signal_leaves_no_partial_file(
    hivemem: Run,
    agents: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ending: signal.Signals,
) -> None:
    """SIGTERM or SIGHUP while the export writes ends it as Ctrl-C does: exit 128 + the signal,
    and neither the file nor its hidden partial copy (plaintext, 0600) is left."""
    alice, _ = agents
    for i in range(3):
        add(hivemem, alice, f"memory {i}", "--user", "u1")
    real = transfer._user_records

    def signalled(*args: Any, **kwargs: Any) -> Iterator[MemoryRecord]:
        for n, record in enumerate(real(*args, **kwargs)):
            if n == 1:
                os.kill(os.getpid(), ending)
            yield record

    monkeypatch.setattr(transfer, "_user_records", signalled)
    out = tmp_path / "ended.jsonl"
    before = signal.getsignal(ending)
    done = hivemem("export", "--agent", alice, str(out))
    assert done.code == 128 + ending
    assert sorted(p.name for p in tmp_path.iterdir() if "ended" in p.name) == []
    assert signal.getsignal(ending) == before  # the command's handler lasts as long as it


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


# -- what import refuses ------------------------------------------------------------------------


def exported_line(hivemem: Run, agent: str, tmp_path: Path, text: str) -> dict[str, Any]:
    """A record ``agent`` wrote, as the JSON object of its export line."""
    add(hivemem, agent, text, "--user", "u1")
    out = tmp_path / f"{uuid.uuid4().hex}.jsonl"
    assert hivemem("export", "--agent", agent, str(out)).code == 0
    return dict(json.loads(out.read_text().splitlines()[-1]))


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_import_refuses_compartments_the_agent_does_not_hold(
    hivemem: Run, agent_id: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line in a compartment the importing agent does not hold is a bad line, named like a
    zone above its clearance: nothing is imported, so a search finds nothing; an agent holding
    the compartment imports the file."""
    monkeypatch.setenv("HIVEMEM_COMPARTMENTS", '["apollo", "hr"]')
    lead, clerk, hr = agent_id("lead"), agent_id("clerk"), agent_id("hr")
    registered = [
        hivemem("agents", "register", lead, "--compartment", "apollo", "--compartment", "hr"),
        hivemem("agents", "register", clerk, "--compartment", "apollo"),
        hivemem("agents", "register", hr, "--compartment", "hr"),
    ]
    assert [done.code for done in registered] == [0, 0, 0]
    add(hivemem, lead, "Dana's salary review is due", "--user", "u1", "--compartment", "hr")
    add(hivemem, lead, "the canteen opens at noon", "--user", "u1")
    out = tmp_path / "lead.jsonl"
    assert hivemem("export", "--agent", lead, str(out)).code == 0

    refused = hivemem("import", "--agent", clerk, str(out))
    assert refused.code == 2
    assert "1 bad line(s)" in refused.err
    assert f"{out}:1: agent {clerk} does not hold compartment(s) hr" in refused.err
    assert hivemem("memory", "stats", "--agent", clerk, "--json").json()["total"] == 0
    found = hivemem("memory", "search", "--agent", clerk, "--user", "u1", "salary", "--json")
    assert found.json() == []

    accepted = hivemem("import", "--agent", hr, str(out), "--json")
    assert accepted.code == 0, accepted.err
    assert accepted.json()["imported"] == 2


def test_import_refuses_sensitive_content_in_a_lower_zone(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line whose content or labels the sensitivity classifier puts above the line's zone is
    a bad line naming the detectors (never the text), as `memory add` of it is refused; a line
    in a high enough zone imports; with the classifier off, the zone is the line's."""
    alice, bob = agents
    line = exported_line(hivemem, alice, tmp_path, "the weather is fine")
    ssn = line | {"id": str(uuid.uuid4()), "content": "Dana's SSN is 536-22-1234"}
    email = line | {"id": str(uuid.uuid4()), "tags": ["dana@example.com"]}
    path = write_lines(tmp_path / "sensitive.jsonl", [line, ssn, email])
    assert hivemem("memory", "add", "--agent", bob, "--user", "u1", ssn["content"]).code == 1

    refused = hivemem("import", "--agent", bob, str(path))
    assert refused.code == 2
    assert "2 bad line(s)" in refused.err
    assert f"{path}:2: sensitive content (ssn) belongs in zone confidential" in refused.err
    assert f"{path}:3: sensitive content (email) belongs in zone internal" in refused.err
    assert "536-22-1234" not in refused.err
    assert "dana@example.com" not in refused.err
    assert hivemem("memory", "stats", "--agent", bob, "--json").json()["total"] == 0

    internal = write_lines(tmp_path / "internal.jsonl", [email | {"zone": "internal"}])
    assert hivemem("import", "--agent", alice, str(internal), "--json").json()["imported"] == 1

    monkeypatch.setenv("HIVEMEM_SECURITY__SENSITIVITY__ENABLED", "false")
    unchecked = hivemem("import", "--agent", bob, str(path), "--json")
    assert unchecked.code == 0, unchecked.err
    assert unchecked.json()["imported"] == 3


def test_import_refuses_oversized_metadata(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path
) -> None:
    """A line whose metadata holds more text than a record may (it could outgrow a sync
    message) is a bad line naming ``metadata.<key>``, as `memory add` of it is refused: nothing
    is imported."""
    alice, bob = agents
    line = exported_line(hivemem, alice, tmp_path, "the weather is fine")
    blob = line | {"id": str(uuid.uuid4()), "metadata": {"blob": "x" * 1_000_000}}
    path = write_lines(tmp_path / "big.jsonl", [line, blob])

    refused = hivemem("import", "--agent", bob, str(path))
    assert refused.code == 2
    assert "1 bad line(s)" in refused.err
    assert f"{path}:2: metadata.blob: the metadata holds more than 100000 characters" in (
        refused.err
    )
    assert hivemem("memory", "stats", "--agent", bob, "--json").json()["total"] == 0


def test_import_refuses_version_links_that_loop(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path
) -> None:
    """A line that supersedes itself or is superseded by itself, and lines whose version links
    lead back to where they start (through supersedes or superseded_by), are bad lines; a link
    to a record outside the file is not one."""
    alice, bob = agents
    line = exported_line(hivemem, alice, tmp_path, "version one")
    a, b, c, d, e, f, g, h = (str(uuid.uuid4()) for _ in range(8))
    lines = [
        line | {"id": a, "supersedes": a},
        line | {"id": b, "superseded_by": b},
        line | {"id": c, "supersedes": d},
        line | {"id": d, "supersedes": c},
        line | {"id": e, "superseded_by": f},
        line | {"id": f, "superseded_by": g},
        line | {"id": g, "superseded_by": e},
        line | {"id": h, "supersedes": line["id"]},  # its predecessor is not in the file: fine
    ]
    path = write_lines(tmp_path / "loops.jsonl", lines)

    done = hivemem("import", "--agent", bob, str(path))
    assert done.code == 2
    assert "7 bad line(s)" in done.err
    for number, field in ((1, "supersedes"), (2, "superseded_by")):
        assert f"{path}:{number}: a record cannot name itself in {field}" in done.err
    for number in (3, 4):
        assert f"{path}:{number}: its version links make a loop (lines 3, 4)" in done.err
    for number in (5, 6, 7):
        assert f"{path}:{number}: its version links make a loop (lines 5, 6, 7)" in done.err
    assert f"{path}:8:" not in done.err
    assert hivemem("memory", "stats", "--agent", bob, "--json").json()["total"] == 0


def test_import_refuses_a_loop_through_records_already_stored(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path
) -> None:
    """A file whose version links close a loop with records the agent already holds is
    refused like a loop within the file, naming the stored records it runs through; nothing
    is imported."""
    alice, bob = agents
    line = exported_line(hivemem, alice, tmp_path, "version one")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    earlier = write_lines(tmp_path / "earlier.jsonl", [line | {"id": first, "supersedes": second}])
    assert hivemem("import", "--agent", bob, str(earlier)).code == 0
    closing = write_lines(tmp_path / "closing.jsonl", [line | {"id": second, "supersedes": first}])

    done = hivemem("import", "--agent", bob, str(closing))
    assert done.code == 2
    assert f"{closing}:1: its version links make a loop (lines 1 and 1 stored record)" in done.err
    assert hivemem("memory", "stats", "--agent", bob, "--json").json()["total"] == 1


# -- where export writes ------------------------------------------------------------------------


def test_export_refuses_an_existing_file_unless_forced(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path
) -> None:
    """An existing target (even for an export of no records) exits 2 and is left as it was;
    --force replaces it."""
    alice, bob = agents
    add(hivemem, alice, "Alice prefers green tea", "--user", "u1")
    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "kept.jsonl"
    out.write_text("precious\n")
    for agent in (alice, bob):  # bob has no memories: an export of 0 records
        done = hivemem("export", "--agent", agent, str(out))
        assert done.code == 2, agent
        assert f"{out} exists; nothing was written (--force replaces it)" in done.err
        assert out.read_text() == "precious\n"
    forced = hivemem("export", "--agent", alice, str(out), "--force")
    assert forced.code == 0, forced.err
    assert [r.content for r in records(out)] == ["Alice prefers green tea"]
    assert [p.name for p in folder.iterdir()] == ["kept.jsonl"]  # no temporary file left


def test_the_export_file_is_private(hivemem: Run, agents: tuple[str, str], tmp_path: Path) -> None:
    """The file is created with mode 0600 whatever the umask, and stays 0600 when it replaces a
    world-readable file."""
    alice, _ = agents
    add(hivemem, alice, "Alice's door code is 4711", "--user", "u1")
    out = tmp_path / "private.jsonl"
    old_umask = os.umask(0o022)
    try:
        assert hivemem("export", "--agent", alice, str(out)).code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        out.chmod(0o644)
        assert hivemem("export", "--agent", alice, str(out), "--force").code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_export_never_writes_through_a_planted_link(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path
) -> None:
    """A symbolic link planted where the export's temporary file used to be (a predictable
    name), or at the target, never gets its target overwritten: the export writes a new file of
    an unpredictable name, refuses an existing target, and --force replaces the link itself."""
    alice, _ = agents
    add(hivemem, alice, "Alice prefers green tea", "--user", "u1")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    out = tmp_path / "out.jsonl"
    (tmp_path / ".out.jsonl.partial").symlink_to(victim)
    assert hivemem("export", "--agent", alice, str(out)).code == 0
    assert victim.read_text() == "untouched\n"
    assert not out.is_symlink()
    assert len(records(out)) == 1

    linked = tmp_path / "linked.jsonl"
    linked.symlink_to(victim)
    refused = hivemem("export", "--agent", alice, str(linked))
    assert refused.code == 2
    assert "exists" in refused.err
    assert hivemem("export", "--agent", alice, str(linked), "--force").code == 0
    assert victim.read_text() == "untouched\n"
    assert not linked.is_symlink()
    assert len(records(linked)) == 1


def test_export_to_a_name_of_no_file_is_a_usage_error(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path
) -> None:
    """An empty target, `.`, `..`, `/`, a directory or a name ending in `/` exits 2, even with
    --force, and writes nothing."""
    alice, _ = agents
    add(hivemem, alice, "Alice prefers green tea", "--user", "u1")
    folder = tmp_path / "exports"
    folder.mkdir()
    for target in ("", ".", "..", "/", str(folder), f"{folder}/new/", f"{folder}/.."):
        for force in ([], ["--force"]):
            done = hivemem("export", "--agent", alice, target, *force)
            assert done.code == 2, (target, force)
            assert "names no file to write the export to" in done.err, (target, done.err)
    assert list(folder.iterdir()) == []


def test_a_user_id_written_for_again_after_a_forget_reads_without_its_imported_records(
    hivemem: Run, agents: tuple[str, str], tmp_path: Path
) -> None:
    """Records an agent imported from another pool's file are sealed under their user's
    secret, and no fleet forget's tombstone names them (the workers never saw their ids). Once
    the forget shredded the secret and the same user id wrote again (a new secret), listing,
    searching and exporting that user and the agent work: the old records are skipped as
    forgotten (they raised SealBroken, and each of these commands failed), and a forget in the
    agent removes them."""
    _, bob = agents
    lines = [
        MemoryRecord(content=text, scope=Scope(user_id=user, agent_id="elsewhere"))
        for text, user in [
            ("u1 prefers green tea", "u1"),
            ("u1 runs on Sundays", "u1"),
            ("u2 drinks espresso", "u2"),
        ]
    ]
    other_pool = tmp_path / "other-pool.jsonl"
    other_pool.write_text("".join(r.model_dump_json() + "\n" for r in lines))
    assert hivemem("import", "--agent", bob, str(other_pool), "--json").json()["imported"] == 3
    # What the fleet forget of u1 (hivemem forget u1) does to these records: it shreds u1's
    # secret; its tombstones name what the zone stores held, none of them.
    with SharedMemoryPool.connect(HivememSettings()) as pool:
        assert pool.security is not None
        assert pool.security.keyring.shred("u1")
    coffee = add(hivemem, bob, "u1 switched to coffee", "--user", "u1")

    def listed(*scope: str) -> list[str]:
        done = hivemem("memory", "list", "--agent", bob, *scope, "--json")
        assert done.code == 0, done.err
        return sorted(r["content"] for r in done.json())

    assert listed("--user", "u1") == ["u1 switched to coffee"]
    assert listed("--user", "u2") == ["u2 drinks espresso"]
    hits = hivemem("memory", "search", "--agent", bob, "--user", "u1", "tea", "--json")
    assert hits.code == 0, hits.err
    assert [h["record"]["id"] for h in hits.json()] == [coffee]
    out = tmp_path / "bob.jsonl"
    done = hivemem("export", "--agent", bob, str(out))
    assert done.code == 0, done.err
    assert sorted(r.content for r in records(out)) == [
        "u1 switched to coffee",
        "u2 drinks espresso",
    ]

    forgot = hivemem("memory", "forget", "--agent", bob, "--user", "u1", "--json")
    assert forgot.code == 0, forgot.err
    assert forgot.json()["deleted"] == 3  # the new record and both unreadable ones
    stats = hivemem("memory", "stats", "--agent", bob, "--json").json()
    assert (stats["total"], stats["by_user"]) == (1, {"u2": 1})

"""`hivemem zones` (list, grant, revoke) and `hivemem audit` (tail, head, verify) against a real
Redis: clearances change in the registry and are audited; the audit chain verifies, and a
tampered entry makes verify exit 1 and say where."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.security import GENESIS, Anchor, AuditEntry
from tests.cli.conftest import Run


def test_grant_and_revoke_change_the_clearance_and_are_audited(
    hivemem: Run, agent_id: Callable[[str], str]
) -> None:
    """grant raises, revoke drops below the zone, a no-op changes nothing; list shows who is
    cleared; the audit tail holds granted then revoked with the previous clearance."""
    scout = agent_id("scout")
    assert hivemem("agents", "register", scout, "--clearance", "public").code == 0

    granted = hivemem("zones", "grant", scout, "confidential", "--json")
    again = hivemem("zones", "grant", scout, "internal", "--json")
    listing = hivemem("zones", "list", "--json").json()
    revoked = hivemem("zones", "revoke", scout, "internal", "--json")

    assert granted.code == 0
    assert granted.json() == {"agent_id": scout, "clearance": "confidential", "previous": "public"}
    assert again.json()["clearance"] == "confidential"
    by_zone = {row["zone"]: row["cleared_agents"] for row in listing}
    assert scout in by_zone["confidential"]
    assert scout not in by_zone["secret"]
    assert revoked.json() == {"agent_id": scout, "clearance": "public", "previous": "confidential"}
    assert hivemem("agents", "show", scout, "--json").json()["clearance"] == "public"
    mine = [
        e for e in hivemem("audit", "tail", "-n", "50", "--json").json() if e["subject"] == scout
    ]
    assert [(e["kind"], e["zone"], e["details"]["previous"]) for e in mine[-2:]] == [
        ("granted", "confidential", "public"),
        ("revoked", "public", "confidential"),
    ]


def test_bad_zone_changes_are_usage_errors(hivemem: Run, agent_id: Callable[[str], str]) -> None:
    """An unknown zone or agent exits 2 and changes nothing."""
    scout = agent_id("scout")
    assert hivemem("agents", "register", scout).code == 0
    assert hivemem("zones", "grant", scout, "top-secret").code == 2
    assert hivemem("zones", "grant", agent_id("ghost"), "secret").code == 2
    assert hivemem("agents", "show", scout, "--json").json()["clearance"] == "public"


def test_audit_verify_passes_then_finds_the_edited_entry(
    hivemem: Run, agent_id: Callable[[str], str], redis_server: EmbeddedRedis
) -> None:
    """verify exits 0 on the untouched chain and 1, naming the position, once an entry's
    stored fields are rewritten; head prints SEQ:HASH."""
    assert hivemem("agents", "register", agent_id("a")).code == 0
    assert hivemem("agents", "register", agent_id("b")).code == 0
    head = hivemem("audit", "head").out.strip()
    seq, _, digest = head.partition(":")
    assert int(seq) >= 2
    assert len(digest) == 64
    assert hivemem("audit", "verify", "--anchor", head).code == 0

    client = redis.Redis.from_url(redis_server.url)
    entries = client.xrange("hivemem:audit")
    client.delete("hivemem:audit")
    for position, (entry_id, stored) in enumerate(entries):
        edited = {k: v.replace(b"pool", b"mallory") for k, v in stored.items()}
        client.xadd("hivemem:audit", edited if position == 0 else stored, id=entry_id)
    client.close()

    broken = hivemem("audit", "verify", "--json")
    assert broken.code == 1
    assert broken.json()["problem"]["position"] == 0
    assert broken.json()["problem"]["kind"] == "edited"


def test_audit_verify_of_a_file_that_cannot_be_read_is_a_usage_error(
    offline: Run, tmp_path: Path
) -> None:
    """``verify --file`` on a directory exits 2 (not 1, which means tampered) and says why."""
    done = offline("audit", "verify", "--file", str(tmp_path))
    assert done.code == 2
    assert "cannot read the audit file" in done.err
    assert done.out == ""


def test_audit_verify_reports_a_line_too_deep_to_parse_as_malformed(
    offline: Run, tmp_path: Path
) -> None:
    """A line of the file nested too deep for the parser is MALFORMED at its line: exit 1."""
    first = AuditEntry.create(
        Anchor(0, GENESIS),
        "registered",
        ts=datetime(2026, 1, 1, tzinfo=UTC),
        actor="admin",
        subject="scout",
        zone=None,
        details={},
    )
    path = tmp_path / "audit.jsonl"
    path.write_bytes(first.to_json().encode() + b"\n" + b"[" * 200_000 + b"]" * 200_000 + b"\n")
    done = offline("audit", "verify", "--file", str(path), "--json")
    assert done.code == 1
    assert done.json()["problem"]["kind"] == "malformed"
    assert done.json()["problem"]["position"] == 1
    assert done.json()["count"] == 1


def test_compartments_are_held_changed_and_written_through_the_cli(
    hivemem: Run, agent_id: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``agents register --compartment``, ``zones compartments`` (exactly those named; none
    takes all away; audited) and ``memory add --compartment``; an unknown compartment is a
    usage error and changes nothing, a compartment the agent does not hold is refused."""
    monkeypatch.setenv("HIVEMEM_COMPARTMENTS", '["apollo", "hr"]')
    scout = agent_id("scout")
    registered = hivemem("agents", "register", scout, "--compartment", "apollo", "--json")
    assert registered.json()["compartments"] == ["apollo"]
    changed = hivemem("zones", "compartments", scout, "hr", "apollo", "--json")
    assert changed.json() == {
        "agent_id": scout, "compartments": ["apollo", "hr"], "previous": ["apollo"]
    }  # fmt: skip
    assert hivemem("zones", "compartments", scout, "nuclear").code == 2
    assert hivemem("agents", "register", agent_id("x"), "--compartment", "nuclear").code == 2
    added = hivemem(
        "memory", "add", "--agent", scout, "--user", "u1", "--compartment", "hr", "memo", "--json"
    )
    assert added.code == 0
    assert added.json()["compartments"] == ["hr"]
    emptied = hivemem("zones", "compartments", scout, "--json")
    assert emptied.json()["compartments"] == []
    refused = hivemem(
        "memory", "add", "--agent", scout, "--user", "u1", "--compartment", "hr", "memo two"
    )
    assert refused.code == 1
    assert "does not hold compartment(s) hr" in refused.err
    mine = [
        (e["kind"], e["details"].get("compartments"))
        for e in hivemem("audit", "tail", "-n", "50", "--json").json()
        if e["subject"] == scout and e["kind"] in ("granted", "revoked")
    ]
    assert mine == [("granted", ["hr"]), ("revoked", ["apollo", "hr"])]


def zone_keys(hivemem: Run, zone: str) -> list[dict[str, object]]:
    done = hivemem("zones", "keys", zone, "--json")
    assert done.code == 0, done.err
    return list(done.json())


def test_zone_keys_of_every_zone_when_none_is_named(hivemem: Run) -> None:
    """keys and rotate-keys without ZONE act on every zone, as documented (argparse's choices
    refused the empty list); an unknown zone exits 2 and names the zones."""
    assert hivemem("zones", "rotate-keys", "--no-wait").code == 0
    every = hivemem("zones", "keys", "--json")
    assert every.code == 0, every.err
    assert {row["zone"] for row in every.json()} == {"public", "internal", "confidential", "secret"}
    assert hivemem("zones", "keys").code == 0
    for command in (["keys"], ["rotate-keys", "--no-wait"]):
        unknown = hivemem("zones", *command, "internal", "top")
        assert unknown.code == 2
        assert "unknown zone 'top'" in unknown.err
    assert zone_keys(hivemem, "internal") == [
        row for row in every.json() if row["zone"] == "internal"
    ]


def test_retiring_an_unknown_key_is_a_usage_error(hivemem: Run) -> None:
    """retire-key with a well-formed id the zone never had exits 2 and names it, as a malformed
    id does; the zone's keys stay as they were."""
    assert hivemem("zones", "rotate-keys", "internal", "--no-wait").code == 0
    keys = zone_keys(hivemem, "internal")
    assert keys
    unknown = hivemem("zones", "retire-key", "internal", "0a1b2c3d4e5f")
    assert unknown.code == 2
    assert "zone internal has no key 0a1b2c3d4e5f" in unknown.err
    malformed = hivemem("zones", "retire-key", "internal", "zzz")
    assert malformed.code == 2
    assert "key id must match" in malformed.err
    assert zone_keys(hivemem, "internal") == keys


def test_a_rotation_timeout_must_be_a_finite_number_of_seconds(hivemem: Run) -> None:
    """rotate-keys --timeout of -1, 0, nan, inf, more than a day or no number exits 2 before
    any key is made or re-seal queued (a negative one used to rotate, then exit 1)."""
    keys = zone_keys(hivemem, "internal")
    for value in ("-1", "0", "nan", "inf", "86401", "1e300", "soon"):
        done = hivemem("zones", "rotate-keys", "internal", "--timeout", value)
        assert done.code == 2, value
        assert "argument --timeout" in done.err, (value, done.err)
    assert zone_keys(hivemem, "internal") == keys

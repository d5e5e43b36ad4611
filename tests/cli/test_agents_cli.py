"""``hivemem agents``: register, list, show and revoke, against a real Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hivemem.pool.redis_server import free_port
from tests.cli.conftest import Run


def test_register_list_show_revoke_round_trip(hivemem: Run, agent_id: Callable[[str], str]) -> None:
    """A registered agent is listed and shown as registered; revoked, it is gone."""
    alice, bob = agent_id("alice"), agent_id("bob")
    done = hivemem(
        "agents", "register", alice, "--clearance", "confidential",
        "--share", "category", "--share", "domain", "--receive", "episode",
        "--receive", "category", "--name", "Alice", "--capability", "support",
        "--capability", "billing", "--json",
    )  # fmt: skip
    assert done.code == 0, done.err
    registered = done.json()
    assert registered["agent_id"] == alice
    assert registered["clearance"] == "confidential"
    assert registered["share_levels"] == ["category", "domain"]
    assert registered["receive_levels"] == ["episode", "category"]
    assert registered["capabilities"] == ["support", "billing"]
    assert hivemem("agents", "register", bob).code == 0

    listed = hivemem("agents", "list", "--json").json()
    assert [a["agent_id"] for a in listed] == sorted([alice, bob])
    by_id = {a["agent_id"]: a for a in listed}
    assert by_id[bob]["clearance"] == "public"
    assert by_id[bob]["share_levels"] == []
    assert by_id[bob]["receive_levels"] == ["episode", "trace", "category", "domain"]
    assert by_id[alice]["alive"] is False

    shown = hivemem("agents", "show", alice, "--json").json()
    assert shown["display_name"] == "Alice"
    assert shown["memory_dir"].endswith(f"agents/{alice}")
    assert shown["last_seen"] is None

    revoked = hivemem("agents", "revoke", alice)
    assert revoked.code == 0
    assert "stay on disk" in revoked.out
    assert "still store the writes it queued" in revoked.out
    assert [a["agent_id"] for a in hivemem("agents", "list", "--json").json()] == [bob]
    gone = hivemem("agents", "show", alice)
    assert gone.code == 2
    assert f"no agent {alice}" in gone.err
    discarded = hivemem("agents", "revoke", bob, "--discard-queued", "--json")
    assert discarded.code == 0, discarded.err
    assert discarded.json()["queued_writes"] == "discarded"
    assert hivemem("agents", "list", "--json").json() == []
    later = hivemem("agents", "revoke", alice, "--discard-queued", "--json")  # revoked before
    assert later.code == 0, later.err
    assert later.json() == {"agent_id": alice, "registered": False, "departures_discarded": 0}
    assert (
        "nothing it queued is waiting" in hivemem("agents", "revoke", alice, "--discard-queued").out
    )


def test_text_output_names_the_agents(hivemem: Run, agent_id: Callable[[str], str]) -> None:
    """Without --json, list prints a table with each agent and register says what it did."""
    alice = agent_id("al")
    first = hivemem("agents", "register", alice, "--share", "episode")
    assert first.out.startswith(f"registered agent {alice}")
    again = hivemem("agents", "register", alice, "--share", "trace")
    assert again.out.startswith(f"updated agent {alice}")
    listed = hivemem("agents", "list")
    assert alice in listed.out
    assert "trace" in listed.out


def test_a_clearance_does_not_change_by_re_registering(
    hivemem: Run, agent_id: Callable[[str], str]
) -> None:
    """Re-registering with another clearance fails (exit 1), naming the way to change it."""
    alice = agent_id("alice")
    assert hivemem("agents", "register", alice, "--clearance", "internal").code == 0
    done = hivemem("agents", "register", alice, "--clearance", "secret")
    assert done.code == 1
    assert "deregister it first" in done.err
    assert hivemem("agents", "show", alice, "--json").json()["clearance"] == "internal"


def test_unknown_agents_are_usage_errors(hivemem: Run, agent_id: Callable[[str], str]) -> None:
    """show and revoke of an unregistered agent exit 2 and name it."""
    ghost = agent_id("ghost")
    for command in ("show", "revoke"):
        done = hivemem("agents", command, ghost)
        assert done.code == 2
        assert f"no agent {ghost} in the pool" in done.err


def test_bad_values_are_usage_errors(hivemem: Run) -> None:
    """A bad zone or level exits 2 listing the valid ones; a bad agent id exits 2 naming it."""
    zone = hivemem("agents", "register", "x1", "--clearance", "top-secret")
    assert zone.code == 2
    assert "public" in zone.err
    assert "secret" in zone.err
    level = hivemem("agents", "register", "x1", "--share", "paragraph")
    assert level.code == 2
    assert "episode" in level.err
    bad_id = hivemem("agents", "register", "no spaces allowed")
    assert bad_id.code == 2
    assert "agent_id" in bad_id.err
    assert hivemem("agents", "list", "--json").json() == []


def test_an_unreachable_pool_fails(hivemem: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """With HIVEMEM_REDIS_URL on a port nobody listens on, commands exit 1 and say so."""
    monkeypatch.setenv("HIVEMEM_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    done = hivemem("agents", "list")
    assert done.code == 1
    assert "cannot reach Redis" in done.err


def test_every_command_has_help(offline: Run) -> None:
    """`hivemem agents COMMAND --help` exits 0 for each command."""
    assert offline("agents", "--help").code == 0
    for command in ("register", "list", "show", "revoke"):
        done = offline("agents", command, "--help")
        assert done.code == 0, command
        assert "--json" in done.out, command

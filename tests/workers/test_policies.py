"""Lifecycle policies: validation, presets, the filters they translate to (run against a real
zone store), and loading from YAML and TOML files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from hivemem.pool.adapters.edge_zone_store import EdgeZoneStore
from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import And
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import WorkerSettings
from hivemem.pool.zone_policy import ZonePolicy
from hivemem.workers.archive import ArchiveService
from hivemem.workers.lifecycle import LifecycleService
from hivemem.workers.policies import (
    DEFAULT_POLICIES,
    Action,
    InvalidPolicy,
    InvalidPolicyFile,
    Policy,
    PolicySet,
    When,
    cleanup_old_episodes,
    configured_policies,
    load_policies,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ZONE = Zone.PUBLIC

YAML_FILE = """\
policies:
  - name: archive_cold
    when: {unaccessed_days: 30, importance_below: 0.3, levels: [episode, trace]}
    action: archive
  - name: purge_old
    when: {older_than_days: 365, store: archive}
    action: delete
"""
TOML_FILE = """\
[[policies]]
name = "archive_cold"
action = "archive"
when = { unaccessed_days = 30, importance_below = 0.3, levels = ["episode", "trace"] }

[[policies]]
name = "purge_old"
action = "delete"
[policies.when]
older_than_days = 365
store = "archive"
"""
EXPECTED = PolicySet(
    policies=[
        Policy(
            name="archive_cold",
            when=When(
                unaccessed_days=30, importance_below=0.3, levels=[Level.EPISODE, Level.TRACE]
            ),
            action=Action.ARCHIVE,
        ),
        Policy(
            name="purge_old",
            when=When(older_than_days=365, store="archive"),
            action=Action.DELETE,
        ),
    ]
)


def make(content: str = "a memory", **fields: Any) -> MemoryRecord:
    fields.setdefault("scope", {"user_id": "u1"})
    fields.setdefault("valid_from", fields.get("recorded_at", NOW))
    return MemoryRecord(content=content, **fields)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def selected(store: EdgeZoneStore, policy: Policy, records: dict[str, MemoryRecord]) -> set[str]:
    """The names of the records ``policy.where(NOW)`` selects in the store."""
    store.upsert(ZONE, list(records.values()))
    found = set(store.ids(ZONE, policy.where(NOW)))
    return {name for name, record in records.items() if record.id in found}


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"when": {"older_than_days": 1, "store": "archive"}, "action": "archive"}, "action"),
        ({"when": {"older_than_days": 1, "store": "archive"}, "action": "refresh"}, "action"),
        ({"when": {"older_than_days": 1, "store": "archive"}, "action": "demote"}, "action"),
        ({"when": {"older_than_days": 1, "store": "archive"}, "action": "promote"}, "action"),
        ({"when": {"older_than_days": -1}, "action": "delete"}, "when.older_than_days"),
        ({"when": {"unaccessed_days": float("nan")}, "action": "delete"}, "when.unaccessed_days"),
        ({"when": {"older_than_days": float("inf")}, "action": "delete"}, "when.older_than_days"),
        ({"when": {"older_than_days": 10**9}, "action": "delete"}, "when.older_than_days"),
        ({"when": {"older_than_days": True}, "action": "delete"}, "when.older_than_days"),
        ({"when": {"importance_below": 1.5}, "action": "archive"}, "when.importance_below"),
        ({"when": {"older_than_days": 1}, "action": "explode"}, "action"),
        ({"when": {"levels": ["paragraph"]}, "action": "archive"}, "when.levels.0"),
        ({"when": {"tiers": []}, "action": "archive"}, "when.tiers"),
        ({"when": {"older_than_days": 1, "colour": "red"}, "action": "archive"}, "when.colour"),
        ({"when": {"store": "archive"}, "action": "delete"}, "when"),
        ({"when": {}, "action": "delete"}, "when"),
        ({"action": "delete"}, "when"),
        (
            {"when": {"importance_at_least": 0.5, "importance_below": 0.5}, "action": "refresh"},
            "when.importance_at_least",
        ),
        ({"when": {"tiers": ["long_term"]}, "action": "demote"}, "when.tiers"),
        ({"when": {"tiers": ["long_term", "archive"]}, "action": "promote"}, "when.tiers"),
    ],
)
def test_nonsense_policy_raises(data: dict[str, Any], field: str) -> None:
    """A policy that makes no sense raises InvalidPolicy (a ValueError) naming the field."""
    with pytest.raises(InvalidPolicy) as caught:
        Policy.model_validate({"name": "p", **data})
    assert caught.value.field == field
    assert isinstance(caught.value, InvalidInput | ValueError)


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "-lead", "a/b"])
def test_bad_policy_name_raises(name: str) -> None:
    """Policy names are short identifiers (they appear in reports and logs)."""
    with pytest.raises(InvalidPolicy):
        Policy(name=name, when=When(older_than_days=1), action=Action.DELETE)


def test_duplicate_names_raise() -> None:
    """Two policies of one set with the same name raise InvalidPolicy."""
    policy = Policy(name="p", when=When(older_than_days=1), action=Action.DELETE)
    with pytest.raises(InvalidPolicy, match="used twice"):
        PolicySet(policies=[policy, policy])


def test_delete_may_apply_to_the_archive() -> None:
    """Delete is the one action allowed on the archive (it purges)."""
    policy = Policy(name="p", when=When(older_than_days=0, store="archive"), action="delete")
    assert policy.when.store == "archive"


def test_demote_and_promote_targets() -> None:
    """Demote goes WORKING → SHORT_TERM only; promote goes to LONG_TERM from WORKING or
    SHORT_TERM; neither touches ARCHIVE."""
    demote = Policy(name="d", when=When(older_than_days=1), action=Action.DEMOTE)
    promote = Policy(name="p", when=When(importance_at_least=0.9), action=Action.PROMOTE)
    narrow = Policy(
        name="n", when=When(tiers=[Tier.SHORT_TERM, Tier.LONG_TERM]), action=Action.PROMOTE
    )
    assert (demote.moved_tiers(), demote.target_tier()) == ([Tier.WORKING], Tier.SHORT_TERM)
    assert (promote.moved_tiers(), promote.target_tier()) == (
        [Tier.WORKING, Tier.SHORT_TERM],
        Tier.LONG_TERM,
    )
    assert narrow.moved_tiers() == [Tier.SHORT_TERM]
    archive = Policy(name="a", when=When(older_than_days=1), action=Action.ARCHIVE)
    assert (archive.moved_tiers(), archive.target_tier()) == (None, None)


# -- presets ------------------------------------------------------------------------------------


def test_default_policies() -> None:
    """The defaults: archive cold unimportant records, delete year-old archives, refresh
    important ones."""
    archive, purge, refresh = DEFAULT_POLICIES.policies
    assert (archive.action, archive.when) == (
        Action.ARCHIVE,
        When(unaccessed_days=30, importance_below=0.3, levels=[Level.EPISODE, Level.TRACE]),
    )
    assert (purge.action, purge.when) == (
        Action.DELETE,
        When(older_than_days=365, store="archive"),
    )
    assert (refresh.action, refresh.when) == (
        Action.REFRESH,
        When(unaccessed_days=7, importance_above=0.8),
    )


def test_cleanup_old_episodes() -> None:
    """cleanup_old_episodes deletes consolidated live episodes older than the days given."""
    policy = cleanup_old_episodes(90)
    assert policy.action is Action.DELETE
    assert policy.when == When(older_than_days=90, levels=[Level.EPISODE], consolidated=True)
    with pytest.raises(InvalidPolicy):
        cleanup_old_episodes(-1)


# -- filters ------------------------------------------------------------------------------------


def test_unaccessed_days_selects_cold_records(store: EdgeZoneStore) -> None:
    """unaccessed_days: accessed before the cutoff, or never accessed and recorded before it."""
    policy = Policy(name="p", when=When(unaccessed_days=30), action=Action.ARCHIVE)
    records = {
        "accessed_long_ago": make(recorded_at=days_ago(90), last_accessed_at=days_ago(31)),
        "accessed_lately": make(recorded_at=days_ago(90), last_accessed_at=days_ago(29)),
        "never_accessed_old": make(recorded_at=days_ago(31)),
        "never_accessed_new": make(recorded_at=days_ago(29)),
    }
    assert selected(store, policy, records) == {"accessed_long_ago", "never_accessed_old"}


def test_older_than_days_uses_recorded_at(store: EdgeZoneStore) -> None:
    """older_than_days compares recorded_at with the cutoff, whatever the last access."""
    policy = Policy(name="p", when=When(older_than_days=10), action=Action.DELETE)
    records = {
        "old": make(recorded_at=days_ago(11), last_accessed_at=days_ago(0)),
        "young": make(recorded_at=days_ago(9)),
    }
    assert selected(store, policy, records) == {"old"}


def test_importance_levels_tiers_categories(store: EdgeZoneStore) -> None:
    """Importance bounds (below: strict, at least: inclusive) and the lists are ANDed."""
    policy = Policy(
        name="p",
        when=When(
            importance_at_least=0.2,
            importance_below=0.6,
            levels=[Level.TRACE],
            tiers=[Tier.SHORT_TERM, Tier.LONG_TERM],
            categories=["fact"],
        ),
        action=Action.DELETE,
    )
    base = {"level": Level.TRACE, "tier": Tier.SHORT_TERM, "category": "fact"}
    records = {
        "low_edge": make(importance=0.2, **base),
        "high_edge": make(importance=0.6, **base),
        "inside": make(importance=0.4, **{**base, "tier": Tier.LONG_TERM}),
        "episode": make(importance=0.4, **{**base, "level": Level.EPISODE}),
        "working": make(importance=0.4, **{**base, "tier": Tier.WORKING}),
        "event": make(importance=0.4, **{**base, "category": "event"}),
    }
    assert selected(store, policy, records) == {"low_edge", "inside"}


def test_demote_selects_only_what_it_moves(store: EdgeZoneStore) -> None:
    """A demote policy selects WORKING records only (the others would go to ARCHIVE)."""
    policy = Policy(name="p", when=When(older_than_days=1), action=Action.DEMOTE)
    records = {t.value: make(tier=t, recorded_at=days_ago(2)) for t in Tier}
    assert selected(store, policy, records) == {"working"}


def test_where_takes_naive_now_as_utc() -> None:
    """A naive ``now`` is read as UTC."""
    policy = DEFAULT_POLICIES.policies[0]
    assert policy.where(NOW.replace(tzinfo=None)) == policy.where(NOW)


def test_zones_condition() -> None:
    """A policy with zones applies to those zones only."""
    policy = Policy(name="p", when=When(zones=[Zone.SECRET]), action=Action.ARCHIVE)
    assert policy.applies_to(Zone.SECRET)
    assert not policy.applies_to(Zone.PUBLIC)
    assert DEFAULT_POLICIES.policies[0].applies_to(Zone.PUBLIC)


# -- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "text"), [(".yaml", YAML_FILE), (".yml", YAML_FILE), (".toml", TOML_FILE)]
)
def test_load_policies(tmp_path: Path, suffix: str, text: str) -> None:
    """YAML and TOML files load to the same policy set, chosen by suffix."""
    path = tmp_path / f"policies{suffix}"
    path.write_text(text)
    assert load_policies(path) == EXPECTED
    assert load_policies(str(path)) == EXPECTED


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("bad.yaml", "policies: [name: x\n", "not valid YAML"),
        ("bad.toml", "[[policies]\nname = 1\n", "not valid TOML"),
        ("list.yaml", "- name: x\n", "expected a mapping"),
        ("empty.yaml", "", "expected a mapping"),
        ("wrong.json", '{"policies": []}', "ends in .yaml"),
        ("nonsense.yaml", YAML_FILE.replace("store: archive", "store: attic"), "store"),
        (
            "nonsense.toml",
            TOML_FILE.replace('action = "delete"', 'action = "archive"'),
            "live records only",
        ),
    ],
)
def test_malformed_file_raises(tmp_path: Path, name: str, text: str, reason: str) -> None:
    """A malformed file raises InvalidPolicyFile naming the file and the problem."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidPolicyFile, match=reason) as caught:
        load_policies(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)


def test_nonsense_in_file_names_the_field(tmp_path: Path) -> None:
    """A bad field inside a file is reported with its dotted path."""
    path = tmp_path / "p.yaml"
    path.write_text(YAML_FILE.replace("older_than_days: 365", "older_than_days: -365"))
    with pytest.raises(InvalidPolicyFile) as caught:
        load_policies(path)
    assert caught.value.field == "policies.1.when.older_than_days"


def test_missing_file_raises(tmp_path: Path) -> None:
    """A file that cannot be read raises InvalidPolicyFile."""
    with pytest.raises(InvalidPolicyFile, match="cannot be read"):
        load_policies(tmp_path / "absent.yaml")


def test_configured_policies(tmp_path: Path) -> None:
    """The workers' setting names a file; without one, the defaults apply."""
    assert configured_policies(WorkerSettings()) == DEFAULT_POLICIES
    path = tmp_path / "p.toml"
    path.write_text(TOML_FILE)
    assert configured_policies(WorkerSettings(policies_file=path)) == EXPECTED


# -- a bad file and the zones' retention --------------------------------------------------------

RETENTION = {Zone.PUBLIC: ZonePolicy(retention_days=30)}
TYPO = YAML_FILE.replace("older_than_days: 365", "older_than_day: 365")


def test_a_bad_file_leaves_the_zones_retention_on(tmp_path: Path, store: EdgeZoneStore) -> None:
    """A typo in the policy file (``older_than_day``) no longer switches retention off: the
    pass runs the zones' retention policies alone, and logs the file's error with the file
    and the field."""
    path = tmp_path / "p.yaml"
    path.write_text(TYPO)
    with structlog.testing.capture_logs() as logs:
        chosen = configured_policies(WorkerSettings(policies_file=path), RETENTION)

    assert [p.name for p in chosen.policies] == [
        "retention.public.live",
        "retention.public.archive",
    ]
    [event] = [e for e in logs if e["event"] == "lifecycle_policies_file_invalid"]
    assert event["log_level"] == "error"
    assert event["path"] == str(path)
    assert event["field"] == "policies.1.when.older_than_day"
    old, young = make("old", recorded_at=days_ago(40)), make("young", recorded_at=days_ago(1))
    store.upsert(ZONE, [old, young])
    report = LifecycleService(store, ArchiveService(store)).run([ZONE], chosen, now=NOW)
    assert report.ids("retention.public.live", ZONE) == [old.id]
    assert store.ids(ZONE, And(all=[])) == [young.id]


def test_a_bad_file_without_retention_runs_nothing_and_logs(tmp_path: Path) -> None:
    """With no zone retention, a bad file leaves an empty pass (not the defaults), logged."""
    path = tmp_path / "p.yaml"
    path.write_text(TYPO)
    with structlog.testing.capture_logs() as logs:
        chosen = configured_policies(WorkerSettings(policies_file=path))
    assert chosen.policies == []
    assert [e["event"] for e in logs] == ["lifecycle_policies_file_invalid"]


def test_strict_raises_for_a_bad_file_naming_the_file_and_the_field(tmp_path: Path) -> None:
    """``strict`` (the workers' check at start) raises InvalidPolicyFile naming both."""
    path = tmp_path / "p.yaml"
    path.write_text(TYPO)
    with pytest.raises(InvalidPolicyFile) as caught:
        configured_policies(WorkerSettings(policies_file=path), RETENTION, strict=True)
    assert caught.value.path == path
    assert caught.value.field == "policies.1.when.older_than_day"
    assert str(path) in str(caught.value)
    assert "older_than_day" in str(caught.value)


def test_a_file_policy_taking_a_retention_name_is_a_bad_file(tmp_path: Path) -> None:
    """A file's policy named like a zone's retention policy makes the file invalid: strict
    raises InvalidPolicyFile naming the field; otherwise the retention runs alone."""
    path = tmp_path / "p.yaml"
    path.write_text(YAML_FILE.replace("name: purge_old", "name: retention.public.archive"))
    settings = WorkerSettings(policies_file=path)
    with pytest.raises(InvalidPolicyFile, match="retention") as caught:
        configured_policies(settings, RETENTION, strict=True)
    assert caught.value.field == "policies.1.name"
    assert caught.value.path == path
    chosen = configured_policies(settings, RETENTION)
    assert [p.name for p in chosen.policies] == [
        "retention.public.live",
        "retention.public.archive",
    ]
    alone = configured_policies(settings, strict=True)  # no zone retention: no clash
    assert [p.name for p in alone.policies] == ["archive_cold", "retention.public.archive"]

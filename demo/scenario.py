"""The main job: several agents, in processes of their own and with different clearances, share
memory through the pool while a worker consolidates it; printed as a report.

Steps: start the embedded stack (Redis, a worker with beat, the embedded zone stores); register
three agents; a conversation becomes episodes that reach each agent as its clearance allows; a
confidential record is refused to the lower-cleared agent; the worker consolidates alice's
episodes into traces, categories and a profile that the agents receive; a fact changes and both
versions are in the history; alice is forgotten everywhere while bob is untouched; the audit
log shows the registrations, the refusal and the forget, and its hash chain verifies. Returns 0
only when every check passed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import structlog
from rich.console import Console
from rich.table import Table

from hivemem.demo import conversation
from hivemem.demo.agent_process import AgentProcess, DemoAgentError
from hivemem.pool.enums import Zone
from hivemem.pool.settings import HivememSettings
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.workers.fleet import Fleet
from hivemem.workers.stack import EmbeddedStack

_WAIT_S = 45.0
#: How long the demo waits for a worker's task: on a loaded machine a forget waits for the
#: user's consolidation to end (its lock) and for the zones' ingest.
_TASK_WAIT_S = 180.0


class Report:
    """The checks so far, printed as they pass or fail."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.results: list[bool] = []

    def check(self, ok: bool, what: str) -> bool:
        self.results.append(ok)
        self.console.print(f"  [{'green' if ok else 'red'}]{'✓' if ok else '✗'}[/] {what}")
        return ok

    def step(self, title: str) -> None:
        self.console.rule(f"[bold]{title}", align="left")


def _wait(condition: Callable[[], Any], timeout_s: float = _WAIT_S) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or the time is up (the
    last value is returned)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _demo_settings(settings: HivememSettings, data_dir: Path) -> HivememSettings:
    workers = settings.workers.model_copy(
        update={
            "consolidation": settings.workers.consolidation.model_copy(update={"threshold": 10}),
            "ingest_interval_s": 0.5,
        }
    )
    return settings.model_copy(
        update={"data_dir": data_dir, "redis_url": None, "qdrant_url": None, "workers": workers}
    )


def run_demo(settings: HivememSettings, console: Console | None = None) -> int:
    """Run the scenario in a fresh directory; 0 when every check passed, 1 otherwise."""
    console = console or Console()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # the report is the output
    workdir = Path(tempfile.mkdtemp(prefix="hivemem-demo-"))
    report = Report(console)
    started = time.monotonic()
    try:
        with console.status("starting Redis and a worker (with beat)…"):
            stack = EmbeddedStack(_demo_settings(settings, workdir)).start()
        try:
            _scenario(stack, report)
        finally:
            with console.status("stopping the stack…"):
                stack.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    passed = sum(report.results)
    colour = "green" if all(report.results) else "red"
    console.print(
        f"[bold {colour}]{passed}/{len(report.results)} checks passed[/] "
        f"in {time.monotonic() - started:.0f} s"
    )
    return 0 if report.results and all(report.results) else 1


def _scenario(stack: EmbeddedStack, report: Report) -> None:
    console = report.console
    settings = stack.settings
    report.step("1. The stack")
    report.check(True, f"Redis on {stack.redis.shown_url}, worker with beat, embedded zone stores")

    report.step("2. Three agents, three processes, three clearances")
    specs = [
        ("concierge", Zone.CONFIDENTIAL, ["episode"]),
        ("analyst", Zone.CONFIDENTIAL, []),
        ("planner", Zone.INTERNAL, []),
    ]
    agents: dict[str, AgentProcess] = {}
    try:
        with console.status("starting the agent processes (each loads the embedding model)…"):
            for agent_id, clearance, shares in specs:
                agents[agent_id] = AgentProcess(
                    settings, agent_id, clearance=clearance, share_levels=shares
                )
            for agent in agents.values():
                agent.ready()
        table = Table("agent", "clearance", "shares", title="Registered agents")
        for agent_id, clearance, shares in specs:
            table.add_row(agent_id, clearance.value, ", ".join(shares) or "—")
        console.print(table)
        report.check(len(agents) == 3, "three agents registered, each in its own process")
        _steps(agents, settings, report)
    finally:
        for agent in agents.values():
            agent.stop()


def _steps(agents: dict[str, AgentProcess], settings: HivememSettings, report: Report) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        with AuditLog(client, namespace=settings.pool.namespace) as audit:
            home_id, secret_id = _share(agents, report)
            _no_read_up(agents, secret_id, audit, report)
            _consolidation(agents["planner"], report)
            _fact_changes(agents, home_id, report)
            _forget(agents, settings, report)
            _audit(audit, report)
    finally:
        client.close()


def _share(agents: dict[str, AgentProcess], report: Report) -> tuple[str, str]:
    """Step 3; returns the ids of alice's home fact and of a confidential episode."""
    console = report.console
    concierge, analyst, planner = agents["concierge"], agents["analyst"], agents["planner"]
    report.step("3. Conversations become episodes; the concierge shares them")
    items = conversation.episodes()
    ids = concierge.call("add_many", items=items)
    home_id = concierge.call("add_many", items=[conversation.home_fact()])[0]
    console.print(f"  the concierge wrote {len(ids) + 1} episodes (alice and bob)")
    confidential = len(conversation.ALICE_CONFIDENTIAL)
    internal = conversation.ALICE_INTERNAL + 1
    with console.status("waiting for the other agents to receive them…"):
        seen_by_analyst = _wait(
            lambda: (
                analyst.call("counts", user_id="alice")["by_zone"].get("confidential")
                == confidential
            )
        )
        planner_zones = _wait(
            lambda: (
                (z := planner.call("counts", user_id="alice")["by_zone"]).get("internal")
                == internal
                and z
            )
        )
    report.check(
        bool(seen_by_analyst),
        f"the analyst (CONFIDENTIAL) received alice's {confidential} confidential episodes",
    )
    report.check(
        bool(planner_zones) and "confidential" not in planner_zones,
        f"the planner (INTERNAL) received alice's {internal} internal episodes and none of "
        "the confidential ones",
    )
    return home_id, ids[len(items) - conversation.BOB_EPISODES - 1]


def _no_read_up(
    agents: dict[str, AgentProcess], secret_id: str, audit: AuditLog, report: Report
) -> None:
    report.step("4. No read up")
    refused = agents["concierge"].call("hand_over", record_id=secret_id, to_agent="planner")
    report.check(refused == "refused", "handing a confidential record to the planner is refused")
    denied = [e for e in audit.tail(5) if e.kind == AuditEvent.DENIED_READ]
    if denied:
        entry = denied[-1]
        report.console.print(
            f"  audit #{entry.seq}: {entry.kind} actor={entry.actor} subject={entry.subject} "
            f"zone={entry.zone} record={entry.details.get('record_id')}"
        )
    report.check(
        bool(denied) and denied[-1].subject == "planner" and denied[-1].zone == "confidential",
        "the audit log shows the refusal",
    )
    hits = agents["planner"].call(
        "search", query="which card does alice pay with?", user_id="alice"
    )
    report.check(
        all(zone != "confidential" for _, _, zone in hits),
        "the planner's search for alice's card finds nothing confidential",
    )


def _consolidation(planner: AgentProcess, report: Report) -> None:
    console = report.console
    report.step("5. The worker consolidates; the agents receive the result")
    with console.status("waiting for traces, categories and a profile of alice…"):
        profile = _wait(lambda: planner.call("find", user_id="alice", level="domain")) or []
    traces = planner.call("find", user_id="alice", level="trace")
    categories = planner.call("find", user_id="alice", level="category")
    table = Table("level", "zone", "sources", "content", title="What the planner received")
    for level, found in (("trace", traces), ("category", categories), ("domain", profile)):
        for record in found:
            table.add_row(level, record["zone"], str(record["sources"]), record["content"][:120])
    console.print(table)
    report.check(
        bool(profile) and bool(traces) and bool(categories),
        "the planner received traces, categories and a domain profile of alice",
    )
    report.check(
        all(r["zone"] == "internal" for r in [*traces, *categories, *profile]),
        "everything consolidated from internal episodes is internal (no write down)",
    )


def _fact_changes(agents: dict[str, AgentProcess], home_id: str, report: Report) -> None:
    planner = agents["planner"]
    report.step("6. A fact changes")
    new_id = agents["concierge"].call(
        "supersede", record_id=home_id, content=conversation.ALICE_MOVED
    )
    history = _wait(lambda: len(h := _history_or_empty(planner, new_id)) == 2 and h) or []
    for position, content in enumerate(history, 1):
        report.console.print(f"  version {position}: {content}")
    report.check(
        history == [conversation.ALICE_HOME, conversation.ALICE_MOVED],
        "the planner's history of the fact shows both versions, oldest first",
    )
    hits = planner.call("search", query="where does alice live?", user_id="alice")
    report.check(
        bool(hits) and "Berlin" in hits[0][0], "the planner's search answers with the new version"
    )


def _forget(agents: dict[str, AgentProcess], settings: HivememSettings, report: Report) -> None:
    console = report.console
    report.step("7. Alice is forgotten everywhere")
    bob_before = agents["planner"].call("counts", user_id="bob")["current"]
    console.print("  one call: the workers forget alice in every zone store and archive, and "
                  "their tombstones reach every agent")  # fmt: skip
    with Fleet(settings) as fleet:
        receipt = fleet.forget_user("alice", timeout_s=_TASK_WAIT_S)
        again = fleet.forget_user("alice", timeout_s=_TASK_WAIT_S)
    table = Table("zone", "live records", "archived", "tombstones sent", title="Forget receipt")
    for zone, part in receipt.zones.items():
        if part.live_records or part.archived_records:
            table.add_row(
                zone, str(part.live_records), str(part.archived_records),
                str(part.tombstones_published),
            )  # fmt: skip
    console.print(table)
    with console.status("waiting for the tombstones to reach every agent…"):
        left = {name: _wait(_forgotten_by(agent)) for name, agent in agents.items()}
    report.check(all(left.values()), "no agent holds a current record of alice any more")
    report.check(
        receipt.removed > 0 and again.removed == 0,
        f"the zone stores removed {receipt.removed} records of alice; a second pass finds none",
    )
    report.check(
        agents["planner"].call("counts", user_id="bob")["current"] == bob_before,
        "bob's memories are untouched",
    )


def _audit(audit: AuditLog, report: Report) -> None:
    report.step("8. The audit log")
    table = Table("seq", "event", "actor", "subject", "zone", title="Audit log")
    for entry in audit.entries():
        table.add_row(str(entry.seq), entry.kind, entry.actor, entry.subject, entry.zone or "")
    report.console.print(table)
    verified = audit.verify()
    kinds = {entry.kind for entry in audit.entries()}
    report.check(
        verified.ok and {"registered", "denied_read", "forgotten"} <= kinds,
        f"the hash chain of {verified.count} entries verifies, and it holds the registrations, "
        "the refusal and the forget",
    )


def _forgotten_by(agent: AgentProcess) -> Callable[[], bool]:
    return lambda: bool(agent.call("counts", user_id="alice")["current"] == 0)


def _history_or_empty(agent: AgentProcess, record_id: str) -> list[str]:
    try:
        history: list[str] = agent.call("history", record_id=record_id)
    except DemoAgentError:
        return []
    return history

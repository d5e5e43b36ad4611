"""What ``hivemem import`` checks of each record of a file, beyond its fields: that the agent
may hold it (:func:`refusal`) and that the file's version links make no loop (:func:`loops`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hivemem.pool.compartments import missing
from hivemem.pool.records import MemoryRecord

if TYPE_CHECKING:
    from hivemem.agents.agent import Agent
    from hivemem.security.classifier import Classifier


def refusal(
    record: MemoryRecord, agent: Agent, max_chars: int, classifier: Classifier | None
) -> str | None:
    """Why ``agent`` may not import ``record`` (None: it may): a zone above its clearance, a
    compartment it does not hold, content over the limit, or sensitive content in a lower zone
    than the classifier asks (named by detector only). A link to itself the record's own
    validation refuses."""
    from hivemem.security.classifier import record_text

    info = agent.info
    if record.zone > info.clearance:
        return (
            f"zone {record.zone.value} is above the clearance of agent {agent.agent_id} "
            f"({info.clearance.value})"
        )
    lacking = missing(info.compartments, record.compartments)
    if lacking:
        return f"agent {agent.agent_id} does not hold compartment(s) {', '.join(lacking)}"
    if len(record.content) > max_chars:
        return f"content longer than {max_chars} characters"
    if classifier is None:
        return None
    text = record_text(record.content, record.tags, record.entities, record.metadata)
    found = classifier.assess(text, record.zone)
    if found.zone > record.zone:
        return (
            f"sensitive content ({', '.join(found.detectors)}) belongs in zone "
            f"{found.zone.value} or above, not {record.zone.value}"
        )
    return None


def _finishing_order(links: dict[str, list[str]]) -> list[str]:
    """Every node of the graph ``links`` in the order a depth-first search finishes them
    (without recursion: chains may be long)."""
    finished: list[str] = []
    seen: set[str] = set()
    for root, following in links.items():
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(following))]
        while stack:
            node, steps = stack[-1]
            step = next(steps, None)
            if step is None:
                stack.pop()
                finished.append(node)
            elif step not in seen:
                seen.add(step)
                stack.append((step, iter(links[step])))
    return finished


def loops(records: list[MemoryRecord]) -> list[list[str]]:
    """The groups of ``records`` whose version links loop: from each record of a group, links
    lead to every other and back (a strongly connected component of more than one record).
    A chain runs one way: ``supersedes`` and, backwards, ``superseded_by`` lead to older
    versions, never back. Links to records outside ``records`` are not followed. Linear time
    (Kosaraju: a search of the links, then of the reversed links in reverse finishing order)."""
    ids = {r.id for r in records}
    older: dict[str, list[str]] = {r.id: [] for r in records}
    newer: dict[str, list[str]] = {r.id: [] for r in records}
    for record in records:
        for new, old in ((record.id, record.supersedes), (record.superseded_by, record.id)):
            if new is not None and old is not None and new in ids and old in ids:
                older[new].append(old)
                newer[old].append(new)
    groups: list[list[str]] = []
    placed: set[str] = set()
    for root in reversed(_finishing_order(older)):
        if root in placed:
            continue
        placed.add(root)
        group, todo = [root], [root]
        while todo:
            for step in newer[todo.pop()]:
                if step not in placed:
                    placed.add(step)
                    group.append(step)
                    todo.append(step)
        if len(group) > 1:
            groups.append(group)
    return groups


def stored_versions(records: list[MemoryRecord], agent: Agent) -> list[MemoryRecord]:
    """The versions the agent already holds of the chains ``records`` link to outside
    themselves (``supersedes``, ``superseded_by``), for :func:`loops` to follow: a loop may
    run through records already stored. Reads only (no access is counted)."""
    from hivemem.pool.errors import MemoryNotFound

    ids = {r.id for r in records}
    targets = {t for r in records for t in (r.supersedes, r.superseded_by) if t and t not in ids}
    found: dict[str, MemoryRecord] = {}
    for target in sorted(targets):
        if target in found:
            continue
        try:
            chain = agent.memory.get_history(target)
        except MemoryNotFound:
            continue
        found.update((version.id, version) for version in chain if version.id not in ids)
    return list(found.values())

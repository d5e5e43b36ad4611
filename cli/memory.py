"""``hivemem memory``: add, search, read, update and delete memories as a registered agent.

Each command attaches the agent (``--agent``) in this process, works on its local memory and,
before exiting, waits until its writes reach Redis: from there they travel to the other agents
as any write of that agent would (the levels it shares; deletions as tombstones). Records that
others shared with the agent are applied while it is attached, so reads first catch up.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.padding import Padding
from rich.text import Text

from hivemem.cli.output import add_json_flag, console, emit, shown, table
from hivemem.cli.scope_args import (
    acting_as,
    add_agent,
    add_choice,
    add_compartments,
    add_flush_timeout,
    add_scope,
    record_json,
)
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import InvalidContent, InvalidInput
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import HivememSettings

_SHOWN_CHARS = 240


def _text(value: str) -> str:
    """The TEXT argument; ``-`` reads it from standard input as UTF-8 (without its final
    newlines), whatever the locale's encoding. Raises InvalidContent (nothing is written) when
    standard input is not valid UTF-8: content is text, never bytes smuggled in as escapes."""
    if value != "-":
        return value
    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidContent(
            f"standard input is not UTF-8 text (invalid byte at offset {error.start})",
            field="content",
        ) from None
    return text.rstrip("\n")


def _when(record: MemoryRecord) -> str:
    return record.recorded_at.strftime("%Y-%m-%d %H:%M:%S")


def _short(content: str) -> str:
    flat = shown(" ".join(content.split()))
    return flat if len(flat) <= _SHOWN_CHARS else flat[: _SHOWN_CHARS - 1] + "…"


def _listing(title: str, entries: list[tuple[str, MemoryRecord]]) -> None:
    """Memories one after the other: a line of ``lead`` (rank and score, or time), id and kind,
    then the content, indented (readable at any terminal width; ids whole, to be copied)."""
    console.print(Text(title, style="bold"))
    for lead, record in entries:
        kind = f"{record.level.value} · {record.category.value} · {record.zone.value}"
        if record.received_from:
            kind += f" · from {record.received_from}"
        head = Text(f"{lead}  ")
        head.append(record.id, style="cyan")
        head.append(f"  {kind}", style="dim")
        console.print(head)  # wraps between words when narrow: the id stays whole
        console.print(Padding(Text(_short(record.content)), (0, 0, 0, 4)))


def _scope(args: argparse.Namespace) -> dict[str, Any]:
    return {"user_id": args.user, "session_id": args.session, "run_id": args.run}


def _cell(value: object) -> object:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return value


def _record_rows(record: MemoryRecord) -> list[tuple[str, object]]:
    return [
        (key, _cell(value))
        for key, value in record_json(record).items()
        if value not in (None, [], {})
    ]


def _add(args: argparse.Namespace, settings: HivememSettings) -> int:
    content = _text(args.text)
    fields: dict[str, Any] = {
        "level": args.level,
        "category": args.category,
        "zone": args.zone,
        "compartments": args.compartment or [],
        "importance": args.importance,
        "tags": args.tag or [],
        "entities": args.entity or [],
    }
    with acting_as(settings, args.agent, flush_timeout_s=args.flush_timeout) as agent:
        record = agent.memory.add(content, **_scope(args), agent_id=agent.agent_id, **fields)
        emit(args, record_json(record), lambda: print(record.id))
    return 0


def _search(args: argparse.Namespace, settings: HivememSettings) -> int:
    overrides: dict[str, Any] = {"top_k": args.top_k}
    if args.include_superseded:
        overrides["include_superseded"] = True
    if args.exact_scope:
        overrides["exact_scope"] = True
    if args.min_similarity is not None:
        overrides["min_similarity"] = args.min_similarity
    flt: dict[str, Any] = {
        "levels": args.level,
        "categories": args.category,
        "zones": args.zone,
        "tiers": args.tier,
        "tags_any": args.tag,
        "importance_min": args.min_importance,
    }
    with acting_as(settings, args.agent, catch_up=True) as agent:
        hits = agent.memory.search(
            args.query,
            **_scope(args),
            agent_id=agent.agent_id,
            config=args.preset,
            filter={k: v for k, v in flt.items() if v is not None},
            **overrides,
        )
    data = [
        {"score": h.score, "similarity": h.similarity, "record": record_json(h.record)}
        for h in hits
    ]
    entries = [(f"{rank:>2}. {h.score:.3f}", h.record) for rank, h in enumerate(hits, 1)]
    emit(args, data, lambda: _listing(f"{len(hits)} memories for {args.query!r}", entries))
    return 0


def _get(args: argparse.Namespace, settings: HivememSettings) -> int:
    with acting_as(settings, args.agent, catch_up=True) as agent:
        record = agent.memory.get(args.id)
    emit(
        args,
        record_json(record),
        lambda: table(f"memory {record.id}", ["field", "value"], _record_rows(record)),
    )
    return 0


def _history(args: argparse.Namespace, settings: HivememSettings) -> int:
    with acting_as(settings, args.agent, catch_up=True) as agent:
        chain = agent.memory.get_history(args.id)
    entries = [
        (
            f"{version:>2}. {_when(r)}" + ("" if r.is_current else " superseded"),
            r,
        )
        for version, r in enumerate(chain, 1)
    ]
    emit(
        args,
        [record_json(r) for r in chain],
        lambda: _listing(f"{len(chain)} version(s), oldest first", entries),
    )
    return 0


def _list(args: argparse.Namespace, settings: HivememSettings) -> int:
    with acting_as(settings, args.agent, catch_up=True) as agent:
        found = agent.memory.list_memories(
            **_scope(args),
            include_superseded=args.include_superseded,
            limit=args.limit,
        )
    entries = [(_when(r), r) for r in found]
    emit(
        args,
        [record_json(r) for r in found],
        lambda: _listing(f"{len(found)} memories, newest first", entries),
    )
    return 0


def _update(args: argparse.Namespace, settings: HivememSettings) -> int:
    changes = {
        k: v
        for k, v in {"importance": args.importance, "category": args.category}.items()
        if v is not None
    }
    content = _text(args.text)
    with acting_as(settings, args.agent, flush_timeout_s=args.flush_timeout) as agent:
        new = agent.memory.supersede(args.id, content, **changes)
        emit(args, record_json(new), lambda: print(new.id))
    return 0


def _delete(args: argparse.Namespace, settings: HivememSettings) -> int:
    with acting_as(settings, args.agent, flush_timeout_s=args.flush_timeout) as agent:
        deleted = agent.memory.delete(args.id)
        emit(
            args,
            {"deleted": deleted},
            lambda: print(f"deleted {len(deleted)} version(s) of memory {args.id}"),
        )
    return 0


def _forget(args: argparse.Namespace, settings: HivememSettings) -> int:
    scope = _scope(args)
    named = ", ".join(f"{k.removesuffix('_id')} {v}" for k, v in scope.items() if v is not None)
    with acting_as(settings, args.agent, flush_timeout_s=args.flush_timeout) as agent:
        count = agent.memory.forget(**scope)
        emit(
            args,
            {"deleted": count, "scope": scope},
            lambda: print(f"forgot {count} memories of {named}"),
        )
    return 0


def _stats(args: argparse.Namespace, settings: HivememSettings) -> int:
    if args.user is None and (args.session is not None or args.run is not None):
        raise InvalidInput("--session and --run narrow a --user; give it", field="user_id")
    scope = _scope(args) if args.user is not None else {}
    with acting_as(settings, args.agent, catch_up=True) as agent:
        stats = agent.memory.stats(**scope)
    data = stats.model_dump(mode="json")
    rows = [
        (name, ", ".join(f"{k} {n}" for k, n in sorted(value.items())) or "-")
        if isinstance(value, dict)
        else (name, value)
        for name, value in data.items()
    ]
    emit(args, data, lambda: table(f"memory of agent {args.agent}", ["measure", "value"], rows))
    return 0


def _memory_parser(
    sub: argparse._SubParsersAction[Any], name: str, help_text: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    add_agent(parser)
    return parser


def _register_writes(sub: argparse._SubParsersAction[Any]) -> None:
    add = _memory_parser(sub, "add", "add a memory; prints its id (--json: the record)")
    add_scope(add)
    add_choice(add, "--level", Level, "its level", default=Level.EPISODE.value)
    add_choice(add, "--category", Category, "what kind of knowledge", default=Category.FACT.value)
    add_choice(add, "--zone", Zone, "its trust zone", default=Zone.PUBLIC.value)
    add_compartments(add, "compartments a reader must hold (the agent must hold them too)")
    add.add_argument("--importance", type=float, default=0.5, help="in [0, 1] (default 0.5)")
    add.add_argument("--tag", action="append", metavar="TAG", help="a label; repeat for several")
    add.add_argument(
        "--entity",
        action="append",
        metavar="ENTITY",
        help="an entity it is about; repeat for several",
    )
    add.add_argument(
        "text", metavar="TEXT", help="the memory's content; - reads standard input (UTF-8)"
    )
    add_flush_timeout(add)
    add_json_flag(add)
    add.set_defaults(handler=_add)

    update = _memory_parser(
        sub, "update", "replace a current memory by a new version (prints the new id)"
    )
    update.add_argument("id", metavar="ID")
    update.add_argument(
        "text", metavar="TEXT", help="the new content; - reads standard input (UTF-8)"
    )
    update.add_argument("--importance", type=float, help="a new importance (default: kept)")
    add_choice(update, "--category", Category, "a new category (default: kept)")
    add_flush_timeout(update)
    add_json_flag(update)
    update.set_defaults(handler=_update)

    delete = _memory_parser(sub, "delete", "delete a memory and every version of it")
    delete.add_argument("id", metavar="ID")
    add_flush_timeout(delete)
    add_json_flag(delete)
    delete.set_defaults(handler=_delete)

    forget = _memory_parser(
        sub,
        "forget",
        "delete every memory of a user (or of one session or run of it); prints how many",
    )
    add_scope(forget)
    add_flush_timeout(forget)
    add_json_flag(forget)
    forget.set_defaults(handler=_forget)


def _register_search(sub: argparse._SubParsersAction[Any]) -> None:
    search = _memory_parser(sub, "search", "search memories visible from a scope, best first")
    add_scope(search)
    search.add_argument("--top-k", type=int, default=10, metavar="K", help="results (default 10)")
    search.add_argument(
        "--preset",
        metavar="NAME",
        help="search preset: balanced (default), semantic, keyword, isolated, recent, important",
    )
    add_choice(search, "--level", Level, "only these levels", many=True)
    add_choice(search, "--category", Category, "only these categories", many=True)
    add_choice(search, "--zone", Zone, "only these zones", many=True)
    add_choice(search, "--tier", Tier, "only these tiers", many=True)
    search.add_argument(
        "--tag",
        action="append",
        metavar="TAG",
        help="only memories with this tag (any of those given)",
    )
    search.add_argument("--min-importance", type=float, metavar="X", help="importance at least X")
    search.add_argument(
        "--min-similarity", type=float, metavar="X", help="dense cosine similarity at least X"
    )
    search.add_argument(
        "--include-superseded", action="store_true", help="also older versions of memories"
    )
    search.add_argument(
        "--exact-scope", action="store_true", help="only memories of exactly this scope"
    )
    search.add_argument("query", metavar="QUERY")
    add_json_flag(search)
    search.set_defaults(handler=_search)


def _register_reads(sub: argparse._SubParsersAction[Any]) -> None:
    get = _memory_parser(sub, "get", "show one memory (current or superseded)")
    get.add_argument("id", metavar="ID")
    add_json_flag(get)
    get.set_defaults(handler=_get)

    history = _memory_parser(sub, "history", "every surviving version of a memory, oldest first")
    history.add_argument("id", metavar="ID")
    add_json_flag(history)
    history.set_defaults(handler=_history)

    lister = _memory_parser(sub, "list", "list the memories visible from a scope, newest first")
    add_scope(lister)
    lister.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    lister.add_argument(
        "--include-superseded", action="store_true", help="also older versions of memories"
    )
    add_json_flag(lister)
    lister.set_defaults(handler=_list)

    stats = _memory_parser(sub, "stats", "counts by level, tier, category, zone and scope")
    add_scope(stats, user_required=False)
    add_json_flag(stats)
    stats.set_defaults(handler=_stats)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    group = commands.add_parser(
        "memory",
        help="add, search, read, update and delete memories as a registered agent",
        description="Work on a registered agent's memory. The agent's memory directory has one "
        "writer at a time: these commands fail while another process has the agent attached.",
    )
    sub = group.add_subparsers(dest="memory_command", required=True, metavar="COMMAND")

    _register_writes(sub)
    _register_search(sub)
    _register_reads(sub)

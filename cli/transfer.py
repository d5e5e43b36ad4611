"""``hivemem export`` and ``hivemem import``: an agent's memories as JSON Lines.

A file holds one :class:`~hivemem.pool.records.MemoryRecord` per line (``model_dump_json()``),
oldest first, without vectors. Export writes a new file readable by its owner only (mode 0600:
it holds plaintext of every zone the agent is cleared for), and replaces an existing one only
when asked to. Import checks every line before storing anything (the agent may read it and
would have been allowed to write it: zone, compartments, sensitive content; its version links
make no loop), keeps the records' ids, and stores them the way the agent stores what other
agents send it
(:meth:`~hivemem.agents.memory.HierarchicalMemory.receive`): vectors are computed again with the
memory's model, ``received_from`` says where a record came from, a record already here (or
deleted here) is skipped, so importing a file twice stores it once. Imported records are not
sent on to other agents.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress

from hivemem.cli.import_checks import loops, refusal, stored_versions
from hivemem.cli.output import add_json_flag
from hivemem.cli.scope_args import acting_as, add_agent
from hivemem.pool.errors import HivememError, InvalidInput
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import HivememSettings

if TYPE_CHECKING:
    from hivemem.agents.agent import Agent
    from hivemem.agents.memory import HierarchicalMemory

#: Records read per page when exporting (the most ``list_memories`` returns at once).
_PAGE = 100_000
#: Records embedded and stored per step when importing.
_CHUNK = 256
#: Bad lines listed one by one before the rest are only counted.
_SHOWN_ERRORS = 20
#: Lines of a loop of version links named in each of its lines' error.
_SHOWN_LOOP_LINES = 8
#: What ``link`` fails with on a file system that has no hard links.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP}


class ExportIncomplete(HivememError):
    """Raised when more than one page of a user's records share one ``recorded_at`` instant,
    so export cannot page past them; nothing was written."""


class OutputFailed(HivememError):
    """Raised when an export cannot be written (no such directory, disk full, standard output
    closed by its reader); no partial file is left."""


class OutputExists(InvalidInput):
    """Raised when the export's target exists (a file, a symbolic link) and ``--force`` was not
    given, before the export starts or when the file appeared meanwhile; nothing was written."""

    def __init__(self, target: str) -> None:
        super().__init__(f"{target} exists; nothing was written (--force replaces it)", field="out")
        self.target = target


class InvalidFile(InvalidInput):
    """Raised when an import file has bad lines; ``errors`` lists (line number, reason) and
    nothing was imported."""

    def __init__(self, name: str, errors: list[tuple[int, str]]) -> None:
        shown = [f"  {name}:{line}: {reason}" for line, reason in errors[:_SHOWN_ERRORS]]
        if len(errors) > _SHOWN_ERRORS:
            shown.append(f"  ... and {len(errors) - _SHOWN_ERRORS} more bad line(s)")
        super().__init__(
            f"{len(errors)} bad line(s) in {name}; nothing was imported:\n" + "\n".join(shown),
            field="file",
        )
        self.errors = errors


@contextlib.contextmanager
def _progress(args: argparse.Namespace, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on standard error (only on a terminal and without --json);
    yields ``advance(n)``."""
    show = not args.json and sys.stderr.isatty()
    with Progress(console=Console(stderr=True), transient=True, disable=not show) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _summary(args: argparse.Namespace, data: dict[str, Any], text: str, *, stderr: bool) -> None:
    """The command's summary (JSON with --json); on standard error when standard output
    carries the data."""
    line = json.dumps(data) if args.json else text
    print(line, file=sys.stderr if stderr else sys.stdout)


# -- export -------------------------------------------------------------------------------------


def _user_records(
    memory: HierarchicalMemory, user_id: str, include_history: bool
) -> list[MemoryRecord]:
    """Every record of ``user_id`` (current ones, or every version), oldest first. Pages past
    ``list_memories``' limit by ``recorded_at``, newest first. Raises ExportIncomplete."""
    found: dict[str, MemoryRecord] = {}
    time_filter: dict[str, Any] = {}
    while True:
        page = memory.list_memories(
            user_id=user_id,
            include_superseded=include_history,
            filter=time_filter,
            limit=_PAGE,
        )
        fresh = [r for r in page if r.id not in found]
        found.update((r.id, r) for r in fresh)
        if len(page) < _PAGE:
            break
        if not fresh:
            raise ExportIncomplete(
                f"more than {_PAGE} records of user {user_id} were recorded at one instant "
                f"({page[-1].recorded_at.isoformat()}); export cannot page past them"
            )
        # The oldest instant of the page is read again (records sharing it may continue past
        # the page); the ones already seen are dropped above.
        before = page[-1].recorded_at + timedelta(microseconds=1)
        time_filter = {"times": {"recorded_at": {"before": before}}}
    return sorted(found.values(), key=lambda r: (r.recorded_at, r.id))


def _target(out: str, *, force: bool) -> Path | None:
    """Where the export goes: None for standard output (``-``), else the file ``out``. Raises
    InvalidInput when ``out`` names no file (empty, ``.``, ``..``, ending in ``/``, a
    directory), OutputExists when something is there and not ``force``."""
    if out == "-":
        return None
    path = Path(out)
    if out.rsplit("/", 1)[-1] in ("", ".", "..") or path.is_dir():
        raise InvalidInput(f"{out!r} names no file to write the export to", field="out")
    if not force and os.path.lexists(path):
        raise OutputExists(out)
    return path


def _publish(temp: str, path: Path, *, force: bool) -> None:
    """Give the written ``temp`` the name ``path``: replacing what is there when ``force`` (a
    symbolic link is replaced, never followed), else only if nothing is (raises
    OutputExists). OSErrors propagate."""
    if force:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)  # fails when the name exists, whatever it is
    except FileExistsError:
        raise OutputExists(str(path)) from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        # A file system without hard links (FAT): look, then rename (a narrow race).
        if os.path.lexists(path):
            raise OutputExists(str(path)) from None
        os.replace(temp, path)


@contextlib.contextmanager
def _sink(path: Path | None, *, force: bool) -> Iterator[IO[str]]:
    """Standard output for None; else a new temporary file beside ``path`` (an unpredictable
    name, created exclusively, mode 0600), given the name ``path`` when the body succeeds (a
    failed export leaves no partial file). Raises OutputFailed, OutputExists."""
    if path is None:
        try:
            yield sys.stdout
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader left (`| head`): nothing more can be written, nor flushed at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise OutputFailed("standard output was closed before the export ended") from None
        return
    temp = None
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            os.fchmod(fd, 0o600)  # mkstemp's mode less the umask: exactly 0600 whatever it is
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        _publish(temp, path, force=force)
    except OSError as error:
        raise OutputFailed(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)


def _export(args: argparse.Namespace, settings: HivememSettings) -> int:
    path = _target(args.out, force=args.force)
    written = 0
    with acting_as(settings, args.agent, catch_up=True) as agent:
        memory = agent.memory
        stats = memory.stats(user_id=args.user) if args.user else memory.stats()
        users = [args.user] if args.user else sorted(stats.by_user)
        total = stats.total if args.include_history else stats.current
        with (
            _sink(path, force=args.force) as stream,
            _progress(args, total, "exporting") as advance,
        ):
            for user_id in users:
                for record in _user_records(memory, user_id, args.include_history):
                    stream.write(record.model_dump_json() + "\n")
                    written += 1
                    advance(1)
    shown = "standard output" if args.out == "-" else args.out
    _summary(
        args,
        {"agent_id": args.agent, "exported": written, "path": args.out},
        f"exported {written} memories of agent {args.agent} to {shown}",
        stderr=args.out == "-",
    )
    return 0


# -- import -------------------------------------------------------------------------------------


def _lines(source: str) -> Iterator[tuple[int, bytes]]:
    """The numbered lines of ``source`` (``-``: standard input). Raises InvalidInput when the
    file cannot be read."""
    if source == "-":
        yield from enumerate(sys.stdin.buffer, 1)
        return
    try:
        stream = Path(source).open("rb")  # noqa: SIM115 - closed below, after the generator
    except OSError as error:
        raise InvalidInput(
            f"cannot read {source}: {error.strerror or error}", field="file"
        ) from None
    with stream:
        yield from enumerate(stream, 1)


def _parse(source: str, agent: Agent, settings: HivememSettings) -> list[MemoryRecord]:
    """Every record of ``source``, each checked as a MemoryRecord, against the memory's content
    limit, what the agent may read (clearance, compartments), the sensitivity classifier (when
    on), the ids of earlier lines, and for loops of version links (through the agent's stored
    records too). Raises InvalidFile listing
    every bad line (blank lines are skipped)."""
    from hivemem.security.classifier import Classifier

    sensitivity = settings.security.sensitivity
    classifier = Classifier(sensitivity) if sensitivity.enabled else None
    max_chars = settings.memory.max_content_chars
    records: list[MemoryRecord] = []
    first_line: dict[str, int] = {}
    errors: list[tuple[int, str]] = []
    for number, raw in _lines(source):
        if not raw.strip():
            continue
        try:
            record = MemoryRecord.model_validate_json(raw)
        except InvalidInput as error:
            errors.append((number, str(error)))
            continue
        refused = refusal(record, agent, max_chars, classifier)
        if refused is not None:
            errors.append((number, refused))
        elif record.id in first_line:
            errors.append((number, f"id {record.id} already on line {first_line[record.id]}"))
        else:
            first_line[record.id] = number
            records.append(record)
    for loop in loops(records + stored_versions(records, agent)):
        lines = sorted(first_line[record_id] for record_id in loop if record_id in first_line)
        shown = ", ".join(map(str, lines[:_SHOWN_LOOP_LINES]))
        if len(lines) > _SHOWN_LOOP_LINES:
            shown += f" and {len(lines) - _SHOWN_LOOP_LINES} more"
        held = len(loop) - len(lines)
        if held:
            shown += f" and {held} stored record{'s' if held > 1 else ''}"
        errors.extend((line, f"its version links make a loop (lines {shown})") for line in lines)
    errors.sort()
    if errors:
        raise InvalidFile("standard input" if source == "-" else source, errors)
    return records


def _store(
    agent: Agent,
    records: list[MemoryRecord],
    settings: HivememSettings,
    advance: Callable[[int], None],
) -> int:
    """Embed and store ``records`` in chunks as received records; returns how many were new."""
    from hivemem.agents.embedding import shared_embedder
    from hivemem.agents.sparse import Bm25Encoder

    embedder = shared_embedder(settings.embedding, settings.data_dir)
    sparse = Bm25Encoder()
    stored = 0
    for start in range(0, len(records), _CHUNK):
        chunk = records[start : start + _CHUNK]
        texts = [r.content for r in chunk]
        dense = embedder.embed_documents(texts)
        ready = [
            r.model_copy(update={"vector": None, "sparse": terms})
            for r, terms in zip(chunk, sparse.encode_documents(texts), strict=True)
        ]
        # Where a record came from: the agent the exporter had it from, else its writer.
        senders = [r.received_from or r.scope.agent_id or agent.agent_id for r in chunk]
        stored += len(agent.memory.receive(ready, senders=senders, dense=list(dense)))
        advance(len(chunk))
    return stored


def _import(args: argparse.Namespace, settings: HivememSettings) -> int:
    with acting_as(settings, args.agent) as agent:
        records = _parse(args.file, agent, settings)
        with _progress(args, len(records), "importing") as advance:
            stored = _store(agent, records, settings, advance)
    skipped = len(records) - stored
    _summary(
        args,
        {"agent_id": args.agent, "records": len(records), "imported": stored, "skipped": skipped},
        f"imported {stored} memories into agent {args.agent}"
        + (f" ({skipped} already there or deleted there, skipped)" if skipped else ""),
        stderr=False,
    )
    return 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    export = commands.add_parser(
        "export",
        help="write an agent's memories to a JSON Lines file (one record per line)",
        description="Write an agent's memories to a JSON Lines file: one MemoryRecord per "
        "line, oldest first, without vectors. The file appears only when the export is "
        "complete, readable by its owner only (mode 0600: it holds the memories in clear); an "
        "existing file is replaced only with --force.",
    )
    add_agent(export)
    export.add_argument("--user", metavar="USER_ID", help="only this user's memories")
    export.add_argument(
        "--include-history", action="store_true", help="also the superseded versions"
    )
    export.add_argument(
        "out",
        metavar="OUT.jsonl",
        help="the file to write (created with mode 0600); - for standard output",
    )
    export.add_argument(
        "--force", action="store_true", help="replace OUT.jsonl if it exists (default: refuse)"
    )
    add_json_flag(export)
    export.set_defaults(handler=_export)

    load = commands.add_parser(
        "import",
        help="store the records of a JSON Lines file in an agent's memory, keeping their ids",
        description="Check every line of a JSON Lines file (one MemoryRecord per line, as "
        "export writes it), then store its records in the agent's memory with their ids "
        "(vectors are computed again). Each line must be one the agent may read (clearance, "
        "compartments) and could have written (sensitive content in a high enough zone), "
        "and version links must not loop. A bad line imports nothing: "
        "exit 2 and each bad line's number. Records already there are skipped, so importing "
        "twice is harmless. Imported records stay with this agent (they are not sent on).",
    )
    add_agent(load)
    load.add_argument("file", metavar="IN.jsonl", help="the file to read; - for standard input")
    add_json_flag(load)
    load.set_defaults(handler=_import)

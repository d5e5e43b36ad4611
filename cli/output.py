"""What every command shares: ``--json`` output, rich tables, checked numeric arguments, and
the pool connection."""

from __future__ import annotations

import argparse
import json
import math
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from hivemem.pool.settings import RESULT_TTL_S, HivememSettings

if TYPE_CHECKING:
    from hivemem.pool.shared import SharedMemoryPool

console = Console()

#: The longest wait a command accepts, in seconds: as long as the workers keep a task's result
#: (longer waits could never be answered; far longer ones overflow the OS's timed waits).
MAX_WAIT_S = RESULT_TTL_S


def seconds(text: str) -> float:
    """argparse type of a wait in seconds: a finite number above 0, at most MAX_WAIT_S. Raises
    ArgumentTypeError (argparse then exits 2 before the command does anything) for anything
    else: ``nan`` and ``inf`` would wait forever, 0 or less would give up before trying."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_WAIT_S):
        raise argparse.ArgumentTypeError(
            f"seconds must be a number above 0 and at most {MAX_WAIT_S:g}, not {text!r}"
        )
    return value


def positive_int(text: str) -> int:
    """argparse type of a count of at least 1. Raises ArgumentTypeError (exit 2) otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def emit(args: argparse.Namespace, data: Any, render: Callable[[], None]) -> None:
    """Print ``data`` as one JSON document with ``--json``, else call ``render``."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, ensure_ascii=False))
    else:
        render()


def shown(text: str) -> str:
    """``text`` safe for a terminal: every control character but newline and tab (escape
    sequences that set the title, clear the screen or write the clipboard: content may come
    from any agent, an import or a model) written as its escape, ``\\x1b`` say."""
    return "".join(
        f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c
        for c in text
    )


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a rich table of ``rows``. Cells are plain text (content such as ``[/]`` is shown,
    never read as rich markup; control characters escaped, see :func:`shown`) and a column named
    ``id`` is never wrapped or cut: ids are there to be copied into the next command."""
    grid = Table(
        *(
            Column(name, no_wrap=True, min_width=36) if name == "id" else Column(name)
            for name in columns
        ),
        title=title,
    )
    for row in rows:
        grid.add_row(*(Text("" if cell is None else shown(str(cell))) for cell in row))
    console.print(grid)


@contextmanager
def open_pool(settings: HivememSettings) -> Iterator[SharedMemoryPool]:
    """The pool on ``HIVEMEM_REDIS_URL``, else on the stack ``hivemem up`` runs on this data
    directory, else on a Redis of our own for the duration of the command."""
    from hivemem.pool.shared import SharedMemoryPool

    with SharedMemoryPool.connect(settings) as pool:
        yield pool

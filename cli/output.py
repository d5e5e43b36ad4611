"""What every command shares: ``--json`` output, rich tables, and the pool connection."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from hivemem.pool.settings import HivememSettings

if TYPE_CHECKING:
    from hivemem.pool.shared import SharedMemoryPool

console = Console()


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def emit(args: argparse.Namespace, data: Any, render: Callable[[], None]) -> None:
    """Print ``data`` as one JSON document with ``--json``, else call ``render``."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, ensure_ascii=False))
    else:
        render()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a rich table of ``rows``. Cells are plain text (content such as ``[/]`` is shown,
    never read as rich markup) and a column named ``id`` is never wrapped or cut: ids are there
    to be copied into the next command."""
    shown = Table(
        *(
            Column(name, no_wrap=True, min_width=36) if name == "id" else Column(name)
            for name in columns
        ),
        title=title,
    )
    for row in rows:
        shown.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    console.print(shown)


@contextmanager
def open_pool(settings: HivememSettings) -> Iterator[SharedMemoryPool]:
    """The pool on ``HIVEMEM_REDIS_URL``, else on the stack ``hivemem up`` runs on this data
    directory, else on a Redis of our own for the duration of the command."""
    from hivemem.pool.shared import SharedMemoryPool

    with SharedMemoryPool.connect(settings) as pool:
        yield pool

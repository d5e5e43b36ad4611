"""``<data_dir>/stack.json``: where ``hivemem up`` tells other processes its Redis is.

The Redis URL in it carries the server's password, so the file is readable by its owner only.
The file names the owning process; a file whose owner is gone is stale and ignored, so a killed
``hivemem up`` never sends a later command to a dead address.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from hivemem.pool.private_files import write_private

_NAME = "stack.json"


class StackInfo(BaseModel):
    """A running embedded stack: its Redis URL and the processes that make it up."""

    redis_url: str
    owner_pid: int
    worker_pids: list[int] = []


def stack_path(data_dir: Path) -> Path:
    return data_dir / _NAME


def write_stack(data_dir: Path, info: StackInfo) -> None:
    """Publish ``info`` atomically, readable by its owner only."""
    write_private(stack_path(data_dir), info.model_dump_json().encode())


def remove_stack(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        stack_path(data_dir).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stack(data_dir: Path) -> StackInfo | None:
    """The stack running on ``data_dir``, or None (no file, unreadable, or its owner died)."""
    try:
        info = StackInfo.model_validate(json.loads(stack_path(data_dir).read_text()))
    except (OSError, ValueError, ValidationError):
        return None
    return info if _alive(info.owner_pid) else None

"""``<data_dir>/stack.json``: where ``hivemem up`` tells other processes its Redis is.

The file names the owning process; a file whose owner is gone is stale and ignored, so a killed
``hivemem up`` never sends a later command to a dead address.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

_NAME = "stack.json"


class StackInfo(BaseModel):
    """A running embedded stack: its Redis URL and the processes that make it up."""

    redis_url: str
    owner_pid: int
    worker_pids: list[int] = []


def stack_path(data_dir: Path) -> Path:
    return data_dir / _NAME


def write_stack(data_dir: Path, info: StackInfo) -> None:
    """Publish ``info`` atomically (write a temporary file, then rename)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = data_dir / f".{_NAME}.{os.getpid()}"
    partial.write_text(info.model_dump_json())
    partial.replace(stack_path(data_dir))


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

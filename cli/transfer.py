"""Placeholder: filled in by the CLI work."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add this module's commands (none yet)."""

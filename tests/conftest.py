"""Shared fixtures: settings under a temporary data directory, memories on real Qdrant Edge
shards with the real offline embedder, and a controllable clock."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

# Tests never reach a model hub: fail fast instead of retrying for ~40 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.settings import HivememSettings


class Clock:
    """A clock the test moves by hand; starts at a fixed instant."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory per test session, so the model directory is assembled once."""
    return tmp_path_factory.mktemp("hivemem-data")


@pytest.fixture(scope="session")
def settings(data_dir: Path) -> HivememSettings:
    return HivememSettings(data_dir=data_dir)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_memory(
    tmp_path: Path, settings: HivememSettings
) -> Iterator[Callable[..., HierarchicalMemory]]:
    """Factory for memories under this test's directory; all are closed at teardown."""
    opened: list[HierarchicalMemory] = []

    def make(name: str = "agent", **kwargs: Any) -> HierarchicalMemory:
        kwargs.setdefault("settings", settings)
        memory = HierarchicalMemory(tmp_path / name, **kwargs)
        opened.append(memory)
        return memory

    yield make
    for memory in opened:
        memory.close()


@pytest.fixture
def memory(make_memory: Callable[..., HierarchicalMemory], clock: Clock) -> HierarchicalMemory:
    """A fresh memory whose clock the test controls."""
    return make_memory(clock=clock)

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

from hivemem.agents.embedding import FastEmbedder, shared_embedder
from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.compartments import configure_compartments
from hivemem.pool.enums import BUILTIN_ZONES, configure_zones
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings, PoolSettings, SecuritySettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.key_provider import LocalKeyProvider
from tests.relay import Relay


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


@pytest.fixture(autouse=True)
def builtin_zones() -> Iterator[None]:
    """Every test ends on the built-in zone ladder and no compartments, whatever its settings
    installed (both are process-wide)."""
    yield
    configure_zones(BUILTIN_ZONES)
    configure_compartments(())


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


@pytest.fixture(scope="session")
def embedder(settings: HivememSettings) -> FastEmbedder:
    """The real offline embedder, loaded once per test session."""
    return shared_embedder(settings.embedding, settings.data_dir)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A real redis-server on a free port, with append-only persistence (so a test can stop and
    restart it without losing data), removed at teardown."""
    with EmbeddedRedis(tmp_path / "redis", appendonly=True) as server:
        yield server


@pytest.fixture
def relay(redis_server: EmbeddedRedis) -> Iterator[Relay]:
    """A TCP relay to the test's Redis that can hold back replies or requests, closed at
    teardown."""
    relayed = Relay(redis_server.port)
    yield relayed
    relayed.close()


def shared_keys(tmp_path: Path, **fields: Any) -> SecuritySettings:
    """Security settings whose master and admin keys every process of one test shares (as an
    operator gives every process of a pool the same keys), whatever its data directory."""
    keys = tmp_path / "keys"
    if not (keys / "master.key").exists():
        LocalKeyProvider.create_file(keys / "master.key")
    return SecuritySettings(
        master_key_file=keys / "master.key", admin_key_file=keys / "admin.key", **fields
    )


@pytest.fixture
def pool_settings(
    tmp_path: Path, redis_server: EmbeddedRedis, settings: HivememSettings
) -> Callable[..., HivememSettings]:
    """Settings for a pool process under this test's directory, on the test's Redis.
    ``pool_settings(name, secure=True, acl=True, zones=..., compartments=..., **pool_fields)``;
    fast retries so fault tests recover quickly; ``secure=False`` turns the security layer off
    (plain version-1 messages), ``acl=False`` its Redis ACL users only; ``zones`` and
    ``compartments`` default to the settings' defaults."""

    def make(
        name: str = "pool",
        *,
        secure: bool = True,
        acl: bool = True,
        zones: tuple[str, ...] = BUILTIN_ZONES,
        compartments: tuple[str, ...] = (),
        **pool_fields: Any,
    ) -> HivememSettings:
        fields: dict[str, Any] = {"retry_initial_s": 0.02, "retry_max_s": 0.5, **pool_fields}
        return HivememSettings(
            zones=zones,
            compartments=compartments,
            data_dir=tmp_path / name,
            redis_url=redis_server.url,
            embedding=settings.embedding,
            pool=PoolSettings(**fields),
            security=shared_keys(tmp_path, enabled=secure, redis_acl=acl),
        )

    return make


@pytest.fixture
def make_pool(
    pool_settings: Callable[..., HivememSettings], embedder: FastEmbedder
) -> Iterator[Callable[..., SharedMemoryPool]]:
    """Factory for pools (one per simulated process) on the test's Redis; closed at teardown."""
    opened: list[SharedMemoryPool] = []

    def make(name: str = "pool", **fields: Any) -> SharedMemoryPool:
        """``fields``: those of ``pool_settings``."""
        settings = pool_settings(name, **fields)
        pool = SharedMemoryPool.connect(settings, embedder=embedder)
        opened.append(pool)
        return pool

    yield make
    for pool in opened:
        pool.close()

"""Worker settings that used to fail only at the first task that read them: a consolidation
strategy that is not one, a lifecycle policy file that is not valid. Both now raise a typed
error naming the setting (or the file and the field) when the worker starts, and a real
`hivemem worker` exits with the usage code before serving anything."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from hivemem.pool.errors import InvalidInput
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import ConsolidationSettings, HivememSettings
from hivemem.workers.app import make_app
from hivemem.workers.offline import OfflineStrategy
from hivemem.workers.policies import InvalidPolicyFile
from hivemem.workers.runtime import WorkerRuntime, make_strategy
from tests.workers.conftest import WorkerProcess

HERE = __name__
FIELD = "workers.consolidation.strategy"
NOT_CALLABLE = 42


class Nameless(OfflineStrategy):
    """Has the methods, but no name (read for every consolidation report)."""

    name = None  # type: ignore[assignment]


class NumberName(OfflineStrategy):
    name = 7  # type: ignore[assignment]


class Methodless:
    """Has a name, but no methods."""

    name = "methodless"

    def __init__(self, settings: ConsolidationSettings) -> None:
        self.settings = settings


class NoSettings:
    """Cannot be built with the settings (TypeError)."""

    name = "nosettings"

    def __init__(self) -> None:
        pass


class Exploding(OfflineStrategy):
    """Raises while it is built."""

    name = "exploding"

    def __init__(self, settings: ConsolidationSettings) -> None:
        raise RuntimeError(f"no strategy for threshold {settings.threshold}")


class BrokenProperty(OfflineStrategy):
    """Its name is a property that raises."""

    @property
    def name(self) -> str:  # type: ignore[override]
        raise KeyError("name")


class Good(OfflineStrategy):
    name = "good"


def returns_none(settings: ConsolidationSettings) -> None:
    """A callable that builds nothing."""


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        ("no_such_module_xyz:Strategy", "importable"),
        (f"{HERE}:Missing", "importable"),
        ("tests.workers.no_such:X", "importable"),
        ("nocolon", "module:Class"),
        (":Class", "module:Class"),
        (f"{HERE}:", "module:Class"),
        (f"{HERE}:NOT_CALLABLE", "not a class"),
        (f"{HERE}:Nameless", "lacks name"),
        (f"{HERE}:NumberName", "lacks name"),
        (f"{HERE}:Methodless", "lacks traces, categories, domain"),
        (f"{HERE}:NoSettings", "could not be built"),
        (f"{HERE}:Exploding", "RuntimeError: no strategy for threshold 50"),
        (f"{HERE}:BrokenProperty", "attributes fail"),
        (f"{HERE}:returns_none", "lacks name"),
    ],
)
def test_a_bad_strategy_setting_raises_invalid_input(strategy: str, reason: str) -> None:
    """Whatever is wrong with a module:Class strategy, make_strategy raises InvalidInput naming
    the setting and saying what is wrong, never a raw AttributeError or TypeError."""
    with pytest.raises(InvalidInput, match=reason) as raised:
        make_strategy(ConsolidationSettings(strategy=strategy))
    assert raised.value.field == FIELD
    assert repr(strategy[:120]) in str(raised.value)


def test_a_good_custom_strategy_is_built_with_the_settings() -> None:
    """A module:Class strategy with a name and the three methods is built with the settings."""
    settings = ConsolidationSettings(strategy=f"{HERE}:Good", threshold=7)
    strategy = make_strategy(settings)
    assert isinstance(strategy, Good)
    assert strategy.settings is settings


def test_a_worker_runtime_refuses_a_bad_strategy_when_built(
    worker_settings: Callable[..., HivememSettings], redis_server: EmbeddedRedis
) -> None:
    """The runtime's check (what a worker runs at start) builds the strategy: a bad one raises
    InvalidInput before anything touches Redis. A client's app (Fleet's) is built all the
    same: the strategy may be installed on the workers' machines only."""
    settings = worker_settings(consolidation={"strategy": f"{HERE}:Nameless"})
    with pytest.raises(InvalidInput, match="lacks name"):
        WorkerRuntime(settings).check()
    make_app(settings).hivemem_runtime.close()
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.dbsize() == 0


def test_a_worker_runtime_refuses_a_bad_policy_file_when_built(
    worker_settings: Callable[..., HivememSettings], tmp_path: Path
) -> None:
    """A policy file with a typo raises InvalidPolicyFile, naming the file and the field, when
    the runtime is built (not at the first lifecycle pass, an hour later)."""
    path = tmp_path / "policies.yaml"
    path.write_text("policies:\n  - name: old\n    when: {older_than_day: 9}\n    action: delete\n")
    with pytest.raises(InvalidPolicyFile) as raised:
        WorkerRuntime(worker_settings(policies_file=path)).check()
    assert raised.value.path == path
    assert raised.value.field == "policies.0.when.older_than_day"


def test_a_good_configuration_builds_a_runtime(
    worker_settings: Callable[..., HivememSettings], tmp_path: Path
) -> None:
    """A custom strategy that is one and a valid policy file pass the check."""
    path = tmp_path / "policies.toml"
    path.write_text('[[policies]]\nname = "old"\naction = "delete"\nwhen = {older_than_days = 9}\n')
    settings = worker_settings(consolidation={"strategy": f"{HERE}:Good"}, policies_file=path)
    runtime = WorkerRuntime(settings)
    runtime.check()
    runtime.close()


def exited(worker: WorkerProcess, timeout_s: float = 60.0) -> int:
    try:
        return worker.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit:\n{worker.log()[-3000:]}") from None


@pytest.mark.slow
def test_a_worker_process_with_a_bad_setting_exits_at_start(
    worker_settings: Callable[..., HivememSettings],
    spawn_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """`hivemem worker` with a strategy that is not one, or a policy file with a typo, exits 2
    at start with one line naming the problem, and never reports ready."""
    path = tmp_path / "policies.yaml"
    path.write_text("policies:\n  - name: old\n    when: {older_than_day: 9}\n    action: delete\n")
    strategy = worker_settings(consolidation={"strategy": f"{HERE}:Nameless"})
    policies = worker_settings(policies_file=path)
    for settings, expected in [
        (strategy, "lacks name"),
        (policies, f"{path}: policies.0.when.older_than_day"),
    ]:
        worker = spawn_worker(settings)
        assert exited(worker) == 2
        log = worker.log()
        assert expected in log
        assert "Traceback" not in log
        assert " ready." not in log

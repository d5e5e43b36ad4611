"""HivememSettings: defaults, HIVEMEM_* environment variables (nested with ``__``), explicit
arguments, and refusal of bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from hivemem.pool.enums import Tier
from hivemem.pool.settings import (
    MAX_WORKER_S,
    MIN_LOCK_TTL_S,
    EmbeddingSettings,
    HivememSettings,
    MemorySettings,
    TierSettings,
    WorkerSettings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no HIVEMEM_* variable, whatever the shell exported."""
    for name in list(os.environ):
        if name.upper().startswith("HIVEMEM_"):
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    """With no HIVEMEM_* variables, every setting has its documented default."""
    settings = HivememSettings()
    assert settings.data_dir == Path(".hivemem")
    assert settings.embedding == EmbeddingSettings()
    assert settings.memory == MemorySettings()
    assert settings.memory.max_content_chars == 16_000
    assert settings.memory.tiers.capacity == {
        Tier.WORKING: 200,
        Tier.SHORT_TERM: 20_000,
        Tier.LONG_TERM: 200_000,
    }


def test_top_level_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HIVEMEM_DATA_DIR sets data_dir (as a Path)."""
    monkeypatch.setenv("HIVEMEM_DATA_DIR", str(tmp_path / "store"))
    assert HivememSettings().data_dir == tmp_path / "store"


def test_nested_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """HIVEMEM_MEMORY__MAX_CONTENT_CHARS sets memory.max_content_chars, as an int."""
    monkeypatch.setenv("HIVEMEM_MEMORY__MAX_CONTENT_CHARS", "4000")
    assert HivememSettings().memory.max_content_chars == 4000


def test_nested_variable_keeps_sibling_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting one nested field leaves the other fields of that model at their defaults."""
    monkeypatch.setenv("HIVEMEM_MEMORY__SEARCH_PRESET", "precise")
    memory = HivememSettings().memory
    assert memory.search_preset == "precise"
    assert memory.model_dump(exclude={"search_preset"}) == MemorySettings().model_dump(
        exclude={"search_preset"}
    )


def test_doubly_nested_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three-level names reach the tier settings, JSON values included."""
    monkeypatch.setenv("HIVEMEM_MEMORY__TIERS__PROMOTE_ACCESS_COUNT", "9")
    monkeypatch.setenv("HIVEMEM_MEMORY__TIERS__RECENCY_HALF_LIFE_S", "3600.5")
    monkeypatch.setenv("HIVEMEM_MEMORY__TIERS__CAPACITY", '{"working": 5, "archive": 7}')
    tiers = HivememSettings().memory.tiers
    assert tiers.promote_access_count == 9
    assert tiers.recency_half_life_s == 3600.5
    assert tiers.capacity == {Tier.WORKING: 5, Tier.ARCHIVE: 7}


def test_embedding_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HIVEMEM_EMBEDDING__* set the embedder's model directory, batch size and threads."""
    monkeypatch.setenv("HIVEMEM_EMBEDDING__MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HIVEMEM_EMBEDDING__BATCH_SIZE", "8")
    monkeypatch.setenv("HIVEMEM_EMBEDDING__THREADS", "2")
    embedding = HivememSettings().embedding
    assert (embedding.model_dir, embedding.batch_size, embedding.threads) == (tmp_path, 8, 2)


def test_whole_nested_model_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """A nested model may also be given whole, as JSON in HIVEMEM_<MODEL>."""
    monkeypatch.setenv("HIVEMEM_MEMORY", '{"max_content_chars": 12, "progress_threshold": 3}')
    memory = HivememSettings().memory
    assert (memory.max_content_chars, memory.progress_threshold) == (12, 3)


def test_environment_is_read_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment when built, not at import: a later change is seen."""
    first = HivememSettings()
    monkeypatch.setenv("HIVEMEM_MEMORY__PROGRESS_THRESHOLD", "17")
    assert HivememSettings().memory.progress_threshold == 17
    assert first.memory.progress_threshold == MemorySettings().progress_threshold


def test_explicit_arguments_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arguments given to the constructor override HIVEMEM_* variables."""
    monkeypatch.setenv("HIVEMEM_MEMORY__MAX_CONTENT_CHARS", "4000")
    settings = HivememSettings(memory=MemorySettings(max_content_chars=10))
    assert settings.memory.max_content_chars == 10


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after they are built."""
    settings = HivememSettings()
    with pytest.raises(ValidationError):
        settings.data_dir = Path("elsewhere")  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.memory.max_content_chars = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value", "path"),
    [
        ("HIVEMEM_MEMORY__MAX_CONTENT_CHARS", "abc", "memory.max_content_chars"),
        ("HIVEMEM_MEMORY__MAX_CONTENT_CHARS", "0", "memory.max_content_chars"),
        ("HIVEMEM_MEMORY__MAX_CONTENT_CHARS", "100001", "memory.max_content_chars"),
        ("HIVEMEM_MEMORY__PROGRESS_THRESHOLD", "0", "memory.progress_threshold"),
        ("HIVEMEM_EMBEDDING__BATCH_SIZE", "0", "embedding.batch_size"),
        ("HIVEMEM_EMBEDDING__BATCH_SIZE", "1025", "embedding.batch_size"),
        ("HIVEMEM_EMBEDDING__THREADS", "0", "embedding.threads"),
        ("HIVEMEM_MEMORY__TIERS__DEMOTE_TO_FRACTION", "0", "memory.tiers.demote_to_fraction"),
        ("HIVEMEM_MEMORY__TIERS__DEMOTE_TO_FRACTION", "1.5", "memory.tiers.demote_to_fraction"),
        ("HIVEMEM_MEMORY__TIERS__PROMOTE_IMPORTANCE", "nan", "memory.tiers.promote_importance"),
        ("HIVEMEM_MEMORY__TIERS__BUBBLE_IMPORTANCE", "-0.1", "memory.tiers.bubble_importance"),
        ("HIVEMEM_MEMORY__TIERS__RECENCY_HALF_LIFE_S", "0", "memory.tiers.recency_half_life_s"),
        ("HIVEMEM_MEMORY__TIERS__CAPACITY", '{"hot": 5}', "memory.tiers.capacity"),
        ("HIVEMEM_MEMORY__BOGUS", "1", "memory.bogus"),
        ("HIVEMEM_EMBEDDING__MODEL", "x", "embedding.model"),
    ],
)
def test_bad_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, path: str
) -> None:
    """A malformed or out-of-range variable raises a ValueError naming the setting."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=path.replace(".", r"\.")):
        HivememSettings()


@pytest.mark.parametrize(
    "value", ['{"working": 5', "[1, 2]", "not json"], ids=["truncated", "list", "text"]
)
def test_bad_json_for_a_nested_model_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A complex setting given as malformed JSON raises a ValueError naming its model."""
    monkeypatch.setenv("HIVEMEM_MEMORY__TIERS__CAPACITY", value)
    with pytest.raises(ValueError, match="memory"):
        HivememSettings()


def test_extra_constructor_argument_is_refused() -> None:
    """Unknown keyword arguments are refused (extra="forbid")."""
    with pytest.raises(ValidationError, match="bogus"):
        HivememSettings(bogus=1)  # type: ignore[call-arg]


def test_negative_tier_capacity_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A negative tier capacity is refused like every other bad limit."""
    monkeypatch.setenv("HIVEMEM_MEMORY__TIERS__CAPACITY", '{"working": -5}')
    with pytest.raises(ValueError, match="capacity"):
        HivememSettings()


def test_nested_models_refuse_unknown_fields_directly() -> None:
    """The nested settings models forbid unknown fields when built in code too."""
    for model in (EmbeddingSettings, MemorySettings, TierSettings):
        with pytest.raises(ValidationError):
            model(bogus=1)  # type: ignore[call-arg]


WORKER_TIMES = [
    "visibility_timeout_s",
    "unacked_restore_interval_s",
    "lock_ttl_s",
    "lock_retry_s",
    "store_idle_close_s",
    "store_open_timeout_s",
    "ingest_interval_s",
    "consolidate_interval_s",
    "lifecycle_interval_s",
]


@pytest.mark.parametrize("field", WORKER_TIMES)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "604801"])
def test_worker_times_are_finite_and_at_most_a_week(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    """Every worker time setting refuses infinity, NaN and more than a week (values that
    passed, then overflowed Redis, Celery or timedelta at use), naming the setting."""
    monkeypatch.setenv(f"HIVEMEM_WORKERS__{field.upper()}", value)
    with pytest.raises(ValidationError, match=rf"workers\.{field}"):
        HivememSettings()


@pytest.mark.parametrize("value", [0.0004, 0.999, 0.0, -1.0])
def test_a_lock_ttl_under_one_second_is_refused(value: float) -> None:
    """lock_ttl_s below 1 s (0.0004 s made every lock fail with Redis's "invalid expire time")
    is refused, naming the setting; 1 s and a week are accepted."""
    with pytest.raises(ValidationError, match="lock_ttl_s"):
        WorkerSettings(lock_ttl_s=value)
    assert WorkerSettings(lock_ttl_s=MIN_LOCK_TTL_S).lock_ttl_s == 1.0
    assert WorkerSettings(lock_ttl_s=MAX_WORKER_S).lock_ttl_s == MAX_WORKER_S


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://127.0.0.1:6379",
        "redis://admin:s3cret-pw@127.0.0.1:notaport/0",
        "redis://:s3cret-pw@[::1",
        "redis://:s3cret-pw@host:99999/0",
        "redis:///0",
        "redis://host/not-a-db",
        "unix://",
    ],
)
def test_a_redis_url_redis_cannot_use_is_refused_without_quoting_it(url: str) -> None:
    """A URL redis-py could not connect with is a settings error (it was a ValueError from
    deep in the pool at connect), and the error never quotes it: it may hold a password."""
    with pytest.raises(ValidationError) as caught:
        HivememSettings(redis_url=url)
    assert "redis_url" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://user:pw@cache.example:6380", "unix:///run/r.sock?db=2"],
)
def test_redis_urls_redis_can_use_are_kept(url: str) -> None:
    assert HivememSettings(redis_url=url).redis_url == url


def test_a_data_dir_that_is_no_directory_is_refused(tmp_path: Path) -> None:
    """A file (or /dev/null) where the data directory should be is a settings error, not a
    NotADirectoryError at first use; a directory not made yet is fine."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path in (afile, Path("/dev/null")):
        with pytest.raises(ValidationError) as caught:
            HivememSettings(data_dir=path)
        assert "data_dir" in str(caught.value)
    assert HivememSettings(data_dir=tmp_path / "later").data_dir == tmp_path / "later"


def _float_settings(model: type[BaseModel], prefix: str) -> list[str]:
    """The dotted path of every float setting under ``model``."""
    found = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _float_settings(field.annotation, f"{prefix}{name}.")
        elif field.annotation is float:
            found.append(f"{prefix}{name}")
    return found


FLOAT_SETTINGS = _float_settings(HivememSettings, "")


@pytest.mark.parametrize("path", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_number_setting_takes_infinity_or_nan(
    monkeypatch: pytest.MonkeyPatch, path: str, value: str
) -> None:
    """Every float setting, in every section, refuses infinity and NaN, naming the setting (an
    LLM timeout or heartbeat interval of infinity hung what waited on it)."""
    assert len(FLOAT_SETTINGS) >= 20  # the walk found the sections' settings
    monkeypatch.setenv("HIVEMEM_" + path.upper().replace(".", "__"), value)
    with pytest.raises(ValidationError, match=path.replace(".", r"\.")):
        HivememSettings()

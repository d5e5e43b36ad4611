"""Forgetting a user, checked on every byte the pool keeps.

Every record's content, tags, entities and metadata hold its user's marker. Before the forget,
the user's plaintext is in clear nowhere (no Redis value, no file of the
agents, of the zone store or of the Redis server), yet every sealed copy of it opens with the
pool's keys: the scan sees what it looks for. After the forget, no copy anywhere (stream
envelopes, outboxes, the agents' Qdrant Edge stores, the zone store and its archive, the Redis
append-only file after a rewrite) opens for an attacker who holds the master key, i.e. every
zone's data keys and every subject secret still in Redis; the control user's copies, found by the
same scan, still open, and that user's records still read back at every agent and in the store.

The scene: alice (CONFIDENTIAL) and bob (INTERNAL), both sharing episodes, each in its own pool
on one real Redis; carol (PUBLIC, in bob's pool) sends once every ten minutes, so what she wrote
waits in her outbox; an in-process worker runtime ingests into the zone store (Qdrant Edge) and
archives. ursula is forgotten; victor is the control.

Sent messages leave an outbox as deleted SQLite rows, which the scan finds where their pages
were not reused yet (alice's and bob's outboxes: :data:`SENT`); carol's queued messages, read
through SQLite as well, are there for certain.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import sqlite3
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import InvalidInput, KeyUnavailable, SealBroken
from hivemem.pool.filters import And, Cond
from hivemem.pool.records import MemoryRecord
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings, WorkerSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.content_seal import SEALED_PREFIX, ZONE_ONLY_PREFIX
from hivemem.security.key_provider import key_provider
from hivemem.security.keyring import ACTIVE_TTL_S, ZoneKeyring
from hivemem.security.sealing import NONCE_BYTES, Sealed, Sealer
from hivemem.security.wire import SealedHeader
from hivemem.security.zone_store import SecureZoneStore
from hivemem.workers.forget import ZoneReceipt
from hivemem.workers.runtime import WorkerRuntime
from tests.waiting import holds, wait_for

pytestmark = pytest.mark.slow

Pools = Callable[..., SharedMemoryPool]
FORGOTTEN, KEPT = "ursula", "victor"

#: The clear header of a version-2 pool message, and the newline that ends it (security/wire.py:
#: the nonce, the ciphertext of the length the header states and the signature follow).
ENVELOPE = re.compile(rb'\{"v":2,"message_id":"[0-9a-f]{32}"[^{}\n]*\}\n')
#: A record's content as kept at rest (security/content_seal.py): version 1 (sealed under the
#: zone key alone), or 2 (under its user's secret, stamped: security/sealing.py).
CONTENT = re.compile(
    rb"hm:sealed0?:(?:v1\.[0-9a-f]{12}|v2\.[0-9a-f]{12}\.[A-Za-z0-9_-]{32})"
    rb"\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{16,}"
)
#: An archived record: zlib-compressed JSON in base64 (pool/archive_codec.py).
ARCHIVED = re.compile(rb"eJ[A-Za-z0-9+/]{64,}={0,2}")

#: Every place that holds a sealed copy of both users' content, as :func:`place_of` names it.
PLACES = {
    "redis",  # the live values: zone streams and bob's inbox
    "redis files",  # the append-only file
    "alice index",
    "bob index",
    "carol index",
    "carol outbox",
    "zone store",
    "zone archive",
}
#: Outboxes whose messages were all sent: deleted rows, found as long as SQLite has not reused
#: their pages.
SENT = {"alice outbox", "bob outbox"}


def owned(user_id: str) -> And:
    return And(all=[Cond(field="scope.user_id", op="eq", value=user_id)])


def ignore(user_id: str) -> None:
    """An ``on_due`` for drains whose consolidations do not matter here."""


def no_due(zone: Zone, user_id: str) -> None:
    raise AssertionError(f"nobody should become due here ({zone}, {user_id})")


# -- what an attacker reads -----------------------------------------------------------------


def stored_bytes(path: Path) -> bytes:
    """The data of ``path`` without its holes, joined by a zero byte (which no pattern here
    spans): Qdrant Edge's files are mostly holes (32 MB pages holding kilobytes), and reading
    only their data extents makes a scan of the scene take 0.2 s instead of 15."""
    parts = []
    with path.open("rb") as file:
        offset = 0
        while True:
            try:
                start = os.lseek(file.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            offset = os.lseek(file.fileno(), start, os.SEEK_HOLE)
            file.seek(start)
            parts.append(file.read(offset - start))
    return b"\0".join(parts)


def place_of(relative: Path) -> str:
    """Which part of the scene a file under the test's directory belongs to."""
    parts = relative.parts
    if parts[0] == "redis":
        return "redis files"
    if parts[:2] == ("fleet", "zones") and len(parts) > 2:
        return "zone archive" if parts[2].endswith("_archive") else "zone store"
    if len(parts) > 3 and parts[1] == "agents":
        return f"{parts[2]} {'outbox' if parts[3].startswith('outbox') else 'index'}"
    return "/".join(parts[:2])


def files(root: Path) -> Iterator[tuple[str, Path, bytes]]:
    """Every file under ``root``: its place, path and stored bytes."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield place_of(path.relative_to(root)), path, stored_bytes(path)


def queued(path: Path) -> list[bytes]:
    """The messages the outbox database ``path`` still holds, read as any process could."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return [bytes(body) for (body,) in db.execute("SELECT body FROM outbox")]


def redis_values(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """Every key of the database with each value it holds, whatever its type (hash fields,
    stream entry fields and set members included)."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            values = [client.get(key)]
        elif kind == b"hash":
            values = [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"stream":
            values = [
                part for _, entry in client.xrange(key) for pair in entry.items() for part in pair
            ]
        elif kind == b"none":  # expired since the scan (a heartbeat)
            continue
        else:
            raise AssertionError(f"a Redis type this scan does not read: {kind!r}")
        for value in values:
            yield key.decode(), value or b""


def text_at(data: bytes, match: re.Match[bytes]) -> bytes:
    """The text ``match`` found, cut to its length when it is a CBOR text string (Qdrant Edge's
    write-ahead log is CBOR: the next map key follows a string without a delimiter, and a
    pattern of base64 characters would run on into it)."""
    start, found = match.start(), match.group()
    length = None
    if start >= 2 and data[start - 2] == 0x78:  # text string, 1-byte length
        length = data[start - 1]
    elif start >= 3 and data[start - 3] == 0x79:  # text string, 2-byte length
        length = int.from_bytes(data[start - 2 : start], "big")
    return found[:length] if length is not None and length <= len(found) else found


def unpacked_archives(data: bytes) -> Iterator[bytes]:
    """The JSON of every archived record packed in ``data`` (pool/archive_codec.py)."""
    for match in ARCHIVED.finditer(data):
        try:
            yield zlib.decompress(base64.b64decode(text_at(data, match), validate=True))
        except (binascii.Error, zlib.error):
            continue


def leaks(root: Path, client: redis.Redis, secret: str) -> list[str]:
    """The Redis keys and files whose bytes (archived records unpacked) hold ``secret``."""
    needle = secret.encode()
    found = [key for key, value in redis_values(client) if needle in value]
    for _, path, data in files(root):
        if needle in data or any(needle in raw for raw in unpacked_archives(data)):
            found.append(str(path.relative_to(root)))
    return found


@dataclass(frozen=True)
class Copy:
    """A sealed copy of someone's content as the attacker finds it, with the candidate
    bindings to open it under (all the known ones when the bytes around it do not say)."""

    place: str
    zone: Zone
    sealed: Sealed
    contexts: tuple[bytes, ...]
    subjects: tuple[str | None, ...]


class Attacker:
    """Holds the master key and a copy of everything: every zone's data keys, every subject
    secret still in Redis, every Redis value and every file. Make one after the forget: a
    keyring caches what it unwrapped."""

    def __init__(
        self, client: redis.Redis, settings: HivememSettings, record_ids: Sequence[str]
    ) -> None:
        keyring = ZoneKeyring(
            client, key_provider(settings), namespace=settings.pool.namespace, active_ttl_s=60
        )
        self._sealer = Sealer(keyring)
        self._zones = {info.key_id: zone for zone in Zone for info in keyring.keys(zone)}
        self._contexts = tuple(i.encode() for i in record_ids)

    def copies(self, place: str, data: bytes) -> Iterator[Copy]:
        """The sealed copies in ``data``: pool messages, contents, archived records."""
        for match in ENVELOPE.finditer(data):
            header = match.group()[:-1]
            try:
                wire = SealedHeader.model_validate_json(header)
            except InvalidInput:
                continue
            body = match.end() + NONCE_BYTES
            sealed = Sealed(wire.key_id, data[match.end() : body], data[body : body + wire.size])
            if len(sealed.ciphertext) == wire.size:  # else cut by the end of a page
                yield Copy(place, wire.zone, sealed, (header,), (wire.subject,))
        for match in CONTENT.finditer(data):
            yield from self._content(place, text_at(data, match).decode(), self._contexts, None)
        for raw in unpacked_archives(data):
            record = MemoryRecord.model_validate_json(raw)
            yield from self._content(place, record.content, (record.id.encode(),), record)

    def _content(
        self, place: str, text: str, contexts: tuple[bytes, ...], record: MemoryRecord | None
    ) -> Iterator[Copy]:
        try:
            sealed = Sealed.from_text(
                text.removeprefix(SEALED_PREFIX).removeprefix(ZONE_ONLY_PREFIX)
            )
        except InvalidInput:
            return
        zone = self._zones.get(sealed.key_id)
        if zone is None:
            return
        if text.startswith(ZONE_ONLY_PREFIX):
            subjects: tuple[str | None, ...] = (None,)
        elif record is not None:
            subjects = (record.scope.user_id,)
        else:
            subjects = (FORGOTTEN, KEPT)
        yield Copy(place, zone, sealed, contexts, subjects)

    def open(self, copy: Copy) -> bytes | None:
        """The clear bytes of ``copy`` under any binding; None when it opens under none."""
        for context in copy.contexts:
            for subject in copy.subjects:
                try:
                    body = self._sealer.open(
                        copy.zone, copy.sealed, context=context, subject=subject
                    )
                except (KeyUnavailable, SealBroken):
                    continue
                if body[:1] == b"z":  # a packed content (security/content_seal.py)
                    return zlib.decompress(body[1:])
                return body[1:] if body[:1] == b"p" else body
        return None

    def open_as(self, copy: Copy, subject: str) -> bytes:
        """Open ``copy`` as ``subject``'s content, bound to each candidate context in turn (a
        stamped value authenticates its context before anything else: another raises
        SealBroken); raises KeyUnavailable, or SealBroken when no context is its own."""
        broken: SealBroken | None = None
        for context in copy.contexts:
            try:
                return self._sealer.open(copy.zone, copy.sealed, context=context, subject=subject)
            except SealBroken as error:
                broken = error
        assert broken is not None
        raise broken

    def everything(self, root: Path, client: redis.Redis) -> list[Copy]:
        """Every sealed copy in the Redis values, in the files under ``root`` and in the rows of
        the outboxes there."""
        found = [c for _, value in redis_values(client) for c in self.copies("redis", value)]
        for place, path, data in files(root):
            found.extend(self.copies(place, data))
            if path.name == "outbox.sqlite3":
                found.extend(c for body in queued(path) for c in self.copies(place, body))
        return found


def revealing(attacker: Attacker, copies: Sequence[Copy], secret: str) -> set[str]:
    """The places where some copy opens to bytes that hold ``secret``."""
    return {c.place for c in copies if secret.encode() in (attacker.open(c) or b"")}


def wrapped_secret(client: redis.Redis, namespace: str, subject: str) -> bytes:
    """The subject's secret as Redis keeps it (wrapped by the master key)."""
    entry = client.hget(f"{namespace}:keys:subjects", subject)
    assert entry is not None, subject
    return str(json.loads(entry)["wrapped"]).encode()


def rewrite_append_only_file(client: redis.Redis) -> None:
    """Have Redis rewrite its append-only file from what it holds now, and wait for it. As plain
    commands, without the RDB preamble: its LZF-compressed strings would hide from a byte scan
    what they hold, whereas the rewrite must be shown to drop it."""

    def done() -> bool:
        info = client.info("persistence")
        return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]

    assert wait_for(done, timeout_s=20)  # the one the forget started
    client.config_set("aof-use-rdb-preamble", "no")
    client.bgrewriteaof()
    assert wait_for(done, timeout_s=20)
    assert client.info("persistence")["aof_last_bgrewrite_status"] == "ok"


# -- the scene --------------------------------------------------------------------------------


@dataclass
class Scene:
    alice: Agent
    bob: Agent
    carol: Agent
    runtime: WorkerRuntime
    client: redis.Redis
    root: Path
    marker: str  # in every record of ursula's, and nowhere else
    control: str  # in every record of victor's
    records: dict[str, MemoryRecord]  # everyone's, by id
    queued: set[str]  # the ids of carol's records, still in her outbox
    archived: dict[str, str]  # user → the id of their record archived in the zone store

    def of(self, user_id: str) -> list[MemoryRecord]:
        return [r for r in self.records.values() if r.scope.user_id == user_id]


@pytest.fixture
def runtime(pool_settings: Callable[..., HivememSettings]) -> Iterator[WorkerRuntime]:
    """The workers' services in this process, on the test's Redis and keys; the zone store stays
    open between calls (reopening its shards costs seconds)."""
    settings = pool_settings("fleet").model_copy(
        update={"workers": WorkerSettings(store_idle_close_s=600)}
    )
    made = WorkerRuntime(settings)
    yield made
    made.close()


def write(agent: Agent, user_id: str, secret: str, zones: Sequence[Zone]) -> list[MemoryRecord]:
    """Records whose content, tags, entities and metadata all hold ``secret``."""
    records = [
        agent.memory.add(
            f"{user_id} {secret} {n} {zone.value}",
            user_id=user_id,
            zone=zone,
            tags=[f"{secret}-tag", "shared-tag"],
            entities=[f"{secret}-entity"],
            metadata={"note": f"{secret} note", "seen": [f"{secret}-seen", 7], "n": n},
        )
        for n, zone in enumerate(zones)
    ]
    assert agent.flush()
    return records


@pytest.fixture
def scene(
    make_pool: Pools, runtime: WorkerRuntime, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[Scene]:
    """ursula's records in three zones (one archived in the zone store, one handed over to
    bob's inbox, one queued in carol's outbox) and victor's, at both agents and in the zone
    store."""
    alice_pool = make_pool("p1")
    alice = alice_pool.register_agent(
        "alice", clearance=Zone.CONFIDENTIAL, share_levels=[Level.EPISODE]
    )
    bob_pool = make_pool("p2")
    bob = bob_pool.register_agent("bob", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE])
    carol = bob_pool.register_agent(
        "carol", clearance=Zone.PUBLIC, share_levels=[Level.EPISODE], sync_interval=600
    )
    assert alice.wait_connected()
    assert bob.wait_connected()
    marker, control = f"um{uuid.uuid4().hex}", f"vc{uuid.uuid4().hex}"
    internal = [Zone.PUBLIC, Zone.INTERNAL, Zone.INTERNAL]
    written = [
        *write(alice, FORGOTTEN, marker, [*internal, Zone.CONFIDENTIAL]),
        *write(bob, FORGOTTEN, marker, [Zone.PUBLIC]),
        *write(alice, KEPT, control, [Zone.INTERNAL, Zone.INTERNAL]),
        *write(bob, KEPT, control, [Zone.PUBLIC]),
    ]
    waiting = [
        carol.memory.add(
            f"{user_id} {secret} carol",
            user_id=user_id,
            zone=Zone.PUBLIC,
            tags=[f"{secret}-tag"],
            metadata={"note": f"{secret} note"},
        )
        for user_id, secret in [(FORGOTTEN, marker), (KEPT, control)]
    ]
    assert carol.pending == 4  # each for its zone's channel and ingest queue
    alice_pool.share_knowledge("alice", "bob", written[1].id)
    assert alice.flush()
    for agent, held in [(alice, {FORGOTTEN: 5, KEPT: 3}), (bob, {FORGOTTEN: 4, KEPT: 3})]:
        for user_id, count in held.items():
            assert wait_for(
                lambda a=agent, u=user_id, n=count: a.memory.stats(user_id=u).current == n
            )
    for zone in (Zone.PUBLIC, Zone.INTERNAL, Zone.CONFIDENTIAL):
        runtime.ingest.drain(zone, on_due=ignore)
    archived = {FORGOTTEN: written[2].id, KEPT: written[6].id}
    assert runtime.archive.archive(Zone.INTERNAL, list(archived.values())) == list(
        archived.values()
    )
    client = redis.Redis.from_url(redis_server.url)
    yield Scene(
        alice=alice,
        bob=bob,
        carol=carol,
        runtime=runtime,
        client=client,
        root=tmp_path,
        marker=marker,
        control=control,
        records={r.id: r for r in [*written, *waiting]},
        queued={r.id for r in waiting},
        archived=archived,
    )
    client.close()


# -- the tests --------------------------------------------------------------------------------


def test_after_a_forget_nothing_of_the_user_opens_anywhere(scene: Scene) -> None:
    """Every copy of ursula's content is sealed and opens before the forget; after it (and a
    rewrite of Redis's append-only file) none opens anywhere, victor's still do, and his
    records still read back at both agents and in the zone store."""
    runtime, client, root = scene.runtime, scene.client, scene.root
    namespace = runtime.settings.pool.namespace
    aof = root / "redis" / "appendonly.aof"
    assert leaks(root, client, scene.marker) == []
    before = Attacker(client, runtime.settings, list(scene.records))
    copies = before.everything(root, client)
    assert [c for c in copies if before.open(c) is None] == []  # the attacker misses nothing
    assert PLACES <= revealing(before, copies, scene.marker) <= PLACES | SENT
    shredded = wrapped_secret(client, namespace, FORGOTTEN)
    assert shredded in aof.read_bytes()

    receipt = runtime.forget.forget_user(FORGOTTEN, list(Zone), on_due=no_due)

    assert receipt.subject_key_shredded
    assert receipt.persistence_rewrite_started
    again = runtime.forget.forget_user(FORGOTTEN, list(Zone), on_due=no_due)
    assert (again.removed, again.subject_key_shredded) == (0, False)  # nothing left to shred
    assert {zone: counts(z) for zone, z in receipt.zones.items()} == {
        "public": (2, 0, 2, 1),
        "internal": (1, 1, 2, 1),  # the archived record is tombstoned too
        "confidential": (1, 0, 1, 1),
        "secret": (0, 0, 0, 0),
    }
    rewrite_append_only_file(client)
    assert leaks(root, client, scene.marker) == []
    after = Attacker(client, runtime.settings, list(scene.records))
    remaining = after.everything(root, client)
    assert revealing(after, remaining, scene.marker) == set()
    ursulas = {c.sealed for c in copies if scene.marker.encode() in (before.open(c) or b"")}
    lingering = [c for c in remaining if c.sealed in ursulas]
    assert {c.place for c in lingering} >= {"redis", "redis files", "carol outbox"}
    for copy in lingering:
        with pytest.raises(KeyUnavailable, match="subject forgotten"):
            after.open_as(copy, FORGOTTEN)
    assert PLACES <= revealing(after, remaining, scene.control) <= PLACES | SENT  # still seen
    persisted = aof.read_bytes()
    assert shredded not in persisted
    assert wrapped_secret(client, namespace, KEPT) in persisted
    assert_only_victor_is_left(scene)


def counts(receipt: ZoneReceipt) -> tuple[int, int, int, int]:
    """Live records, archived records, tombstones published, Redis keys deleted."""
    return (
        receipt.live_records,
        receipt.archived_records,
        receipt.tombstones_published,
        receipt.redis_keys_deleted,
    )


def labelled(record: MemoryRecord) -> tuple[object, ...]:
    """What of a record its user wrote: content, tags, entities, metadata."""
    return record.content, record.tags, record.entities, record.metadata


def assert_only_victor_is_left(scene: Scene) -> None:
    """Nothing of ursula's reads anywhere; victor's records read back at both agents (each his
    clearance allows) and in the zone store and its archive, and his new writes still travel.
    Agents learn of the forget by the workers' tombstones, and carol (whose copy the workers
    never had) by the shred, which her process's keyring sees within ``ACTIVE_TTL_S``: each
    gets that long, and not more, to stop reading ursula's records."""
    store = scene.runtime.store
    for agent in (scene.alice, scene.bob, scene.carol):
        assert wait_for(
            lambda a=agent: (
                a.memory.list_memories(user_id=FORGOTTEN, include_superseded=True) == []
            ),
            timeout_s=ACTIVE_TTL_S + 2.0,
        )
    for zone in Zone:
        assert store.ids(zone, owned(FORGOTTEN)) == []
        assert store.archive_ids(zone, owned(FORGOTTEN)) == []
    for record in scene.of(KEPT):
        if record.id in scene.queued:
            assert labelled(scene.carol.memory.get(record.id)) == labelled(record)
            continue
        for agent in (scene.alice, scene.bob):
            assert labelled(agent.memory.get(record.id)) == labelled(record)
        if record.id == scene.archived[KEPT]:
            stored = store.archive_get(record.zone, [record.id])
        else:
            stored = store.get(record.zone, [record.id])
        assert [labelled(r) for r in stored] == [labelled(record)]
    for sender, receiver in [(scene.alice, scene.bob), (scene.bob, scene.alice)]:
        (new,) = write(sender, KEPT, scene.control, [Zone.PUBLIC])
        assert wait_for(lambda r=receiver, i=new.id: holds(r, i))


# -- what the forget leaves behind (known bugs) -------------------------------------------------


@pytest.fixture
def alice(make_pool: Pools) -> Agent:
    agent = make_pool("p1").register_agent(
        "alice", clearance=Zone.PUBLIC, share_levels=[Level.EPISODE]
    )
    assert agent.wait_connected()
    return agent


def on_disk(directory: Path, needle: bytes) -> bool:
    return any(needle in data for _, _, data in files(directory))


def test_a_record_archived_in_the_zone_store_leaves_the_agents_too(
    alice: Agent, runtime: WorkerRuntime
) -> None:
    """The forget tombstones the user's records archived in the zone store like the live ones:
    at every agent holding a copy, and in the store (so that no late copy is stored again)."""
    live, archived = write(alice, FORGOTTEN, "note", [Zone.PUBLIC, Zone.PUBLIC])
    runtime.ingest.drain(Zone.PUBLIC, on_due=ignore)
    assert runtime.archive.archive(Zone.PUBLIC, [archived.id]) == [archived.id]

    runtime.forget.forget_user(FORGOTTEN, list(Zone), on_due=no_due)

    assert wait_for(lambda: alice.memory.stats(user_id=FORGOTTEN).current < 2)  # live's arrived
    assert runtime.store.presence(Zone.PUBLIC, [live.id, archived.id]) == {
        live.id: True,
        archived.id: True,
    }
    assert wait_for(lambda: alice.memory.stats(user_id=FORGOTTEN).current == 0, timeout_s=2)


def test_a_forgotten_users_vectors_leave_every_disk(
    alice: Agent, runtime: WorkerRuntime, tmp_path: Path
) -> None:
    """Once the forget's tombstone reached the agent, the record's dense vector is neither on
    the agent's disk nor (as the zone store keeps it) on the zone store's. Qdrant Edge only
    marks a replaced point's vectors deleted; EdgeIndex overwrites them first."""
    (record,) = write(alice, FORGOTTEN, "note", [Zone.PUBLIC])
    runtime.ingest.drain(Zone.PUBLIC, on_due=ignore)
    assert isinstance(runtime.store, SecureZoneStore)
    (stored,) = runtime.store.inner.get(Zone.PUBLIC, [record.id], with_vectors=True)
    vectors = {
        tmp_path / "p1" / "agents" / "alice": alice.memory.get(record.id, with_vectors=True).vector,
        tmp_path / "fleet" / "zones": stored.vector,
    }
    needles = {where: np.asarray(v, dtype="<f4").tobytes() for where, v in vectors.items()}
    assert all(on_disk(where, needle) for where, needle in needles.items())

    runtime.forget.forget_user(FORGOTTEN, list(Zone), on_due=no_due)

    assert wait_for(lambda: alice.memory.stats(user_id=FORGOTTEN).current == 0)
    assert [where.name for where, needle in needles.items() if on_disk(where, needle)] == []

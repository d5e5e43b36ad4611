"""Broker-enforced zones on the test's real Redis: each agent's ACL user reaches its zones, its
ingest queues and its own inbox, and every attempt above its clearance is refused with NOPERM."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry
from structlog.testing import capture_logs

from hivemem.pool.adapters.departures import departed_topic, queue_keys
from hivemem.pool.adapters.redis_bus import RedisBus, inbox_topic, ingest_topic, zone_topic
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidIdentifier, InvalidInput
from hivemem.pool.redis_server import EmbeddedRedis, free_port
from hivemem.security.redis_acl import (
    AGENT_COMMANDS,
    AgentAcl,
    AgentCredentials,
    agent_rules,
    username_of,
)
from hivemem.workers.keys import WorkerKeys
from tests.security.conftest import ATTEMPTS

NS = "t"
Attempt = Callable[[], object]


@pytest.fixture
def acl(client: redis.Redis) -> AgentAcl:
    return AgentAcl(client, namespace=NS)


@pytest.fixture
def connect(redis_server: EmbeddedRedis) -> Iterator[Callable[..., redis.Redis]]:
    """``connect(creds, db=0, **kwargs)``: a client logged in as the agent; closed at teardown."""
    opened: list[redis.Redis] = []

    def make(creds: AgentCredentials, db: int = 0, **kwargs: Any) -> redis.Redis:
        base = redis_server.url.removesuffix("/0") + f"/{db}"
        agent = redis.Redis.from_url(creds.url(base), **kwargs)
        opened.append(agent)
        return agent

    yield make
    for agent in opened:
        agent.close()


def refused(attempt: Attempt) -> bool:
    """True when Redis answers the attempt with NOPERM (redis-py 7: NoPermissionError)."""
    try:
        attempt()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def subscribing(agent: redis.Redis, *channels: str, pattern: bool = False) -> Attempt:
    """An attempt to (p)subscribe on a fresh pub/sub connection; Redis answers on the read."""

    def attempt() -> object:
        pubsub = agent.pubsub()  # type: ignore[no-untyped-call]
        try:
            if pattern:
                pubsub.psubscribe(*channels)  # type: ignore[no-untyped-call]
            else:
                pubsub.subscribe(*channels)  # type: ignore[no-untyped-call]
            return pubsub.get_message(timeout=1.0)
        finally:
            pubsub.close()  # type: ignore[no-untyped-call]

    return attempt


def messages(pubsub: Any, count: int, timeout_s: float = 3.0) -> list[Any]:
    """The next ``count`` published messages of ``pubsub`` (fewer on timeout)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            got.append(message)
    return got


def user_clients(admin: redis.Redis, username: str) -> list[str]:
    return [c["id"] for c in admin.client_list() if c["user"] == username]


def test_rules_of_an_internal_agent() -> None:
    """An INTERNAL agent: public and internal channels and keys, its inbox, the bus commands."""
    assert agent_rules("hivemem", "a1", Zone.INTERNAL) == [
        "reset", "on", "resetchannels",
        "&hivemem:zone:public", "&hivemem:zone:internal", "&hivemem:agent:a1:inbox",
        "~hivemem:zone:public:*", "~hivemem:zone:internal:*",
        "~hivemem:ingest:public:agent:a1:*", "~hivemem:ingest:internal:agent:a1:*",
        "~hivemem:agent:a1:*",
        "-@all",
        "+subscribe", "+ping", "+select", "+multi", "+exec", "+get", "+xrange",
        "+evalsha", "+set", "+incr", "+xadd", "+publish",
        "+del", "+time",
    ]  # fmt: skip


@pytest.mark.parametrize("clearance", list(Zone))
def test_rules_name_exactly_the_zones_up_to_the_clearance(clearance: Zone) -> None:
    """One channel and two key patterns per zone at or below the clearance, none above."""
    rules = agent_rules(NS, "a1", clearance)
    allowed = {z.value for z in Zone if z <= clearance}
    assert {r.split(":")[2] for r in rules if r.startswith(f"&{NS}:zone:")} == allowed
    assert {r.split(":")[2] for r in rules if r.startswith(f"~{NS}:zone:")} == allowed
    assert {r.split(":")[2] for r in rules if r.startswith(f"~{NS}:ingest:")} == allowed
    never = {"+@all", "+keys", "+scan", "+psubscribe", "+eval", "+script", "+script|load"}
    assert not (never | {"allkeys"}) & set(rules)


def test_credentials_url_keeps_the_server_and_encodes_the_login() -> None:
    """Host, port, db and options stay; the login is percent-encoded; old credentials go."""
    creds = AgentCredentials("t:agent:a1", SecretStr("p@ss/w:rd%"))
    url = creds.url("redis://old:secret@10.0.0.5:6400/3?socket_timeout=2&password=x")
    assert url == "redis://t%3Aagent%3Aa1:p%40ss%2Fw%3Ard%25@10.0.0.5:6400/3?socket_timeout=2"
    pool = redis.ConnectionPool.from_url(url)
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("t:agent:a1", "p@ss/w:rd%")
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.5", 6400, 3)
    assert (
        creds.url("rediss://[::1]:7000/0")
        == "rediss://t%3Aagent%3Aa1:p%40ss%2Fw%3Ard%25@[::1]:7000/0"
    )
    assert "p@ss" not in repr(creds)
    with pytest.raises(InvalidInput):
        creds.url("http://127.0.0.1:6400/0")


INJECTIONS = ["a b", "a*", "*", "a~b", "~*", "a&b", "&*", "a\nb", "a\r\n+@all", "a:b", ""]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injected_ids_are_rejected_before_any_redis_call(bad: str) -> None:
    """Every entry point rejects the id with InvalidIdentifier; the admin points at a closed
    port, so any Redis call would have raised PoolUnavailable instead."""
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    acl = AgentAcl(unreachable, namespace=NS)
    attempts: list[Attempt] = [
        lambda: username_of(NS, bad),
        lambda: username_of(bad, "a1"),
        lambda: agent_rules(NS, bad, Zone.PUBLIC),
        lambda: agent_rules(bad, "a1", Zone.PUBLIC),
        lambda: AgentAcl(unreachable, namespace=bad),
        lambda: acl.provision(bad, Zone.PUBLIC),
        lambda: acl.restrict(bad, Zone.PUBLIC),
        lambda: acl.remove(bad),
        lambda: acl.exists(bad),
    ]
    rejected = 0
    for attempt in attempts:
        with pytest.raises(InvalidIdentifier):
            attempt()
        rejected += 1
    assert rejected == len(attempts) == 9
    with pytest.raises(InvalidInput):
        acl.provision("a1", "top-secret")  # type: ignore[arg-type]


def test_agent_receives_its_zones_and_inbox(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """Subscribed with its own user, an INTERNAL agent hears what the admin publishes on the
    public and internal channels and on its inbox."""
    agent = connect(acl.provision("a1", Zone.INTERNAL))
    bus = RedisBus(agent, namespace=NS, maxlen=100)
    pubsub = bus.subscribe([zone_topic(Zone.PUBLIC), zone_topic(Zone.INTERNAL), inbox_topic("a1")])
    assert messages(pubsub, 1, timeout_s=0.3) == []  # subscribed (confirmations skipped)
    sent = {"t:zone:public": b"p", "t:zone:internal": b"i", "t:agent:a1:inbox": b"h"}
    for channel, data in sent.items():
        assert client.publish(channel, data) == 1
    got = {m["channel"].decode(): m["data"] for m in messages(pubsub, 3)}
    pubsub.close()
    assert got == sent


def test_everything_above_the_clearance_is_refused(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """Channels, streams and counters of higher zones, another agent's inbox, pattern
    subscriptions and admin commands: each attempt gets NOPERM, and nothing is lost."""
    admin_bus = RedisBus(client, namespace=NS, maxlen=100)
    for topic in [zone_topic(Zone.CONFIDENTIAL), zone_topic(Zone.SECRET), inbox_topic("b2")]:
        admin_bus.publish(topic, "admin", [("m1", b"x")])
    agent = connect(acl.provision("a1", Zone.INTERNAL))
    attempts: dict[str, Attempt] = {
        "subscribe confidential": subscribing(agent, "t:zone:confidential"),
        "subscribe secret": subscribing(agent, "t:zone:secret"),
        "subscribe own and secret": subscribing(agent, "t:zone:public", "t:zone:secret"),
        "subscribe other inbox": subscribing(agent, "t:agent:b2:inbox"),
        "psubscribe zones": subscribing(agent, "t:zone:*", pattern=True),
        "psubscribe public": subscribing(agent, "t:zone:public", pattern=True),
        "publish secret": lambda: agent.publish("t:zone:secret", b"x"),
        "xrange secret": lambda: agent.xrange("t:zone:secret:stream"),
        "xrange confidential": lambda: agent.xrange("t:zone:confidential:stream"),
        "xread secret": lambda: agent.xread({"t:zone:secret:stream": 0}),
        "get secret seq": lambda: agent.get("t:zone:secret:seq"),
        "get secret epoch": lambda: agent.get("t:zone:secret:epoch"),
        "xrange other inbox": lambda: agent.xrange("t:agent:b2:inbox:stream"),
        "get other heartbeat": lambda: agent.get("t:agent:b2:alive"),
        "get registry": lambda: agent.get("t:registry:agents"),
        "keys": lambda: agent.keys("*"),
        "scan": lambda: agent.scan(0),
        "flushall": agent.flushall,
        "flushdb": agent.flushdb,
        "config get": lambda: agent.config_get("*"),
        "acl list": agent.acl_list,
        "acl setuser": lambda: agent.execute_command("ACL SETUSER", "t:agent:a1", "+@all"),
        "eval": lambda: agent.eval("return redis.call('GET', 't:zone:secret:seq')", 0),
        "client kill": lambda: agent.client_kill_filter(user="default"),
        "del secret": lambda: agent.delete("t:zone:secret:stream"),
        "del other inbox": lambda: agent.delete("t:agent:b2:inbox:stream"),
    }
    outcomes = {name: refused(attempt) for name, attempt in attempts.items()}
    assert [name for name, denied in outcomes.items() if not denied] == []
    assert sum(outcomes.values()) == len(attempts) == 26
    assert client.dbsize() == 12  # three topics' stream, seq, epoch and message id
    assert client.xlen("t:zone:secret:stream") == 1


def test_del_of_its_own_zones_keys_gives_an_agent_no_new_power(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """DEL is granted for publish.lua's repair of a damaged topic. On its own zones' keys it
    adds nothing: XADD's MAXLEN, which publishing needs, already empties a stream."""
    RedisBus(client, namespace=NS, maxlen=100).publish(
        zone_topic(Zone.INTERNAL), "admin", [("m1", b"one"), ("m2", b"two")]
    )
    agent = connect(acl.provision("a1", Zone.INTERNAL))
    agent.xadd("t:zone:internal:stream", {"d": "x"}, id="9-0", maxlen=0, approximate=False)
    assert client.xlen("t:zone:internal:stream") == 0


def test_no_agent_can_write_the_workers_keys(
    acl: AgentAcl, connect: Callable[..., redis.Redis]
) -> None:
    """The workers' ingest cursor, consolidation state, version notes, forget journals and
    locks (a forget's too), and the registry's departed agents, departures and rules version,
    lie outside every agent's key patterns, even for its own zones: an agent cannot move the
    workers' place in an ingest queue (making them skip or stall), take their locks, rewrite
    what a forget noted, note a departure (whose entry the workers would check queued writes
    against), or add to what it queued before an earlier deregistration. (The ingest cursor
    used to sit under ``ns:ingest:<zone>:*``, which the agents of the zone may write.)"""
    agent = connect(acl.provision("a1", Zone.INTERNAL))
    keys = WorkerKeys(NS)
    names = [keys.ingest_cursor(ingest_topic(Zone.INTERNAL, "a1")), keys.ingest_lock(Zone.INTERNAL)]
    names += [keys.users(Zone.INTERNAL), keys.pending(Zone.INTERNAL, "u1")]
    names += [keys.plan(Zone.INTERNAL, "u1"), keys.queued(Zone.INTERNAL, "u1")]
    names += [keys.consolidate_lock(Zone.INTERNAL, "u1"), keys.awaiting(Zone.INTERNAL)]
    names += [keys.forget_journal(Zone.INTERNAL, "u1"), keys.forget_lock("u1")]
    names += [f"{NS}:registry:departed", f"{NS}:registry:departures"]
    names += [f"{NS}:registry:departure_seq", f"{NS}:registry:acl_rules"]
    # What it queued before an earlier deregistration (its former queue, moved).
    names += queue_keys(NS, departed_topic(1, Zone.INTERNAL, "a1"))
    attempts: list[Attempt] = [lambda name=name: agent.set(name, "0 999999") for name in names]
    assert sum(refused(attempt) for attempt in attempts) == len(attempts) == 18


def test_bus_works_on_own_zones_and_queues_and_is_refused_above(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """RedisBus on the agent's own connection publishes and reads its zones and ingest queues;
    on higher zones publish and read fail with NOPERM and write nothing."""
    bus = RedisBus(
        connect(acl.provision("a1", Zone.INTERNAL)), namespace=NS, maxlen=100, script_loader=client
    )
    own = [zone_topic(Zone.PUBLIC), zone_topic(Zone.INTERNAL)]
    own += [ingest_topic(Zone.PUBLIC, "a1"), ingest_topic(Zone.INTERNAL, "a1")]
    for topic in own:
        assert bus.publish(topic, "a1", [("m1", b"one"), ("m2", b"two")]) == [1, 2]
        backlog = bus.read(topic, 0, limit=10)
        assert [d.data for d in backlog.deliveries] == [b"one", b"two"]
        assert client.xlen(f"t:{topic}:stream") == 2
    assert bus.read(inbox_topic("a1"), 0, limit=10).deliveries == []
    above = [zone_topic(Zone.CONFIDENTIAL), zone_topic(Zone.SECRET)]
    above += [ingest_topic(Zone.CONFIDENTIAL, "a1"), ingest_topic(Zone.SECRET, "a1")]
    attempts: list[Attempt] = []
    for topic in above:
        attempts.append(lambda topic=topic: bus.publish(topic, "a1", [("m1", b"x")]))
        attempts.append(lambda topic=topic: bus.read(topic, 0, limit=10))
    assert sum(refused(attempt) for attempt in attempts) == len(attempts) == 8
    assert not client.keys("t:*:confidential:*")
    assert not client.keys("t:*:secret:*")


def test_no_agent_can_touch_another_agents_ingest_queue(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """Each agent queues its writes for the workers in a queue of its own: another agent of the
    same zone can neither read it, nor trim, delete or overwrite what it holds, nor append to
    it (directly or through the publishing script); the queue keeps its messages."""
    owner = RedisBus(connect(acl.provision("a1", Zone.INTERNAL)), namespace=NS, maxlen=100,
                     script_loader=client)  # fmt: skip
    queue = ingest_topic(Zone.INTERNAL, "a1")
    owner.publish(queue, "a1", [("m1", b"one"), ("m2", b"two")])
    other = connect(acl.provision("a2", Zone.SECRET))
    theirs = RedisBus(other, namespace=NS, maxlen=100, script_loader=client)
    stream = f"{NS}:{queue}:stream"
    attempts: list[Attempt] = [
        lambda: theirs.read(queue, 0, limit=10),
        lambda: theirs.publish(queue, "a2", [("m3", b"forged")]),
        lambda: theirs.trim_through(queue, 2),
        lambda: other.delete(stream),
        lambda: other.xadd(stream, {"d": b"forged"}),
        lambda: other.set(f"{NS}:{queue}:seq", "0"),
        lambda: other.execute_command("XDEL", stream, "1-0"),
        lambda: other.execute_command("XTRIM", stream, "MAXLEN", "0"),
    ]
    assert sum(refused(attempt) for attempt in attempts) == len(attempts)
    assert [d.data for d in owner.read(queue, 0, limit=10).deliveries] == [b"one", b"two"]


def test_users_made_under_older_rules_get_the_current_ones_once(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """A user provisioned by a version that gave every agent of a zone the zone's shared
    ingest queue (``~ns:ingest:<zone>:*``) could read and empty another agent's queue; the
    upgrade gives it this version's rules (password kept), once per namespace."""
    owner = RedisBus(connect(acl.provision("a1", Zone.INTERNAL)), namespace=NS, maxlen=100,
                     script_loader=client)  # fmt: skip
    queue = ingest_topic(Zone.INTERNAL, "a1")
    owner.publish(queue, "a1", [("m1", b"one")])
    credentials = acl.provision("a2", Zone.INTERNAL)
    client.execute_command("ACL", "SETUSER", f"{NS}:agent:a2", f"~{NS}:ingest:internal:*")
    old = connect(credentials)
    assert old.xrange(f"{NS}:{queue}:stream")  # what an old user could do
    agents = [AgentInfo(agent_id=a, clearance=Zone.INTERNAL) for a in ("a1", "a2")]

    assert acl.upgrade(lambda: agents) == 2
    assert acl.upgrade(lambda: agents) == 0

    again = connect(credentials)  # its connections were closed: it logs in again
    assert refused(lambda: again.xrange(f"{NS}:{queue}:stream"))
    assert refused(lambda: again.delete(f"{NS}:{queue}:stream"))
    own = RedisBus(again, namespace=NS, maxlen=100, script_loader=client)
    assert own.publish(ingest_topic(Zone.INTERNAL, "a2"), "a2", [("m1", b"mine")]) == [1]


def test_script_cannot_publish_on_a_higher_channel(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """publish.lua with the agent's own keys but a higher zone's channel: Redis checks the
    PUBLISH inside the script and refuses it; no subscriber of that channel hears anything."""
    bus = RedisBus(
        connect(acl.provision("a1", Zone.PUBLIC)), namespace=NS, maxlen=100, script_loader=client
    )
    listener = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    listener.subscribe("t:zone:secret")  # type: ignore[no-untyped-call]
    assert messages(listener, 1, timeout_s=0.3) == []
    keys = ["t:zone:public:stream", "t:zone:public:seq", "t:zone:public:epoch"]
    args = ["t:zone:secret", 100, "e", "t:zone:public:msg:", 60, "a1", "m1", b"forged"]
    client.script_load(bus._publish.script)  # as the pool's loader does
    with pytest.raises(redis.ResponseError, match="can't publish to the channel"):
        bus._run_publish(keys, args)
    assert messages(listener, 1, timeout_s=0.5) == []
    listener.close()  # type: ignore[no-untyped-call]


def test_granted_commands_are_exactly_what_the_connection_runs(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """Subscribe, catch up, publish (NOSCRIPT, the pool's SCRIPT LOAD, EVALSHA) and a
    get_message loop with health checks on db 1, as the agent: every granted command runs,
    none is denied (except the optional CLIENT SETINFO of redis-py, which it ignores)."""
    agent = connect(acl.provision("a1", Zone.INTERNAL), db=1, health_check_interval=1)
    client.script_flush()
    client.config_resetstat()
    bus = RedisBus(agent, namespace=NS, maxlen=100, script_loader=client)
    topics = [zone_topic(Zone.PUBLIC), zone_topic(Zone.INTERNAL), inbox_topic("a1")]
    pubsub = bus.subscribe(topics)
    for topic in topics:
        bus.read(topic, 0, limit=10)
    bus.publish(zone_topic(Zone.INTERNAL), "a1", [("m1", b"x")])
    bus.publish(ingest_topic(Zone.INTERNAL, "a1"), "a1", [("m1", b"x")])
    got = messages(pubsub, 1)
    # A damaged counter: the script starts the queue over in a new epoch (DEL).
    agent.set(f"{NS}:{ingest_topic(Zone.INTERNAL, 'a1')}:seq", "damaged")
    bus.publish(ingest_topic(Zone.INTERNAL, "a1"), "a1", [("m2", b"y")])
    time.sleep(1.1)  # past the health check interval: the next calls PING first
    messages(pubsub, 1, timeout_s=0.3)
    assert bus.read(zone_topic(Zone.INTERNAL), 0, limit=10).last_seq == 1
    pubsub.close()
    stats = client.info("commandstats")
    ran = {name.removeprefix("cmdstat_").split("|")[0] for name, s in stats.items() if s["calls"]}
    assert [m["data"].split(b" ", 3)[3] for m in got] == [b"x"]
    # AUTH needs no permission; CONFIG, INFO and SCRIPT (LOAD) are the admin's, here.
    assert ran - {"auth", "config", "info", "script"} == {c.split("|")[0] for c in AGENT_COMMANDS}
    denied = {e["object"] for e in client.acl_log() if e["username"] == "t:agent:a1"}
    assert denied <= {"client", "client|setinfo"}


def test_restrict_disconnects_and_lowers_at_once(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """After a revocation to PUBLIC, the agent's open connections (a subscription to the
    confidential channel among them) are closed, its password still works, and subscribing
    to the confidential channel again is refused."""
    creds = acl.provision("a1", Zone.CONFIDENTIAL)
    agent = connect(creds)
    pubsub = agent.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe("t:zone:confidential")  # type: ignore[no-untyped-call]
    assert agent.ping()
    assert client.publish("t:zone:confidential", b"before") == 1
    assert [m["data"] for m in messages(pubsub, 1)] == [b"before"]
    assert len(user_clients(client, creds.username)) == 2
    acl.restrict("a1", Zone.PUBLIC)
    assert user_clients(client, creds.username) == []
    assert client.publish("t:zone:confidential", b"after") == 0
    with pytest.raises(redis.ConnectionError):
        pubsub.get_message(timeout=1.0)
    with pytest.raises(redis.exceptions.NoPermissionError):  # redis-py re-subscribes
        pubsub.get_message(timeout=1.0)
    pubsub.close()  # type: ignore[no-untyped-call]
    again = connect(creds)
    assert refused(subscribing(again, "t:zone:confidential"))
    assert refused(lambda: again.get("t:zone:confidential:seq"))
    assert subscribing(again, "t:zone:public")() is not None
    acl.restrict("a1", Zone.SECRET)
    assert not refused(subscribing(again, "t:zone:secret"))
    acl.restrict("nobody", Zone.PUBLIC)  # no user (Redis restarted): left for the attach
    assert not acl.exists("nobody")


def test_provision_replaces_the_password_and_kills_old_logins(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """Provisioning again makes a new password: the old one no longer logs in, connections
    made with it are closed, and Redis holds only the new password's SHA-256."""
    first = acl.provision("a1", Zone.PUBLIC)
    old = connect(first)
    assert old.ping()
    second = acl.provision("a1", Zone.PUBLIC)
    assert first.password != second.password
    assert len(second.password.get_secret_value()) >= 43
    assert user_clients(client, second.username) == []
    with pytest.raises(redis.AuthenticationError):
        old.ping()
    assert connect(second).ping()
    digest = hashlib.sha256(second.password.get_secret_value().encode()).hexdigest()
    assert client.acl_getuser(second.username)["passwords"] == [digest]


def test_remove_deletes_the_user_and_its_logins(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """After remove, the open connection is gone and AUTH fails; a second remove says False."""
    creds = acl.provision("a1", Zone.SECRET)
    agent = connect(creds)
    assert agent.ping()
    assert acl.exists("a1")
    assert acl.remove("a1") is True
    assert user_clients(client, creds.username) == []
    assert not acl.exists("a1")
    with pytest.raises(redis.AuthenticationError):
        agent.ping()
    with pytest.raises(redis.AuthenticationError):
        connect(creds).ping()
    assert acl.remove("a1") is False


def test_namespaces_do_not_see_each_other(
    client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """The same agent id in two namespaces: two users, each refused the other's channels and
    keys, even in the zone both are cleared for."""
    one = connect(AgentAcl(client, namespace="n1").provision("a1", Zone.SECRET))
    two = connect(AgentAcl(client, namespace="n2").provision("a1", Zone.SECRET))
    assert username_of("n1", "a1") != username_of("n2", "a1")
    for ns in ["n1", "n2"]:
        RedisBus(client, namespace=ns, maxlen=10).publish("zone:public", "admin", [("m", b"x")])
    attempts: list[Attempt] = []
    for agent, other in [(one, "n2"), (two, "n1")]:
        attempts += [
            subscribing(agent, f"{other}:zone:public"),
            subscribing(agent, f"{other}:agent:a1:inbox"),
            lambda agent=agent, other=other: agent.xrange(f"{other}:zone:public:stream"),
            lambda agent=agent, other=other: agent.get(f"{other}:zone:public:seq"),
            lambda agent=agent, other=other: agent.xrange(f"{other}:agent:a1:inbox:stream"),
        ]
    assert sum(refused(attempt) for attempt in attempts) == len(attempts) == 10
    assert one.get("n1:zone:public:seq") == two.get("n2:zone:public:seq") == b"1"


def test_supported_only_for_an_acl_admin(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """The default user may manage ACLs; an agent's login (NOPERM) and an unreachable server
    make supported() False without raising."""
    assert acl.supported() is True
    agent = connect(acl.provision("a1", Zone.SECRET))
    assert AgentAcl(agent, namespace=NS).supported() is False
    unreachable = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    assert AgentAcl(unreachable, namespace=NS).supported() is False


def test_passwords_never_reach_the_logs(acl: AgentAcl) -> None:
    """Provision, restrict and remove log their events without the password."""
    with capture_logs() as logs:
        creds = acl.provision("a1", Zone.INTERNAL)
        acl.restrict("a1", Zone.PUBLIC)
        acl.remove("a1")
    secret = creds.password.get_secret_value()
    assert [e["event"] for e in logs] == [
        "acl_user_provisioned", "acl_user_restricted", "acl_user_removed"
    ]  # fmt: skip
    assert all(secret not in repr(value) for entry in logs for value in entry.values())


def test_an_agent_runs_no_script_of_its_own(
    acl: AgentAcl, client: redis.Redis, connect: Callable[..., redis.Redis]
) -> None:
    """An agent's user may not load or send a script (one that never ends would block Redis for
    everyone): EVAL, SCRIPT LOAD and SCRIPT FLUSH are refused, the broker logs each, and nothing
    ran. It runs only what the pool loaded, by digest."""
    agent = connect(acl.provision("a1", Zone.INTERNAL))
    endless = "while true do end"
    attempts: list[Callable[[], object]] = [
        lambda: agent.eval(endless, 0),
        lambda: agent.script_load(endless),
        lambda: agent.execute_command("SCRIPT", "FLUSH"),
    ]
    for attempt in attempts:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    ATTEMPTS["direct Redis with agent credentials"] += len(attempts)
    assert client.script_exists(hashlib.sha1(endless.encode()).hexdigest()) == [False]
    denied = [e for e in client.acl_log() if e["username"] == "t:agent:a1"]
    assert len(denied) >= len(attempts)
    RedisBus(agent, namespace=NS, maxlen=10, script_loader=client).publish(
        zone_topic(Zone.INTERNAL), "a1", [("m1", b"x")]
    )
    assert client.xlen(f"{NS}:{zone_topic(Zone.INTERNAL)}:stream") == 1

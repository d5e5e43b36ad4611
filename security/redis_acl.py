"""Broker-enforced zones: one Redis ACL user per agent, allowed only its zones and its own keys.

An agent's data-plane connection (its Receiver subscribing and reading streams, its Sender
running ``publish.lua`` on zone topics and ingest queues) logs in as the user
:func:`username_of` names. Under the namespace ``ns``, an agent ``<id>`` cleared for zone ``z``
may use, for every zone ``y <= z``:

- the channel ``ns:zone:<y>`` and the keys ``ns:zone:<y>:*`` (stream, seq, epoch, msg ids);
- the keys ``ns:ingest:<y>:agent:<id>:*`` (its own ingest queue in the zone; it has no channel:
  no agent may read, trim or delete what another queued for the workers);
- when it holds compartments, the channels and keys of the zone's compartment topics whose mask
  is a subset of what it holds: one glob each, ``ns:comp:<y>:<pattern>`` and
  ``ns:comp:<y>:<pattern>:*`` (:func:`hivemem.pool.compartments.mask_pattern`);

and, of its own: the channel ``ns:agent:<id>:inbox`` and the keys ``ns:agent:<id>:*`` (its inbox
and its heartbeat ``ns:agent:<id>:alive``). Agent ids and namespaces hold no ``:`` and no glob
character, so no pattern of one agent or zone covers another's keys. The commands are exactly
:data:`AGENT_COMMANDS` (measured by running the bus with the restricted user); everything
else is refused with NOPERM. An agent that holds compartments may also PSUBSCRIBE
(:data:`COMPARTMENT_COMMANDS`): Redis checks a pattern a client subscribes to *literally*
against the user's channel patterns, so it may subscribe to its own compartment globs and to no
wider one.
Registry reads, audit writes and hand-overs to other agents' inboxes go through the pool's
admin connection.

Redis 6.2 has no read/write split of key permissions (``%R~``/``%W~``, 7.0): an agent may write
as well as read the keys of its zones (its own zones' streams, never a higher zone's). What it
writes there is still checked by the receivers (signatures, zones of envelopes).

Passwords: :meth:`AgentAcl.provision` makes a random one (``secrets.token_urlsafe(32)``), sends
Redis only its SHA-256 (``#<hex>``: the plaintext never travels to Redis) and returns it once in
:class:`AgentCredentials`; the caller stores it. Nothing here logs it.
Changing a user then kills all its open connections (``CLIENT KILL USER``): logins made with a
replaced password end, and every connection starts over under the new permissions. (Redis
6.2.14 and 7.0 already drop, on ``ACL SETUSER``, the subscribers of a channel no longer allowed;
the kill does not rely on it.) Admin connection errors raise
PoolUnavailable; an admin not allowed to manage ACL users gets redis' NoPermissionError
(:meth:`AgentAcl.supported` says so beforehand, without raising).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import redis
import structlog
from pydantic import SecretStr

from hivemem.pool.adapters.redis_bus import compartment_glob
from hivemem.pool.adapters.redis_errors import redis_errors
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import checked_compartments
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.ids import check_agent_id
from hivemem.security.audit import check_namespace

log = structlog.get_logger(__name__)

#: The commands of an agent's data-plane connection, each for a measured reason.
AGENT_COMMANDS: tuple[str, ...] = (
    "subscribe",  # Receiver: its zones' channels and inbox (redis-py re-subscribes on reconnect)
    "ping",  # redis-py health checks (health_check_interval), in pub/sub mode too
    "select",  # redis-py on connect, when the URL names a db other than 0
    "multi",  # RedisBus.read: one transaction of GET, GET, XRANGE
    "exec",
    "get",  # RedisBus.read, and publish.lua (epoch, dedupe ids)
    "xrange",  # RedisBus.read
    # publish.lua, by its digest. Not EVAL nor SCRIPT LOAD: an agent runs only the scripts
    # the pool loaded (RedisBus's script_loader), so it cannot run one that never ends.
    "evalsha",
    "set",  # publish.lua (epoch, dedupe ids); checked per command inside the script
    "incr",  # publish.lua (seq)
    "xadd",  # publish.lua (stream)
    "publish",  # publish.lua (live fan-out); checked against the channel permissions
    # publish.lua (a damaged topic starts a new epoch). No new power: XADD's MAXLEN, granted
    # above, can empty a stream anyway.
    "del",
    "time",  # publish.lua (when each entry was appended)
)
#: Added for an agent that holds compartments: its Receiver subscribes to their glob (checked
#: literally, see above).
COMPARTMENT_COMMANDS: tuple[str, ...] = ("psubscribe",)
_PASSWORD_BYTES = 32
_SCHEMES = ("redis", "rediss")
#: Query parameters of a base URL that would carry other credentials.
_CREDENTIAL_PARAMS = frozenset({"username", "password"})


@dataclass(frozen=True)
class AgentCredentials:
    """An agent's Redis login. ``repr`` hides the password (a pydantic SecretStr)."""

    username: str
    password: SecretStr

    def url(self, base_url: str) -> str:
        """``base_url`` (``redis://`` or ``rediss://``) logging in with these credentials: host,
        port, db path and other query parameters kept, credentials percent-encoded, any
        credentials of ``base_url`` replaced. Raises InvalidInput for another scheme or a URL
        without a host."""
        parts = urlsplit(base_url)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise InvalidInput(
                "base_url must be a redis:// or rediss:// URL with a host", field="base_url"
            )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = f":{parts.port}" if parts.port is not None else ""
        login = (
            f"{quote(self.username, safe='')}:{quote(self.password.get_secret_value(), safe='')}"
        )
        query = urlencode(
            [
                (k, v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
                if k not in _CREDENTIAL_PARAMS
            ]
        )
        return urlunsplit((parts.scheme, f"{login}@{host}{port}", parts.path, query, ""))


def username_of(namespace: str, agent_id: str) -> str:
    """The ACL user of ``agent_id`` in ``namespace``: ``<namespace>:agent:<agent_id>``. Neither
    part may hold ``:``, so two (namespace, agent) pairs never share a user. Raises
    InvalidIdentifier."""
    return f"{check_namespace(namespace)}:agent:{check_agent_id(agent_id)}"


def agent_rules(
    namespace: str, agent_id: str, clearance: Zone, compartments: Sequence[str] = ()
) -> list[str]:
    """The ``ACL SETUSER`` rules of an agent cleared for ``clearance`` and holding
    ``compartments`` (no password: the caller adds it). Starts with ``reset``, so applying them
    replaces whatever the user had. Raises InvalidIdentifier for a bad namespace or agent id,
    InvalidInput for an unknown zone or compartment."""
    ns = check_namespace(namespace)
    agent = check_agent_id(agent_id)
    top = checked_zone(clearance)
    held = checked_compartments(compartments)
    cleared = [zone for zone in Zone if zone <= top]
    zones = [zone.value for zone in cleared]
    globs = [glob for zone in cleared if (glob := compartment_glob(zone, held)) is not None]
    return [
        "reset",
        "on",
        "resetchannels",
        *(f"&{ns}:zone:{zone}" for zone in zones),
        *(f"&{ns}:{glob}" for glob in globs),
        f"&{ns}:agent:{agent}:inbox",
        *(f"~{ns}:zone:{zone}:*" for zone in zones),
        *(f"~{ns}:{glob}:*" for glob in globs),
        *(f"~{ns}:ingest:{zone}:agent:{agent}:*" for zone in zones),
        f"~{ns}:agent:{agent}:*",
        "-@all",
        *(f"+{command}" for command in AGENT_COMMANDS),
        *(f"+{command}" for command in (COMPARTMENT_COMMANDS if globs else ())),
    ]


#: The version of :func:`agent_rules`: users made under an older one get the current rules
#: once per namespace (:meth:`AgentAcl.upgrade`). 2 (2026-11-22): each agent its own ingest
#: queues, where 1 gave every agent of a zone its shared queue. 3 (2026-11-23): ``time``, which
#: the publishing script calls to stamp stream entries (users of 2 could not publish).
RULES_VERSION = "3"


def _is_no_such_user(error: redis.ResponseError) -> bool:
    return "no such user" in str(error).lower()


class AgentAcl:
    """Provision, restrict and remove the agents' ACL users through an admin connection that may
    run ``ACL SETUSER``, ``ACL DELUSER``, ``ACL GETUSER`` and ``CLIENT KILL``. Calls for the
    same agent must not run concurrently (the pool serialises them per agent)."""

    def __init__(self, admin: redis.Redis, *, namespace: str) -> None:
        self.admin = admin
        self.namespace = check_namespace(namespace)

    def provision(
        self,
        agent_id: str,
        clearance: Zone,
        *,
        compartments: Sequence[str] = (),
        password: SecretStr | None = None,
    ) -> AgentCredentials:
        """Create or replace the agent's user with a fresh password (or ``password``: to
        restore a user a restarted Redis lost, its clients keeping theirs) and the rules of
        ``clearance`` and ``compartments``, then disconnect whatever was connected as it.
        Returns the credentials (the only time the password is shown). Raises
        InvalidIdentifier/InvalidInput before any Redis call."""
        rules = agent_rules(self.namespace, agent_id, clearance, compartments)
        name = username_of(self.namespace, agent_id)
        password_text = (
            secrets.token_urlsafe(_PASSWORD_BYTES)
            if password is None
            else password.get_secret_value()
        )
        password = SecretStr(password_text)
        digest = hashlib.sha256(password_text.encode()).hexdigest()
        self._setuser(name, [*rules, f"#{digest}"])
        killed = self._kill(name)
        log.info(
            "acl_user_provisioned",
            agent_id=agent_id,
            username=name,
            clearance=Zone(clearance).value,
            compartments=list(compartments),
            connections_killed=killed,
        )
        return AgentCredentials(name, password)

    def restrict(self, agent_id: str, clearance: Zone, *, compartments: Sequence[str] = ()) -> None:
        """Give the agent's user the permissions of ``clearance`` and ``compartments``, keeping
        its password, and disconnect its connections (they log in again under the new
        permissions). An agent without a user (a restarted Redis lost the ACL users: they live
        in its memory) is left so: attaching provisions it afresh, under the registry's entry.
        InvalidIdentifier/InvalidInput as above."""
        rules = agent_rules(self.namespace, agent_id, clearance, compartments)
        name = username_of(self.namespace, agent_id)
        if not self.exists(agent_id):
            log.info("acl_user_missing", agent_id=agent_id, username=name)
            return
        # Not ``reset`` (it would drop the password): clear keys, channels and commands instead.
        self._setuser(name, ["resetkeys", *rules[1:]])
        killed = self._kill(name)
        log.info(
            "acl_user_restricted",
            agent_id=agent_id,
            username=name,
            clearance=Zone(clearance).value,
            compartments=list(compartments),
            connections_killed=killed,
        )

    def upgrade(self, agents: Callable[[], Iterable[AgentInfo]]) -> int:
        """Give the users of ``agents()`` (every registered agent) the rules of this version,
        once per namespace: users keep the rules they were made with, and those of an older
        version may reach what this one closes. Returns how many users changed (0 when done
        before). Raises PoolUnavailable when Redis cannot be reached."""
        marker = f"{self.namespace}:registry:acl_rules"
        with redis_errors():
            if self.admin.get(marker) == RULES_VERSION.encode():
                return 0
        changed = 0
        for info in agents():  # listed only when the rules changed: not at every connect
            if self.exists(info.agent_id):
                self.restrict(info.agent_id, info.clearance, compartments=info.compartments)
                changed += 1
        with redis_errors():
            self.admin.set(marker, RULES_VERSION)
        log.info("acl_users_upgraded", namespace=self.namespace, users=changed,
                 rules=RULES_VERSION)  # fmt: skip
        return changed

    def remove(self, agent_id: str) -> bool:
        """Disconnect the agent's connections and delete its user; False when it had none."""
        name = username_of(self.namespace, agent_id)
        killed = self._kill(name)
        with redis_errors():
            removed = bool(self.admin.acl_deluser(name))
        if removed:
            log.info(
                "acl_user_removed", agent_id=agent_id, username=name, connections_killed=killed
            )
        return removed

    def exists(self, agent_id: str) -> bool:
        """True when the agent has an ACL user."""
        name = username_of(self.namespace, agent_id)
        with redis_errors():
            found: Any = self.admin.acl_getuser(name)
        return found is not None

    def supported(self) -> bool:
        """Whether the admin connection may manage ACL users (``ACL WHOAMI``, then ``ACL
        GETUSER`` of itself). False, logged, on NOPERM, an unknown command (Redis < 6) or an
        unreachable server; never raises."""
        try:
            whoami: Any = self.admin.acl_whoami()
            self.admin.acl_getuser(whoami.decode() if isinstance(whoami, bytes) else whoami)
        except redis.RedisError as error:
            log.warning("acl_unsupported", namespace=self.namespace, error=type(error).__name__)
            return False
        return True

    def _setuser(self, name: str, rules: list[str]) -> None:
        with redis_errors():
            # redis-py's execute_command is untyped; acl_setuser cannot take a rule list as is.
            self.admin.execute_command("ACL SETUSER", name, *rules)  # type: ignore[no-untyped-call]

    def _kill(self, name: str) -> int:
        """Close every connection logged in as ``name``; 0 when there is no such user."""
        try:
            with redis_errors():
                killed: Any = self.admin.client_kill_filter(user=name)
                return int(killed)
        except redis.ResponseError as error:
            if _is_no_such_user(error):
                return 0
            raise

"""Tags, entities and metadata as a store keeps them: keyed tokens a filter can match.

With security on, a record's tags, entities and metadata values are sealed with its content
(:mod:`hivemem.security.content_seal`), and the store's payload holds, in their place, one token
per value: ``hmt:`` + the hex of a 16-byte keyed BLAKE2b MAC of ``field NUL canonical value``
under ``K_user``, itself the keyed BLAKE2b of ``"hivemem label tokens v1"`` under the user's
subject secret (never cached apart from it). Equal values of one user
and field give equal tokens, so equality filters (``contains``, ``in``, ``nin``, ``eq``, ``ne``)
still run in the engine: :meth:`LabelTokens.rewrite` turns a filter's values into the tokens of
each user the filter can reach. Numbers are canonical (``2``, ``2.0`` and, as in Python, ``True``
and ``1`` give one token); ``None`` and empty lists stay as they are, so "is unset" filters work.

What tokens cannot serve: order (``gt``, ``lt``...) and substrings (``contains`` with a string)
on metadata. Those filters raise InvalidFilter, unless the key is listed in
``security.clear_metadata_keys``, whose values stay in clear in the payload (and are searchable
in full, leaking what they hold). Metadata keys themselves stay in clear.

Shredding a user's subject secret (a forget) leaves any token that lingers in a store's files
unlinkable to its value: ``K_user`` cannot be had again. A record sealed without its subject
(Redis away at its user's first write) keeps no tokens: in filters it behaves as a record with no
labels and no sealed metadata until a re-seal gives it tokens.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable

import structlog

from hivemem.pool.errors import InvalidFilter, PoolUnavailable
from hivemem.pool.filters import And, Cond, Expr, Not, Op, Or, conditions
from hivemem.pool.records import MemoryRecord, MetadataValue
from hivemem.security.keyring import ZoneKeyring

log = structlog.get_logger(__name__)

TOKEN_PREFIX = "hmt:"  # noqa: S105 (a prefix, not a secret)
_TOKEN_BYTES = 16
_TOKEN_LENGTH = len(TOKEN_PREFIX) + 2 * _TOKEN_BYTES  # hex
_KEY_LABEL = b"hivemem label tokens v1"
#: The label fields kept as tokens (a count by them would count tokens).
SEALED_LABELS = ("tags", "entities")
_METADATA = "metadata."
_ORDER_OPS = frozenset({"gt", "gte", "lt", "lte"})
_USER = "scope.user_id"


#: How long (seconds) a rewritten filter that names its users, each with a key, is used again
#: for the same filter object (searches pass one filter object repeatedly): a shred reaches
#: filters within it, as it reaches the keyring's cache (and what a shredded key's tokens still
#: match cannot be opened).
_REWRITE_TTL_S = 1.0
_REWRITES_MAX = 256


class UserKey:
    """A user's ``K_user``, ready to make tokens (made from their subject secret each time
    it is asked for, never cached apart from it)."""

    __slots__ = ("_mac",)

    def __init__(self, secret: bytes) -> None:
        user_key = hashlib.blake2b(_KEY_LABEL, key=secret, digest_size=32).digest()
        self._mac = hashlib.blake2b(key=user_key, digest_size=_TOKEN_BYTES)

    def token(self, field: bytes, value: str | int | float) -> str:
        """The token of ``value`` in ``field`` (bytes ending in NUL)."""
        mac = self._mac.copy()  # the keyed state: cheaper than keying again
        mac.update(field + _canonical(value))
        return TOKEN_PREFIX + mac.hexdigest()


def _canonical(value: str | int | float) -> bytes:
    """One form per value a filter treats as equal: text, or a number (bools are 0 and 1,
    integral floats are integers)."""
    if isinstance(value, str):
        return b"s" + value.encode()
    if isinstance(value, float):
        if value.is_integer():
            return b"n" + str(int(value)).encode()
        return b"f" + repr(value).encode()
    return b"n" + str(int(value)).encode()


def has_labels(record: MemoryRecord) -> bool:
    """Whether ``record`` holds anything sealed with its content (tags, entities, metadata)."""
    return bool(record.tags or record.entities or record.metadata)


def check_facet(field: str) -> None:
    """Raise InvalidFilter for a count by a field kept as tokens (it would count tokens)."""
    if field in SEALED_LABELS:
        raise InvalidFilter(f"cannot count by {field}: it is sealed", field="field")


def is_token(value: object) -> bool:
    """Whether ``value`` has the form of a token."""
    return isinstance(value, str) and len(value) == _TOKEN_LENGTH and value.startswith(TOKEN_PREFIX)


class LabelTokens:
    """Tokens of one namespace's users (their subject secrets in ``keyring``)."""

    def __init__(self, keyring: ZoneKeyring, clear_metadata_keys: Iterable[str] = ()) -> None:
        self.keyring = keyring
        self.clear_metadata_keys = frozenset(clear_metadata_keys)
        self._lock = threading.Lock()
        #: id(filter) -> (the filter, its rewrite, when that expires, the keyring's
        #: generation then): see _REWRITE_TTL_S.
        self._rewrites: dict[int, tuple[And, And, float, int]] = {}

    def key(self, user: str, *, create: bool = True) -> UserKey | None:
        """``K_user``; None when the user has no subject secret and ``create`` is false.
        Raises PoolUnavailable when Redis cannot say."""
        secret = self.keyring.subject_secret(user, create=create)
        return None if secret is None else UserKey(secret)

    @staticmethod
    def token(key: UserKey, field: str, value: str | int | float) -> str:
        """The token of ``value`` in ``field`` (``tags``, ``entities``, ``metadata.<key>``)."""
        return key.token(field.encode() + b"\0", value)

    # -- records ------------------------------------------------------------------------------

    def tokenized(self, record: MemoryRecord, key: UserKey | None) -> dict[str, object]:
        """The fields of ``record`` as stored: its labels and sealed metadata as tokens under
        ``key``; with no key (sealed without its subject), without them. Empty when it has
        none."""
        if not has_labels(record):
            return {}
        metadata: dict[str, MetadataValue] = {}
        for name, value in record.metadata.items():
            if name in self.clear_metadata_keys or value is None:
                metadata[name] = value
            elif key is not None:
                field = (_METADATA + name).encode() + b"\0"
                if isinstance(value, list):
                    metadata[name] = [key.token(field, v) for v in value]
                else:
                    metadata[name] = key.token(field, value)
        if key is None:
            return {"tags": [], "entities": [], "metadata": metadata}
        return {
            "tags": [key.token(b"tags\0", t) for t in record.tags],
            "entities": [key.token(b"entities\0", e) for e in record.entities],
            "metadata": metadata,
        }

    def labels_stale(self, record: MemoryRecord) -> bool:
        """Whether ``record`` as stored keeps a label or metadata value in another form than
        this layer writes: a label or sealed metadata value in clear (written before labels
        were sealed, or while its key was in ``clear_metadata_keys``), or a token under a key
        now listed there. A re-seal writes it anew."""
        if any(not is_token(v) for v in (*record.tags, *record.entities)):
            return True
        for name, value in record.metadata.items():
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            if name in self.clear_metadata_keys:
                if any(is_token(v) for v in values):
                    return True
            elif any(not is_token(v) for v in values):
                return True
        return False

    # -- filters ------------------------------------------------------------------------------

    def sealed(self, cond: Cond) -> bool:
        """Whether ``cond`` reads a field kept as tokens."""
        if cond.field in SEALED_LABELS:
            return True
        return cond.field.startswith(_METADATA) and (
            cond.field.removeprefix(_METADATA) not in self.clear_metadata_keys
        )

    def rewrite(self, where: And, users_of: Callable[[And], Iterable[str]]) -> And:
        """``where`` with each condition on a sealed field matching the tokens instead, for
        each user the filter can reach: those it names at its top level (``scope.user_id``
        ``eq``/``in``), else those ``users_of`` finds among the records matching its other
        top-level conditions. Raises InvalidFilter, before anything runs, for an order or
        substring condition on sealed metadata."""
        sealed = [c for c in conditions(where) if self.sealed(c)]
        if not sealed:
            return where
        for cond in sealed:
            _check_tokenizable(cond)
        named = _named_users(where)
        generation = self.keyring.generation
        if named is not None:
            with self._lock:
                known = self._rewrites.get(id(where))
            if (
                known is not None
                and known[0] is where
                and known[2] > time.monotonic()
                and known[3] == generation  # no shred here since
            ):
                return known[1]
            users = named
        else:
            rest = And(all=[e for e in where.all if not any(self.sealed(c) for c in conditions(e))])
            users = sorted(set(users_of(rest)))
        needs_keys = any(not (c.op in ("eq", "ne") and c.value is None) for c in sealed)
        keys, unavailable = self._keys(users) if needs_keys else ({}, [])
        # With one user reached, its condition needs no user test beside it.
        bare = len(users) == 1
        parts = [self._expr(e, keys, bare) for e in where.all]
        if unavailable:  # none of their records, whatever the conditions' polarity
            parts.append(Cond.model_construct(field=_USER, op="nin", value=unavailable))
        rewritten = And.model_construct(all=parts)
        # Kept only when every user had a key: a user's first write makes theirs.
        if named is not None and (len(keys) == len(users) or not needs_keys):
            with self._lock:
                if len(self._rewrites) >= _REWRITES_MAX:
                    self._rewrites.clear()
                expires = time.monotonic() + _REWRITE_TTL_S
                self._rewrites[id(where)] = (where, rewritten, expires, generation)
        return rewritten

    def _keys(self, users: Iterable[str]) -> tuple[dict[str, UserKey], list[str]]:
        """The users' keys (a user with no subject secret has none), and the users whose secret
        cannot be had: Redis cannot be reached and this process holds none (logged). After one
        failed lookup the keyring does not ask Redis again for a moment (KeyStore.down): one
        timeout, not one per user."""
        keys: dict[str, UserKey] = {}
        unavailable: list[str] = []
        for user in users:
            try:
                key = self.key(user, create=False)
            except PoolUnavailable:
                unavailable.append(user)
                continue
            if key is not None:
                keys[user] = key
        if unavailable:
            log.warning("label_tokens_unavailable", users=len(unavailable))
        return keys, unavailable

    def _expr(self, expr: Expr, keys: dict[str, UserKey], bare: bool) -> Expr:
        if isinstance(expr, Cond):
            return self._cond(expr, keys, bare) if self.sealed(expr) else expr
        # Built without validation: the tree was validated, and tokens are valid values.
        if isinstance(expr, And):
            return And.model_construct(all=[self._expr(e, keys, bare) for e in expr.all])
        if isinstance(expr, Or):
            return Or.model_construct(any=[self._expr(e, keys, bare) for e in expr.any])
        return Not.model_construct(expr=self._expr(expr.expr, keys, bare))

    def _cond(self, cond: Cond, keys: dict[str, UserKey], bare: bool) -> Expr:
        if cond.op in ("ne", "nin"):
            op: Op = "eq" if cond.op == "ne" else "in"
            positive = Cond.model_construct(field=cond.field, op=op, value=cond.value)
            return Not.model_construct(expr=self._cond(positive, keys, bare))
        if cond.op == "eq" and cond.value is None:
            return cond  # "is unset": None and empty lists are kept as they are
        per_user = [(u, self._tokenized_cond(cond, k)) for u, k in keys.items()]
        if not per_user:
            return _NOTHING
        if bare:
            return per_user[0][1]
        return Or.model_construct(
            any=[
                And.model_construct(all=[Cond.model_construct(field=_USER, op="eq", value=u), c])
                for u, c in per_user
            ]
        )

    def _tokenized_cond(self, cond: Cond, key: UserKey) -> Cond:
        field = cond.field.encode() + b"\0"

        def one(value: object) -> object:
            if value is None:
                return None
            return key.token(field, value)  # type: ignore[arg-type]

        if cond.op == "in":
            value: object = [one(v) for v in cond.value]
        else:  # eq, and contains (membership, with an integer on metadata)
            value = one(cond.value)
        # Membership in list metadata: eq matches any element (no substring can be meant here).
        op: Op = "eq" if cond.op == "contains" and cond.field.startswith(_METADATA) else cond.op
        return Cond.model_construct(field=cond.field, op=op, value=value)


#: A filter no record matches (``And`` of nothing holds for every record).
_NOTHING = Not(expr=And(all=[]))


def _check_tokenizable(cond: Cond) -> None:
    if not cond.field.startswith(_METADATA):
        return
    if cond.op in _ORDER_OPS or (cond.op == "contains" and isinstance(cond.value, str)):
        raise InvalidFilter(
            f"{cond.field} is sealed: it takes eq, ne, in, nin (and contains with an integer);"
            f" list the key in security.clear_metadata_keys for {cond.op} filters",
            field="where.op",
        )


def _named_users(where: And) -> list[str] | None:
    """The users ``where``'s top level restricts records to (None: it does not), from
    ``scope.user_id`` ``eq`` or ``in`` conditions, in nested ``And`` nodes too."""
    found: set[str] | None = None
    pending: list[Expr] = list(where.all)
    while pending:
        expr = pending.pop()
        if isinstance(expr, And):
            pending.extend(expr.all)
        elif isinstance(expr, Cond) and expr.field == _USER and expr.op in ("eq", "in"):
            named = set(expr.value if expr.op == "in" else [expr.value])
            found = named if found is None else found & named
    return None if found is None else sorted(v for v in found if v is not None)

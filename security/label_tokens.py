"""Tags, entities and metadata as a store keeps them: keyed tokens a filter can match.

With security on, a record's tags, entities and metadata values are sealed with its content
(:mod:`hivemem.security.content_seal`), and the store's payload holds, in their place, one token
per value: ``hmt:`` + base64url of the first 16 bytes of
``HMAC-SHA256(K_user, field NUL canonical value)``, where ``K_user`` is
``HMAC-SHA256(the user's subject secret, "hivemem label tokens v1")``. Equal values of one user
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
(Redis away at its user's first write) keeps no tokens: label filters do not match it until a
re-seal gives it some.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator

from hivemem.pool.errors import InvalidFilter
from hivemem.pool.filters import And, Cond, Expr, Not, Or
from hivemem.pool.records import MemoryRecord, MetadataValue
from hivemem.security.keyring import ZoneKeyring

TOKEN_PREFIX = "hmt:"  # noqa: S105 (a prefix, not a secret)
_TOKEN_BYTES = 16
_TOKEN_LENGTH = len(TOKEN_PREFIX) + 22  # base64url of 16 bytes, unpadded
_KEY_LABEL = b"hivemem label tokens v1"
#: The label fields kept as tokens (a count by them would count tokens).
SEALED_LABELS = ("tags", "entities")
_METADATA = "metadata."
_ORDER_OPS = frozenset({"gt", "gte", "lt", "lte"})
_USER = "scope.user_id"


@functools.lru_cache(maxsize=4096)
def _user_key(secret: bytes) -> bytes:
    return hmac.digest(secret, _KEY_LABEL, hashlib.sha256)


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


def is_token(value: object) -> bool:
    """Whether ``value`` has the form of a token."""
    return isinstance(value, str) and len(value) == _TOKEN_LENGTH and value.startswith(TOKEN_PREFIX)


class LabelTokens:
    """Tokens of one namespace's users (their subject secrets in ``keyring``)."""

    def __init__(self, keyring: ZoneKeyring, clear_metadata_keys: Iterable[str] = ()) -> None:
        self._keyring = keyring
        self.clear_metadata_keys = frozenset(clear_metadata_keys)

    def key(self, user: str, *, create: bool = True) -> bytes | None:
        """``K_user``; None when the user has no subject secret and ``create`` is false."""
        secret = self._keyring.subject_secret(user, create=create)
        return None if secret is None else _user_key(secret)

    @staticmethod
    def token(key: bytes, field: str, value: str | int | float) -> str:
        mac = hmac.digest(key, field.encode() + b"\0" + _canonical(value), hashlib.sha256)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(mac[:_TOKEN_BYTES]).decode().rstrip("=")

    # -- records ------------------------------------------------------------------------------

    def has_labels(self, record: MemoryRecord) -> bool:
        """Whether ``record`` holds anything this layer seals (tags, entities, metadata)."""
        return bool(record.tags or record.entities or record.metadata)

    def tokenized(self, record: MemoryRecord, key: bytes | None) -> MemoryRecord:
        """``record`` with its labels and sealed metadata as tokens under ``key``; with no key
        (sealed without its subject), without them."""
        if not self.has_labels(record):
            return record
        metadata: dict[str, MetadataValue] = {}
        for name, value in record.metadata.items():
            if name in self.clear_metadata_keys:
                metadata[name] = value
            elif key is not None:
                metadata[name] = self._metadata_tokens(key, name, value)
        tags = [] if key is None else [self.token(key, "tags", t) for t in record.tags]
        entities = [] if key is None else [self.token(key, "entities", e) for e in record.entities]
        return record.model_copy(update={"tags": tags, "entities": entities, "metadata": metadata})

    def _metadata_tokens(self, key: bytes, name: str, value: MetadataValue) -> MetadataValue:
        field = _METADATA + name
        if value is None:
            return None
        if isinstance(value, list):
            return [self.token(key, field, v) for v in value]
        return self.token(key, field, value)

    def in_clear(self, record: MemoryRecord) -> bool:
        """Whether ``record`` as stored holds a label or sealed metadata value that is not a
        token (written before labels were sealed): a re-seal gives it tokens."""
        if any(not is_token(v) for v in (*record.tags, *record.entities)):
            return True
        for name, value in record.metadata.items():
            if name in self.clear_metadata_keys or value is None:
                continue
            if any(not is_token(v) for v in (value if isinstance(value, list) else [value])):
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
        if not any(self.sealed(c) for c in _conds(where)):
            return where
        for cond in _conds(where):
            if self.sealed(cond):
                _check_tokenizable(cond)
        users = _named_users(where)
        if users is None:
            rest = And(all=[e for e in where.all if not any(self.sealed(c) for c in _conds(e))])
            users = sorted(set(users_of(rest)))
        keys = {u: k for u in users if (k := self.key(u, create=False)) is not None}
        # With one user named, its condition needs no user test beside it.
        bare = len(users) == 1
        return And(all=[self._expr(e, keys, bare) for e in where.all])

    def _expr(self, expr: Expr, keys: dict[str, bytes], bare: bool) -> Expr:
        if isinstance(expr, Cond):
            return self._cond(expr, keys, bare) if self.sealed(expr) else expr
        if isinstance(expr, And):
            return And(all=[self._expr(e, keys, bare) for e in expr.all])
        if isinstance(expr, Or):
            return Or(any=[self._expr(e, keys, bare) for e in expr.any])
        return Not(expr=self._expr(expr.expr, keys, bare))

    def _cond(self, cond: Cond, keys: dict[str, bytes], bare: bool) -> Expr:
        if cond.op in ("ne", "nin"):
            positive = Cond(
                field=cond.field, op="eq" if cond.op == "ne" else "in", value=cond.value
            )
            return Not(expr=self._cond(positive, keys, bare))
        if cond.op == "eq" and cond.value is None:
            return cond  # "is unset": None and empty lists are kept as they are
        per_user = [(u, self._tokenized_cond(cond, k)) for u, k in keys.items()]
        if not per_user:
            return _NOTHING
        if bare:
            return per_user[0][1]
        return Or(any=[And(all=[Cond(field=_USER, op="eq", value=u), c]) for u, c in per_user])

    def _tokenized_cond(self, cond: Cond, key: bytes) -> Cond:
        def one(value: object) -> object:
            if value is None:
                return None
            return self.token(key, cond.field, value)  # type: ignore[arg-type]

        if cond.op == "in":
            value: object = [one(v) for v in cond.value]
        else:  # eq, and contains (membership, with an integer on metadata)
            value = one(cond.value)
        # Membership in list metadata: eq matches any element (no substring can be meant here).
        op = "eq" if cond.op == "contains" and cond.field.startswith(_METADATA) else cond.op
        return Cond(field=cond.field, op=op, value=value)


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


def _conds(expr: Expr) -> Iterator[Cond]:
    if isinstance(expr, Cond):
        yield expr
    elif isinstance(expr, And):
        for e in expr.all:
            yield from _conds(e)
    elif isinstance(expr, Or):
        for e in expr.any:
            yield from _conds(e)
    else:
        yield from _conds(expr.expr)


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

"""Translation of hivemem filter trees (:mod:`hivemem.pool.filters`) into qdrant-client filters.

The twin of :mod:`hivemem.pool.adapters.edge_filters`, for a Qdrant server (or qdrant-client's
local engine): the same payload layout (:mod:`hivemem.pool.adapters.edge_codec`), hence the same
conditions, built from ``qdrant_client.models``. The tree was validated when it was built; field
names are checked once more here, against the closed set of payload keys, before they become
payload paths, and scope ids before they become match values (ids and keys are validated twice).
"""

from __future__ import annotations

from datetime import datetime

from qdrant_client import models

from hivemem.pool.adapters.edge_codec import (
    KIND_RECORD,
    LIST_KEYS,
    METADATA_PREFIX,
)
from hivemem.pool.adapters.payload_rules import (
    big_number,
    check_big_numbers,
    checked_values,
    contains_by_value,
    payload_key,
    plain,
    text,
)
from hivemem.pool.filters import TIME_FIELDS, And, Cond, Expr, Or


def _field(key: str, value: object) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=plain(value)))


def _match(key: str, value: object) -> models.Condition:
    if value is None:
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))
    if isinstance(value, datetime):
        return models.FieldCondition(key=key, range=models.DatetimeRange(gte=value, lte=value))
    if isinstance(value, int | float):
        return _number(key, value)
    return _field(key, value)


def _number(key: str, value: int | float) -> models.Condition:
    big = big_number(value)
    if big is None:
        # A range matches 2 and 2.0 alike, and True, 1 and 1.0 (booleans are stored as
        # integers); an exact match would not cross int and float.
        number = float(value) if isinstance(value, bool) else value
        return models.FieldCondition(key=key, range=models.Range(gte=number, lte=number))
    found: list[models.Condition] = []
    if big.exact is not None:
        found.append(_field(key, big.exact))
    if big.as_float is not None:
        same = models.FieldCondition(
            key=key, range=models.Range(gte=big.as_float, lte=big.as_float)
        )
        near: list[models.Condition] | None = None
        if big.near:
            near = [models.FieldCondition(key=key, match=models.MatchAny(any=list(big.near)))]
        found.append(models.Filter(must=[same], must_not=near))
    return models.Filter(should=found)


def _contains(key: str, value: object) -> models.Condition:
    """List fields: membership. String metadata: substring. Which one a metadata key holds is
    recorded per record in ``list_keys`` (see edge_codec)."""
    if contains_by_value(key, value):
        return _match(key, value)
    if not (isinstance(value, str) and key.startswith(METADATA_PREFIX)):
        return _field(key, value)
    is_list = _field(LIST_KEYS, key.removeprefix(METADATA_PREFIX))
    substring = models.FieldCondition(key=key, match=models.MatchSubstring(substring=value))
    return models.Filter(
        should=[
            models.Filter(must=[is_list, _field(key, value)]),
            models.Filter(must=[substring], must_not=[is_list]),
        ]
    )


def _range(cond: Cond, key: str) -> models.Condition:
    bound = {cond.op: cond.value}
    if cond.field in TIME_FIELDS:
        return models.FieldCondition(key=key, range=models.DatetimeRange(**bound))
    return models.FieldCondition(key=key, range=models.Range(**bound))


def _condition(cond: Cond) -> models.Condition:
    key = payload_key(cond.field)
    checked_values(cond)
    op, value = cond.op, cond.value
    if op == "eq":
        return _match(key, value)
    if op == "ne":
        return models.Filter(must_not=[_match(key, value)])
    if op in ("in", "nin"):
        strings = [v for v in value if isinstance(v, str)]
        inner: models.Condition
        if len(strings) == len(value):
            any_of = models.MatchAny(any=[text(v) for v in strings])
            inner = models.FieldCondition(key=key, match=any_of)
        else:  # numbers, booleans or None: one match each (see _match)
            inner = models.Filter(should=[_match(key, v) for v in value])
        return inner if op == "in" else models.Filter(must_not=[inner])
    if op == "contains":
        return _contains(key, value)
    return _range(cond, key)


def _translate(expr: Expr) -> models.Condition:
    if isinstance(expr, Cond):
        return _condition(expr)
    if isinstance(expr, And):
        return models.Filter(must=[_translate(e) for e in expr.all])
    if isinstance(expr, Or):
        return models.Filter(should=[_translate(e) for e in expr.any])
    return models.Filter(must_not=[_translate(expr.expr)])


def to_qdrant_filter(where: And) -> models.Filter:
    """A filter matching live records (never tombstones) that satisfy ``where``; raises
    InvalidFilter (or InvalidIdentifier) for a field or scope id that fails its re-check."""
    check_big_numbers(where)
    live = _field("kind", KIND_RECORD)
    return models.Filter(must=[live, *(_translate(e) for e in where.all)])

"""Translation of hivemem filter trees (:mod:`hivemem.pool.filters`) into Qdrant Edge filters.

The tree was validated when it was built; field names are checked once more here, against the
closed set of payload keys, before they become payload paths (ids and keys are validated twice).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from qdrant_edge import (
    FieldCondition,
    Filter,
    IsEmptyCondition,
    MatchAny,
    MatchSubstring,
    MatchValue,
    RangeDateTime,
    RangeFloat,
)

from hivemem.pool.adapters.edge_codec import FIELD_KEYS, INDEXED_FIELDS, KIND_RECORD
from hivemem.pool.errors import InvalidFilter
from hivemem.pool.filters import TIME_FIELDS, And, Cond, Expr, Or
from hivemem.pool.ids import METADATA_KEY_PATTERN

_RANGE_ARG = {"gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}
ConditionType = FieldCondition | IsEmptyCondition | Filter


def _key(field: str) -> str:
    key = FIELD_KEYS.get(field, field)
    if key in INDEXED_FIELDS:
        return key
    if key.startswith("metadata.") and METADATA_KEY_PATTERN.fullmatch(key.removeprefix("metadata.")):
        return key
    raise InvalidFilter(f"field {field[:80]!r} cannot be filtered", field="where.field")


def _plain(value: object) -> object:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, bool):
        return int(value)  # Edge stores booleans as integers (see edge_codec)
    return value


def _match(key: str, value: object) -> ConditionType:
    if value is None:
        return IsEmptyCondition(key)
    if isinstance(value, datetime):
        iso = value.isoformat()
        return FieldCondition(key, range=RangeDateTime(gte=iso, lte=iso))
    if isinstance(value, float):
        return FieldCondition(key, range=RangeFloat(gte=value, lte=value))
    return FieldCondition(key, match=MatchValue(_plain(value)))


def _condition(cond: Cond) -> ConditionType:
    key = _key(cond.field)
    op, value = cond.op, cond.value
    if op == "eq":
        return _match(key, value)
    if op == "ne":
        return Filter(must_not=[_match(key, value)])
    if op in ("in", "nin"):
        values = [_plain(v) for v in value]
        if any(isinstance(v, float) or v is None for v in values):
            inner: ConditionType = Filter(should=[_match(key, v) for v in value])
        else:
            inner = FieldCondition(key, match=MatchAny(values))
        return inner if op == "in" else Filter(must_not=[inner])
    if op == "contains":
        if isinstance(value, str) and key.startswith("metadata."):
            return Filter(
                should=[
                    FieldCondition(key, match=MatchValue(value)),
                    FieldCondition(key, match=MatchSubstring(value)),
                ]
            )
        return FieldCondition(key, match=MatchValue(_plain(value)))
    bound = {_RANGE_ARG[op]: value}
    if cond.field in TIME_FIELDS:
        return FieldCondition(key, range=RangeDateTime(**{k: v.isoformat() for k, v in bound.items()}))
    return FieldCondition(key, range=RangeFloat(**bound))


def _translate(expr: Expr) -> ConditionType:
    if isinstance(expr, Cond):
        return _condition(expr)
    if isinstance(expr, And):
        return Filter(must=[_translate(e) for e in expr.all])
    if isinstance(expr, Or):
        return Filter(should=[_translate(e) for e in expr.any])
    return Filter(must_not=[_translate(expr.expr)])


def _live_records() -> FieldCondition:
    return FieldCondition("kind", match=MatchValue(KIND_RECORD))


def to_edge_filter(where: And) -> Filter:
    """An Edge filter matching live records (never tombstones) that satisfy ``where``."""
    conditions: list[ConditionType] = [_live_records()]
    conditions.extend(_translate(e) for e in where.all)
    return Filter(must=conditions)


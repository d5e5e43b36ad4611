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
    HasIdCondition,
    HasVectorCondition,
    IsEmptyCondition,
    IsNullCondition,
    MatchAny,
    MatchSubstring,
    MatchValue,
    NestedCondition,
    RangeDateTime,
    RangeFloat,
)

from hivemem.pool.adapters.edge_codec import FIELD_KEYS, INDEXED_FIELDS, KIND_RECORD
from hivemem.pool.errors import InvalidFilter
from hivemem.pool.filters import TIME_FIELDS, And, Cond, Expr, Or
from hivemem.pool.ids import METADATA_KEY_PATTERN

_RANGE_ARG = {"gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}
#: What Edge accepts inside a Filter (the stubs' ConditionType).
ConditionType = (
    FieldCondition
    | IsEmptyCondition
    | IsNullCondition
    | HasIdCondition
    | HasVectorCondition
    | NestedCondition
    | Filter
)
MatchScalar = str | int | bool


def _key(field: str) -> str:
    key = FIELD_KEYS.get(field, field)
    if key in INDEXED_FIELDS:
        return key
    if key.startswith("metadata.") and METADATA_KEY_PATTERN.fullmatch(
        key.removeprefix("metadata.")
    ):
        return key
    raise InvalidFilter(f"field {field[:80]!r} cannot be filtered", field="where.field")


def _plain(value: object) -> MatchScalar:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, bool):
        return int(value)  # Edge stores booleans as integers (see edge_codec)
    if isinstance(value, str | int):
        return value
    raise InvalidFilter(f"cannot match a {type(value).__name__} exactly", field="where.value")


def _enum_text(value: str) -> str:
    return value.value if isinstance(value, StrEnum) else value


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
        strings = [v for v in value if isinstance(v, str)]
        integers = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        inner: ConditionType
        if len(strings) == len(value):
            inner = FieldCondition(key, match=MatchAny([_enum_text(v) for v in strings]))
        elif len(integers) == len(value):
            inner = FieldCondition(key, match=MatchAny(integers))
        else:  # mixed, floats, booleans or None: one exact match each
            inner = Filter(should=[_match(key, v) for v in value])
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
        return FieldCondition(
            key, range=RangeDateTime(**{k: v.isoformat() for k, v in bound.items()})
        )
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

"""Translation of hivemem filter trees (:mod:`hivemem.pool.filters`) into Qdrant Edge filters.

The tree was validated when it was built; field names are checked once more here, against the
closed set of payload keys, before they become payload paths (ids and keys are validated twice).
"""

from __future__ import annotations

from datetime import datetime

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


def _match(key: str, value: object) -> ConditionType:
    if value is None:
        return IsEmptyCondition(key)
    if isinstance(value, datetime):
        iso = value.isoformat()
        return FieldCondition(key, range=RangeDateTime(gte=iso, lte=iso))
    if isinstance(value, int | float):
        return _number(key, value)
    return FieldCondition(key, match=MatchValue(plain(value)))


def _number(key: str, value: int | float) -> ConditionType:
    big = big_number(value)
    if big is None:
        # A range matches 2 and 2.0 alike, and True, 1 and 1.0 (booleans are stored as
        # integers); an exact match would not cross int and float.
        number = float(value) if isinstance(value, bool) else value
        return FieldCondition(key, range=RangeFloat(gte=number, lte=number))
    found: list[ConditionType] = []
    if big.exact is not None:
        found.append(FieldCondition(key, match=MatchValue(big.exact)))
    if big.as_float is not None:
        same = FieldCondition(key, range=RangeFloat(gte=big.as_float, lte=big.as_float))
        near: list[ConditionType] | None = None
        if big.near:
            near = [FieldCondition(key, match=MatchAny(list(big.near)))]
        found.append(Filter(must=[same], must_not=near))
    return Filter(should=found)


def _contains(key: str, value: object) -> ConditionType:
    """List fields: membership. String metadata: substring. Which one a metadata key holds is
    recorded per record in ``list_keys`` (see edge_codec)."""
    if contains_by_value(key, value):
        return _match(key, value)
    if not (isinstance(value, str) and key.startswith(METADATA_PREFIX)):
        return FieldCondition(key, match=MatchValue(plain(value)))
    is_list = FieldCondition(LIST_KEYS, match=MatchValue(key.removeprefix(METADATA_PREFIX)))
    return Filter(
        should=[
            Filter(must=[is_list, FieldCondition(key, match=MatchValue(value))]),
            Filter(must=[FieldCondition(key, match=MatchSubstring(value))], must_not=[is_list]),
        ]
    )


def _condition(cond: Cond) -> ConditionType:
    key = payload_key(cond.field)
    checked_values(cond)
    op, value = cond.op, cond.value
    if op == "eq":
        return _match(key, value)
    if op == "ne":
        return Filter(must_not=[_match(key, value)])
    if op in ("in", "nin"):
        strings = [v for v in value if isinstance(v, str)]
        inner: ConditionType
        if len(strings) == len(value):
            inner = FieldCondition(key, match=MatchAny([text(v) for v in strings]))
        else:  # numbers, booleans or None: one match each (see _match)
            inner = Filter(should=[_match(key, v) for v in value])
        return inner if op == "in" else Filter(must_not=[inner])
    if op == "contains":
        return _contains(key, value)
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


def to_edge_filter(where: And, *, vectors_only: bool = False) -> Filter:
    """An Edge filter matching live records (never tombstones) that satisfy ``where``.

    ``vectors_only``: the filter serves a vector lookup. Tombstones have no vectors, so such a
    lookup never meets one and the per-point ``kind`` check (measured at ~0.3 ms per query on
    1,000 candidates) is left out."""
    check_big_numbers(where)
    conditions: list[ConditionType] = [] if vectors_only else [_live_records()]
    conditions.extend(_translate(e) for e in where.all)
    return Filter(must=conditions)

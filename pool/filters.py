"""Filters over memory records, as data.

A filter is a :class:`MemoryFilter`: convenience fields for the common cases (levels, tiers,
categories, zones, importance range, time ranges, tags, entities) combined with AND, plus an
optional ``where`` expression tree of :class:`Cond`, :class:`And`, :class:`Or` and :class:`Not`
over any filterable field, including ``metadata.<key>``.

Operators: ``eq ne in nin gt gte lt lte contains``. ``contains`` means "the list holds this
element" for list fields (tags, entities, list metadata) and "the text holds this substring" for
string metadata; it takes a string or an integer. ``ne`` and ``nin`` also match records that lack
the field. Numbers compare by value (``eq 2`` matches 2 and 2.0; ``True`` also matches 1, as in
Python). On list metadata, ``eq``/``in`` match when any element does, and ``eq None`` also
matches an empty list. Time values are
datetimes (naive ones are taken as UTC). Scope fields (``scope.user_id``...) and time fields also
take ``eq None`` / ``ne None`` ("is unset" / "is set").

Every filter is validated when built; a bad one raises :class:`InvalidFilter` and is never run.
The adapters translate the validated tree into their store's filter language.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, cast

from pydantic import Discriminator, Field, Tag, model_validator

from hivemem.pool.base import Model
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import InvalidFilter
from hivemem.pool.ids import check_label, check_metadata_key, check_scope_id
from hivemem.pool.records import INT64, Labels, as_utc, check_text

Op = Literal["eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "contains"]
#: How deeply a ``where`` tree may nest (a condition alone is depth 1): far beyond any filter a
#: person or a program writes, and well within what the stores and pydantic handle.
MAX_DEPTH = 32
ORDER_OPS = frozenset({"gt", "gte", "lt", "lte"})


class FieldKind(StrEnum):
    """How a filterable field is typed, which decides the operators it accepts."""

    ENUM = "enum"
    NUMBER = "number"
    TIME = "time"
    LABELS = "labels"
    SCOPE = "scope"
    METADATA = "metadata"


ENUM_FIELDS: dict[str, type[StrEnum] | type[Zone]] = {
    "level": Level,
    "tier": Tier,
    "category": Category,
    "zone": Zone,
}
NUMBER_FIELDS = frozenset({"importance", "access_count"})
TIME_FIELDS = frozenset(
    {"recorded_at", "valid_from", "valid_until", "superseded_at", "last_accessed_at"}
)
LABEL_FIELDS = frozenset({"tags", "entities"})
#: Agent and scope ids; ``received_from`` is the agent a pooled copy came from (None: own record).
SCOPE_FIELDS = frozenset(
    {"scope.user_id", "scope.session_id", "scope.agent_id", "scope.run_id", "received_from"}
)
_OPS_BY_KIND: dict[FieldKind, frozenset[str]] = {
    FieldKind.ENUM: frozenset({"eq", "ne", "in", "nin"}),
    FieldKind.NUMBER: frozenset({"eq", "ne", "gt", "gte", "lt", "lte"}),
    FieldKind.TIME: frozenset({"gt", "gte", "lt", "lte", "eq", "ne"}),
    FieldKind.LABELS: frozenset({"contains", "in", "nin"}),
    FieldKind.SCOPE: frozenset({"eq", "ne", "in", "nin"}),
    FieldKind.METADATA: frozenset({"eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "contains"}),
}


def field_kind(name: str) -> FieldKind:
    """The kind of filterable field ``name``; raises InvalidFilter for an unknown field."""
    if name in ENUM_FIELDS:
        return FieldKind.ENUM
    if name in NUMBER_FIELDS:
        return FieldKind.NUMBER
    if name in TIME_FIELDS:
        return FieldKind.TIME
    if name in LABEL_FIELDS:
        return FieldKind.LABELS
    if name in SCOPE_FIELDS:
        return FieldKind.SCOPE
    if name.startswith("metadata."):
        check_metadata_key(name.removeprefix("metadata."), field="where.field")
        return FieldKind.METADATA
    raise InvalidFilter(f"unknown filter field {name[:80]!r}", field="where.field")


def _as_utc(value: object) -> datetime:
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidFilter(
                f"not an ISO 8601 time: {text[:40]!r}", field="where.value"
            ) from None
    if not isinstance(value, datetime):
        raise InvalidFilter("time fields take datetimes", field="where.value")
    try:
        return cast("datetime", as_utc(value))
    except ValueError as error:
        raise InvalidFilter(str(error), field="where.value") from None


def _check_scalar(value: object, *, number_only: bool) -> object:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        if number_only:
            raise InvalidFilter("this operator takes a number", field="where.value")
        if isinstance(value, str):
            check_text(value, field="where.value", error=InvalidFilter)
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidFilter("filter numbers must be finite", field="where.value")
        if isinstance(value, int) and value not in INT64:
            raise InvalidFilter("filter integers must fit in 64 bits", field="where.value")
        return value
    raise InvalidFilter(
        f"unsupported filter value of type {type(value).__name__}", field="where.value"
    )


class _FilterModel(Model):
    error = InvalidFilter


class Cond(_FilterModel):
    """One condition: ``field op value``. ``in``/``nin`` take a non-empty list."""

    field: str
    op: Op
    value: Any = None

    @model_validator(mode="after")
    def _check(self) -> Cond:
        kind = field_kind(self.field)
        if self.op not in _OPS_BY_KIND[kind]:
            raise InvalidFilter(
                f"operator {self.op} does not apply to {self.field}", field="where.op"
            )
        values = self.value if self.op in ("in", "nin") else [self.value]
        if self.op in ("in", "nin") and (not isinstance(self.value, list) or not self.value):
            raise InvalidFilter(f"{self.op} takes a non-empty list", field="where.value")
        checked = [self._check_value(kind, v) for v in values]
        object.__setattr__(self, "value", checked if self.op in ("in", "nin") else checked[0])
        return self

    def _check_value(self, kind: FieldKind, value: object) -> object:
        if kind is FieldKind.ENUM:
            enum = ENUM_FIELDS[self.field]
            try:
                return enum(str(value))
            except ValueError:
                raise InvalidFilter(
                    f"{value!r} is not a {self.field}", field="where.value"
                ) from None
        if value is None and self.op in ("eq", "ne") and kind in (FieldKind.TIME, FieldKind.SCOPE):
            return None
        if kind is FieldKind.TIME:
            return _as_utc(value)
        if kind is FieldKind.SCOPE:
            return check_scope_id(value, field="where.value")
        if kind is FieldKind.NUMBER:
            return _check_scalar(value, number_only=True)
        if kind is FieldKind.LABELS:
            return check_label(value, field="where.value")
        if self.op == "contains" and (value is None or isinstance(value, float)):
            raise InvalidFilter("contains takes a string or an integer", field="where.value")
        return _check_scalar(value, number_only=self.op in ORDER_OPS)


class And(_FilterModel):
    """All of ``all`` hold (true when empty)."""

    all: list[Expr]


class Or(_FilterModel):
    """At least one of ``any`` holds (must not be empty)."""

    any: list[Expr] = Field(min_length=1)


class Not(_FilterModel):
    """``expr`` does not hold."""

    expr: Expr


def _expr_kind(value: object) -> str | None:
    """Which node a piece of filter data is, by its keys (so that a bad leaf deep in a tree is
    reported as itself, not as a failed match of every node type)."""
    if isinstance(value, Cond | And | Or | Not):
        return type(value).__name__.lower()
    if isinstance(value, dict):
        for key, kind in (("field", "cond"), ("all", "and"), ("any", "or"), ("expr", "not")):
            if key in value:
                return kind
    return None


Expr = Annotated[
    Annotated[Cond, Tag("cond")]
    | Annotated[And, Tag("and")]
    | Annotated[Or, Tag("or")]
    | Annotated[Not, Tag("not")],
    Discriminator(
        _expr_kind,
        custom_error_type="invalid_filter_node",
        custom_error_message="a filter node has 'field', 'all', 'any' or 'expr'",
    ),
]
And.model_rebuild()
Or.model_rebuild()
Not.model_rebuild()


def conditions(expr: Expr) -> Iterator[Cond]:
    """Every condition of ``expr``, depth first, in order."""
    if isinstance(expr, Cond):
        yield expr
    elif isinstance(expr, And | Or):
        for part in expr.all if isinstance(expr, And) else expr.any:
            yield from conditions(part)
    else:
        yield from conditions(expr.expr)


def _children(node: object) -> list[object]:
    """The sub-expressions of a node, or of a dict shaped like one (none for anything else)."""
    if isinstance(node, And):
        return list(node.all)
    if isinstance(node, Or):
        return list(node.any)
    if isinstance(node, Not):
        return [node.expr]
    if isinstance(node, dict):
        parts = node.get("all", node.get("any", [node["expr"]] if "expr" in node else []))
        return list(parts) if isinstance(parts, list | tuple) else []
    return []


def _depth(where: object) -> int:
    """How deeply ``where`` nests, counted up to one more than MAX_DEPTH (iteratively: a deep
    tree must not exhaust the stack)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(where, 1)]
    while stack and deepest <= MAX_DEPTH:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


def _check_depth(where: object) -> None:
    if where is not None and _depth(where) > MAX_DEPTH:
        raise InvalidFilter(f"a filter's where nests at most {MAX_DEPTH} levels", field="where")


class TimeRange(_FilterModel):
    """A half-open or closed time interval: ``after <= t < before`` (either end optional)."""

    after: datetime | None = None
    before: datetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if (
            self.after is not None
            and self.before is not None
            and _as_utc(self.after) > _as_utc(self.before)
        ):
            raise InvalidFilter("a time range's after is later than its before", field="times")
        return self


class MemoryFilter(_FilterModel):
    """Conditions on records, all of which must hold. Empty means "everything in scope"."""

    levels: Annotated[list[Level], Field(min_length=1)] | None = None
    tiers: Annotated[list[Tier], Field(min_length=1)] | None = None
    categories: Annotated[list[Category], Field(min_length=1)] | None = None
    zones: Annotated[list[Zone], Field(min_length=1)] | None = None
    importance_min: float | None = Field(default=None, ge=0.0, le=1.0)
    importance_max: float | None = Field(default=None, ge=0.0, le=1.0)
    times: dict[
        Literal["recorded_at", "valid_from", "valid_until", "superseded_at", "last_accessed_at"],
        TimeRange,
    ] = Field(default_factory=dict)
    tags_any: Labels | None = None
    tags_all: Labels | None = None
    entities_any: Labels | None = None
    where: Expr | None = None

    @model_validator(mode="before")
    @classmethod
    def _shallow_enough(cls, data: object) -> object:
        """Refuse a too deep ``where`` before pydantic walks it (a clear error, not one of
        pydantic's recursion)."""
        if isinstance(data, dict):
            _check_depth(data.get("where"))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        low, high = self.importance_min, self.importance_max
        if low is not None and high is not None and low > high:
            raise InvalidFilter("importance_min exceeds importance_max", field="importance_min")
        return self

    def to_expr(self) -> And:
        """The whole filter as one expression tree (the form adapters translate)."""
        parts: list[Expr] = []
        for name, chosen in (
            ("level", self.levels),
            ("tier", self.tiers),
            ("category", self.categories),
            ("zone", self.zones),
        ):
            if chosen is not None:
                parts.append(Cond(field=name, op="in", value=list(chosen)))
        if self.importance_min is not None:
            parts.append(Cond(field="importance", op="gte", value=self.importance_min))
        if self.importance_max is not None:
            parts.append(Cond(field="importance", op="lte", value=self.importance_max))
        for name, span in sorted(self.times.items()):
            if span.after is not None:
                parts.append(Cond(field=name, op="gte", value=span.after))
            if span.before is not None:
                parts.append(Cond(field=name, op="lt", value=span.before))
        if self.tags_any:
            parts.append(Cond(field="tags", op="in", value=list(self.tags_any)))
        parts.extend(Cond(field="tags", op="contains", value=t) for t in self.tags_all or [])
        if self.entities_any:
            parts.append(Cond(field="entities", op="in", value=list(self.entities_any)))
        if self.where is not None:
            parts.append(self.where)
        return And(all=parts)


def parse_filter(value: MemoryFilter | dict[str, Any] | None) -> MemoryFilter:
    """Accept a filter as a model or as plain data (JSON from the CLI); raise InvalidFilter."""
    if value is None:
        return MemoryFilter()
    if isinstance(value, MemoryFilter):
        return value
    if not isinstance(value, dict):
        raise InvalidFilter(f"a filter is a MemoryFilter or a dict, not {type(value).__name__}")
    return MemoryFilter.model_validate(value)

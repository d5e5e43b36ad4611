"""Filters as data: building conditions, trees and MemoryFilters (from models and from dicts),
the validation of every operator, and the expression tree to_expr() produces."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import InvalidFilter, InvalidIdentifier, InvalidInput
from hivemem.pool.filters import (
    ENUM_FIELDS,
    LABEL_FIELDS,
    MAX_DEPTH,
    NUMBER_FIELDS,
    SCOPE_FIELDS,
    TIME_FIELDS,
    And,
    Cond,
    FieldKind,
    MemoryFilter,
    Not,
    Or,
    TimeRange,
    field_kind,
    parse_filter,
)

ALL_OPS = ["eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "contains"]
#: Which operators each kind of field accepts, as the module docstring and tables describe it.
ALLOWED = {
    "level": {"eq", "ne", "in", "nin"},
    "importance": {"eq", "ne", "gt", "gte", "lt", "lte"},
    "valid_until": {"eq", "ne", "gt", "gte", "lt", "lte"},
    "tags": {"contains", "in", "nin"},
    "scope.user_id": {"eq", "ne", "in", "nin"},
    "metadata.k": set(ALL_OPS),
}
#: A value each field accepts, per operator.
GOOD_VALUE = {
    "level": "trace",
    "importance": 0.5,
    "valid_until": datetime(2026, 1, 1, tzinfo=UTC),
    "tags": "alpha",
    "scope.user_id": "u1",
    "metadata.k": 3,
}
INJECTIONS = ['u1" OR 1=1', "*", "../x", "a b", '{"$ne":1}', "u1\n", "x" * 200, ""]


def naive(*parts: int) -> datetime:
    """A naive datetime: inputs without a timezone are what these tests feed on purpose."""
    return datetime(*parts)  # noqa: DTZ001 - naive on purpose


def good_value(field: str, op: str) -> object:
    value = GOOD_VALUE[field]
    return [value] if op in ("in", "nin") else value


# -- fields and operators ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        *[(name, FieldKind.ENUM) for name in ENUM_FIELDS],
        *[(name, FieldKind.NUMBER) for name in NUMBER_FIELDS],
        *[(name, FieldKind.TIME) for name in TIME_FIELDS],
        *[(name, FieldKind.LABELS) for name in LABEL_FIELDS],
        *[(name, FieldKind.SCOPE) for name in SCOPE_FIELDS],
        ("metadata.lang", FieldKind.METADATA),
        ("metadata._x9", FieldKind.METADATA),
    ],
)
def test_field_kind_of_every_filterable_field(name: str, kind: FieldKind) -> None:
    """Each filterable field has its documented kind."""
    assert field_kind(name) is kind


@pytest.mark.parametrize(
    "name", ["content", "id", "user_id", "scope", "scope.tenant", "metadata", "vector", "Level"]
)
def test_unknown_field_raises_invalid_filter(name: str) -> None:
    """A field outside the filterable set raises InvalidFilter on where.field."""
    with pytest.raises(InvalidFilter) as caught:
        Cond(field=name, op="eq", value="x")
    assert caught.value.field == "where.field"


@pytest.mark.parametrize(
    "name", ["metadata.", "metadata.a.b", "metadata.a-b", "metadata.1a", 'metadata.a" OR 1=1']
)
def test_bad_metadata_key_in_field_raises_invalid_identifier(name: str) -> None:
    """metadata.<key> with a malformed key raises InvalidIdentifier on where.field."""
    with pytest.raises(InvalidIdentifier) as caught:
        Cond(field=name, op="eq", value=1)
    assert caught.value.field == "where.field"


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("field", list(ALLOWED))
def test_operator_applicability_per_field_kind(field: str, op: str) -> None:
    """Every operator is accepted exactly on the field kinds it applies to."""
    if op in ALLOWED[field]:
        assert Cond(field=field, op=op, value=good_value(field, op)).op == op
    else:
        with pytest.raises(InvalidFilter) as caught:
            Cond(field=field, op=op, value=good_value(field, op))
        assert caught.value.field == "where.op"


@pytest.mark.parametrize("op", ["like", "EQ", "regex", "", "$ne"])
def test_unknown_operator_raises_invalid_filter(op: str) -> None:
    """An operator outside eq ne in nin gt gte lt lte contains raises InvalidFilter."""
    with pytest.raises(InvalidFilter) as caught:
        Cond(field="level", op=op, value="trace")  # type: ignore[arg-type]
    assert caught.value.field == "op"


# -- values by kind ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("level", "trace", Level.TRACE),
        ("tier", Tier.ARCHIVE, Tier.ARCHIVE),
        ("category", "event", Category.EVENT),
        ("zone", "secret", Zone.SECRET),
    ],
)
def test_enum_values_become_enum_members(field: str, value: object, expected: object) -> None:
    """Enum conditions normalise their value to the enum member."""
    cond = Cond(field=field, op="eq", value=value)
    assert cond.value is expected
    assert Cond(field=field, op="nin", value=[value]).value == [expected]


@pytest.mark.parametrize("value", ["bogus", "TRACE", None, 1, "", ["trace"]])
def test_bad_enum_value_raises_invalid_filter(value: object) -> None:
    """A value outside the enum (including None) raises InvalidFilter on where.value."""
    with pytest.raises(InvalidFilter) as caught:
        Cond(field="level", op="eq", value=value)
    assert caught.value.field == "where.value"


def test_bad_enum_value_inside_in_list_raises_invalid_filter() -> None:
    """One bad member spoils an in list."""
    with pytest.raises(InvalidFilter):
        Cond(field="zone", op="in", value=["public", "top"])


@pytest.mark.parametrize("op", ["in", "nin"])
@pytest.mark.parametrize(
    ("field", "value"),
    [("zone", []), ("zone", "public"), ("zone", ("public",)), ("tags", "a"), ("metadata.k", 1)],
)
def test_in_and_nin_need_a_non_empty_list(op: str, field: str, value: object) -> None:
    """in/nin with an empty list, a scalar or a tuple raise InvalidFilter."""
    with pytest.raises(InvalidFilter) as caught:
        Cond(field=field, op=op, value=value)
    assert caught.value.field == "where.value"


@pytest.mark.parametrize("field", sorted(NUMBER_FIELDS))
@pytest.mark.parametrize("value", ["0.5", True, False, None, math.nan, math.inf, -math.inf, [1]])
def test_number_fields_take_finite_numbers_only(field: str, value: object) -> None:
    """Number fields reject strings, booleans, None, lists and non-finite numbers."""
    with pytest.raises(InvalidFilter) as caught:
        Cond(field=field, op="gte", value=value)
    assert caught.value.field == "where.value"


@pytest.mark.parametrize("value", [0, 1, 0.25, 7])
def test_number_fields_accept_ints_and_floats(value: float) -> None:
    """Number fields keep int and float values as given."""
    assert Cond(field="access_count", op="lt", value=value).value == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (naive(2026, 1, 1, 10), datetime(2026, 1, 1, 10, tzinfo=UTC)),
        (
            datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 1, 1, 10, tzinfo=UTC),
        ),
        ("2026-01-01T10:00:00", datetime(2026, 1, 1, 10, tzinfo=UTC)),
        ("2026-01-01T05:00:00-05:00", datetime(2026, 1, 1, 10, tzinfo=UTC)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
    ids=["naive", "offset", "iso-naive", "iso-offset", "iso-date"],
)
def test_time_values_are_normalised_to_utc(value: object, expected: datetime) -> None:
    """Datetimes and ISO strings become aware UTC datetimes (naive ones taken as UTC)."""
    result = Cond(field="recorded_at", op="gte", value=value).value
    assert result == expected
    assert result.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-01", "2026-01-01T25:00", "", "0", 1_700_000_000, 1.5, True]
)
def test_bad_time_value_raises_invalid_filter(value: object) -> None:
    """Non-ISO strings and non-datetimes on time fields raise InvalidFilter on where.value."""
    with pytest.raises(InvalidFilter) as caught:
        Cond(field="valid_from", op="lt", value=value)
    assert caught.value.field == "where.value"


@given(st.text(max_size=40))
def test_arbitrary_time_text_parses_or_raises_invalid_filter(text: str) -> None:
    """Any text as a time value either parses to an aware UTC datetime or raises InvalidFilter."""
    try:
        cond = Cond(field="valid_from", op="gt", value=text)
    except InvalidFilter:
        return
    assert cond.value.utcoffset() == timedelta(0)


@pytest.mark.parametrize("op", ["eq", "ne"])
@pytest.mark.parametrize("field", sorted(TIME_FIELDS | SCOPE_FIELDS))
def test_none_means_unset_for_time_and_scope_fields(field: str, op: str) -> None:
    """eq/ne None is accepted on time and scope fields (is unset / is set)."""
    assert Cond(field=field, op=op, value=None).value is None


@pytest.mark.parametrize(
    ("field", "op"),
    [
        ("valid_until", "gt"),
        ("valid_until", "lte"),
        ("scope.session_id", "in"),
        ("level", "eq"),
        ("importance", "eq"),
        ("access_count", "ne"),
        ("tags", "contains"),
        ("entities", "in"),
    ],
)
def test_none_is_rejected_elsewhere(field: str, op: str) -> None:
    """None is refused for order operators, in-lists, and enum, number and label fields."""
    value = [None] if op in ("in", "nin") else None
    with pytest.raises(InvalidInput) as caught:
        Cond(field=field, op=op, value=value)
    assert caught.value.field == "where.value"


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize("field", sorted(SCOPE_FIELDS))
def test_injection_in_scope_value_raises_invalid_identifier(field: str, bad: str) -> None:
    """Scope values are checked as ids: injection strings raise InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier) as caught:
        Cond(field=field, op="eq", value=bad)
    assert caught.value.field == "where.value"
    with pytest.raises(InvalidIdentifier):
        Cond(field=field, op="in", value=["u1", bad])


@pytest.mark.parametrize("bad", ["*", '{"$ne":1}', "", " x", "x" * 65, "a\nb", None, 3])
@pytest.mark.parametrize("field", sorted(LABEL_FIELDS))
def test_bad_label_value_raises_invalid_identifier(field: str, bad: object) -> None:
    """Label values (tags, entities) are checked as labels: bad ones raise InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier):
        Cond(field=field, op="contains", value=bad)
    with pytest.raises(InvalidIdentifier):
        Cond(field=field, op="nin", value=["ok", bad])


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("eq", "text"),
        ("eq", True),
        ("eq", None),
        ("ne", 2.5),
        ("in", [1, "a", None, 2.5, True]),
        ("contains", "sub"),
        ("gt", 0),
        ("lte", -1.5),
    ],
)
def test_metadata_accepts_json_scalars(op: str, value: object) -> None:
    """Metadata conditions take JSON scalars (numbers only for order operators)."""
    assert Cond(field="metadata.k", op=op, value=value).value == value


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("eq", [1]),
        ("eq", {"$ne": 1}),
        ("eq", math.nan),
        ("in", [math.inf]),
        ("gt", "a"),
        ("gte", True),
        ("lt", None),
        ("eq", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_metadata_rejects_non_scalars_and_wrong_types(op: str, value: object) -> None:
    """Lists, dicts, non-finite numbers, datetimes and non-numbers for order ops are refused."""
    with pytest.raises(InvalidFilter) as caught:
        Cond(field="metadata.k", op=op, value=value)
    assert caught.value.field == "where.value"


def test_filter_errors_are_value_errors() -> None:
    """InvalidFilter is an InvalidInput and a ValueError."""
    assert issubclass(InvalidFilter, InvalidInput)
    assert issubclass(InvalidFilter, ValueError)
    assert issubclass(InvalidIdentifier, ValueError)


# -- trees -------------------------------------------------------------------------------------


def test_trees_nest_and_keep_their_parts() -> None:
    """And/Or/Not nest (up to MAX_DEPTH levels) and keep their children in order."""
    a = Cond(field="zone", op="eq", value="public")
    b = Cond(field="tags", op="contains", value="x")
    tree = And(all=[Or(any=[a, Not(expr=b)]), Not(expr=And(all=[a, b]))])
    assert tree.all[0] == Or(any=[a, Not(expr=b)])
    assert tree.all[1].expr.all == [a, b]  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["and", "or", "not"])
def test_a_where_deeper_than_the_limit_is_refused_with_a_short_message(kind: str) -> None:
    """A tree nests up to MAX_DEPTH levels; one deeper, as data or as models, raises
    InvalidFilter on ``where`` (never a pydantic recursion or serialization error), however
    deep it is."""

    def nested(depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {"field": "importance", "op": "gte", "value": 0.1}
        for _ in range(depth - 1):
            node = {"and": {"all": [node]}, "or": {"any": [node]}, "not": {"expr": node}}[kind]
        return node

    deepest = parse_filter({"where": nested(MAX_DEPTH)})
    as_tuples: dict[str, Any] = {"field": "importance", "op": "gte", "value": 0.1}
    for _ in range(300):
        as_tuples = {"all": (as_tuples,)}  # a tuple is read as a list: as deep
    with pytest.raises(InvalidFilter, match=f"at most {MAX_DEPTH}"):
        parse_filter({"where": as_tuples})
    assert MemoryFilter.model_validate_json(deepest.model_dump_json()) == deepest
    for depth in (MAX_DEPTH + 1, 150, 5_000):
        with pytest.raises(InvalidFilter, match=f"at most {MAX_DEPTH}") as caught:
            parse_filter({"where": nested(depth)})
        assert caught.value.field == "where"
    with pytest.raises(InvalidFilter, match="at most"):
        MemoryFilter(where=Not(expr=deepest.where))  # type: ignore[arg-type]


def test_empty_and_is_allowed_but_empty_or_is_not() -> None:
    """And([]) means "true"; Or([]) is refused with InvalidFilter."""
    assert And(all=[]).all == []
    with pytest.raises(InvalidFilter) as caught:
        Or(any=[])
    assert caught.value.field == "any"


def test_filter_models_are_frozen() -> None:
    """Conditions cannot be changed after validation (the tree is what was checked)."""
    cond = Cond(field="zone", op="eq", value="public")
    with pytest.raises(ValueError, match="frozen"):
        cond.value = "secret"  # type: ignore[misc]


def test_extra_keys_in_a_condition_raise_invalid_filter() -> None:
    """Unknown keys in a condition are refused."""
    with pytest.raises(InvalidFilter):
        Cond(field="zone", op="eq", value="public", negate=True)  # type: ignore[call-arg]


# -- MemoryFilter and parse_filter ---------------------------------------------------------------


def test_empty_filter_is_an_empty_and() -> None:
    """An empty MemoryFilter (and parse_filter(None)) translate to And([]): everything."""
    assert MemoryFilter().to_expr() == And(all=[])
    assert parse_filter(None) == MemoryFilter()


def test_parse_filter_returns_models_unchanged() -> None:
    """parse_filter returns a MemoryFilter it is given as is."""
    given_filter = MemoryFilter(levels=[Level.TRACE])
    assert parse_filter(given_filter) is given_filter


@pytest.mark.parametrize("value", [[1], "levels=trace", 3, MemoryFilter().to_expr()])
def test_parse_filter_rejects_non_dicts(value: object) -> None:
    """parse_filter of anything but a MemoryFilter, dict or None raises InvalidFilter."""
    with pytest.raises(InvalidFilter):
        parse_filter(value)  # type: ignore[arg-type]


def test_to_expr_lists_every_convenience_field_in_order() -> None:
    """to_expr turns each convenience field into its documented condition, where last."""
    after = datetime(2026, 1, 1, tzinfo=UTC)
    before = datetime(2026, 2, 1, tzinfo=UTC)
    where = Cond(field="metadata.lang", op="eq", value="en")
    memory_filter = MemoryFilter(
        levels=[Level.TRACE, Level.DOMAIN],
        tiers=[Tier.WORKING],
        categories=[Category.FACT],
        zones=[Zone.PUBLIC, Zone.INTERNAL],
        importance_min=0.2,
        importance_max=0.8,
        times={
            "valid_from": TimeRange(after=after, before=before),
            "recorded_at": TimeRange(before=before),
        },
        tags_any=["a", "b"],
        tags_all=["c", "d"],
        entities_any=["e"],
        where=where,
    )
    assert memory_filter.to_expr().all == [
        Cond(field="level", op="in", value=[Level.TRACE, Level.DOMAIN]),
        Cond(field="tier", op="in", value=[Tier.WORKING]),
        Cond(field="category", op="in", value=[Category.FACT]),
        Cond(field="zone", op="in", value=[Zone.PUBLIC, Zone.INTERNAL]),
        Cond(field="importance", op="gte", value=0.2),
        Cond(field="importance", op="lte", value=0.8),
        Cond(field="recorded_at", op="lt", value=before),
        Cond(field="valid_from", op="gte", value=after),
        Cond(field="valid_from", op="lt", value=before),
        Cond(field="tags", op="in", value=["a", "b"]),
        Cond(field="tags", op="contains", value="c"),
        Cond(field="tags", op="contains", value="d"),
        Cond(field="entities", op="in", value=["e"]),
        where,
    ]


def test_to_expr_time_range_is_half_open_in_utc() -> None:
    """A TimeRange becomes after <= t < before, naive bounds taken as UTC."""
    expr = MemoryFilter(
        times={"last_accessed_at": {"after": naive(2026, 1, 1), "before": "2026-01-02"}}
    ).to_expr()
    assert expr.all == [
        Cond(field="last_accessed_at", op="gte", value=datetime(2026, 1, 1, tzinfo=UTC)),
        Cond(field="last_accessed_at", op="lt", value=datetime(2026, 1, 2, tzinfo=UTC)),
    ]


def test_empty_tag_lists_add_no_condition() -> None:
    """tags_any=[] and entities_any=[] mean "no constraint", not "match nothing"."""
    assert MemoryFilter(tags_any=[], tags_all=[], entities_any=[]).to_expr() == And(all=[])


def test_parse_filter_from_dict_equals_model() -> None:
    """A filter given as JSON-like data equals the same filter built from models."""
    data: dict[str, Any] = {
        "levels": ["trace"],
        "zones": ["public", "secret"],
        "importance_min": 0.1,
        "times": {"valid_from": {"after": "2026-01-01T00:00:00+00:00"}},
        "tags_all": ["x"],
        "where": {
            "any": [
                {"field": "metadata.lang", "op": "eq", "value": "en"},
                {"expr": {"field": "scope.session_id", "op": "eq", "value": None}},
                {"all": [{"field": "importance", "op": "gt", "value": 0.5}]},
            ]
        },
    }
    built = MemoryFilter(
        levels=[Level.TRACE],
        zones=[Zone.PUBLIC, Zone.SECRET],
        importance_min=0.1,
        times={"valid_from": TimeRange(after=datetime(2026, 1, 1, tzinfo=UTC))},
        tags_all=["x"],
        where=Or(
            any=[
                Cond(field="metadata.lang", op="eq", value="en"),
                Not(expr=Cond(field="scope.session_id", op="eq", value=None)),
                And(all=[Cond(field="importance", op="gt", value=0.5)]),
            ]
        ),
    )
    parsed = parse_filter(data)
    assert parsed == built
    assert parsed.to_expr() == built.to_expr()


def test_parse_filter_round_trips_through_json() -> None:
    """A filter dumped to JSON-mode data parses back to an equal filter."""
    original = MemoryFilter(
        categories=[Category.DECISION],
        times={"recorded_at": TimeRange(before=datetime(2026, 1, 1, tzinfo=UTC))},
        where=Not(expr=Cond(field="zone", op="in", value=["secret"])),
    )
    assert parse_filter(original.model_dump(mode="json")) == original


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"levels": ["bogus"]}, "levels.0"),
        ({"zones": "public"}, "zones"),
        ({"importance_min": 1.5}, "importance_min"),
        ({"importance_max": -0.1}, "importance_max"),
        ({"importance_min": "nan"}, "importance_min"),
        ({"times": {"deleted_at": {}}}, None),
        ({"times": {"valid_from": {"after": "soon"}}}, None),
        ({"times": {"valid_from": {"since": "2026-01-01"}}}, None),
        ({"bogus": 1}, "bogus"),
        ({"where": {"field": "content", "op": "eq", "value": "x"}}, "where.field"),
        ({"where": {"field": "level", "op": "gt", "value": "trace"}}, "where.op"),
        ({"where": {"field": "zone", "op": "in", "value": []}}, "where.value"),
        ({"where": {"any": []}}, None),
        ({"where": 5}, None),
    ],
)
def test_parse_filter_bad_data_raises_invalid_filter(
    data: dict[str, Any], field: str | None
) -> None:
    """Bad filter data raises InvalidFilter, naming the field where one is known."""
    with pytest.raises(InvalidFilter) as caught:
        parse_filter(data)
    if field is not None:
        assert caught.value.field == field


def test_parse_filter_top_level_bad_scope_raises_invalid_identifier() -> None:
    """An injection string in a top-level where condition raises InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier):
        parse_filter({"where": {"field": "scope.user_id", "op": "eq", "value": 'u1" OR 1=1'}})


@pytest.mark.parametrize(
    "where",
    [
        {"all": [{"field": "scope.user_id", "op": "eq", "value": "*"}]},
        {"any": [{"field": "metadata.a.b", "op": "eq", "value": 1}]},
        {"expr": {"field": "tags", "op": "contains", "value": '{"$ne":1}'}},
    ],
    ids=["and-scope", "or-metadata-key", "not-label"],
)
def test_parse_filter_nested_bad_identifier_raises_invalid_identifier(
    where: dict[str, Any],
) -> None:
    """A bad id nested inside And/Or/Not data raises InvalidIdentifier, like a top-level one."""
    with pytest.raises(InvalidIdentifier):
        parse_filter({"where": where})


def test_parse_filter_nested_unknown_field_names_it() -> None:
    """A nested unknown field is reported as such, on where.field."""
    with pytest.raises(InvalidFilter) as caught:
        parse_filter({"where": {"all": [{"field": "content", "op": "eq", "value": "x"}]}})
    assert caught.value.field == "where.field"
    assert "content" in str(caught.value)


@pytest.mark.parametrize("name", ["tags_any", "tags_all", "entities_any"])
def test_memory_filter_validates_labels_when_built(name: str) -> None:
    """Bad labels in the convenience fields are refused when the filter is built."""
    with pytest.raises(InvalidIdentifier):
        MemoryFilter(**{name: ["ok", '{"$ne":1}']})


@pytest.mark.parametrize("name", ["tags_any", "tags_all", "entities_any"])
def test_memory_filter_bad_labels_never_reach_an_expression(name: str) -> None:
    """A bad label in a convenience field raises InvalidIdentifier by the time to_expr runs."""
    with pytest.raises(InvalidIdentifier):
        MemoryFilter(**{name: ["ok", '{"$ne":1}']}).to_expr()


@pytest.mark.parametrize("name", ["levels", "tiers", "categories", "zones"])
def test_memory_filter_with_empty_enum_list_translates(name: str) -> None:
    """An empty enum list is refused when the filter is built, or else it translates."""
    try:
        memory_filter = MemoryFilter(**{name: []})
    except InvalidFilter:
        return
    assert isinstance(memory_filter.to_expr(), And)

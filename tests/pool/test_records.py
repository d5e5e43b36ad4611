"""Records, ids, enums and the model base: what a valid record is, and which typed error each
kind of bad input raises (with ``field`` naming the culprit)."""

from __future__ import annotations

import contextlib
import math
import string
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hivemem.pool.base import Model
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import (
    HivememError,
    InvalidContent,
    InvalidIdentifier,
    InvalidInput,
)
from hivemem.pool.ids import (
    check_label,
    check_metadata_key,
    check_record_id,
    check_scope_id,
    new_record_id,
)
from hivemem.pool.records import (
    MAX_CONTENT_CHARS_HARD,
    MAX_METADATA_CHARS,
    MAX_METADATA_LIST,
    MemoryRecord,
    Scope,
    SparseVector,
    Tombstone,
)

#: Strings that must never become part of a store key or filter.
INJECTIONS = [
    'u1" OR 1=1',
    "*",
    "../x",
    "a b",
    '{"$ne":1}',
    "u1\n",
    "u1\nu2",
    "",
    " u1",
    "u1;DROP",
    "x" * 200,
]
ALNUM = frozenset(string.ascii_letters + string.digits)
SCOPE_FIELDS = ["user_id", "session_id", "agent_id", "run_id"]
DATETIME_FIELDS = ["valid_from", "valid_until", "recorded_at", "superseded_at", "last_accessed_at"]


#: Arbitrary text, mixed with text from the id alphabet so that both outcomes are exercised.
ID_LIKE_TEXT = st.text(max_size=200) | st.text(
    alphabet=string.ascii_letters + string.digits + "_.:@- ", max_size=140
)


def naive(*parts: int) -> datetime:
    """A naive datetime: inputs without a timezone are what these tests feed on purpose."""
    return datetime(*parts)  # noqa: DTZ001 - naive on purpose


def is_scope_id(value: str) -> bool:
    """The documented scope-id rule, restated: ASCII alphanumeric first, then ``_ . : @ -``."""
    return (
        1 <= len(value) <= 128
        and value[0] in ALNUM
        and all(c in ALNUM or c in "_.:@-" for c in value)
    )


def make(**fields: Any) -> MemoryRecord:
    """A valid record with ``fields`` overriding the minimal defaults."""
    fields.setdefault("content", "the sky is blue")
    fields.setdefault("scope", {"user_id": "u1"})
    return MemoryRecord(**fields)


# -- valid records ---------------------------------------------------------------------------


def test_minimal_record_gets_documented_defaults() -> None:
    """A record needs only content and a user; the rest defaults as documented."""
    record = make()
    assert check_record_id(record.id) == record.id
    assert (record.level, record.tier, record.category, record.zone) == (
        Level.EPISODE,
        Tier.WORKING,
        Category.FACT,
        Zone.PUBLIC,
    )
    assert record.importance == 0.5
    assert record.access_count == 0
    assert record.scope == Scope(user_id="u1")
    assert record.tags == record.entities == record.sources == []
    assert record.metadata == {}
    assert record.valid_until is None
    assert record.is_current


def test_fresh_records_get_distinct_ids() -> None:
    """Two records built without an id never share one."""
    assert make().id != make().id


def test_default_times_are_aware_utc_now() -> None:
    """valid_from and recorded_at default to the current instant, in UTC."""
    before = datetime.now(UTC)
    record = make()
    after = datetime.now(UTC)
    for value in (record.valid_from, record.recorded_at):
        assert value.utcoffset() == timedelta(0)
        assert before <= value <= after


def test_fully_specified_record_keeps_every_field() -> None:
    """Every field given to a record is kept as given (after validation)."""
    other = new_record_id()
    fields: dict[str, Any] = {
        "id": new_record_id(),
        "content": "Alice prefers tea",
        "vector": [0.5, 0.5, 0.5, 0.5],
        "sparse": SparseVector(indices=[3, 9], values=[0.5, 2.0]),
        "level": Level.TRACE,
        "scope": Scope(user_id="alice", session_id="s-1", agent_id="a@x", run_id="r:1"),
        "tier": Tier.LONG_TERM,
        "category": Category.PREFERENCE,
        "zone": Zone.CONFIDENTIAL,
        "importance": 0.9,
        "access_count": 4,
        "last_accessed_at": datetime(2026, 1, 3, tzinfo=UTC),
        "tags": ["drinks", "a b", "x/y"],
        "entities": ["person:alice"],
        "metadata": {"n": 1, "f": 1.5, "b": True, "s": "x", "none": None, "l": [1, "a"]},
        "sources": [other],
        "consolidated_into": [new_record_id()],
        "valid_from": datetime(2026, 1, 1, tzinfo=UTC),
        "valid_until": datetime(2026, 1, 2, tzinfo=UTC),
        "recorded_at": datetime(2026, 1, 1, 1, tzinfo=UTC),
        "superseded_at": datetime(2026, 1, 4, tzinfo=UTC),
        "supersedes": other,
        "superseded_by": new_record_id(),
    }
    record = MemoryRecord(**fields)
    assert {name: getattr(record, name) for name in fields} == fields
    assert not record.is_current


def test_record_built_from_plain_data_equals_one_built_from_models() -> None:
    """model_validate on plain data (JSON-like) gives the same record as the constructor."""
    record = make(level="trace", zone="secret", sparse={"indices": [1], "values": [1.0]})
    assert MemoryRecord.model_validate(record.model_dump(mode="json")) == record


@pytest.mark.parametrize("content", ["x", "x" * MAX_CONTENT_CHARS_HARD, "  padded  ", "多言語"])
def test_content_within_limits_is_kept_verbatim(content: str) -> None:
    """Content of 1 to MAX_CONTENT_CHARS_HARD characters is accepted unchanged."""
    assert make(content=content).content == content


@pytest.mark.parametrize("importance", [0.0, 0.5, 1.0])
def test_importance_bounds_are_inclusive(importance: float) -> None:
    """Importance may be exactly 0 or 1."""
    assert make(importance=importance).importance == importance


def test_valid_until_may_equal_valid_from() -> None:
    """An instant-long validity (valid_until == valid_from) is allowed."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    assert make(valid_from=moment, valid_until=moment).valid_until == moment


def test_uppercase_record_id_is_canonicalised() -> None:
    """An upper-case UUID is accepted and stored in canonical lower case."""
    raw = str(uuid.uuid4())
    assert make(id=raw.upper()).id == raw
    assert make(sources=[raw.upper()]).sources == [raw]


def test_tombstone_defaults_deleted_at_to_now() -> None:
    """A tombstone without deleted_at is stamped with the current UTC time."""
    before = datetime.now(UTC)
    tombstone = Tombstone(id=new_record_id(), scope={"user_id": "u1"}, level="trace", zone="secret")
    assert before <= tombstone.deleted_at <= datetime.now(UTC)
    assert (tombstone.level, tombstone.zone) == (Level.TRACE, Zone.SECRET)


# -- datetimes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATETIME_FIELDS)
def test_naive_datetimes_are_taken_as_utc(name: str) -> None:
    """A naive datetime means UTC: same wall time, UTC tzinfo attached."""
    naive_value = naive(2026, 3, 4, 5, 6, 7, 891011)
    fields: dict[str, Any] = {name: naive_value}
    if name == "valid_until":
        fields["valid_from"] = naive_value - timedelta(days=1)
    value = getattr(make(**fields), name)
    assert value.utcoffset() == timedelta(0)
    assert value.replace(tzinfo=None) == naive_value


@pytest.mark.parametrize("name", DATETIME_FIELDS)
@given(offset_min=st.integers(min_value=-23 * 60, max_value=23 * 60))
def test_aware_datetimes_are_converted_to_utc(name: str, offset_min: int) -> None:
    """An aware datetime in any offset becomes the same instant expressed in UTC."""
    aware = datetime(2026, 3, 4, 12, 0, tzinfo=timezone(timedelta(minutes=offset_min)))
    fields: dict[str, Any] = {name: aware}
    if name == "valid_until":
        fields["valid_from"] = aware - timedelta(days=1)
    value = getattr(make(**fields), name)
    assert value.utcoffset() == timedelta(0)
    assert value == aware


def test_tombstone_naive_deleted_at_is_utc() -> None:
    """A tombstone's naive deleted_at is taken as UTC too."""
    tombstone = Tombstone(
        id=new_record_id(),
        scope={"user_id": "u"},
        level="episode",
        zone="public",
        deleted_at=naive(2026, 1, 1, 8),
    )
    assert tombstone.deleted_at == datetime(2026, 1, 1, 8, tzinfo=UTC)


def test_iso_strings_are_parsed_as_datetimes() -> None:
    """Datetimes given as ISO strings (as in JSON) are parsed; naive ones are UTC."""
    record = make(valid_from="2026-01-01T10:00:00", recorded_at="2026-01-01T12:00:00+02:00")
    assert record.valid_from == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert record.recorded_at == datetime(2026, 1, 1, 10, tzinfo=UTC)


# -- content ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", ["", " ", "\n\t  \r\n", "\u3000", "x" * (MAX_CONTENT_CHARS_HARD + 1)]
)
def test_bad_content_raises_invalid_content(content: str) -> None:
    """Empty, whitespace-only and over-long content raise InvalidContent on field content."""
    with pytest.raises(InvalidContent) as caught:
        make(content=content)
    assert caught.value.field == "content"


def test_bad_content_via_model_validate_raises_invalid_content() -> None:
    """model_validate raises the same typed error as the constructor."""
    with pytest.raises(InvalidContent):
        MemoryRecord.model_validate({"content": "  ", "scope": {"user_id": "u1"}})


def test_bad_content_via_model_validate_json_raises_invalid_content() -> None:
    """model_validate_json raises the package's typed error too, not pydantic's."""
    try:
        MemoryRecord.model_validate_json('{"content": "", "scope": {"user_id": "u1"}}')
    except InvalidContent:
        return
    except ValidationError as exc:
        raise AssertionError("pydantic ValidationError leaked") from exc
    raise AssertionError("no error raised")


# -- identifiers -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize("name", SCOPE_FIELDS)
def test_bad_scope_id_raises_invalid_identifier(name: str, bad: str) -> None:
    """Injection strings in any scope id raise InvalidIdentifier naming scope.<field>."""
    scope = {"user_id": "u1", name: bad}
    with pytest.raises(InvalidIdentifier) as caught:
        make(scope=scope)
    assert caught.value.field == f"scope.{name}"
    with pytest.raises(InvalidIdentifier):
        Scope(**scope)


@pytest.mark.parametrize("value", ["u", "U-1", "a.b:c@d_e-f", "x" * 128, "0"])
def test_good_scope_ids_are_accepted(value: str) -> None:
    """Ids of letters, digits and _ . : @ - (starting alphanumeric, ≤128) are kept."""
    assert Scope(user_id=value, session_id=value).session_id == value


@pytest.mark.parametrize(
    "bad",
    [
        *INJECTIONS,
        "not-a-uuid",
        str(uuid.uuid4()).replace("-", ""),
        "{" + str(uuid.uuid4()) + "}",
        "urn:uuid:" + str(uuid.uuid4()),
        str(uuid.uuid4()) + "\n",
    ],
)
@pytest.mark.parametrize("name", ["id", "supersedes", "superseded_by"])
def test_bad_record_id_raises_invalid_identifier(name: str, bad: str) -> None:
    """Record-id fields take only canonical UUID text; anything else is InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier) as caught:
        make(**{name: bad})
    assert caught.value.field is not None


@pytest.mark.parametrize("name", ["sources", "consolidated_into"])
def test_bad_id_in_record_id_list_raises_invalid_identifier(name: str) -> None:
    """A malformed id inside sources/consolidated_into raises InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier):
        make(**{name: [new_record_id(), "../x"]})


def test_tombstone_rejects_bad_id() -> None:
    """A tombstone's id is validated like a record's."""
    with pytest.raises(InvalidIdentifier):
        Tombstone(id='u1" OR 1=1', scope={"user_id": "u1"}, level="episode", zone="public")


@pytest.mark.parametrize("bad", ["*", '{"$ne":1}', "", " lead", "x" * 65, "a\nb", "a;b", 'a"b'])
@pytest.mark.parametrize("name", ["tags", "entities"])
def test_bad_label_raises_invalid_identifier(name: str, bad: str) -> None:
    """Tags and entities must match the label pattern, else InvalidIdentifier on that field."""
    with pytest.raises(InvalidIdentifier) as caught:
        make(**{name: ["ok", bad]})
    assert caught.value.field == name


@pytest.mark.parametrize("key", ["a.b", "1a", "", "a-b", "a b", "$ne", "k" * 65, "é"])
def test_bad_metadata_key_raises_invalid_identifier(key: str) -> None:
    """Metadata keys must be identifier-like (no dots), else InvalidIdentifier on metadata."""
    with pytest.raises(InvalidIdentifier) as caught:
        make(metadata={key: 1})
    assert caught.value.field == "metadata"


def test_identifier_errors_are_value_errors() -> None:
    """InvalidIdentifier is an InvalidInput, a ValueError and a HivememError."""
    with pytest.raises(InvalidIdentifier) as caught:
        check_scope_id("*", field="user_id")
    assert isinstance(caught.value, InvalidInput)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, HivememError)
    assert caught.value.field == "user_id"


@pytest.mark.parametrize(
    "check",
    [
        lambda v: check_scope_id(v, field="f"),
        lambda v: check_label(v, field="f"),
        check_metadata_key,
        check_record_id,
    ],
    ids=["scope", "label", "metadata_key", "record_id"],
)
@pytest.mark.parametrize("value", [None, 5, b"u1", ["u1"]])
def test_non_string_ids_raise_invalid_identifier(check: Any, value: object) -> None:
    """The id checkers reject non-strings with InvalidIdentifier, not TypeError."""
    with pytest.raises(InvalidIdentifier):
        check(value)


@given(ID_LIKE_TEXT)
def test_arbitrary_text_scope_id_validates_or_raises_invalid_identifier(value: str) -> None:
    """Any text is either returned unchanged as a scope id or rejected with InvalidIdentifier."""
    if is_scope_id(value):
        assert check_scope_id(value, field="scope.user_id") == value
    else:
        with pytest.raises(InvalidIdentifier) as caught:
            check_scope_id(value, field="scope.user_id")
        assert caught.value.field == "scope.user_id"


@given(st.text(max_size=200))
def test_arbitrary_text_record_id_validates_or_raises_invalid_identifier(value: str) -> None:
    """Any text is either a canonical UUID (returned lower-cased) or InvalidIdentifier."""
    try:
        result = check_record_id(value)
    except InvalidIdentifier:
        return
    assert result == str(uuid.UUID(value)) == value.lower()


@given(ID_LIKE_TEXT)
def test_arbitrary_text_label_and_key_validate_or_raise_invalid_identifier(value: str) -> None:
    """Any text is either a valid label/metadata key (returned unchanged) or InvalidIdentifier."""
    for check in (lambda v: check_label(v, field="tags"), check_metadata_key):
        with contextlib.suppress(InvalidIdentifier):
            assert check(value) == value


@given(ID_LIKE_TEXT)
def test_arbitrary_text_in_a_record_scope_raises_only_invalid_identifier(value: str) -> None:
    """A record with arbitrary text as user id is built, or raises InvalidIdentifier only."""
    if is_scope_id(value):
        assert make(scope={"user_id": value}).scope.user_id == value
    else:
        with pytest.raises(InvalidIdentifier) as caught:
            make(scope={"user_id": value})
        assert caught.value.field == "scope.user_id"


@given(st.uuids())
def test_any_uuid_in_any_case_is_accepted_canonically(value: uuid.UUID) -> None:
    """Every UUID, in lower or upper case, is accepted and returned in canonical form."""
    assert check_record_id(str(value)) == str(value)
    assert check_record_id(str(value).upper()) == str(value)


# -- numbers, enums, vectors, metadata ----------------------------------------------------------


@pytest.mark.parametrize("importance", [math.nan, math.inf, -math.inf, -0.01, 1.01, 2])
def test_bad_importance_raises_invalid_input(importance: float) -> None:
    """NaN, infinite and out-of-[0, 1] importance raise InvalidInput on importance."""
    with pytest.raises(InvalidInput) as caught:
        make(importance=importance)
    assert caught.value.field == "importance"


def test_negative_access_count_raises_invalid_input() -> None:
    """access_count cannot be negative."""
    with pytest.raises(InvalidInput) as caught:
        make(access_count=-1)
    assert caught.value.field == "access_count"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("level", "bogus"),
        ("level", "EPISODE"),
        ("tier", "hot"),
        ("category", "opinion"),
        ("zone", "top_secret"),
        ("zone", "Public"),
    ],
)
def test_unknown_enum_value_raises_invalid_input(name: str, value: str) -> None:
    """Values outside a closed vocabulary raise InvalidInput naming the field."""
    with pytest.raises(InvalidInput) as caught:
        make(**{name: value})
    assert caught.value.field == name


def test_enum_values_from_strings_become_enums() -> None:
    """Lower-case enum values given as strings become the enum members."""
    record = make(level="domain", tier="archive", category="event", zone="internal")
    assert (record.level, record.tier, record.category, record.zone) == (
        Level.DOMAIN,
        Tier.ARCHIVE,
        Category.EVENT,
        Zone.INTERNAL,
    )


def test_valid_until_before_valid_from_raises_invalid_input() -> None:
    """A validity that ends before it starts raises InvalidInput."""
    with pytest.raises(InvalidInput):
        make(valid_from=datetime(2026, 1, 2, tzinfo=UTC), valid_until=naive(2026, 1, 1))


def test_valid_until_before_valid_from_names_the_field() -> None:
    """The error for an inverted validity names valid_until in ``field``."""
    with pytest.raises(InvalidInput) as caught:
        make(valid_from=datetime(2026, 1, 2, tzinfo=UTC), valid_until=naive(2026, 1, 1))
    assert caught.value.field == "valid_until"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_vector_raises_invalid_input(bad: float) -> None:
    """A dense vector with NaN or ±inf raises InvalidInput on vector."""
    with pytest.raises(InvalidInput) as caught:
        make(vector=[0.5, bad, 0.5])
    assert caught.value.field == "vector"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_sparse_value_raises_invalid_input(bad: float) -> None:
    """A sparse vector with a non-finite weight raises InvalidInput on sparse."""
    with pytest.raises(InvalidInput) as caught:
        make(sparse={"indices": [1, 2], "values": [1.0, bad]})
    assert caught.value.field == "sparse"


def test_sparse_length_mismatch_raises_invalid_input() -> None:
    """Sparse indices and values of different lengths raise InvalidInput."""
    with pytest.raises(InvalidInput):
        SparseVector(indices=[1, 2], values=[1.0])
    with pytest.raises(InvalidInput) as caught:
        make(sparse={"indices": [1], "values": []})
    assert caught.value.field == "sparse"


@pytest.mark.parametrize("indices", [[5, 3], [3, 3], [-1, 2]], ids=["unsorted", "dup", "neg"])
def test_sparse_indices_must_strictly_increase(indices: list[int]) -> None:
    """Sparse term ids that are unsorted, repeated or negative raise InvalidInput."""
    with pytest.raises(InvalidInput):
        SparseVector(indices=indices, values=[1.0, 1.0][: len(indices)])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metadata_number_raises_invalid_input(bad: float) -> None:
    """A non-finite metadata float raises InvalidInput on metadata."""
    with pytest.raises(InvalidInput) as caught:
        make(metadata={"score": bad})
    assert caught.value.field == "metadata"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_number_in_metadata_list_raises_invalid_input(bad: float) -> None:
    """A non-finite float inside a metadata list is rejected like a scalar one."""
    with pytest.raises(InvalidInput):
        make(metadata={"scores": [1.0, bad]})


@pytest.mark.parametrize(
    "value", [{"nested": 1}, [[1]], [None], object()], ids=["dict", "nested", "none", "obj"]
)
def test_unsupported_metadata_value_raises_invalid_input(value: object) -> None:
    """Metadata values are JSON scalars or flat lists of them; others raise InvalidInput."""
    with pytest.raises(InvalidInput) as caught:
        make(metadata={"k": value})
    assert caught.value.field is not None
    assert caught.value.field.startswith("metadata")


@pytest.mark.parametrize("name", ["tags", "entities", "metadata"])
def test_more_than_64_labels_or_keys_raise_invalid_input(name: str) -> None:
    """Tags, entities and metadata hold at most 64 entries."""
    value: Any = (
        {f"k{i}": i for i in range(65)} if name == "metadata" else [f"t{i}" for i in range(65)]
    )
    with pytest.raises(InvalidInput) as caught:
        make(**{name: value})
    assert caught.value.field == name


def test_metadata_text_and_lists_at_their_bounds_are_kept() -> None:
    """Metadata of exactly MAX_METADATA_CHARS characters of text (keys counted), and a list of
    MAX_METADATA_LIST elements, is a valid record."""
    text = "x" * (MAX_METADATA_CHARS - len("note") - len("ids"))
    ids = list(range(MAX_METADATA_LIST))
    assert make(metadata={"note": text, "ids": ids}).metadata == {"note": text, "ids": ids}


@pytest.mark.parametrize(
    "metadata",
    [
        {"source": "s", "blob": "x" * MAX_METADATA_CHARS},
        {"source": "s", "blob": ["x" * 60_000, "y" * 60_000]},
        {"a": "x" * 60_000, "blob": "y" * 60_000},
        {"source": "s", "blob": list(range(MAX_METADATA_LIST + 1))},
    ],
    ids=["one-value", "list-elements", "two-values", "long-list"],
)
def test_oversized_metadata_raises_invalid_input_naming_the_key(
    metadata: dict[str, Any],
) -> None:
    """Metadata holding more text than MAX_METADATA_CHARS, or a list longer than
    MAX_METADATA_LIST, raises InvalidInput on ``metadata.<key>`` (the key that went over): such
    a record could outgrow a sync message."""
    with pytest.raises(InvalidInput) as caught:
        make(metadata=metadata)
    assert caught.value.field == "metadata.blob"


@pytest.mark.parametrize(
    "fields",
    [{"bogus": 1}, {"scope": {"user_id": "u1", "tenant": "t"}}],
    ids=["record", "scope"],
)
def test_unknown_fields_raise_invalid_input(fields: dict[str, Any]) -> None:
    """Extra fields are forbidden, at the top level and in nested models."""
    with pytest.raises(InvalidInput) as caught:
        make(**fields)
    assert caught.value.field is not None


def test_missing_scope_raises_invalid_input() -> None:
    """A record without a scope raises InvalidInput on scope."""
    with pytest.raises(InvalidInput) as caught:
        MemoryRecord(content="x")
    assert caught.value.field == "scope"


def test_errors_never_leak_pydantic_validation_error() -> None:
    """Constructor failures are InvalidInput instances, not pydantic's ValidationError."""
    with pytest.raises(InvalidInput) as caught:
        make(importance="high")
    assert not isinstance(caught.value, ValidationError)


# -- immutability ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "name", "value"),
    [
        (make(), "content", "changed"),
        (make(), "importance", 0.9),
        (Scope(user_id="u1"), "user_id", "u2"),
        (SparseVector(indices=[1], values=[1.0]), "values", [2.0]),
        (
            Tombstone(id=new_record_id(), scope={"user_id": "u"}, level="episode", zone="public"),
            "zone",
            Zone.SECRET,
        ),
    ],
    ids=["content", "importance", "scope", "sparse", "tombstone"],
)
def test_models_are_frozen(model: Model, name: str, value: object) -> None:
    """Assigning to a field of any model raises and leaves the model unchanged."""
    before = model.model_dump()
    with pytest.raises(ValidationError):
        setattr(model, name, value)
    assert model.model_dump() == before


# -- enums -----------------------------------------------------------------------------------


def test_zone_order_is_trust_order_not_alphabetical() -> None:
    """PUBLIC < INTERNAL < CONFIDENTIAL < SECRET, though the values sort otherwise."""
    assert Zone.PUBLIC < Zone.INTERNAL < Zone.CONFIDENTIAL < Zone.SECRET
    assert Zone.SECRET > Zone.CONFIDENTIAL > Zone.INTERNAL > Zone.PUBLIC
    assert Zone.INTERNAL <= Zone.INTERNAL <= Zone.CONFIDENTIAL
    assert Zone.SECRET >= Zone.SECRET >= Zone.PUBLIC
    assert not Zone.SECRET <= Zone.PUBLIC
    assert sorted(Zone, key=str) != list(Zone)
    assert sorted([Zone.SECRET, Zone.PUBLIC, Zone.CONFIDENTIAL, Zone.INTERNAL]) == [
        Zone.PUBLIC,
        Zone.INTERNAL,
        Zone.CONFIDENTIAL,
        Zone.SECRET,
    ]


@given(st.lists(st.sampled_from(list(Zone))))
def test_zone_highest_is_max_by_rank(zones: list[Zone]) -> None:
    """Zone.highest returns the most restrictive zone given, or PUBLIC for none."""
    highest = Zone.highest(zones)
    if not zones:
        assert highest is Zone.PUBLIC
    else:
        assert highest in zones
        assert all(zone <= highest for zone in zones)


@given(st.sampled_from(list(Zone)), st.sampled_from(list(Zone)))
def test_zone_comparisons_agree_with_rank(a: Zone, b: Zone) -> None:
    """Every zone comparison operator agrees with comparing ranks."""
    assert (a < b) == (a.rank < b.rank)
    assert (a <= b) == (a.rank <= b.rank)
    assert (a > b) == (a.rank > b.rank)
    assert (a >= b) == (a.rank >= b.rank)


def test_zone_equals_and_hashes_like_its_value() -> None:
    """A zone equals its lower-case name and hashes like it (it is a str)."""
    assert Zone.SECRET == "secret"
    assert {Zone.SECRET: 1}["secret"] == 1


def test_zone_against_plain_string_never_uses_alphabetical_order() -> None:
    """Comparing a zone with a zone-name string follows trust order or raises TypeError."""
    try:
        allowed = Zone.CONFIDENTIAL <= "internal"  # type: ignore[operator]
    except TypeError:
        return
    assert not allowed


def test_level_rank_follows_hierarchy() -> None:
    """Level ranks go from EPISODE (0) to DOMAIN (3)."""
    assert [level.rank for level in (Level.EPISODE, Level.TRACE, Level.CATEGORY, Level.DOMAIN)] == [
        0,
        1,
        2,
        3,
    ]


@pytest.mark.parametrize("name", ["follows", "supersedes", "superseded_by"])
def test_a_record_naming_itself_is_refused(name: str) -> None:
    """A link from a record to itself (a version of itself, a turn after itself) is refused,
    naming the field: histories and neighbourhoods built from it never ended."""
    own = make().id
    with pytest.raises(InvalidInput, match=name) as refused:
        make(id=own, **{name: own})
    assert refused.value.field == name
    assert getattr(make(id=own, **{name: make().id}), name) != own


@pytest.mark.parametrize("name", ["sources", "consolidated_into"])
def test_a_record_cannot_be_its_own_source(name: str) -> None:
    own, other = make().id, make().id
    with pytest.raises(InvalidInput, match=name):
        make(id=own, **{name: [other, own]})
    assert getattr(make(id=own, **{name: [other]}), name) == [other]

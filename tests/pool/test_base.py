"""hivemem's pydantic base model: typed errors, whether a model is built directly or nested in
another (nested models are validated inside pydantic-core, their errors translated once, by the
outermost model, with the full path of the failing field)."""

from __future__ import annotations

import json

import pytest

from hivemem.pool.enums import Zone
from hivemem.pool.envelope import decode_envelope, make_envelope
from hivemem.pool.errors import InvalidIdentifier, InvalidInput, InvalidMessage
from hivemem.pool.records import MemoryRecord, Scope


def test_a_direct_construction_raises_the_models_typed_error() -> None:
    """Building a model with a bad field raises InvalidInput naming the field, not pydantic's
    ValidationError."""
    with pytest.raises(InvalidInput) as raised:
        Scope()  # type: ignore[call-arg]
    assert raised.value.field == "user_id"


def test_a_nested_models_error_names_the_full_path() -> None:
    """A field missing in a nested model is reported with its dotted path from the outer one."""
    with pytest.raises(InvalidInput) as raised:
        MemoryRecord(content="x", scope={})  # type: ignore[arg-type]
    assert raised.value.field == "scope.user_id"
    assert "scope.user_id" in str(raised.value)


def test_a_validators_typed_error_keeps_its_class_through_nesting() -> None:
    """An identifier check failing inside a nested model raises InvalidIdentifier, with the path."""
    with pytest.raises(InvalidIdentifier) as raised:
        MemoryRecord(content="x", scope={"user_id": "bad id\r\nFLUSHALL"})  # type: ignore[arg-type]
    assert raised.value.field == "scope.user_id"


def test_a_bad_record_inside_an_envelope_is_an_invalid_message() -> None:
    """Decoding an envelope whose record lacks its user raises InvalidMessage naming the record's
    field; a valid one decodes to the same records."""
    record = MemoryRecord(content="x", scope=Scope(user_id="u"), zone=Zone.INTERNAL)
    data = make_envelope(sender="a", zone=Zone.INTERNAL, records=[record]).encode()
    assert decode_envelope(data).records[0].id == record.id
    broken = json.loads(data)
    del broken["records"][0]["scope"]["user_id"]
    with pytest.raises(InvalidMessage) as raised:
        decode_envelope(json.dumps(broken))
    assert raised.value.field == "records.0.scope.user_id"

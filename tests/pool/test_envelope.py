"""The sync envelope: records travel with their vectors; anything malformed is InvalidMessage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import Envelope, PlainCodec, decode_envelope, fitted, make_envelope
from hivemem.pool.errors import InvalidMessage, MessageTooLarge
from hivemem.pool.records import MemoryRecord, Scope, SparseVector, Tombstone


def _record(zone: Zone = Zone.INTERNAL, **fields: object) -> MemoryRecord:
    return MemoryRecord(
        content="the build server moved to rack 4",
        scope=Scope(user_id="u1", agent_id="ops"),
        level=Level.CATEGORY,
        zone=zone,
        sparse=SparseVector(indices=[3, 9], values=[0.5, 1.5]),
        **fields,  # type: ignore[arg-type]
    )


def test_records_round_trip_with_their_vectors() -> None:
    """Content, sparse terms and the dense vector (as float32) arrive intact."""
    record = _record()
    dense = np.random.default_rng(1).random((1, 384), dtype=np.float32)
    envelope = make_envelope(sender="ops", zone=Zone.INTERNAL, records=[record], dense=dense)
    decoded = decode_envelope(envelope.encode())
    (received,) = decoded.records
    (vector,) = decoded.vectors()
    assert received == record
    assert vector is not None
    assert np.array_equal(vector, dense[0])
    assert decoded.message_id == envelope.message_id


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_vector_that_is_not_finite_is_an_invalid_message(bad: float) -> None:
    """Such a row decodes as float32, but stored it would fail every later computation on it
    (a user's consolidation, for one): the message is refused."""
    row = np.full(384, 0.1, dtype=np.float32)
    row[7] = bad
    envelope = make_envelope(sender="ops", zone=Zone.INTERNAL, records=[_record()], dense=[row])
    with pytest.raises(InvalidMessage, match="not finite"):
        decode_envelope(envelope.encode()).vectors()


def test_local_bookkeeping_is_not_sent() -> None:
    """Access counts, supersession back-links and received_from stay with the sender."""
    record = _record(access_count=7, superseded_by="00000000-0000-4000-8000-000000000001")
    record = record.model_copy(update={"received_from": "someone"})
    envelope = make_envelope(sender="ops", zone=Zone.INTERNAL, records=[record], dense=[None])
    (sent,) = decode_envelope(envelope.encode()).records
    assert (sent.access_count, sent.superseded_by, sent.received_from) == (0, None, None)


def test_tombstones_travel_without_content() -> None:
    """A deletion is sent as identity and scope only."""
    tombstone = Tombstone(id=_record().id, scope=Scope(user_id="u1"), level=Level.CATEGORY,
                          zone=Zone.INTERNAL)  # fmt: skip
    envelope = make_envelope(sender="ops", zone=Zone.INTERNAL, tombstones=[tombstone])
    assert decode_envelope(envelope.encode()).tombstones == [tombstone]


def test_the_subject_is_the_one_user_of_the_records() -> None:
    """One user's records: the envelope names them (its seal key follows); tombstones alone or
    several users: no subject; a subject that is not every item's user is refused."""
    one = make_envelope(sender="ops", zone=Zone.INTERNAL, records=[_record()], dense=[None])
    assert one.subject == "u1"
    assert decode_envelope(one.encode()).subject == "u1"
    gone = Tombstone(id=_record().id, scope=Scope(user_id="u1"), level=Level.CATEGORY,
                     zone=Zone.INTERNAL)  # fmt: skip
    assert make_envelope(sender="ops", zone=Zone.INTERNAL, tombstones=[gone]).subject is None
    other = _record().model_copy(update={"scope": Scope(user_id="u2")})
    both = make_envelope(sender="ops", zone=Zone.INTERNAL, records=[_record(), other])
    assert both.subject is None
    forged = json.loads(both.encode())
    forged["subject"] = "u1"
    with pytest.raises(InvalidMessage, match="another user"):
        decode_envelope(json.dumps(forged))


def _valid() -> dict[str, object]:
    envelope = make_envelope(sender="ops", zone=Zone.INTERNAL, records=[_record()], dense=[None])
    result: dict[str, object] = json.loads(envelope.encode())
    return result


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"sender": "a:b"},
        {"to": "x y"},
        {"zone": "ultra"},
        {"message_id": "not-hex"},
        {"dense": []},
        {"zone": "public"},  # the record inside is internal
        {"extra": True},
    ],
)
def test_malformed_envelopes_raise_invalid_message(change: dict[str, object]) -> None:
    """Wrong version, bad ids, mismatched zones or vectors: InvalidMessage, never a crash."""
    data = {**_valid(), **change}
    with pytest.raises(InvalidMessage):
        decode_envelope(json.dumps(data).encode())


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"v": 1}'])
def test_garbage_raises_invalid_message(data: bytes) -> None:
    """Bytes that are not an envelope at all raise InvalidMessage."""
    with pytest.raises(InvalidMessage):
        decode_envelope(data)


def test_envelope_is_immutable() -> None:
    """An envelope cannot be altered after it is made (it is what gets signed)."""
    envelope = Envelope(sender="ops", zone=Zone.PUBLIC)
    with pytest.raises(ValueError, match="frozen"):
        envelope.sender = "other"  # type: ignore[misc]


def test_fitted_cuts_a_batch_into_messages_within_the_limit_in_order() -> None:
    """fitted() gives a batch that fits as one message, and one that does not as several, each
    within the limit, the items in their order; an item that fits in none alone raises
    MessageTooLarge naming it."""
    codec = PlainCodec()
    records = [
        _record(tags=[f"t{i}"]).model_copy(update={"content": "x" * 9_000}) for i in range(40)
    ]

    def envelope_of(part: list[MemoryRecord]) -> Envelope:
        return make_envelope(sender="ops", zone=Zone.INTERNAL, records=part)

    [(whole, body)] = fitted(records, envelope_of, codec, 1_000_000)
    assert [r.id for r in whole.records] == [r.id for r in records]
    assert codec.decode(body).message_id == whole.message_id
    parts = fitted(records, envelope_of, codec, 50_000)
    assert len(parts) > 1
    assert all(len(body) <= 50_000 for _, body in parts)
    assert [r.id for envelope, _ in parts for r in envelope.records] == [r.id for r in records]
    with pytest.raises(MessageTooLarge) as caught:
        fitted(records, envelope_of, codec, 5_000)
    assert caught.value.item_ids == (records[0].id,)

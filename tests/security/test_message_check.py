"""The receiver's message check: each rejection reason from a minimal case, the order the
reasons are checked in (so that forged copies cannot poison the replay guard), the replay
window and the clock skew; and the replay guard's pruning, bound and thread safety."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, MessageRejected
from hivemem.security import message_check, signing
from hivemem.security.message_check import MessageCheck, ReplayGuard, SenderFacts
from hivemem.security.signing import AdminSigner, SigningKey

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MAX_AGE_S, SKEW_S = 300.0, 30.0
ID = "0123456789abcdef0123456789abcdef"


class Agent:
    """A registered agent: its key and its admin-signed registry entry."""

    def __init__(self, admin: AdminSigner, agent_id: str, clearance: Zone) -> None:
        self.key = SigningKey.generate()
        self.facts = SenderFacts(
            agent_id=agent_id,
            clearance=clearance,
            public_key=self.key.public_key,
            registry_signature=admin.sign_entry(agent_id, clearance, self.key.public_key),
        )

    def send(
        self,
        *,
        message_id: str = ID,
        zone: Zone = Zone.INTERNAL,
        sent_at: datetime = T0,
        key: SigningKey | None = None,
    ) -> dict[str, object]:
        """The check's message arguments for a message this agent signs (with ``key``). The
        check treats the signed bytes as opaque; these stand in for an envelope's."""
        signed = json.dumps(
            {
                "message_id": message_id,
                "sender": self.facts.agent_id,
                "zone": zone.value,
                "sent_at": sent_at.isoformat(),
                "records": [],
            },
            sort_keys=True,
        ).encode()
        return {
            "zone": zone,
            "message_id": message_id,
            "sent_at": sent_at,
            "signed_bytes": signed,
            "signature": (key or self.key).sign(signed),
        }


@pytest.fixture
def admin() -> AdminSigner:
    return AdminSigner(SigningKey.generate())


@pytest.fixture
def agent(admin: AdminSigner) -> Agent:
    return Agent(admin, "support", Zone.INTERNAL)


@pytest.fixture
def check(admin: AdminSigner) -> MessageCheck:
    return MessageCheck(
        admin_public_key=admin.public_key,
        max_age_s=MAX_AGE_S,
        max_skew_s=SKEW_S,
        guard=ReplayGuard(MAX_AGE_S),
    )


def _reason(
    check: MessageCheck, sender: SenderFacts | None, message: dict[str, object], now: datetime
) -> str | None:
    """The rejection reason, or None if the message is accepted."""
    try:
        check.check(sender=sender, now=now, **message)  # type: ignore[arg-type]
    except MessageRejected as rejected:
        return rejected.reason
    return None


def test_a_genuine_message_is_accepted(check: MessageCheck, agent: Agent) -> None:
    """Signed by the registered sender, fresh, within clearance, new id: accepted."""
    assert _reason(check, agent.facts, agent.send(), T0 + timedelta(seconds=1)) is None


def test_unsigned(check: MessageCheck, agent: Agent) -> None:
    """No signature, or an empty one: unsigned."""
    for signature in (None, ""):
        message = agent.send() | {"signature": signature}
        assert _reason(check, agent.facts, message, T0) == "unsigned"


def test_revoked(check: MessageCheck, agent: Agent) -> None:
    """A validly signed message from a sender not in the registry: revoked."""
    assert _reason(check, None, agent.send(), T0) == "revoked"


def test_forged_registry_entries(check: MessageCheck, agent: Agent, admin: AdminSigner) -> None:
    """An entry without admin signature, signed by another admin, with a raised clearance, with
    the key swapped for an attacker's, or without a key: forged."""
    attacker = SigningKey.generate()
    other_admin = AdminSigner(SigningKey.generate())
    facts = agent.facts
    cases = [
        (replace(facts, registry_signature=None), agent.send()),
        (
            replace(
                facts,
                registry_signature=other_admin.sign_entry(
                    facts.agent_id, facts.clearance, facts.public_key
                ),
            ),
            agent.send(),
        ),
        (replace(facts, clearance=Zone.SECRET), agent.send(zone=Zone.SECRET)),
        (replace(facts, public_key=attacker.public_key), agent.send(key=attacker)),
        (replace(facts, public_key=None), agent.send()),
        (
            replace(
                facts,
                public_key=None,
                registry_signature=admin.sign_entry(facts.agent_id, facts.clearance, None),
            ),
            agent.send(),
        ),
    ]
    for sender, message in cases:
        assert _reason(check, sender, message, T0) == "forged"


def test_forged_message_signatures(check: MessageCheck, agent: Agent) -> None:
    """Signed by another key, or bytes changed after signing (zone lowered in the body): forged."""
    assert _reason(check, agent.facts, agent.send(key=SigningKey.generate()), T0) == "forged"
    message = agent.send(zone=Zone.INTERNAL)
    tampered = message["signed_bytes"].replace(b'"internal"', b'"public"')  # type: ignore[attr-defined]
    assert tampered != message["signed_bytes"]
    message |= {"signed_bytes": tampered, "zone": Zone.PUBLIC}
    assert _reason(check, agent.facts, message, T0) == "forged"


def test_stale_and_skew(check: MessageCheck, agent: Agent) -> None:
    """Older than max_age_s or further than max_skew_s in the future: stale; exactly at either
    limit: accepted."""
    late = T0 + timedelta(seconds=MAX_AGE_S)
    assert _reason(check, agent.facts, agent.send(message_id="a" * 32), late) is None
    late += timedelta(milliseconds=1)
    assert _reason(check, agent.facts, agent.send(message_id="b" * 32), late) == "stale"
    early = T0 - timedelta(seconds=SKEW_S)
    assert _reason(check, agent.facts, agent.send(message_id="c" * 32), early) is None
    early -= timedelta(milliseconds=1)
    assert _reason(check, agent.facts, agent.send(message_id="d" * 32), early) == "stale"


def test_over_clearance(check: MessageCheck, agent: Agent) -> None:
    """A zone above the sender's clearance: over_clearance; at or below it: accepted."""
    confidential = agent.send(zone=Zone.CONFIDENTIAL, message_id="a" * 32)
    assert _reason(check, agent.facts, confidential, T0) == "over_clearance"
    for i, zone in enumerate((Zone.PUBLIC, Zone.INTERNAL)):
        assert (
            _reason(check, agent.facts, agent.send(zone=zone, message_id=f"{i}" * 32), T0) is None
        )


def test_replayed(check: MessageCheck, agent: Agent) -> None:
    """The same message again, a second later: replayed."""
    message = agent.send()
    assert _reason(check, agent.facts, message, T0) is None
    assert _reason(check, agent.facts, message, T0 + timedelta(seconds=1)) == "replayed"


def test_a_released_message_is_no_replay(check: MessageCheck, agent: Agent) -> None:
    """A message checked but then not applied (the receiver could not fetch its key) is
    released: read again, it passes; released or not, another sender's copy stays its own."""
    message = agent.send()
    assert _reason(check, agent.facts, message, T0) is None
    check.release("someone-else", str(message["message_id"]))
    assert _reason(check, agent.facts, message, T0) == "replayed"
    check.release(agent.facts.agent_id, str(message["message_id"]))
    assert _reason(check, agent.facts, message, T0 + timedelta(seconds=1)) is None
    assert _reason(check, agent.facts, message, T0 + timedelta(seconds=2)) == "replayed"


def test_the_order_of_the_reasons(check: MessageCheck, agent: Agent) -> None:
    """unsigned before revoked, revoked before forged, forged before stale, stale before
    over_clearance, over_clearance before replayed."""
    unsigned = agent.send() | {"signature": None}
    assert _reason(check, None, unsigned, T0) == "unsigned"
    assert _reason(check, None, agent.send(key=SigningKey.generate()), T0) == "revoked"
    forged_and_old = agent.send(key=SigningKey.generate())
    assert _reason(check, agent.facts, forged_and_old, T0 + timedelta(hours=1)) == "forged"
    old_and_too_high = agent.send(zone=Zone.SECRET)
    assert _reason(check, agent.facts, old_and_too_high, T0 + timedelta(hours=1)) == "stale"
    assert _reason(check, agent.facts, agent.send(), T0) is None
    too_high_again = agent.send(zone=Zone.SECRET)
    assert _reason(check, agent.facts, too_high_again, T0) == "over_clearance"


def test_rejected_messages_do_not_poison_the_guard(check: MessageCheck, agent: Agent) -> None:
    """A forged copy, a stale one and an over-clearance one with an id are rejected, and the
    genuine message with that id is still accepted."""
    assert _reason(check, agent.facts, agent.send(key=SigningKey.generate()), T0) == "forged"
    assert _reason(check, agent.facts, agent.send(), T0 + timedelta(hours=1)) == "stale"
    assert _reason(check, agent.facts, agent.send(zone=Zone.SECRET), T0) == "over_clearance"
    assert _reason(check, agent.facts, agent.send(), T0) is None
    assert _reason(check, agent.facts, agent.send(), T0) == "replayed"


def test_one_senders_ids_do_not_block_anothers(
    check: MessageCheck, agent: Agent, admin: AdminSigner
) -> None:
    """Another registered agent sending an id first does not get this agent's message with that
    id rejected: ids are remembered per sender."""
    other = Agent(admin, "intruder", Zone.INTERNAL)
    assert _reason(check, other.facts, other.send(), T0) is None
    assert _reason(check, agent.facts, agent.send(), T0) is None


def test_the_replay_window(check: MessageCheck, agent: Agent) -> None:
    """The id again just inside the window: replayed; re-signed with a new sent_at once the
    window has passed: accepted."""
    assert _reason(check, agent.facts, agent.send(), T0) is None
    inside = T0 + timedelta(seconds=MAX_AGE_S) - timedelta(milliseconds=1)
    assert _reason(check, agent.facts, agent.send(sent_at=inside), inside) == "replayed"
    after = T0 + timedelta(seconds=MAX_AGE_S)
    assert _reason(check, agent.facts, agent.send(sent_at=after), after) is None
    assert _reason(check, agent.facts, agent.send(sent_at=after), after) == "replayed"


def test_a_message_from_the_future_is_remembered_past_its_sent_at(
    check: MessageCheck, agent: Agent
) -> None:
    """A message dated max_skew_s ahead stays remembered until its sent_at plus the window, as
    long as it would pass as fresh."""
    future = T0 + timedelta(seconds=SKEW_S)
    message = agent.send(sent_at=future)
    assert _reason(check, agent.facts, message, T0) is None
    last_fresh = future + timedelta(seconds=MAX_AGE_S)
    assert _reason(check, agent.facts, message, last_fresh - timedelta(milliseconds=1)) == (
        "replayed"
    )


def test_rejection_messages_name_no_content(check: MessageCheck, agent: Agent) -> None:
    """Whatever the reason, the error text holds the id, sender and reason, never the bytes."""
    secret = b"the launch code is 0000"
    signed = agent.key.sign(secret)
    base = {"zone": Zone.SECRET, "message_id": ID, "sent_at": T0, "signed_bytes": secret}
    errors = []
    for sender, signature, now in [
        (agent.facts, None, T0),
        (None, signed, T0),
        (agent.facts, SigningKey.generate().sign(secret), T0),
        (agent.facts, signed, T0 + timedelta(hours=1)),
        (agent.facts, signed, T0),
    ]:
        with pytest.raises(MessageRejected) as rejected:
            check.check(sender=sender, signature=signature, now=now, **base)  # type: ignore[arg-type]
        errors.append(rejected.value)
    assert [e.reason for e in errors] == [
        "unsigned",
        "revoked",
        "forged",
        "stale",
        "over_clearance",
    ]
    for error in errors:
        assert "launch" not in str(error)
        assert signed not in str(error)
        assert ID in str(error)


def test_registry_signatures_are_verified_once_per_entry(
    check: MessageCheck, agent: Agent, admin: AdminSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many messages from one entry verify its admin signature once; a changed entry is
    verified again (and a stale signature on it is forged)."""
    calls: list[str] = []

    def counting(
        admin_key: str,
        agent_id: str,
        clearance: Zone,
        key: str | None,
        signature: str | None,
        *,
        compartments: tuple[str, ...] = (),
    ) -> bool:
        calls.append(agent_id)
        return signing.verify_entry(
            admin_key, agent_id, clearance, key, signature, compartments=compartments
        )

    monkeypatch.setattr(message_check, "verify_entry", counting)
    for i in range(50):
        assert _reason(check, agent.facts, agent.send(message_id=f"{i:032x}"), T0) is None
    assert calls == ["support"]
    raised = replace(agent.facts, clearance=Zone.SECRET)
    assert _reason(check, raised, agent.send(message_id="f" * 32), T0) == "forged"
    resigned = replace(
        raised, registry_signature=admin.sign_entry("support", Zone.SECRET, agent.key.public_key)
    )
    assert _reason(check, resigned, agent.send(message_id="e" * 32, zone=Zone.SECRET), T0) is None
    assert len(calls) == 3


def test_the_constructor_rejects_unsafe_settings(admin: AdminSigner) -> None:
    """A malformed admin key, a non-positive max age, a negative skew, a replay window shorter
    than the max age: InvalidInput."""
    good: dict[str, Any] = {"admin_public_key": admin.public_key, "max_age_s": 60, "max_skew_s": 5}
    MessageCheck(guard=ReplayGuard(60), **good)
    bad_values: list[dict[str, Any]] = [
        {"admin_public_key": "nope"},
        {"max_age_s": 0},
        {"max_skew_s": -1},
    ]
    for bad in bad_values:
        with pytest.raises(InvalidInput):
            MessageCheck(guard=ReplayGuard(60), **(good | bad))
    with pytest.raises(InvalidInput, match="replay window"):
        MessageCheck(guard=ReplayGuard(59), **good)


def test_naive_datetimes_are_invalid_input(check: MessageCheck, agent: Agent) -> None:
    """sent_at or now without a timezone: InvalidInput, not a silent local-time comparison."""
    naive = T0.replace(tzinfo=None)
    with pytest.raises(InvalidInput):
        check.check(sender=agent.facts, now=naive, **agent.send())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        ReplayGuard(10).check_and_remember(ID, naive, T0)


# The replay guard on its own.


def test_guard_remembers_an_id_for_the_window() -> None:
    """New: True; again within the window: False (up to a microsecond before its end); at the
    end of the window: True again."""
    guard = ReplayGuard(10)
    assert guard.check_and_remember(ID, T0, T0)
    assert not guard.check_and_remember(ID, T0, T0 + timedelta(seconds=10, microseconds=-1))
    assert guard.check_and_remember(ID, T0, T0 + timedelta(seconds=10))
    assert not guard.check_and_remember(ID, T0, T0 + timedelta(seconds=11))


def test_guard_prunes_expired_ids() -> None:
    """Ids past their window are forgotten a bounded number per call, oldest first, while ids
    still inside it are kept."""
    guard = ReplayGuard(10)
    for i in range(100):
        guard.check_and_remember(f"old-{i}", T0, T0)
    for i in range(10):
        guard.check_and_remember(f"new-{i}", T0, T0 + timedelta(seconds=5))
    assert len(guard) == 110
    later = T0 + timedelta(seconds=11)
    for i in range(4):
        assert guard.check_and_remember(f"later-{i}", later, later)
    assert len(guard) == 10 + 4  # all 100 old ones gone after 4 calls of up to 32 each
    assert not guard.check_and_remember("new-3", later, later)
    assert guard.check_and_remember("old-3", later, later)  # forgotten: new again


def test_guard_is_bounded_by_max_entries() -> None:
    """Past max_entries the oldest ids are dropped first."""
    guard = ReplayGuard(3600, max_entries=3)
    for i in range(5):
        assert guard.check_and_remember(f"id-{i}", T0, T0)
    assert len(guard) == 3
    assert not guard.check_and_remember("id-4", T0, T0)
    assert not guard.check_and_remember("id-2", T0, T0)
    assert guard.check_and_remember("id-0", T0, T0)  # dropped, so new again
    assert len(guard) == 3


def test_guard_accepts_each_id_once_across_threads() -> None:
    """Eight threads offering the same 2,000 ids: each id accepted exactly once."""
    guard = ReplayGuard(60)
    ids = [f"{i:032x}" for i in range(2000)]
    accepted: list[int] = []
    barrier = threading.Barrier(8)

    def offer() -> None:
        barrier.wait()
        accepted.append(sum(guard.check_and_remember(i, T0, T0) for i in ids))

    threads = [threading.Thread(target=offer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(accepted) == len(ids)
    assert len(guard) == len(ids)


def test_guard_rejects_bad_settings() -> None:
    """A non-positive window or max_entries below one: InvalidInput."""
    cases: list[dict[str, Any]] = [
        {"window_s": 0},
        {"window_s": -1},
        {"window_s": 1, "max_entries": 0},
    ]
    for kwargs in cases:
        with pytest.raises(InvalidInput):
            ReplayGuard(**kwargs)

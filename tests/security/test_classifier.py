"""The sensitive-content classifier: what each detector fires on and, as much, what it must not
fire on (dates, times, versions, IP addresses, other detectors' shapes, placeholders); how a
policy lifts zones; and that no matched text leaves the classifier.

Token-like test values are assembled from pieces, so that no secret scanner mistakes this file
for a leak; card numbers get their Luhn check digit computed here, independently of the code.
"""

from __future__ import annotations

import dataclasses
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput
from hivemem.security.classifier import (
    DEFAULT_MIN_ZONE,
    DETECTORS,
    Assessment,
    Classifier,
    SensitivityPolicy,
    detect,
    luhn_valid,
)


def luhn_digit(body: str) -> str:
    """The check digit that makes ``body + digit`` Luhn-valid (doubling every second digit
    from the right of the completed number)."""
    total = 0
    for position, char in enumerate(reversed(body)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str(-total % 10)


def card(prefix: str, length: int, *, valid: bool = True) -> str:
    """A ``length``-digit number starting with ``prefix``: filler digits from a seeded RNG and
    the right check digit, or (``valid=False``) a wrong one."""
    rng = random.Random(f"{prefix}/{length}")
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    check = int(luhn_digit(body))
    return body + str(check if valid else (check + 1 + rng.randrange(9)) % 10)


def groups_of(length: int) -> tuple[int, ...]:
    """How a number of ``length`` digits is printed: 4-6-5 for 15 digits, else fours and the
    rest."""
    if length == 15:
        return (4, 6, 5)
    return (4,) * (length // 4) + ((length % 4,) if length % 4 else ())


def grouped(number: str, sizes: tuple[int, ...], sep: str) -> str:
    assert sum(sizes) == len(number)
    parts, start = [], 0
    for size in sizes:
        parts.append(number[start : start + size])
        start += size
    return sep.join(parts)


def alnum(length: int, seed: int = 0) -> str:
    """Mixed-case letters and digits, like a real key's random part."""
    rng = random.Random(seed)
    chars = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"
    return "aZ7" + "".join(rng.choice(chars) for _ in range(length - 3))


#: (issuer prefix, length): one per issuer range edge the detector knows.
ISSUERS = [
    ("4", 16), ("4", 13), ("4", 19),  # Visa
    ("51", 16), ("55", 16), ("2221", 16), ("2720", 16),  # Mastercard
    ("34", 15), ("37", 15),  # Amex
    ("6011", 16), ("65", 16), ("644", 16), ("649", 19),  # Discover
    ("3528", 16), ("3589", 16),  # JCB
    ("36", 14), ("300", 14), ("305", 16), ("38", 16),  # Diners Club
]  # fmt: skip
AWS = "AKIA" + "IOSFODNN7" + "EXAMPLE"  # the documentation's sample key id
JWT = ".".join(
    [
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0",
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    ]
)


def test_luhn_helper_agrees_with_known_numbers() -> None:
    """The test's check digit and the module's Luhn check agree with published test numbers."""
    for number in ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"):
        assert luhn_digit(number[:-1]) == number[-1]
        assert luhn_valid(number)
    assert not luhn_valid("4111111111111112")


# --- positives: each text fires exactly its own detector -------------------------------------
POSITIVES = [
    ("ssn", "SSN: 123-45-6789"),
    ("ssn", "her social security number is 536 22 1234, keep it safe"),
    ("ssn", "(ssn 536-22-1234)"),
    ("ssn", "SSN 536221234"),
    ("ssn", "Social Security No. 536221234"),
    ("ssn", "her social security number is 536221234"),
    ("ssn", "ssn: #536221234."),
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow..."),
    ("private_key", "-----BEGIN PRIVATE KEY-----"),
    ("private_key", "-----BEGIN EC PRIVATE KEY-----"),
    ("private_key", "-----BEGIN ENCRYPTED PRIVATE KEY-----"),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA"),
    ("private_key", "-----BEGIN PGP PRIVATE KEY BLOCK-----"),
    ("api_token", f"aws_access_key_id {AWS}"),
    ("api_token", "ASIA" + "Y34FZKBOKMUTVV7A"),
    *[("api_token", f"use gh{kind}_{alnum(36, i)} for CI") for i, kind in enumerate("pousr")],
    ("api_token", "github_pat_" + alnum(22) + "_" + alnum(59, 1)),
    ("api_token", "xoxb-" + "123456789012-1234567890123-" + alnum(24)),
    ("api_token", "OPENAI_KEY is sk-" + alnum(48)),
    ("api_token", "sk-proj-" + alnum(40, 2) + "-" + alnum(30, 3)),
    ("api_token", "sk_live_" + alnum(24)),
    ("api_token", "rk_live_" + alnum(24)),
    ("api_token", "sk_test_" + alnum(24)),
    ("private_key", "-----BEGIN  PRIVATE KEY-----\nMIIEvQ"),
    ("private_key", "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none"),
    ("api_token", "export GITLAB_TOKEN glpat-" + alnum(20)),
    ("api_token", "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"),
    ("api_token", "npm_" + alnum(36)),
    ("api_token", "AIza" + alnum(35)),
    ("api_token", f"Authorization: Bearer {JWT}"),
    ("api_token", "api_key = Zx81kq0PLmn3"),
    ("api_token", "API_KEY=abcdEFGH12345678"),
    ("api_token", "password: correcthorsebatterystaple"),
    ("api_token", "secret=s3cr3tvalue-xyz"),
    ("api_token", "token: 9f8e7d6c5b4a3210"),
    ("api_token", '{"client_secret": "0a1b2c3d4e5f6a7b"}'),
    ("api_token", "DB_PASSWORD='hunter2hunter2'"),
    ("api_token", "password=$ecretPass99x"),
    ("api_token", "password=(Xk29vLq7aa9!)"),
    ("api_token", "secret: [Xk29vLq7aa9]"),
    ("api_token", "token={Xk29vLq7aa9!"),
    ("api_token", "password=%Xk29vLq7aa9"),
    ("api_token", "password=*Xk29vLq7aa9"),
    ("api_token", "password=<Xk29vLq7aa9!"),
    ("api_token", "secret: $Tr0ub4dor&3x"),
    ("api_token", "İ" * 30 + " token: abcdefghijklmn"),  # lower() lengthens İ
    ("email", "write to jane.doe@example.com today"),
    ("email", "a+tag@sub.example.co.uk"),
    ("email", "<bob_smith@corp.example.org>"),
    ("email", "mailto:First.Last@Example.COM"),
    ("phone", "call (415) 555-0123"),
    ("phone", "(415)555-0123"),
    ("phone", "415-555-0123"),
    ("phone", "415.555.0123"),
    ("phone", "1-415-555-0123"),
    ("phone", "+1 (415) 555-0123"),
    ("phone", "+1 415 555 0123"),
    ("phone", "tel:+14155550123"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "+49-30-901820."),
    ("phone", "call me at 415 555 0123"),
    ("phone", "Mobile: 212 555 0187"),
    ("phone", "tel 650 253 0000, ask for Sam"),
]


@pytest.mark.parametrize(("detector", "text"), POSITIVES)
def test_detector_fires_alone_on_its_shape(detector: str, text: str) -> None:
    """Each sample fires its detector, and no other."""
    assert detect(text) == [detector]


@pytest.mark.parametrize(("prefix", "length"), ISSUERS)
@pytest.mark.parametrize(
    "layout", ["plain", "spaces", "dashes", "sentence"], ids=lambda layout: layout
)
def test_card_with_computed_check_digit_fires(prefix: str, length: int, layout: str) -> None:
    """A Luhn-valid number of a known issuer fires payment_card, plain or grouped."""
    number = card(prefix, length)
    sizes = groups_of(length)
    text = {
        "plain": number,
        "spaces": grouped(number, sizes, " "),
        "dashes": grouped(number, sizes, "-"),
        "sentence": f"Card {grouped(number, sizes, ' ')}, exp 12/27.",
    }[layout]
    assert detect(text) == ["payment_card"]


@pytest.mark.parametrize(("prefix", "length"), ISSUERS)
def test_card_with_wrong_check_digit_does_not_fire(prefix: str, length: int) -> None:
    """The same numbers with any other check digit fire nothing."""
    number = card(prefix, length, valid=False)
    assert not luhn_valid(number)
    assert detect(number) == []
    assert detect(grouped(number, groups_of(length), " ")) == []


CARD = card("4", 16)
CARD_NEGATIVES = [
    card("1", 16),  # Luhn-valid but no issuer starts with 1
    card("9", 16),
    card("7", 16),
    card("4", 15),  # Visa has 13, 16 or 19 digits
    card("37", 16),  # Amex has 15
    card("51", 19),  # Mastercard has 16
    "99" + CARD,  # inside a longer digit run
    CARD + "00",
    grouped(CARD + "12345678", (4,) * 6, " "),  # six groups: 24 digits
    f"{CARD[:4]} {CARD[4:8]}-{CARD[8:12]} {CARD[12:]}",  # mixed separators
    f"id_{CARD}",
    f"x{CARD}",
    f"0.{CARD}",
    f"+{CARD}",
]


@pytest.mark.parametrize("text", CARD_NEGATIVES)
def test_card_shapes_that_are_not_cards(text: str) -> None:
    """Unknown issuers, wrong lengths, longer runs and numbers inside words are not cards."""
    assert "payment_card" not in detect(text)


SSN_NEGATIVES = [
    "000-12-3456",
    "666-12-3456",
    "900-12-3456",
    "999-12-3456",
    "536-00-1234",
    "536-22-0000",
    "536-22 1234",  # two different separators
    "1536-22-1234",
    "536-22-12345",
    "1-536-22-1234",
    "536221234",  # nine bare digits, no "SSN" before them
    "order 536221234 shipped",
    "SSN 000221234",
    "ssn 5362212345",
    "the ssn field is missing; invoice 536221234",  # too far from the word
]


@pytest.mark.parametrize("text", SSN_NEGATIVES)
def test_ssn_shapes_that_are_not_ssns(text: str) -> None:
    """Never-issued numbers, other digit counts and bare numbers far from "SSN" do not fire."""
    assert "ssn" not in detect(text)


TOKEN_NEGATIVES = [
    "ghp_short",
    "AKIA123",
    "XAKIA" + "IOSFODNN7EXAMPLE",
    "AKIA" + "iosfodnn7example",
    "eyJhbGciOiJIUzI1NiJ9",  # one part is not a JWT
    "sk-learn-compatible-transformer-pipelines",
    "task-" + alnum(30),
    "password: hunter2",  # shorter than 12
    "password: ${DB_PASSWORD}",
    "password: $DB_PASSWORD_PROD",
    "token=$(cat_the_ci_token_file)",
    "api_key = os.environ['API_KEY']",
    "token = get_token_from_vault()",
    "password: ********************",
    "secret=<your-secret-here>",
    "password: {{ db_password }}",
    "password: {{db_password}}",
    "password=%(db_password)s",
    "password=%DB_PASSWORD_PROD%",
    "password: [REDACTED-BY-OPS]",
    "password: (redacted_value)",
    "password: ***redacted***",
    "token: https://example.com/tokens/refresh",
    "the token budget is 4096 per request",
    "reset your password via the link we sent",
    "Key takeaways: latency matters more than throughput",
    "tokens: 123456789012345",
    "monkey: abcdefghijklmnop",
    "postgres://user:password@localhost:5432/app",  # the documentation's example
    "postgres://postgres:postgres@localhost/db",
    "redis://:***@127.0.0.1:6379/0",  # a URL as hivemem shows it
    "postgres://app:${DB_PASSWORD}@db/app",
    "https://github.com/org/repo@v1.2.3",
    "ssh://git@example.com:22/repo.git",
    "mysql://app:short@db/app",
]


@pytest.mark.parametrize("text", TOKEN_NEGATIVES)
def test_token_lookalikes_do_not_fire(text: str) -> None:
    """Short or embedded prefixes, prose, references and masks are not tokens."""
    assert "api_token" not in detect(text)


EMAIL_NEGATIVES = [
    "@alice",
    "ping @bob.smith about it",
    "user@localhost",
    "git clone git@github.com:org/repo.git",
    "icon@2x.png",
    "npm install left-pad@1.3.0",
    "@dataclass(frozen=True)",
    "a@b",
    ".alice@example.com",
    "alice..bob@example.com",
    "matrix product a @ b.T",
]


@pytest.mark.parametrize("text", EMAIL_NEGATIVES)
def test_at_signs_that_are_not_addresses(text: str) -> None:
    """Mentions, hosts without a domain, ssh remotes, file names and versions are not emails."""
    assert "email" not in detect(text)


KEY_NEGATIVES = [
    "-----BEGIN PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----",
    "-----BEGIN PGP PUBLIC KEY BLOCK-----",
    "----- private key -----",
    "store the private key in the vault",
]


@pytest.mark.parametrize("text", KEY_NEGATIVES)
def test_public_material_and_prose_are_not_private_keys(text: str) -> None:
    """Public keys, certificates and mentions of private keys do not fire."""
    assert "private_key" not in detect(text)


#: What must fire nothing at all: the phone detector's traps first.
TRAPS = [
    "2024-01-15",
    "15.01.2024",
    "01/15/2024",
    "on 2024-01-15 at 10:30",
    "2024-01-15T10:30:00+01:00",
    "10:30:45",
    "version 1.2.3",
    "v10.200.3000",
    "upgrade to 2.10.3-rc1",
    "192.168.100.200",
    "10.0.0.1:8080",
    "2001:db8::1",
    "4155550123",  # a plain integer
    "1234567890123",
    "+1234567",  # too short for E.164
    "123-456-7890",  # no NANP area code starts with 1
    "+1 2024-01-15",
    "ISBN 978-3-16-148410-0",
    "ZIP 94105-1234",
    "12,345,678",
    "3.14159265358979323",
    "The team agreed to move the weekly planning meeting to Thursday.",
    "buffer sizes 256 512 1024 and 2048",  # spaced digits with no word saying phone
    "we called it done; the sizes were 256 512 1024",  # the cue too far before
    "",
]


@pytest.mark.parametrize("text", TRAPS)
def test_false_positive_traps_fire_nothing(text: str) -> None:
    """Dates, times, versions, addresses, plain integers and prose fire no detector."""
    assert detect(text) == []


@pytest.mark.parametrize(
    "text",
    ["SSN 536-22-1234", "536 22 1234", CARD, grouped(CARD, (4, 4, 4, 4), "-"), "37828224631000"],
)
def test_phone_does_not_fire_on_ssns_or_cards(text: str) -> None:
    """SSNs and card numbers are not phone numbers."""
    assert "phone" not in detect(text)


@given(st.text(alphabet=st.characters(categories=["L", "Zs"]), max_size=400))
def test_text_of_letters_and_spaces_fires_nothing(text: str) -> None:
    """Text with no digit and no punctuation can hold nothing the detectors look for."""
    assert detect(text) == []


def test_detect_reports_every_detector_sorted() -> None:
    """A text holding one of each fires all detectors, names sorted; DETECTORS is that list."""
    text = (
        f"ssn 536-22-1234, card {CARD}, key -----BEGIN PRIVATE KEY-----, {AWS}, "
        "mail jane@example.com, phone +1 415 555 0123"
    )
    assert detect(text) == list(DETECTORS) == sorted(DEFAULT_MIN_ZONE)


# --- policy ------------------------------------------------------------------------------------
def test_public_text_with_ssn_is_lifted_to_confidential() -> None:
    """A PUBLIC record holding an SSN must be CONFIDENTIAL at least."""
    assessment = Classifier().assess("SSN: 536-22-1234", Zone.PUBLIC)
    assert assessment == Assessment(Zone.CONFIDENTIAL, ["ssn"], lifted=True)


def test_secret_record_stays_secret() -> None:
    """A zone is never lowered: SECRET stays SECRET, and the detector is still reported."""
    assessment = Classifier().assess("SSN: 536-22-1234", Zone.SECRET)
    assert assessment == Assessment(Zone.SECRET, ["ssn"], lifted=False)


def test_highest_minimum_wins() -> None:
    """Several detectors: the zone is the highest of their minimums (api_token: SECRET)."""
    assessment = Classifier().assess(f"jane@example.com {AWS}", Zone.INTERNAL)
    assert assessment == Assessment(Zone.SECRET, ["api_token", "email"], lifted=True)


def test_clean_text_keeps_the_asked_zone() -> None:
    """Nothing fires: the asked zone, unlifted."""
    assert Classifier().assess("meeting moved to Thursday", Zone.INTERNAL) == Assessment(
        Zone.INTERNAL, [], lifted=False
    )


def test_disabled_policy_lifts_nothing() -> None:
    """enabled=False runs no detector at all."""
    classifier = Classifier(SensitivityPolicy(enabled=False))
    assert classifier.assess(f"SSN 536-22-1234 {AWS}", Zone.PUBLIC) == Assessment(
        Zone.PUBLIC, [], lifted=False
    )


def test_detector_absent_from_min_zone_is_not_run() -> None:
    """Removing ssn from min_zone: an SSN lifts nothing, the other detectors still work."""
    policy = SensitivityPolicy(min_zone={k: v for k, v in DEFAULT_MIN_ZONE.items() if k != "ssn"})
    classifier = Classifier(policy)
    assert classifier.assess("SSN 536-22-1234", Zone.PUBLIC) == Assessment(
        Zone.PUBLIC, [], lifted=False
    )
    assert classifier.assess("jane@example.com", Zone.PUBLIC).zone == Zone.INTERNAL


def test_min_zone_values_are_configurable_as_strings() -> None:
    """Zones given as strings (as from settings) are parsed; a custom minimum applies."""
    policy = SensitivityPolicy.model_validate({"min_zone": {"email": "secret"}})
    assert policy.min_zone == {"email": Zone.SECRET}
    assert Classifier(policy).assess("jane@example.com", "public").zone == Zone.SECRET  # type: ignore[arg-type]


def test_default_policy_values() -> None:
    """The documented defaults: enabled, and the six minimum zones."""
    policy = SensitivityPolicy()
    assert policy.enabled
    assert policy.min_zone == {
        "ssn": Zone.CONFIDENTIAL,
        "payment_card": Zone.CONFIDENTIAL,
        "private_key": Zone.SECRET,
        "api_token": Zone.SECRET,
        "email": Zone.INTERNAL,
        "phone": Zone.INTERNAL,
    }


def test_unknown_detector_is_a_validation_error_listing_known_ones() -> None:
    """An unknown name in min_zone is refused, naming it and every known detector."""
    with pytest.raises(ValidationError) as caught:
        SensitivityPolicy(min_zone={"ssn": Zone.SECRET, "iban": Zone.SECRET})
    message = str(caught.value)
    assert "'iban'" in message
    assert all(name in message for name in DETECTORS)


@pytest.mark.parametrize(
    "fields", [{"min_zone": {"ssn": "top"}}, {"enabled": True, "extra": 1}, {"min_zone": []}]
)
def test_malformed_policy_is_refused(fields: dict[str, object]) -> None:
    """A value naming no zone, an unknown field or a wrong type: ValidationError."""
    with pytest.raises(ValidationError):
        SensitivityPolicy.model_validate(fields)


def test_policy_is_frozen() -> None:
    """A policy cannot be changed after construction."""
    with pytest.raises(ValidationError):
        SensitivityPolicy().enabled = False  # type: ignore[misc]


def test_bad_arguments_raise_invalid_input() -> None:
    """An unknown zone, a text that is not a string, or mismatched lengths: InvalidInput."""
    classifier = Classifier()
    with pytest.raises(InvalidInput):
        classifier.assess("hello", "top")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        classifier.assess(b"SSN 536-22-1234", Zone.PUBLIC)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as caught:
        classifier.assess_many(["a", "b"], [Zone.PUBLIC])
    assert caught.value.field == "zones"


# --- what leaves the classifier ----------------------------------------------------------------
SECRETS = [
    "536-22-1234",
    CARD,
    "-----BEGIN RSA PRIVATE KEY-----",
    AWS,
    "Zx81kq0PLmn3",
    "jane.doe@example.com",
    "(415) 555-0123",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_assessment_holds_none_of_the_matched_text(secret: str) -> None:
    """The Assessment's repr and fields name detectors and zones only, never the matched text."""
    text = f"api_key = {secret}" if secret == "Zx81kq0PLmn3" else f"note: {secret}"
    assessment = Classifier().assess(text, Zone.PUBLIC)
    assert assessment.detectors  # something fired
    assert {field.name for field in dataclasses.fields(assessment)} == {
        "zone",
        "detectors",
        "lifted",
    }
    shown = repr(assessment) + str(dataclasses.astuple(assessment))
    assert secret not in shown
    assert not any(part in shown for part in secret.replace("-", " ").split() if len(part) > 3)
    assert set(assessment.detectors) <= set(DETECTORS)


def test_assess_many_equals_assess_one_by_one() -> None:
    """assess_many returns, in order, what assess returns for each pair."""
    texts = [*(text for _, text in POSITIVES), *TRAPS, *SSN_NEGATIVES]
    zones = [list(Zone)[i % 4] for i in range(len(texts))]
    classifier = Classifier()
    assert classifier.assess_many(texts, zones) == [
        classifier.assess(text, zone) for text, zone in zip(texts, zones, strict=True)
    ]
    assert classifier.assess_many([], []) == []


@pytest.mark.parametrize(
    "unit", ["xoxb-", "xoxb-1-", "eyJ-", "eyJa", "sk-", "a_sk-", "password=", "4111 ", "(415) "]
)
def test_long_runs_of_a_prefix_take_linear_time(unit: str) -> None:
    """200,000 characters of one repeated prefix: each repetition used to start a match that
    scanned the rest of the run (the Slack and JWT formats: 23.6 s for 100,000 characters of
    ``xoxb-``, quadratic). Linear now: milliseconds; the bound leaves a wide margin for a busy
    machine and still fails the quadratic scan by far."""
    text = unit * (200_000 // len(unit))
    start = time.perf_counter()
    Classifier().assess(text, Zone.PUBLIC)
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    "text",
    [
        "connect to postgres://app:Xk29vLq7w@db.internal:5432/app",
        "REDIS_URL=redis://:q8Fz1LmN3pRt@cache:6379/0",
        "amqp://guest:Guest-2026-secret@mq/vhost",
    ],
)
def test_a_password_in_a_url_fires(text: str) -> None:
    """Credentials in a URL are a secret like a token (the host after the "@" may also read as
    an address)."""
    assert "api_token" in detect(text)


def test_url_scan_is_linear() -> None:
    """Long runs after "://" (with or without a ":" or "@") take milliseconds, not seconds."""
    for text in ("a://" + "x" * 100_000, "a://:" + "x" * 100_000, "a://" * 30_000 + "@"):
        started = time.perf_counter()
        detect(text)
        assert time.perf_counter() - started < 1.0

"""The sensitive-content detectors: which of them fire on a text (:func:`detect`,
:func:`detect_among`). :mod:`hivemem.security.classifier` turns their names into the zone a
record must have at least.

Six detectors (:data:`DETECTORS`), each precompiled regexes plus a check of what they matched:
``ssn`` (US social security numbers), ``payment_card`` (Luhn-valid numbers of a known issuer),
``private_key`` (PEM, OpenSSH and PGP private key headers), ``api_token`` (well-known token
formats, ``api_key = …``-style assignments and passwords in URLs), ``email`` and ``phone``
(E.164 and North American forms). They favour precision over recall: a false positive silently
lifts a record's zone, so shapes that are often something else (dates, times, versions, IP
addresses, plain integers, placeholders such as ``password: ${DB_PASSWORD}``, the example
passwords of documentation URLs) are left alone. Digits are ASCII.

Only detector names leave this module: matched text is never returned, logged nor put in an
error. The module logs nothing.

Cost: each detector starts with a pre-check of plain substring tests (is there a digit, an
``@``, ``-----``, a token prefix, a key word and a ``:`` or ``=``?), so ordinary prose skips
most regexes. Patterns start with a literal or a character class where they can (the regex
engine then skips ahead to candidates), and none can backtrack more than linearly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

_A = re.ASCII  # \d is 0-9 and \w is [A-Za-z0-9_] in every pattern


class _Text(NamedTuple):
    """A text and what the pre-checks of several detectors share, computed once."""

    text: str
    lower: str
    has_digit: bool

    @classmethod
    def of(cls, text: str) -> _Text:
        return cls(text, text.lower(), any(digit in text for digit in "0123456789"))


# A pattern that starts at a digit checks what precedes it with a look-behind placed after that
# digit, so that the engine skips ahead to digits instead of trying every position.

# --- ssn: ddd-dd-dddd or ddd dd dddd (one separator), or 9 bare digits after "SSN" -------------
_SSN = re.compile(r"(\d(?<![\w.-]\d)(?<!\d \d)\d\d)([- ])(\d\d)\2(\d{4})(?![\w-])(?! \d)", _A)
#: At most three words between "SSN" and the number: "social security number is 536221234".
_SSN_BARE = re.compile(
    r"(?i)\b(?:ssns?|social\s+security)\b(?:\W{1,5}[a-z]+){0,3}?\W{1,5}(\d{3})(\d\d)(\d{4})"
    r"(?![\w-])",
    _A,
)


def _valid_ssn(area: str, group: str, serial: str) -> bool:
    """Area 000, 666 and 900-999, group 00 and serial 0000 are never issued."""
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ssn(scan: _Text) -> bool:
    if not scan.has_digit:
        return False
    if any(_valid_ssn(*m.group(1, 3, 4)) for m in _SSN.finditer(scan.text)):
        return True
    return ("ssn" in scan.lower or "social" in scan.lower) and any(
        _valid_ssn(*m.groups()) for m in _SSN_BARE.finditer(scan.text)
    )


# --- payment_card: 13-19 digits, plain or in groups, Luhn-valid, known issuer ------------------
_CARD = re.compile(
    r"\d(?<![\w+.,-]\d)(?<!\d[ -]\d)"  # the first digit, not continuing a number
    r"(?:\d{12,18}|\d{3}(?P<sep>[ -])\d{2,6}(?:(?P=sep)\d{1,6}){1,4})"
    r"(?![\w-])(?![ .,]\d)",
    _A,
)
#: (first, last, lengths): the issuer's numbers start with a prefix between ``first`` and
#: ``last`` (as many digits as ``first`` has) and have one of ``lengths`` digits.
_ISSUERS: tuple[tuple[str, str, Sequence[int]], ...] = (
    ("4", "4", (13, 16, 19)),  # Visa
    ("51", "55", (16,)),  # Mastercard
    ("2221", "2720", (16,)),  # Mastercard (2-series)
    ("34", "34", (15,)),  # American Express
    ("37", "37", (15,)),
    ("6011", "6011", range(16, 20)),  # Discover
    ("644", "649", range(16, 20)),
    ("65", "65", range(16, 20)),
    ("3528", "3589", range(16, 20)),  # JCB
    ("300", "305", range(14, 20)),  # Diners Club
    ("36", "36", range(14, 20)),
    ("38", "38", range(14, 20)),
)


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (ASCII decimal digits only) passes the Luhn (mod 10) check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_number(digits: str) -> bool:
    for first, last, lengths in _ISSUERS:
        if first <= digits[: len(first)] <= last:
            return len(digits) in lengths and luhn_valid(digits)
    return False


def _card(scan: _Text) -> bool:
    return scan.has_digit and any(
        _card_number(m.group().replace(" ", "").replace("-", "")) for m in _CARD.finditer(scan.text)
    )


# --- private_key --------------------------------------------------------------------------------
_PRIVATE_KEY = re.compile(r"-----BEGIN {1,2}(?:[A-Z0-9]+ {1,2})*PRIVATE KEY(?: BLOCK)?-----")
_PUTTY_KEY = "PuTTY-User-Key-File-"


def _private_key(scan: _Text) -> bool:
    text = scan.text
    return ("-----" in text and _PRIVATE_KEY.search(text) is not None) or _PUTTY_KEY in text


# --- api_token: known formats, then `key word [:=] value` assignments ---------------------------
def _token_format(prefix: str, rest: str, word: str = "A-Za-z0-9") -> re.Pattern[str]:
    """``prefix`` then ``rest``, the prefix not continuing a word (of ``word``'s characters).
    The pattern starts with the literal prefix, which the engine finds fastest. A format whose
    ``rest`` may run over ``-`` or ``_`` counts them as word characters: else each repetition
    of the prefix within one long run (``xoxb-xoxb-…``) would start a match that scans the rest
    of the run, quadratic time (60 s for 100 kB)."""
    return re.compile(f"{re.escape(prefix)}(?<![{word}]{'.' * len(prefix)}){rest}", _A)


#: (cue, pattern): ``cue`` is a character of the prefix that is rare in prose, tested first.
_TOKEN_FORMATS = (
    ("K", _token_format("AKIA", r"[A-Z0-9]{16}(?![A-Za-z0-9])")),  # AWS access key id
    ("S", _token_format("ASIA", r"[A-Z0-9]{16}(?![A-Za-z0-9])")),  # AWS temporary key id
    ("_", _token_format("gh", r"[pousr]_[A-Za-z0-9]{36,}")),  # GitHub
    ("_", _token_format("github_pat_", r"[A-Za-z0-9_]{22,}")),
    ("x", _token_format("xox", r"[abprs]-(?:[A-Za-z0-9]+-){1,8}[A-Za-z0-9]{8,}", r"\w-")),
    ("_", _token_format("sk_live_", r"[A-Za-z0-9]{10,}")),  # Stripe
    ("_", _token_format("rk_live_", r"[A-Za-z0-9]{10,}")),
    ("_", _token_format("sk_test_", r"[A-Za-z0-9]{10,}")),
    ("_", _token_format("rk_test_", r"[A-Za-z0-9]{10,}")),
    ("-", _token_format("glpat-", r"[A-Za-z0-9_-]{20,}")),  # GitLab
    ("_", _token_format("hf_", r"[A-Za-z]{34,}(?![A-Za-z0-9])")),  # Hugging Face
    ("_", _token_format("npm_", r"[A-Za-z0-9]{36}(?![A-Za-z0-9])")),  # npm
    ("z", _token_format("AIza", r"[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])")),  # Google API key
    ("J", _token_format("eyJ", r"[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]+", r"\w-")),  # JWT
)
#: OpenAI-style (``sk-``, ``sk-proj-``…): the body must mix upper case, lower case and digits,
#: as keys do and prose such as "sk-learn-compatible-pipelines" does not.
_SK = re.compile(r"sk-(?<![A-Za-z0-9-]...)([\w-]{20,})", _A)
_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|password|passwd"
    r"|pwd|token)[\"']?[ \t]{0,2}[:=][ \t]*[\"']?([^\s\"'`,;]{12,})",
    _A,
)
_KEY_WORDS = ("key", "password", "passwd", "pwd", "secret", "token")
#: An assigned value that is a reference or a mask, not a secret: ``${X}``, ``$DB_PASSWORD``,
#: ``$(cmd)``, ``<your-password>``, ``{{ password }}``, ``%(password)s``, ``%DB_PASS%``,
#: ``[REDACTED]``, ``(redacted)``, ``os.environ["X"]``, ``get_password()``, ``***`` (and what
#: follows), ``********``, a URL. A value that merely starts with ``$`` (``$ecretPass99``), or
#: with a bracket or ``%`` that no placeholder's shape closes (``(Xk29vLq7aa9!``), is none.
_PLACEHOLDER = re.compile(
    r"<[\w .:/-]*>$|\{\{?[\w.-]+\}\}?$|%\([\w.]+\)[sd]$|%[A-Z_][A-Z0-9_]*%$"
    r"|\[[A-Za-z_ -]+\]$|\([A-Za-z_ -]+\)$|\*{3}"
    r"|\$(?:[{(\d]|[A-Z_][A-Z0-9_]*$)|[A-Za-z_][\w.]*[(\[]|https?://|(.)\1+$",
    _A,
)


#: A URL that carries a password: ``postgres://app:Xk29vLq7@db:5432/app``. The user part is
#: bounded, so a long run after ``://`` costs one pass.
_URL_PASSWORD = re.compile(r"[A-Za-z][\w+.-]{0,20}://([^\s/:@]{0,64}):([^\s/@]{8,200})@", _A)
#: Passwords that documentation puts in example URLs.
_EXAMPLE_PASSWORDS = frozenset({"password", "passwd", "changeme", "example", "yourpassword"})


def _url_password(text: str) -> bool:
    for match in _URL_PASSWORD.finditer(text):
        user, password = match.groups()
        example = password == user or password.lower() in _EXAMPLE_PASSWORDS
        if not example and not _PLACEHOLDER.match(password):
            return True
    return False


def _first_assignment(lower: str) -> int:
    """Pre-check of :data:`_ASSIGNMENT`: where the first key word followed by a ``:`` or ``=``
    is in ``lower``, or -1. Plain string searches: far cheaper than the case-insensitive regex,
    which then runs only from there."""
    first = -1
    for word in _KEY_WORDS:
        start = lower.find(word)
        while start >= 0 and (first < 0 or start < first):
            end = start + len(word)
            if lower[end : end + 4].lstrip("\"' \t")[:1] in (":", "="):
                first = start
                break
            start = lower.find(word, end)
    return first


def _mixed(body: str) -> bool:
    return body.lower() != body != body.upper() and any(char.isdigit() for char in body)


def _api_token(scan: _Text) -> bool:
    text = scan.text
    if any(cue in text and pattern.search(text) for cue, pattern in _TOKEN_FORMATS):
        return True
    if "sk-" in text and any(_mixed(m.group(1)) for m in _SK.finditer(text)):
        return True
    if "://" in text and "@" in text and _url_password(text):
        return True
    if "=" not in text and ":" not in text:
        return False
    first = _first_assignment(scan.lower)
    if first < 0:
        return False
    # Lower-casing lengthens a few non-ASCII characters: then positions are not the text's.
    start = max(0, first - 16) if len(scan.lower) == len(text) else 0
    return any(not _PLACEHOLDER.match(m.group(1)) for m in _ASSIGNMENT.finditer(text, start))


# --- email: found from its "@" ------------------------------------------------------------------
_EMAIL_DOMAIN = re.compile(
    r"@(?!\d+x\.)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![\w-])(?!:[\w~/])",  # not icon@2x.png, nor an ssh remote git@github.com:org/repo
    _A,
)
#: The local part: the whole run of address characters just before the "@", at most 64.
_EMAIL_LOCAL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}\Z", _A)


def _email(scan: _Text) -> bool:
    text = scan.text
    if "@" not in text:
        return False
    for match in _EMAIL_DOMAIN.finditer(text):
        local = _EMAIL_LOCAL.search(text, max(0, match.start() - 64), match.start())
        if local and not (local[0][0] == "." or local[0][-1] == "." or ".." in local[0]):
            return True
    return False


# --- phone: +E.164, or North American with separators (never bare digits) ---------------------
_E164 = re.compile(r"\+(?<![\w+.-]\+)[1-9](?:[ -]?\d){7,14}(?![\w-])(?![.,:]\d)", _A)
_NANP = re.compile(
    r"[(2-9]"  # "(" or the area code's first digit; then: standalone, or after "1-", "+1 "
    r"(?:(?<![\w+.-].)|(?<=1[ -].)(?<![\w.-]1[ -].))"
    r"(?:(?<=\()[2-9]\d\d\)[ .-]?|(?<=\d)\d\d(?P<sep>[.-]))"  # (415) or 415- or 415.
    r"[2-9]\d\d(?(sep)(?P=sep)|[ .-])\d{4}(?![\w-])(?![.,:]\d)",
    _A,
)
_DATE = re.compile(r"(?<!\d)(?:\d{4}-\d\d-\d\d|\d\d-\d\d-\d{4})(?!\d)", _A)


#: North American digits in three groups split by single spaces ("415 555 0123"): as often a
#: run of numbers ("256 512 1024"), so a phone only after a word that says so.
_NANP_SPACED = re.compile(r"(?<![\w.+-])[2-9]\d\d [2-9]\d\d \d{4}(?![\w-])(?![.,:]\d)", _A)
_PHONE_CUE = re.compile(r"(?i)(?<![a-z])(?:call|phone|tel|mobile|fax|sms|whatsapp)", _A)
#: Characters before a spaced number in which its cue must be.
_CUE_REACH = 24


def _phone(scan: _Text) -> bool:
    text = scan.text
    if "+" in text and any(not _DATE.search(m.group()) for m in _E164.finditer(text)):
        return True  # but "+1 2024-01-15" is a date
    if not scan.has_digit:
        return False
    if _NANP.search(text) is not None:
        return True
    return any(
        _PHONE_CUE.search(text, max(0, m.start() - _CUE_REACH), m.start())
        for m in _NANP_SPACED.finditer(text)
    )


# --- the detectors ------------------------------------------------------------------------------
_FIRES: dict[str, Callable[[_Text], bool]] = {
    "api_token": _api_token,
    "email": _email,
    "payment_card": _card,
    "phone": _phone,
    "private_key": _private_key,
    "ssn": _ssn,
}
#: The names of the known detectors, sorted.
DETECTORS: tuple[str, ...] = tuple(sorted(_FIRES))


def detect_among(text: str, names: Sequence[str]) -> list[str]:
    """The names in ``names`` (known detectors, sorted) whose detector fires on ``text``, in
    that order (none of the text)."""
    scan = _Text.of(text)
    return [name for name in names if _FIRES[name](scan)]


def detect(text: str) -> list[str]:
    """The sorted names of every known detector that fires on ``text`` (none of the text)."""
    return detect_among(text, DETECTORS)

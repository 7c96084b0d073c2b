"""Redaction: what the built-in patterns catch and spare, JSON safety, custom patterns, and the
column path agreeing with the slow path value for value."""

import random
import string

import orjson
import pyarrow as pa
import pytest

from proxy.config import RedactionSettings
from proxy.lake.redaction import Redactor, luhn_ok

R = "[REDACTED]"


@pytest.fixture(scope="module")
def red() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(
    "secret",
    [
        "john.doe+tag@example.co.uk",
        "a@b.io",
        "sk-proj-Ab3dEfGhIjKlMnOpQrStUvWx",
        "sk-ant-api03-abcdefghijklmnop",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "ghp_" + "A1b2C3d4" * 5,
        "xoxb-123456789012-abcdefghij",
        "AIza" + "SyA1234567890abcdefghijklmnopqrstuv",
        "hf_" + "abcdefghijklmnopqrstuvwxyzABCDEF",
        "glpat-abcdefghij0123456789",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
        "bearer abcdefgh12345678",
        "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500005555555559",
        "3782 822463 10005",
        "+44 20 7946 0958",
        "+1-202-555-0173",
        "+4915112345678",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----",
    ],
)
def test_builtin_patterns_redact(red: Redactor, secret: str) -> None:
    out = red.text(f"before {secret} after")
    assert out == f"before {R} after"


@pytest.mark.parametrize(
    "text",
    [
        "order 48213 placed on 2024-03-15 at 12:30",
        "timestamp 1700000000000 and id 123456789",
        "4111 1111 1111 1112",  # fails the Luhn check
        "1234567890123456",  # starts with 1: no card network
        "version 1.2.3-beta, ratio 3.14159",
        "basic authentication is described in RFC 7617",
        "the task-abcdefghijklmnopqrstuvwxyz is done",
        "user@localhost has no domain",
        "call extension 4567",
        "a sha1 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12 hash",
    ],
)
def test_ordinary_text_is_left_alone(red: Redactor, text: str) -> None:
    assert red.text(text) == text


def test_luhn_against_known_numbers() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")
    assert not luhn_ok("4111111111111112")


def test_json_text_redacts_inside_strings_and_stays_valid(red: Redactor) -> None:
    body = orjson.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": "line one\ncall 555-123-4567\nAuthorization: Bearer\tabcdefghijkl",
                }
            ],
            "metadata": {"card": 4111111111111111, "n": 5},
        }
    ).decode()
    out = red.json_text(body)
    doc = orjson.loads(out)
    assert doc["messages"][0]["content"] == f"line one\ncall {R}\nAuthorization: {R}"
    assert doc["metadata"] == {"card": R, "n": 5}


def test_unchanged_json_is_kept_byte_for_byte(red: Redactor) -> None:
    body = '{ "model" : "m",\n  "messages": [ {"role": "user", "content": "hi\\nthere"} ] }'
    assert red.json_text(body) == body
    col = pa.array([body, None])
    assert red.redact_array(col, json=True) is col


def test_invalid_json_is_redacted_as_text(red: Redactor) -> None:
    assert red.json_text('{"broken": "mail a@b.com') == '{"broken": "mail ' + R


def test_custom_patterns_re2_compatible_and_not() -> None:
    red = Redactor([r"EMP-\d{6}", r"(?<=ticket )\d{5}", r"(?i)project\s+falcon"], replacement="<x>")
    text = "EMP-123456 opened ticket 98765 for Project   Falcon"
    assert red.text(text) == "<x> opened ticket <x> for <x>"
    out = red.redact_array(pa.array([text, "nothing here", None]), json=False).to_pylist()
    assert out == ["<x> opened ticket <x> for <x>", "nothing here", None]
    body = orjson.dumps({"content": "see\nproject\nfalcon"}).decode()
    out = red.redact_array(pa.array([body]), json=True).to_pylist()
    assert orjson.loads(out[0]) == {"content": "see\n<x>"}


def test_settings_builtin_off_without_patterns_changes_nothing() -> None:
    red = Redactor.from_settings(RedactionSettings(builtin=False))
    assert not red.enabled
    col = pa.array(["sk-proj-Ab3dEfGhIjKlMnOpQrStUvWx"])
    assert red.redact_array(col, json=False) is col


_PIECES = [
    "hello",
    "world",
    "2024-03-15",
    "48213",
    "4111 1111 1111 1111",
    "4111111111111111",
    "(555) 123-4567",
    "555-123-4567",
    "+44 20 7946 0958",
    "a.b@example.com",
    "@handle",
    "sk-proj-Ab3dEfGhIjKlMnOpQr",
    "Bearer",
    "tok3nvalue123",
    "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key=",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "\n",
    "\t",
    '"',
    "\\",
    "é",
    "-",
    ".",
]


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.7:
            parts.append(rng.choice(_PIECES))
        else:
            parts.append("".join(rng.choice(string.printable) for _ in range(rng.randint(1, 8))))
        parts.append(rng.choice([" ", "", "\n", ", "]))
    return "".join(parts)


def test_column_path_agrees_with_the_value_path(red: Redactor) -> None:
    """The RE2 pre-filter must never hide a value the precise patterns would change."""
    rng = random.Random(7)
    texts = [_random_text(rng) for _ in range(3000)]
    got = red.redact_array(pa.array(texts), json=False).to_pylist()
    assert got == [red.text(t) for t in texts]
    assert sum(g != t for g, t in zip(got, texts, strict=True)) > 500  # the cases are not trivial

    bodies = [orjson.dumps({"messages": [{"content": t}], "k": t[:5]}).decode() for t in texts]
    got = red.redact_array(pa.array(bodies), json=True).to_pylist()
    assert got == [red.json_text(b) for b in bodies]
    for g in got:
        orjson.loads(g)

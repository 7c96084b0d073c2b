"""Redaction of content columns before anything reaches the lake.

Built-in patterns catch what most often leaks into prompts and outputs: e-mail addresses,
phone numbers (international `+...` and North American 3-3-4), payment card numbers (Luhn-
checked, so order ids survive), API keys (`sk-...`, Stripe, GitHub, Slack, Google, Hugging
Face, GitLab), Bearer tokens, AWS access and secret keys, and PEM private keys. Custom
patterns (`storage.redaction.patterns`, Python regex syntax) join them.

Speed comes from two stages, because Python's `re` scans an alternation of patterns like
these at roughly 300 us per KB - far too slow for the recorder:
1. one combined RE2 regex (`pyarrow.compute`, C++, without the GIL) scans a whole column
   and flags the values that might contain a match; its patterns are supersets of the
   precise ones and tolerate JSON escapes (`\\n`, `\\/`), so a flag is never missed;
2. only flagged values (usually a few per cent) get the precise Python patterns - of the
   pattern families that matched - with lookarounds and the Luhn check.

JSON text (`body`, `logprobs`) is redacted inside its decoded string values, so an escaped
newline never hides a match and a replacement never breaks the JSON; text that is unchanged
is kept byte for byte. Custom patterns are detected by RE2 when they compile there (RE2's
`\\d`, `\\w`, `\\s` are ASCII-only); a pattern RE2 rejects (lookarounds, backreferences) is
tried on every value by Python - correct, but slow: prefer RE2-compatible patterns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from proxy.config import RedactionSettings

_WS = r"(?:\s|\\[nrtbf])"  # whitespace as it appears in raw JSON text


@dataclass(frozen=True)
class Family:
    """One kind of secret: a precise Python pattern and an RE2 superset used to find candidates."""

    name: str
    python: str
    detect: str | None  # None: RE2 cannot express it; every value is a candidate


# Python patterns start with a literal or a character class (lookbehinds come after the first
# character) so that `re` can skip ahead quickly; the e-mail pattern is anchored on "@" and
# extended backwards over the local part in code (`Redactor._sub_email`).
BUILTIN_FAMILIES: tuple[Family, ...] = (
    Family(
        "private_key",
        r"-----BEGIN [A-Z ]{0,30}PRIVATE KEY-----(?:[\s\S]{0,20000}?-----END [A-Z ]{0,30}"
        r"PRIVATE KEY-----|[A-Za-z0-9+/=\s]*)",
        r"-----BEGIN [A-Z ]*PRIVATE KEY",
    ),
    Family(
        "email",
        r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])",
        r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    ),
    Family(
        "openai_key",
        r"sk-(?<![A-Za-z0-9_-]sk-)[A-Za-z0-9_-]{16,}",
        r"sk-[A-Za-z0-9_-]{16,}",
    ),
    Family(
        "token",
        r"(?<![A-Za-z0-9_])(?:[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{30,}"
        r"|github_pat_[A-Za-z0-9_]{30,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
        r"|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,})",
        r"[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{30,}"
        r"|github_pat_[A-Za-z0-9_]{30,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
        r"|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,}",
    ),
    Family(
        "bearer",
        r"[Bb](?<![A-Za-z0-9_][Bb])(?i:earer)\s+[A-Za-z0-9._~+/-]{8,}=*",
        rf"(?i:bearer){_WS}+[A-Za-z0-9._~+/\\-]{{8,}}",
    ),
    Family(
        "aws_access_key",
        r"A(?<![A-Z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Z0-9])",
        r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
    ),
    Family(
        "aws_secret_key",
        r"(?i:aws_?secret_?(?:access_?)?key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",
        r"(?i)aws_?secret_?(?:access_?)?key",
    ),
    # Card numbers as written: 13-19 digits in a row, 4-4-4-4(-3) groups, or Amex/Diners
    # 4-6-5 / 4-6-4 groups; first digit 2-6 (the card networks). Replaced only when the
    # Luhn check passes.
    Family(
        "card",
        r"[2-6](?<![0-9.+][2-6])(?:[0-9]{12,18}|[0-9]{3}[ -][0-9]{4}[ -][0-9]{4}[ -][0-9]{4}"
        r"(?:[ -][0-9]{3})?|(?<=3)[0-9]{3}[ -][0-9]{6}[ -][0-9]{4,5})(?![0-9])",
        r"[2-6][0-9]{12,18}|[2-6][0-9]{3}[ -][0-9]{4}[ -][0-9]{4}[ -][0-9]{4}(?:[ -][0-9]{3})?"
        r"|3[0-9]{3}[ -][0-9]{6}[ -][0-9]{4,5}",
    ),
    # International numbers with a leading +, and North American 3-3-4 numbers with separators.
    Family(
        "phone",
        r"[+(0-9](?<![\w.+][+(0-9])(?:(?<=\+)[1-9](?:[ .()-]{0,2}[0-9]){6,14}"
        r"|(?<=\()[0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}|(?<=[0-9])[0-9]{2}[ .-][0-9]{3}[ .-][0-9]{4})"
        r"(?![0-9])",
        r"\+[1-9](?:[ .()-]{0,2}[0-9]){6,14}"
        r"|(?:\([0-9]{3}\)[ .-]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}",
    ),
)

_LEADING_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")
_SCOPED_FLAGS = {"i": re.I, "m": re.M, "s": re.S, "x": re.X}
# Common JSON escapes, decoded before custom patterns look for candidates in JSON text.
_JSON_ESCAPES = (("\\n", "\n"), ("\\t", "\t"), ("\\r", "\r"), ('\\"', '"'), ("\\/", "/"))


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _scoped(pattern: str) -> str:
    """Turn a leading global flag group `(?i)` into a scoped one so it can sit in an alternation."""
    compiled = re.compile(pattern)
    m = _LEADING_FLAGS.match(pattern)
    body = pattern[m.end() :] if m else pattern
    letters = "".join(k for k, v in _SCOPED_FLAGS.items() if compiled.flags & v)
    return f"(?{letters}:{body})" if letters else f"(?:{body})"


def _re2_ok(pattern: str) -> bool:
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _custom_family(i: int, pattern: str) -> Family:
    scoped = _scoped(pattern)
    return Family(f"custom{i}", scoped, scoped if _re2_ok(scoped) else None)


class Redactor:
    """Built-in and custom patterns, applied to single values or to whole Arrow columns."""

    def __init__(
        self, custom: Sequence[str] = (), *, builtin: bool = True, replacement: str = "[REDACTED]"
    ) -> None:
        fams = list(BUILTIN_FAMILIES) if builtin else []
        self._n_builtin = len(fams)
        self._custom = [_custom_family(i, p) for i, p in enumerate(custom)]
        self.families: tuple[Family, ...] = (*fams, *self._custom)
        self.replacement = replacement
        self._python = [re.compile(f.python) for f in self.families]
        self._always = [i for i, f in enumerate(self.families) if f.detect is None]
        detect = [f"(?:{f.detect})" for f in self.families if f.detect is not None]
        self._detect = "|".join(detect) if detect else None
        self._repl_plain: Callable[[re.Match[str]], str] = lambda m: self.replacement

    @classmethod
    def from_settings(cls, settings: RedactionSettings) -> Redactor:
        return cls(settings.patterns, builtin=settings.builtin, replacement=settings.replacement)

    @property
    def enabled(self) -> bool:
        return bool(self.families)

    # -- single values ---------------------------------------------------------------------

    def _card_repl(self, m: re.Match[str]) -> str:
        digits = "".join(c for c in m.group() if c.isdigit())
        return self.replacement if luhn_ok(digits) else m.group()

    def _sub_email(self, s: str, rx: re.Pattern[str]) -> str:
        # Matches start at "@"; the local part is found by walking back over its characters.
        out: list[str] = []
        last = 0
        for m in rx.finditer(s):
            at = start = m.start()
            floor = max(last, at - 64)
            while start > floor and (s[start - 1].isalnum() or s[start - 1] in "._%+-"):
                start -= 1
            if start == at:
                continue
            out += (s[last:start], self.replacement)
            last = m.end()
        if not out:
            return s
        out.append(s[last:])
        return "".join(out)

    def _sub(self, s: str, fams: Sequence[int]) -> str:
        for i in fams:
            name = self.families[i].name
            if name == "email" and i < self._n_builtin:
                s = self._sub_email(s, self._python[i])
            elif name == "card" and i < self._n_builtin:
                s = self._python[i].sub(self._card_repl, s)
            else:
                s = self._python[i].sub(self._repl_plain, s)
        return s

    def text(self, value: str, fams: Sequence[int] | None = None) -> str:
        """Redact plain text (with every family, or only those given by index)."""
        return self._sub(value, range(len(self.families)) if fams is None else fams)

    def json_text(self, value: str, fams: Sequence[int] | None = None) -> str:
        """Redact the string values and keys of JSON text; invalid JSON is redacted as text."""
        fams = range(len(self.families)) if fams is None else fams
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return self._sub(value, fams)
        changed = [False]
        new = self._walk(doc, fams, changed)
        return orjson.dumps(new).decode() if changed[0] else value

    def _walk(self, node: Any, fams: Sequence[int], changed: list[bool]) -> Any:
        if isinstance(node, str):
            out = self._sub(node, fams)
            if out != node:
                changed[0] = True
            return out
        if isinstance(node, dict):
            return {
                self._walk(k, fams, changed): self._walk(v, fams, changed) for k, v in node.items()
            }
        if isinstance(node, list):
            return [self._walk(v, fams, changed) for v in node]
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 10**12:
            # A card number sent as a JSON number.
            s = str(node)
            if self._sub(s, fams) != s:
                changed[0] = True
                return self.replacement
        return node

    # -- whole columns ---------------------------------------------------------------------

    def redact_array(self, arr: pa.Array, *, json: bool) -> pa.Array:
        """Redact a string column; returns the same array when nothing needed redacting."""
        if not self.families or len(arr) == 0 or arr.null_count == len(arr):
            return arr
        scan = arr
        if json and self._custom:
            for raw, decoded in _JSON_ESCAPES:
                scan = pc.replace_substring(scan, raw, decoded)
        if self._always:
            mask = pc.is_valid(arr)
        elif self._detect is not None:
            mask = pc.fill_null(pc.match_substring_regex(scan, self._detect), False)
        else:
            return arr
        if not pc.any(mask).as_py():
            return arr
        idx = pa.array(np.flatnonzero(mask.to_numpy(zero_copy_only=False)))
        # Which families may match each flagged value: one small RE2 pass per family, so
        # the costlier Python patterns run only where they can match.
        cand = scan.take(idx)
        hits = np.zeros((len(idx), len(self.families)), dtype=bool)
        for j, fam in enumerate(self.families):
            if fam.detect is None:
                hits[:, j] = True
            else:
                m = pc.fill_null(pc.match_substring_regex(cand, fam.detect), False)
                hits[:, j] = m.to_numpy(zero_copy_only=False)
        values = arr.take(idx).to_pylist()
        out = []
        for k, v in enumerate(values):
            fams = np.flatnonzero(hits[k]).tolist()
            out.append(self.json_text(v, fams) if json else self._sub(v, fams))
        if out == values:
            return arr
        return pc.replace_with_mask(arr, mask, pa.array(out, pa.string()))

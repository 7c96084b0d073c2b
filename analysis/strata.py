"""Strata for eval sets: the subsets of traffic whose results must each be seen.

Three ways to name a request's stratum:

- `tags`: its set of tags, sorted and joined with `+` (`(untagged)` without tags);
- `route`: its API route;
- `text`: a cluster of similar prompts, found without any model: each prompt becomes a
  fixed-size vector of hashed word unigrams/bigrams and character trigrams (sublinear
  counts, idf-weighted, unit length), and k-means (k-means++ start, fixed seed, a few
  restarts) groups them. Clusters are named `text<i>:<word>,<word>` by the words most
  typical of them, numbered by size, so the same lake and seed give the same strata.
- `auto`: tags where requests have them; untagged requests are grouped by text.

Only numpy is used; past `FIT_SAMPLE` prompts, k-means is fitted on a seeded sample and
every prompt is then assigned to its nearest centre, so memory stays bounded.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

Strategy = Literal["tags", "route", "text", "auto"]
STRATEGIES: tuple[str, ...] = ("tags", "route", "text", "auto")
UNTAGGED = "(untagged)"
DIM = 1024
FIT_SAMPLE = 5000
MAX_AUTO_K = 8
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Words too common to name a cluster by.
_STOP_WORDS = (
    "a an and are as at be but by can do for from has have how i if in is it me my no not of "
    "on or our please so that the this to was we what when where which who why will with you your"
)
_STOP = frozenset(_STOP_WORDS.split())


def prompt_text(body: str | None) -> str:
    """The words a request asks with: message contents, prompt or input, without JSON keys."""
    if not body:
        return ""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return _flatten(data)
    for key in ("messages", "prompt", "input"):
        if key in data:
            return _flatten(data[key])
    return ""


def _flatten(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(t for t in (_flatten(v) for v in value) if t)
    if isinstance(value, dict):
        for key in ("content", "text"):
            if key in value:
                return _flatten(value[key])
    return ""


def tags_stratum(tags: Sequence[str] | None) -> str:
    """A request's stratum by its tag set."""
    clean = sorted({t.strip() for t in tags or () if t and t.strip()})
    return "+".join(clean) if clean else UNTAGGED


def _features(text: str) -> list[str]:
    words = _WORD.findall(text.casefold())
    feats = [f"w:{w}" for w in words]
    feats += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
    for w in words:
        padded = f" {w} "
        feats += [f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
    return feats


def _bucket(feature: str) -> int:
    return zlib.crc32(feature.encode("utf-8")) % DIM


def hashed_counts(texts: Sequence[str]) -> np.ndarray:
    """Raw hashed n-gram counts, one row per text (float32, DIM columns)."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        for b, c in Counter(_bucket(f) for f in _features(text)).items():
            out[i, b] = c
    return out


def idf_weights(counts: np.ndarray) -> np.ndarray:
    """Smoothed inverse document frequency per bucket."""
    df = (counts > 0).sum(axis=0)
    return np.log((1.0 + len(counts)) / (1.0 + df)).astype(np.float32) + 1.0


def vectorize(counts: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """Sublinear, idf-weighted, unit-length vectors (all-zero rows stay zero)."""
    x = np.log1p(counts) * idf
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _sq_dist(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ starting centres: each next centre drawn with probability ∝ squared distance."""
    centres = [x[int(rng.integers(len(x)))]]
    closest = _sq_dist(x, np.array(centres))[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:
            idx = int(rng.integers(len(x)))
        else:
            idx = int(rng.choice(len(x), p=closest / total))
        centres.append(x[idx])
        closest = np.minimum(closest, _sq_dist(x, x[idx][None, :])[:, 0])
    return np.array(centres)


def kmeans(
    x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 3, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means from k-means++ starts; returns (centres, labels, inertia) of the best run."""
    rng = np.random.default_rng(seed)
    k = max(1, min(k, len(x)))
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        centres = kmeans_pp(x, k, rng)
        labels = np.zeros(len(x), dtype=np.int64)
        for it in range(max_iter):
            new = _sq_dist(x, centres).argmin(axis=1)
            if it > 0 and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    centres[j] = members.mean(axis=0)
        inertia = float(_sq_dist(x, centres)[np.arange(len(x)), labels].sum())
        if best is None or inertia < best[2]:
            best = (centres.copy(), labels.copy(), inertia)
    assert best is not None
    return best


def auto_k(n: int) -> int:
    """A modest number of clusters for n prompts: about sqrt(n / 20), between 2 and 8."""
    if n < 4:
        return 1
    return max(2, min(MAX_AUTO_K, round(math.sqrt(n / 20))))


def _typical_words(texts: Sequence[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """Per cluster, the two words most over-represented in it (document counts, smoothed)."""
    docs = [
        {w for w in _WORD.findall(t.casefold()) if w not in _STOP and len(w) > 2} for t in texts
    ]
    overall = Counter(w for d in docs for w in d)
    n = len(docs)
    names: list[list[str]] = []
    for j in range(k):
        inside = [d for d, lab in zip(docs, labels, strict=True) if lab == j]
        here = Counter(w for d in inside for w in d)
        m = max(len(inside), 1)

        def lift(w: str, here: Counter[str] = here, m: int = m) -> tuple[float, str]:
            return (-(here[w] / m) * math.log((here[w] / m + 1e-9) * n / overall[w] + 1.0), w)

        names.append(sorted(here, key=lift)[:2])
    return names


def text_strata(texts: Sequence[str], *, k: int | None = None, seed: int = 0) -> list[str]:
    """A stratum name per text from k-means over hashed n-grams (deterministic for a seed)."""
    if not texts:
        return []
    k = auto_k(len(texts)) if k is None else max(1, min(k, len(texts)))
    rng = np.random.default_rng(seed)
    fit_idx = (
        np.sort(rng.choice(len(texts), size=FIT_SAMPLE, replace=False))
        if len(texts) > FIT_SAMPLE
        else np.arange(len(texts))
    )
    fit_counts = hashed_counts([texts[i] for i in fit_idx])
    idf = idf_weights(fit_counts)
    centres, _, _ = kmeans(vectorize(fit_counts, idf), k, seed=seed)
    labels = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), FIT_SAMPLE):
        chunk = vectorize(hashed_counts(texts[start : start + FIT_SAMPLE]), idf)
        labels[start : start + len(chunk)] = _sq_dist(chunk, centres).argmin(axis=1)
    # Number clusters by size (largest first), ties by first appearance, so names are stable.
    sizes = np.bincount(labels, minlength=k)
    first = [int(np.argmax(labels == j)) if sizes[j] else len(texts) for j in range(k)]
    order = sorted(range(k), key=lambda j: (-sizes[j], first[j]))
    rank = {j: r for r, j in enumerate(order)}
    words = _typical_words([texts[i] for i in fit_idx], labels[fit_idx], k)
    names = {j: f"text{rank[j] + 1}:{','.join(words[j]) or 'misc'}" for j in range(k)}
    return [names[int(lab)] for lab in labels]


def assign_strata(
    strategy: Strategy,
    *,
    tags: Sequence[Sequence[str] | None],
    routes: Sequence[str | None],
    texts: Sequence[str],
    k: int | None = None,
    seed: int = 0,
) -> list[str]:
    """One stratum name per request under `strategy` (inputs are parallel sequences)."""
    if strategy == "tags":
        return [tags_stratum(t) for t in tags]
    if strategy == "route":
        return [r or "(no route)" for r in routes]
    if strategy == "text":
        return text_strata(texts, k=k, seed=seed)
    if strategy != "auto":
        raise ValueError(f"unknown strata strategy {strategy!r}; use one of {STRATEGIES}")
    by_tags = [tags_stratum(t) for t in tags]
    untagged = [i for i, s in enumerate(by_tags) if s == UNTAGGED]
    if untagged:
        clusters = text_strata([texts[i] for i in untagged], k=k, seed=seed)
        for i, name in zip(untagged, clusters, strict=True):
            by_tags[i] = name
    return by_tags

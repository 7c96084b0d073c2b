"""Request ids: ULID layout, unique, time-ordered, and never repeated across forked workers."""

from __future__ import annotations

import os
from collections import Counter

from proxy.ids import _ALPHABET, id_time_ms, is_acceptable_client_id, new_id


def test_ids_are_unique_sortable_and_carry_their_time() -> None:
    ids = [new_id(1_700_000_000_000 + i // 100) for i in range(5000)]  # > one random buffer
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 26 and set(i) <= set(_ALPHABET) for i in ids)
    assert [id_time_ms(i) for i in ids[::100]] == [1_700_000_000_000 + k for k in range(50)]
    assert sorted(ids[::100]) == ids[::100]


def test_a_forked_worker_does_not_replay_its_parents_random_bits() -> None:
    new_id()  # the parent has a partly used buffer of random bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.write(write, new_id(0).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != new_id(0)


def test_client_ids_are_accepted_only_when_harmless() -> None:
    assert is_acceptable_client_id("req-123_abc.def:9")
    assert not is_acceptable_client_id("has space")
    assert not is_acceptable_client_id("../etc/passwd")
    assert not is_acceptable_client_id("x" * 200)


def test_the_id_is_the_ulid_spelling_of_its_time_and_random_bits() -> None:
    for ms in (0, 1, 1_700_000_000_123, 2**48 - 1):
        value = 0
        for c in new_id(ms):
            value = value * 32 + _ALPHABET.index(c)
        assert value >> 128 == 0  # 26 characters carry 130 bits; the top two are zero
        assert value >> 80 == ms


def test_every_random_character_is_equally_likely() -> None:
    from scipy.stats import chisquare

    counts = Counter("".join(new_id(0)[10:] for _ in range(20_000)))  # 320,000 characters
    assert set(counts) == set(_ALPHABET)
    assert chisquare([counts[c] for c in _ALPHABET]).pvalue > 1e-6  # fails once in 10^6 runs

"""Request ids: ULID layout, unique, time-ordered, and never repeated across forked workers."""

from __future__ import annotations

import os

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

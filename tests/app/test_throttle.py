"""Backoff for failed sign-ins, on a clock the tests move by hand."""

from __future__ import annotations

import threading

import pytest

from app.throttle import MAX_KEY_CHARS, Backoff, SignInThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_few_failures_are_free_then_each_doubles_the_wait_up_to_the_cap(clock):
    backoff = Backoff(free_failures=3, max_penalty_seconds=60, clock=clock)
    waits = []
    for _ in range(12):
        assert backoff.wait("admin") == 0  # the previous penalty has run out
        backoff.fail("admin")
        waits.append(backoff.wait("admin"))
        clock.now += waits[-1]
    assert waits == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff.wait("someone else") == 0


def test_the_wait_runs_down_with_the_clock(clock):
    backoff = Backoff(free_failures=0, first_penalty_seconds=10, clock=clock)
    backoff.fail("k")
    clock.now += 4
    assert backoff.wait("k") == 6
    clock.now += 6
    assert backoff.wait("k") == 0


def test_a_quiet_spell_forgets_the_failures(clock):
    backoff = Backoff(free_failures=2, forget_after_seconds=3600, clock=clock)
    for _ in range(3):
        backoff.fail("k")
    assert backoff.wait("k") == 1
    clock.now += 3600
    assert backoff.wait("k") == 0 and len(backoff) == 0
    backoff.fail("k")  # counts from one again: free
    assert backoff.wait("k") == 0


def test_a_key_is_never_shut_out_for_longer_than_the_cap(clock):
    backoff = Backoff(free_failures=0, max_penalty_seconds=900, clock=clock)
    for _ in range(10_000):  # no overflow of the doubling either
        backoff.fail("k")
    assert backoff.wait("k") == 900
    clock.now += 900
    assert backoff.wait("k") == 0


def test_memory_is_bounded_by_forgetting_the_least_recently_failed(clock):
    backoff = Backoff(free_failures=0, first_penalty_seconds=100, max_keys=3, clock=clock)
    for key in ("a", "b", "c", "a", "d"):
        clock.now += 1
        backoff.fail(key)
    assert list(backoff._strikes) == ["c", "a", "d"]  # b's failure was the oldest
    assert backoff.wait("b") == 0 and backoff.wait("c") > 0
    backoff.fail("x" * 10_000)
    assert max(len(key) for key in backoff._strikes) == MAX_KEY_CHARS
    assert backoff.wait("x" * 10_000) > 0


def test_every_failure_from_many_threads_is_counted(clock):
    backoff = Backoff(free_failures=0, max_penalty_seconds=900, clock=clock)
    threads = [
        threading.Thread(target=lambda: [backoff.fail("k") for _ in range(500)]) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backoff._strikes["k"].failures == 4000


def test_forgetting_must_outlast_the_longest_penalty():
    with pytest.raises(ValueError, match="remembered"):
        Backoff(free_failures=1, max_penalty_seconds=900, forget_after_seconds=60)


def test_sign_ins_count_per_name_and_per_address_and_success_clears_the_name(clock):
    throttle = SignInThrottle(clock=clock)
    for _ in range(6):
        throttle.failed(address="10.0.0.1", name="admin")
    assert throttle.retry_after(address="10.0.0.1", name="admin") == 1
    assert throttle.retry_after(address="10.0.0.2", name="admin") == 1  # the name, anywhere
    assert throttle.retry_after(address="10.0.0.1", name="ann") == 0  # the address: 20 free
    clock.now += 1
    throttle.succeeded(name="admin")
    throttle.failed(address="10.0.0.1", name="admin")
    assert throttle.retry_after(address="10.0.0.1", name="admin") == 0  # counting anew

    for i in range(13):  # 20 failures from 10.0.0.1 in all, each to another name
        throttle.failed(address="10.0.0.1", name=f"user{i}")
    assert throttle.retry_after(address="10.0.0.1", name="new") == 0
    throttle.failed(address="10.0.0.1", name="user99")
    assert throttle.retry_after(address="10.0.0.1", name="new") == 1
    assert throttle.retry_after(address="10.0.0.1") == 1  # an API token from there, too
    assert throttle.retry_after(address="10.0.0.2", name="new") == 0
    clock.now += 0.25
    assert throttle.retry_after(address="10.0.0.1") == 1  # whole seconds, rounded up

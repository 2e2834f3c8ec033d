"""The native sign-in's limits on a fake clock: backoff per address (doubling, capped,
forgotten after a quiet spell, reset by a success) and sign-ups per address per hour."""

from shangzhuang.hub.auth import Backoff, PerHour


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_longest_and_is_per_key():
    clock = Clock()
    b = Backoff(free=3, longest=10, clock=clock)
    for _ in range(3):
        assert b.wait("1.2.3.4") == 0
        b.failed("1.2.3.4")
    waits = []
    for _ in range(5):
        waits.append(b.wait("1.2.3.4"))
        clock.now += waits[-1]
        b.failed("1.2.3.4")
    assert waits == [1, 2, 4, 8, 10]
    assert b.wait("5.6.7.8") == 0  # another address is not slowed


def test_backoff_forgets_after_a_quiet_spell_and_resets_on_success():
    clock = Clock()
    b = Backoff(free=1, longest=10, clock=clock)
    b.failed("a")
    b.failed("a")
    assert b.wait("a") == 2
    clock.now += 11  # quiet for longer than the longest wait
    b.failed("a")
    assert b.wait("a") == 1  # counted from one again (else it would be 4)
    b.succeeded("a")
    assert b.wait("a") == 0


def test_signups_per_address_per_hour():
    clock = Clock()
    limit = PerHour(2, clock=clock)
    limit.add("a")
    clock.now += 600
    limit.add("a")
    assert limit.wait("a") == 3000  # the first one leaves the hour in 50 minutes
    assert limit.wait("b") == 0
    clock.now += 3000
    assert limit.wait("a") == 0

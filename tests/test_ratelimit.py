"""emlib.ratelimit: the token buckets' arithmetic on an injected clock, and the Retry-After parser."""

import email.utils

import pytest

from emlib.ratelimit import RateLimiter, estimate_tokens, retry_after_seconds


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_requests_per_minute_burst_then_steady_rate():
    clock = Clock()
    lim = RateLimiter(rpm=120, clock=clock)  # 2 a second, a bucket of one second's worth
    waits = [lim.reserve() for _ in range(8)]
    # 3 at once (the full bucket: 2 + the one that empties it), then one every 0.5 s
    assert waits == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.5])
    clock.t += 10  # idle: the bucket refills, but to one second's worth only
    assert [lim.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 0.5])


def test_tokens_per_minute_paces_by_size():
    clock = Clock()
    lim = RateLimiter(tpm=6000, clock=clock)  # 100 tokens a second
    assert lim.reserve(100) == 0 and lim.reserve(100) == 0  # one second's worth, plus the one that empties it
    assert lim.reserve(300) == pytest.approx(1.0)  # sent when the bucket is empty again...
    assert lim.reserve(10) == pytest.approx(4.0)  # ...and its 300 tokens push the next one 3 s further
    lim2 = RateLimiter(tpm=60, clock=clock)  # 1 token a second: a 500-token request is not refused
    assert lim2.reserve(500) == 0 and lim2.reserve(1) == pytest.approx(499)


def test_both_limits_the_stricter_wins_and_both_are_debited_at_the_send_time():
    clock = Clock()
    lim = RateLimiter(rpm=60, tpm=600, clock=clock)  # 1 request/s, 10 tokens/s
    assert lim.reserve(10) == 0
    assert lim.reserve(50) == 0  # requests: 2nd fits the burst; tokens: fits too (10 + one bucket)
    assert lim.reserve(1) == pytest.approx(5.0)  # tokens: 50 more to drain (5 s) before anything else
    assert lim.reserve(1) == pytest.approx(5.1)  # the request bucket refilled meanwhile; tokens: 0.1 s
    assert lim.reserve(1) == pytest.approx(6.0)  # now the requests bind: one a second


def test_hold_delays_everyone_and_unlimited_is_free():
    clock = Clock()
    lim = RateLimiter(clock=clock)
    assert [lim.reserve(10**6) for _ in range(5)] == [0] * 5
    lim.hold(2.5)
    assert lim.reserve() == pytest.approx(2.5) and lim.reserve() == pytest.approx(2.5)
    clock.t += 3
    assert lim.reserve() == 0
    with pytest.raises(ValueError):
        RateLimiter(rpm=0)


def test_retry_after_forms():
    assert retry_after_seconds({"Retry-After": "3"}) == 3
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25  # the precise one first
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now=now) == pytest.approx(7)
    assert retry_after_seconds({"Retry-After": email.utils.formatdate(now - 5, usegmt=True)}, now=now) == 0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_token_estimate():
    assert estimate_tokens("x" * 400) == 100 + 7 + 1
    assert estimate_tokens("") == 8

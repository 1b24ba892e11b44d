"""Client-side rate limits for the OpenAI judge: requests and tokens per minute, and the server's ``Retry-After``.

``RateLimiter`` is a token bucket on each limit, in the GCRA form (Generic Cell Rate Algorithm): each
bucket refills at ``limit / 60`` units a second and holds at most one second's worth (so a burst is at most
about one second of the limit, as OpenAI enforces its per-minute limits over shorter windows too). A request
of ``n`` tokens is sent at the first moment both buckets allow it, and both are debited at that moment; a
request larger than a bucket is not refused, it just waits longer. ``hold`` stops every request until a
time (a 429 with ``Retry-After`` holds the whole account, not only the request that got it). The clock is
injectable, so the arithmetic is tested exactly (tests/test_ratelimit.py); one lock makes it safe to share
between threads and event loops.

``judge_concurrency`` bounds the requests in flight; ``judge_rpm`` / ``judge_tpm`` bound how fast they
start. The two compose: the throughput is the smaller of ``concurrency / latency`` and the limits.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


def estimate_tokens(prompt: str, max_output_tokens: int = 1) -> int:
    """What one chat request counts against a tokens-per-minute limit: the prompt's tokens, estimated as
    characters / 4 (OpenAI's rule of thumb for English; no tokenizer download), plus the chat format's few
    tokens per message, plus ``max_output_tokens`` (the judge asks for one)."""
    return math.ceil(len(prompt) / 4) + 7 + max_output_tokens


@dataclass
class _Bucket:
    rate: float  # units a second
    burst: float  # seconds' worth of units the bucket holds
    tat: float = -math.inf  # GCRA's theoretical arrival time: the bucket is full once the clock passes it

    def earliest(self) -> float:
        """The first time a request may be sent (whatever its size: a large one debits ahead)."""
        return self.tat - self.burst

    def debit(self, at: float, units: float) -> None:
        self.tat = max(self.tat, at) + units / self.rate


class RateLimiter:
    """Token buckets on requests per minute (``rpm``) and tokens per minute (``tpm``); None = unlimited.

    ``reserve(tokens)`` books the next slot and returns the seconds to wait before sending; ``acquire``
    is the async form that waits. ``hold(seconds)`` delays every later request by at least that long.
    """

    def __init__(self, rpm: int | None = None, tpm: int | None = None, *, clock: Callable[[], float] = time.monotonic):
        for name, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")
        self.rpm, self.tpm, self.clock = rpm, tpm, clock
        self._requests = None if rpm is None else _Bucket(rpm / 60, burst=1.0)
        self._tokens = None if tpm is None else _Bucket(tpm / 60, burst=1.0)
        self._not_before = -math.inf
        self._lock = threading.Lock()

    def reserve(self, tokens: int = 1) -> float:
        """Book a request of ``tokens`` tokens at the first moment the limits and any hold allow; the seconds
        from now until that moment (0 when it may go at once)."""
        with self._lock:
            now = self.clock()
            at = max(now, self._not_before)
            buckets = [(b, u) for b, u in ((self._requests, 1), (self._tokens, tokens)) if b is not None]
            for b, _ in buckets:
                at = max(at, b.earliest())
            for b, units in buckets:
                b.debit(at, units)
            return at - now

    def hold(self, seconds: float) -> None:
        """No request is sent earlier than ``seconds`` from now (the server's ``Retry-After``)."""
        with self._lock:
            self._not_before = max(self._not_before, self.clock() + seconds)

    async def acquire(self, tokens: int = 1) -> None:
        """``reserve`` and wait out the delay."""
        delay = self.reserve(tokens)
        if delay > 0:
            await asyncio.sleep(delay)


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """The wait a server asks for: ``retry-after-ms`` (OpenAI; milliseconds), else ``Retry-After`` in seconds
    or as an HTTP date (RFC 9110); None when absent or unreadable. ``now``: Unix time (default: the clock's).
    Header names are matched case-insensitively."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))

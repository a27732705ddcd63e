"""When to try a request again, and how long to wait first: exponential backoff with full jitter.

Retried: connection errors (refused, reset, dropped mid-answer, timeouts), 429 (waiting at least its
``Retry-After``), 5xx, and 409 ``idempotency_in_progress`` (our own earlier attempt is still running
on the server). POSTs are safe to retry because each carries one Idempotency-Key across attempts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass
class RetryPolicy:
    attempts: int = 8
    """Tries in all (the first one included)."""
    base_s: float = 0.25
    """Backoff before the second try; doubled each time."""
    cap_s: float = 30.0
    """Longest backoff (a ``Retry-After`` may ask for longer, up to ``max_retry_after_s``)."""
    max_retry_after_s: float = 300.0
    """A ``Retry-After`` beyond this is not waited for: the error is raised instead."""
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based): uniform in [0, min(cap, base*2^(n-1))]
        ("full jitter": many clients failing together do not come back together)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** (attempt - 1)))
        return self.rng.uniform(0.0, ceiling)

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """The wait before the next try, or None when no try is left (or the server asks for too long)."""
        if attempt >= self.attempts:
            return None
        wait = self.backoff(attempt)
        if retry_after is not None:
            if retry_after > self.max_retry_after_s:
                return None
            wait = max(wait, retry_after) + self.rng.uniform(0.0, min(1.0, self.base_s))
        return wait


def should_retry(status: int, code: str | None = None) -> bool:
    return status in RETRY_STATUSES or (status == 409 and code == "idempotency_in_progress")

"""Recently verified API keys, so that a busy client's every request does not cost a database round
trip (a pooled connection, a ping, a transaction and a query: most of a small GET's time).

An entry is keyed by the key's keyed hash (never the key itself), holds the tenant it proved, and
lives ``ttl_s`` seconds: a key revoked with ``synctalk keys revoke`` stops working within that time
on every API process (docs/API_NOTES.md). Refusals are never cached: a key created a moment ago works
on its first request. The table is bounded: at most ``max_entries`` keys, the oldest dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class VerifiedKeys:
    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._entries: OrderedDict[str, tuple[float, str, str]] = (
            OrderedDict()
        )  # hash -> (until, tenant, prefix)
        self._lock = threading.Lock()  # sync routes resolve keys on the thread pool

    def get(self, key_hash: str) -> tuple[str, str] | None:
        """(tenant id, key prefix) when this key was verified less than ``ttl_s`` ago."""
        if self.ttl_s <= 0:
            return None
        with self._lock:
            hit = self._entries.get(key_hash)
            if hit is None:
                return None
            if hit[0] <= self.clock():
                del self._entries[key_hash]
                return None
            return hit[1], hit[2]

    def put(self, key_hash: str, tenant_id: str, prefix: str) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[key_hash] = (self.clock() + self.ttl_s, tenant_id, prefix)
            self._entries.move_to_end(key_hash)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

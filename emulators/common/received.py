"""What an emulator accepted and rejected: the evidence tests and benchmarks read back."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Hashable
from typing import Any


class ReceivedLog:
    """Counts per operation, recent samples, and duplicates of side-effecting requests.

    A *duplicate* is an accepted request whose ``dedup_key`` (chosen by the service: e.g. Micrio's
    folder + sourceUrl, Miniviz's label + timestamp + payload) was already accepted once. Retries that the
    API makes unsafe show up here, which is how the fault suites prove "exactly once".
    """

    def __init__(self, keep: int = 200) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.requests: Counter[str] = Counter()
            self.accepted_counts: Counter[str] = Counter()
            self.rejected_counts: Counter[str] = Counter()
            self.rejected_by_status: Counter[str] = Counter()
            self.duplicate_counts: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self._seen: dict[str, set[Hashable]] = {}
            self._recent_accepted: deque[dict[str, Any]] = deque(maxlen=self._keep)
            self._recent_rejected: deque[dict[str, Any]] = deque(maxlen=self._keep)
            self._duplicates: deque[dict[str, Any]] = deque(maxlen=self._keep)

    def request(self, route: str) -> None:
        with self._lock:
            self.requests[route] += 1

    def accepted(
        self, op: str, summary: dict[str, Any] | None = None, dedup_key: Hashable | None = None
    ) -> bool:
        """Record an accepted request; returns True when it duplicates an earlier one."""
        with self._lock:
            self.accepted_counts[op] += 1
            entry = {"op": op, **(summary or {})}
            self._recent_accepted.append(entry)
            if dedup_key is None:
                return False
            seen = self._seen.setdefault(op, set())
            if dedup_key in seen:
                self.duplicate_counts[op] += 1
                self._duplicates.append(entry)
                return True
            seen.add(dedup_key)
            return False

    def rejected(self, op: str, status: int, reason: str, summary: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.rejected_counts[op] += 1
            self.rejected_by_status[str(status)] += 1
            self._recent_rejected.append({"op": op, "status": status, "reason": reason, **(summary or {})})

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "accepted": dict(self.accepted_counts),
                "rejected": dict(self.rejected_counts),
                "rejected_by_status": dict(self.rejected_by_status),
                "duplicates": dict(self.duplicate_counts),
                "faults_injected": dict(self.faults),
                "recent_accepted": list(self._recent_accepted),
                "recent_rejected": list(self._recent_rejected),
                "recent_duplicates": list(self._duplicates),
            }

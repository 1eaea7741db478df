"""The run log's progress lines: how many calls are in flight, done and failed."""

from __future__ import annotations

import time


class Progress:
    """Counts finished calls; says so in the log at most every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.done = self.failed = 0
        self._last = time.monotonic()

    def count(self, failed: bool, in_flight: int) -> str | None:
        self.failed += failed
        self.done += not failed
        now = time.monotonic()
        if now - self._last < self.interval:
            return None
        self._last = now
        return f"{in_flight} job(s) in flight, {self.done} done, {self.failed} failed"

    def finish(self) -> str | None:
        """Reset for the next run; the summary of this one, if it ran anything."""
        summary = None
        if self.done or self.failed:
            summary = f"{self.done} done, {self.failed} failed"
        self.done = self.failed = 0
        self._last = time.monotonic()
        return summary

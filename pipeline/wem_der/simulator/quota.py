"""The gateway's request quota: an exact sliding-window log.

AEMO allows 6000 requests per minute [doc] and does not say how it counts. The simulator
counts exactly: a window is the half-open interval (now - period, now], so a request that
arrived at t leaves the window at t + period. Two logs are kept:

- admitted requests, which decide the next answer (a request is refused with 429 when the
  window already holds `count` admitted requests);
- received requests, refused ones included, whose largest window is reported as
  `max_in_window`. Every window's population is largest when it ends on an arrival, so
  checking at each arrival gives the exact maximum over all windows, not a bucketed one.

A client that keeps "no window ever holds more than COUNT requests on the wire" sees
`max_in_window <= count` and never a 429.
"""

from __future__ import annotations

from collections import deque


class SlidingWindowQuota:
    """Admit at most `count` requests in any window of `period_s` seconds."""

    def __init__(self, count: int, period_s: float, *, counts_refused: bool = False) -> None:
        self.count = count
        self.period_s = period_s
        # When True, refused requests use up the quota too (a stricter gateway).
        self._counts_refused = counts_refused
        self._received: deque[float] = deque()
        self._admitted: deque[float] = deque()
        self.max_in_window = 0
        self.received_total = 0
        self.refused_total = 0

    def arrive(self, now: float) -> bool:
        """Record one request arriving at `now`; True if it is admitted."""
        cutoff = now - self.period_s
        received = self._received
        while received and received[0] <= cutoff:
            received.popleft()
        prior = len(received)
        received.append(now)
        self.received_total += 1
        self.max_in_window = max(self.max_in_window, prior + 1)
        if self._counts_refused:
            admitted = prior < self.count
        else:
            log = self._admitted
            while log and log[0] <= cutoff:
                log.popleft()
            admitted = len(log) < self.count
            if admitted:
                log.append(now)
        if not admitted:
            self.refused_total += 1
        return admitted

    def reset(self) -> None:
        """Forget every request (for `POST /_sim/reset`)."""
        self._received.clear()
        self._admitted.clear()
        self.max_in_window = 0
        self.received_total = 0
        self.refused_total = 0

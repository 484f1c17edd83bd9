"""The rejection log: every distinct reason and peer in full, a flood as one line of counts.

Each refused connection is one WARNING line naming the peer and the reason, until the
same peer is refused for the same kind of reason :data:`BURST` times within one window
of :data:`WINDOW` seconds. Its further rejections in that window are counted, not
written; so are all rejections once :data:`BUDGET` full lines have been written in the
window, whoever sent them. The first rejection after the window has ended writes the
counts: one line per peer and reason for the :data:`SUMMARIES` largest, one line for the
rest. A peer and reason whose lines were counted in a window gets one full line, not
``BURST``, in the window right after it, so that the log shows it is still going on.

A client flooding a server with bad headers therefore costs the log ``BURST`` lines and
one line of counts in its first window, then two lines per window, whatever its rate. A
spray from many source addresses costs at most ``BUDGET + SUMMARIES + 1`` lines per
window. The table of counts keeps at most :data:`MAX_TRACKED` entries and is emptied
with each window.

No thread or timer runs: the counts of a window appear with the next rejection after it,
when the process exits (``atexit``), or when a server calls :meth:`RejectionLog.flush`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["BUDGET", "BURST", "MAX_TRACKED", "SUMMARIES", "WINDOW", "RejectionLog"]

WINDOW: Final = 10.0
"""Seconds of a window: a flood costs one summary line per window."""
BURST: Final = 10
"""Full lines per peer and kind of reason in a window."""
BUDGET: Final = 100
"""Full lines in a window, all peers together."""
SUMMARIES: Final = 10
"""Summary lines naming their peer and reason at the end of a window; one more sums the rest."""
MAX_TRACKED: Final = 1000
"""Peers and reasons counted one by one in a window; beyond, rejections are only summed."""

_Key = tuple[str, str]
"""(peer host, kind of reason: the error's class name)."""


class RejectionLog:
    """Decides which rejections are written in full and sums up the others; thread-safe.

    ``clock`` is :func:`time.monotonic` unless a test gives another; the numbers default
    to the module's constants.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window: float = WINDOW,
        burst: int = BURST,
        budget: int = BUDGET,
        summaries: int = SUMMARIES,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.window = window
        self.burst = burst
        self.budget = budget
        self.summaries = summaries
        self.max_tracked = max_tracked
        self._clock = clock
        self._lock = threading.Lock()
        self._started: float | None = None
        self._written = 0
        self._per_key: dict[_Key, list[int]] = {}  # key -> [written, suppressed]
        self._untracked = 0
        self._flooding: frozenset[_Key] = frozenset()  # counted in the window just ended

    def reject(self, where: str, host: str, kind: str, reason: object) -> None:
        """Log (or count) that the connection from ``where`` is closed for ``reason``.

        ``host`` and ``kind`` say whose rejection and of what sort it is: the key that
        limits the lines of one peer.
        """
        now = self._clock()
        with self._lock:
            summary = self._roll(now)
            key = (host, kind)
            counts = self._per_key.get(key)
            burst = 1 if key in self._flooding else self.burst
            if counts is None:
                if len(self._per_key) < self.max_tracked:
                    counts = self._per_key[key] = [0, 0]
                elif self._written < self.budget:
                    counts = [0, 0]  # written in full, but not counted one by one
            if counts is not None and counts[0] < burst and self._written < self.budget:
                counts[0] += 1
                self._written += 1
                last = counts[0] == burst or self._written == self.budget
            elif counts is not None:
                counts[1] += 1
                counts = None
            else:
                self._untracked += 1
        self._write(summary)
        if counts is not None:
            if last:
                self.logger.warning(
                    "closing connection from %s: %s (more such lines within %g s are counted, "
                    "not written)",
                    where,
                    reason,
                    self.window,
                )
            else:
                self.logger.warning("closing connection from %s: %s", where, reason)

    def flush(self) -> None:
        """Write the counts of the current window now, and start a new one."""
        with self._lock:
            summary = self._summary(self._clock())
        self._write(summary)

    def _roll(self, now: float) -> list[str]:
        """Start a new window if the current one has ended; the lines that sum it up."""
        if self._started is not None and now - self._started < self.window:
            return []
        summary = self._summary(now)
        self._started = now
        return summary

    def _summary(self, now: float) -> list[str]:
        """The lines summing up the current window; its counts are cleared."""
        suppressed = sorted(
            ((counts[1], key) for key, counts in self._per_key.items() if counts[1]),
            reverse=True,
        )
        seconds = 0.0 if self._started is None else now - self._started
        # Still flooding if the next window follows right after this one.
        self._flooding = frozenset(key for _, key in suppressed if seconds < 2 * self.window)
        untracked = self._untracked
        self._per_key = {}
        self._untracked = 0
        self._written = 0
        self._started = None
        lines = [
            f"suppressed {count} more rejections from {host} ({kind}) in the last {seconds:.0f} s"
            for count, (host, kind) in suppressed[: self.summaries]
        ]
        rest = suppressed[self.summaries :]
        if rest or untracked:
            count = sum(count for count, _ in rest) + untracked
            peers = f"at least {len(rest) + 1}" if untracked else str(len(rest))
            lines.append(
                f"suppressed {count} more rejections from {peers} other peers and reasons "
                f"in the last {seconds:.0f} s"
            )
        return lines

    def _write(self, lines: list[str]) -> None:
        for line in lines:
            self.logger.warning("%s", line)

"""One process-wide watchdog thread that fires guest deadlines (a heap of timers).

Guests arm a deadline when they start running and disarm it when they stop; an expired deadline
calls its callback on the watchdog thread, which kicks the guest's vCPUs. Sharing one thread
keeps a boot free of thread creation for the watchdog (boots are ~1 ms).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable


class Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def arm(self, deadline: float, callback: Callable[[], None]) -> int:
        """Call `callback()` at `deadline` (time.perf_counter()) unless disarmed first."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._heap, self._callbacks = [], {}
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="snplab-watchdog",
                                                daemon=True)
                self._thread.start()
            token = next(self._ids)
            self._callbacks[token] = callback
            heapq.heappush(self._heap, (deadline, token))
            if self._heap[0][1] == token:  # earlier than what the thread sleeps for
                self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._callbacks.pop(token, None)

    @property
    def armed(self) -> int:
        return len(self._callbacks)

    def _loop(self) -> None:
        while True:
            due: list[Callable[[], None]] = []
            with self._cond:
                while self._heap and self._heap[0][1] not in self._callbacks:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait()
                    continue
                now = time.perf_counter()
                while self._heap and self._heap[0][0] <= now:
                    _, token = heapq.heappop(self._heap)
                    cb = self._callbacks.pop(token, None)
                    if cb is not None:
                        due.append(cb)
                if not due:
                    self._cond.wait(self._heap[0][0] - now)
                    continue
            for cb in due:
                try:
                    cb()
                except Exception:  # a callback bug must not kill the watchdog
                    pass


WATCHDOG = Watchdog()

"""A test-only crash point (`RR_TEST_CRASH_AFTER_WRITES`, used by `make soak`).

The process kills itself with SIGKILL after its Nth document write has landed durably and
before the client hears of it: the one moment a plain `kill -9` from outside rarely hits, when
a batch the client must treat as failed is in fact stored whole. Unset: never.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


class CrashPoint:
    def __init__(self, after_writes: int | None) -> None:
        self.after_writes = after_writes
        self._writes = 0
        self._lock = threading.Lock()

    def write_landed(self) -> None:
        if self.after_writes is None:
            return
        with self._lock:
            self._writes += 1
            if self._writes >= self.after_writes:
                log.warning("RR_TEST_CRASH_AFTER_WRITES: killing this process now")
                os.kill(os.getpid(), signal.SIGKILL)

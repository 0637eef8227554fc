"""Runs a function every few seconds in a daemon thread, surviving its failures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class PeriodicTask:
    def __init__(
        self, name: str, action: Callable[[], object], interval_s: float, *, run_first: bool
    ) -> None:
        self._name = name
        self._action = action
        self._interval_s = interval_s
        self._run_first = run_first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the task; one never started stays stopped (``start`` then returns at once
        when ``run_first`` is off)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        if not self._run_first and self._stop.wait(self._interval_s):
            return
        while True:
            try:
                self._action()
            except Exception:  # one failure must not end the task
                logger.exception("%s failed", self._name)
            if self._stop.wait(self._interval_s):
                return

"""``service.periodic.PeriodicTask``: the model poll, metrics refresh and retention
loops of the server run on it, so one failure must not end them."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from service.periodic import PeriodicTask


def test_a_failing_action_is_logged_and_run_again() -> None:
    calls: list[float] = []
    fourth = threading.Event()

    def action() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 4:
            fourth.set()
        if len(calls) <= 2:
            raise RuntimeError(f"failure {len(calls)}")

    task = PeriodicTask("flaky", action, 0.01, run_first=True)
    task.start()
    try:
        assert fourth.wait(5), calls
    finally:
        task.stop()
    assert len(calls) >= 4  # it went on after two failures


def test_failures_are_logged_with_the_task_name(caplog: pytest.LogCaptureFixture) -> None:
    failed = threading.Event()

    def action() -> None:
        failed.set()
        raise ValueError("no database")

    task = PeriodicTask("model-poll", action, 0.01, run_first=True)
    # On the module's logger itself: the CLI's logging set-up stops "service" records
    # from reaching the root logger, where caplog listens.
    periodic = logging.getLogger("service.periodic")
    periodic.addHandler(caplog.handler)
    try:
        task.start()
        assert failed.wait(5)
        task.stop()
    finally:
        periodic.removeHandler(caplog.handler)
    assert any(
        record.getMessage() == "model-poll failed" and record.exc_info for record in caplog.records
    )


def test_without_run_first_the_first_run_waits_an_interval_and_stop_is_prompt() -> None:
    started = time.monotonic()
    ran: list[float] = []
    task = PeriodicTask("later", lambda: ran.append(time.monotonic()), 0.2, run_first=False)
    task.start()
    time.sleep(0.1)
    assert ran == []  # not before the interval
    deadline = time.monotonic() + 5
    while not ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran and ran[0] - started >= 0.2
    stopping = time.monotonic()
    task.stop()  # waits for no interval
    assert time.monotonic() - stopping < 1.0
    count = len(ran)
    time.sleep(0.3)
    assert len(ran) == count  # stopped: no run after


def test_a_task_never_started_stops_at_once() -> None:
    task = PeriodicTask("never", lambda: None, 60, run_first=False)
    stopping = time.monotonic()
    task.stop()
    assert time.monotonic() - stopping < 0.5

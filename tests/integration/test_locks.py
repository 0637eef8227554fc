"""The training lock's lease on a real SQLite file and a real PostgreSQL: a holder that
died is taken over (at once on its host; elsewhere when its lease lapses), a live
holder's heartbeat keeps it, and a broken lease is noticed by its holder."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core import processes
from storage import runs
from tests.support import wait_until

HOUR = timedelta(hours=1)


def dead_pid() -> int:
    """A process id of this host that ran and has stopped (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_lock_whose_holder_process_is_gone_is_taken_over_at_once(
    sessions: sessionmaker[Session],
) -> None:
    gone = processes.process_identity(pid=dead_pid())
    runs.acquire_lock(session_factory=sessions, name="training", holder=gone, ttl=HOUR)
    with sessions() as session:
        assert [lock.stale for lock in runs.list_locks(session=session)] == ["holder gone"]
    taken = runs.acquire_lock(session_factory=sessions, name="training", holder="me:1", ttl=HOUR)
    assert taken == gone
    with pytest.raises(runs.LockHeld, match="held by me:1"):
        runs.acquire_lock(session_factory=sessions, name="training", holder="you:2", ttl=HOUR)


def test_a_live_holder_on_this_host_keeps_its_lock(sessions: sessionmaker[Session]) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            holder = processes.process_identity(pid=alive.pid)
            runs.acquire_lock(session_factory=sessions, name="training", holder=holder, ttl=HOUR)
            with pytest.raises(runs.LockHeld, match="sentiloop locks break training"):
                runs.acquire_lock(
                    session_factory=sessions, name="training", holder="me:1", ttl=HOUR
                )
        finally:
            alive.kill()


def test_a_lease_renewed_by_its_heartbeat_outlives_its_ttl(
    sessions: sessionmaker[Session],
) -> None:
    ttl = timedelta(seconds=1.2)
    lease = runs.Lease(session_factory=sessions, name="training", ttl=ttl)
    lease.acquire()
    try:
        time.sleep(3 * ttl.total_seconds())
        assert not _takes(sessions, "elsewhere:7")
        assert lease.lost is None
    finally:
        lease.release()
    assert _takes(sessions, "elsewhere:7")


def test_another_hosts_lease_is_taken_over_once_it_is_no_longer_renewed(
    sessions: sessionmaker[Session],
) -> None:
    ttl = timedelta(seconds=1.5)
    # A holder on another host (its process cannot be checked) that stopped renewing.
    runs.acquire_lock(session_factory=sessions, name="training", holder="elsewhere:7", ttl=ttl)
    assert not _takes(sessions, "me:1")
    assert wait_until(lambda: _takes(sessions, "me:1"), timeout_s=3 * ttl.total_seconds())
    # The old holder's release (were it to come back) leaves the new holder's lock alone.
    runs.release_lock(session_factory=sessions, name="training", holder="elsewhere:7")
    with sessions() as session:
        assert [lock.holder for lock in runs.list_locks(session=session)] == ["me:1"]


def _takes(sessions: sessionmaker[Session], holder: str) -> bool:
    try:
        runs.acquire_lock(session_factory=sessions, name="training", holder=holder, ttl=HOUR)
    except runs.LockHeld:
        return False
    return True


def test_a_broken_lease_is_lost_and_says_so(sessions: sessionmaker[Session]) -> None:
    lease = runs.Lease(session_factory=sessions, name="training", ttl=timedelta(seconds=0.8))
    lease.acquire()
    try:
        lease.check()
        broken = runs.break_lock(session_factory=sessions, name="training")
        assert broken is not None and broken.holder == lease.holder and broken.stale is None
        assert wait_until(lambda: lease.lost is not None, timeout_s=3)
        with pytest.raises(runs.LeaseLost, match="broken"):
            lease.check()
    finally:
        lease.release()
    assert runs.break_lock(session_factory=sessions, name="training") is None

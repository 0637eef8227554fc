"""Whether a process of this machine still runs: a lock holder or the owner of a scratch
directory that died without cleaning up (SIGKILL, the out-of-memory killer) left its
process id behind, and a process id that no longer runs proves it is gone. And a
process that stops when its parent dies (``stop_with_parent``)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import psutil

logger = logging.getLogger(__name__)


def this_host() -> str:
    return socket.gethostname()


def is_running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped) has stopped. A
    process we may not inspect runs (the safe answer for a lock)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def process_identity(host: str | None = None, pid: int | None = None) -> str:
    """``HOST:PID``, how a process names itself as a lock holder."""
    return f"{host or this_host()}:{pid if pid is not None else os.getpid()}"


def is_gone(identity: str) -> bool:
    """Whether the process named ``HOST:PID`` is known to have stopped: only a process
    of this host can be checked; another host's (or a name without a pid) is not gone."""
    host, _, pid = identity.rpartition(":")
    return host == this_host() and pid.isdigit() and not is_running(int(pid))


def stop_with_parent(interval_s: float = 1.0, sig: int = signal.SIGTERM) -> threading.Thread:
    """Send ``sig`` to this process once its parent is gone (it was reparented): a
    server's worker whose arbiter was SIGKILLed (the out-of-memory killer) would
    otherwise keep the port and answer on, and the next start could not bind. A
    thread polling the parent's pid rather than Linux's PR_SET_PDEATHSIG, which
    fires when the *thread* that started the process ends."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        logger.warning("the parent process %d is gone: stopping (signal %d)", parent, sig)
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread

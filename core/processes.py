"""Whether a process of this machine still runs: a lock holder or the owner of a scratch
directory that died without cleaning up (SIGKILL, the out-of-memory killer) left its
process id behind, and a process id that no longer runs proves it is gone."""

from __future__ import annotations

import os
import socket

import psutil


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

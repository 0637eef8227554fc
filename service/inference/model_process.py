"""Model processes: scorers that run outside the API worker's interpreter.

On CPUs the API worker hands each batch to one of several single-threaded model
processes (one per core by default, ``SENTILOOP_MODEL_PROCESSES``). Each holds
its own ``Scorer`` with its own copy of the models. Why processes:

* model threads inside the worker queue with the event loop for one GIL; under
  load that left ~20% of the CPU idle;
* several API workers split keep-alive connections unevenly (the first idle
  worker accepts a whole burst of them) and leave a core idle at low concurrency;
* ``concurrent.futures.ProcessPoolExecutor`` adds two helper threads per process
  to the worker, the same GIL hand-offs again.

So the event loop talks to each process over a socket pair through asyncio
streams (no thread): a batch is one framed write, its answer one framed read.
The frames are those of ``multiprocessing.connection`` (a 4-byte length, or -1
and an 8-byte length, then a pickle), so the process reads them with a plain
blocking ``Connection``. The streams buffer partial writes, so a batch of any
size goes through (a non-blocking ``Connection.send`` of a batch larger than
the socket buffer failed half-written). Model management (refresh) goes over a
second pipe, from any thread.

Supervision: every wait has a deadline. A process that dies (its socket reaches
end of file) or does not answer a batch within ``call_timeout_s`` is killed,
reaped and started again in the background; the batch it held fails with
``ModelUnavailable`` (the batcher retries it once on another process) and the
slot reports itself unavailable until its successor has loaded its models.
A process is started with ``spawn`` (forking a worker that runs threads is
unsafe).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from core import database
from core.logs import configure_logging
from core.settings import Settings
from model.model_store import use_store
from model.templates import TemplateRegistry
from service.inference.loading import load_scorer, refresh_report
from service.inference.scoring import ModelUnavailable, ScoreItem, Scorer, ScoreResult

logger = logging.getLogger(__name__)

_SIZE = struct.Struct("!i")
_LARGE_SIZE = struct.Struct("!Q")
_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
_JOIN_TIMEOUT_S = 5.0


class ModelProcessDied(ModelUnavailable):
    """The model process died, hung or is being replaced; the batch it held failed."""


# --- inside the model process ---------------------------------------------------


def _transportable(error: Exception) -> Exception:
    """``error`` if it survives pickling (custom signatures often do not), else its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


def release_freed_memory() -> None:
    """Hand the pages glibc keeps free in its heap back to the system.

    Loading a model allocates far more than it keeps (the transformers tokenizer
    the scoring tokenizer is copied from, ONNX Runtime's parse of the file), and a
    swap frees the model it replaced. glibc keeps freed memory for reuse and only
    gives back the top of its heap. Measured on the shipped model: 1.04 GB RSS
    after start (0.80 GB with this), 1.4 GB after one hot swap and 1.6 GB after
    six (back to 1.0 GB with this); scoring traffic did not grow it.
    ``malloc_trim(0)`` takes milliseconds and runs only after a load.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _refresh(scorer: Scorer) -> dict[str, Any]:
    """Swap in newly assigned models; memory the replaced ones held goes back."""
    report = refresh_report(scorer)
    if report["changes"]:
        release_freed_memory()
    return report


def serve_model_process(settings: Settings, batches: Connection, control: Connection) -> None:
    """Main function of a model process: load the models, then answer both pipes.

    It ignores SIGINT/SIGTERM sent to the whole process group (Ctrl+C, a graceful
    stop): the worker decides when it ends, by closing the pipes (or by dying).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    use_store(settings.resolved_bentoml_home)
    configure_logging()
    try:
        sessions = database.make_session_factory(
            database.make_engine(settings.resolved_database_url)
        )
        scorer = load_scorer(
            settings, TemplateRegistry.load(settings.resolved_templates_dir), sessions
        )
    except Exception as exc:
        control.send((0, False, RuntimeError(f"model process failed to start: {exc!r}")))
        raise
    release_freed_memory()
    gc.freeze()  # see service.bento: full collections over torch's objects stall a process
    control.send((0, True, scorer.describe()))
    handlers = {
        "score": lambda payload: scorer.score(payload[0], alone=payload[1]),
        "refresh": lambda _: _refresh(scorer),
    }
    while True:
        for connection in wait([batches, control]):
            assert isinstance(connection, Connection)
            try:
                number, kind, payload = connection.recv()
            except EOFError:  # the worker is gone
                return
            try:
                answer: tuple[int, bool, Any] = (number, True, handlers[kind](payload))
            except Exception as exc:
                answer = (number, False, _transportable(exc))
            connection.send(answer)


# --- in the API worker --------------------------------------------------------------


def _frame(message: object) -> bytes:
    """``message`` framed as ``multiprocessing.connection.Connection.send`` frames it."""
    payload = bytes(ForkingPickler.dumps(message))
    if len(payload) > 0x7FFFFFFF:
        return _SIZE.pack(-1) + _LARGE_SIZE.pack(len(payload)) + payload
    return _SIZE.pack(len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _SIZE.unpack(await reader.readexactly(_SIZE.size))
    if size == -1:
        (size,) = _LARGE_SIZE.unpack(await reader.readexactly(_LARGE_SIZE.size))
    return await reader.readexactly(size)


def _outcome(answer: tuple[int, bool, Any]) -> Any:
    _, ok, value = answer
    if not ok:
        raise value
    return value


@dataclass
class _Incarnation:
    """One started process and the worker's ends of its two channels."""

    process: BaseProcess
    batches: socket.socket
    control: Connection
    control_lock: threading.Lock = field(default_factory=threading.Lock)
    described: dict[str, Any] | None = None

    def stop(self) -> None:
        """Close the channels, then end and reap the process (SIGKILL if it lingers)."""
        with contextlib.suppress(OSError):
            # Shut the connection down, not only this descriptor: the worker's
            # streams hold a duplicate, and the process must see end of file.
            self.batches.shutdown(socket.SHUT_RDWR)
        for channel in (self.batches, self.control):
            with contextlib.suppress(OSError):
                channel.close()
        self.process.join(_JOIN_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(_JOIN_TIMEOUT_S)


class ModelProcess:
    """The worker's handle on one model process (a ``ModelSlot`` of the batcher).

    ``score`` runs on the event loop; the batcher sends a process up to two batches
    at once (``worker.MODEL_PROCESS_DEPTH``), which it scores in turn, each answer
    matched to its caller by number; ``call`` and ``wait_started`` from any thread.
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        *,
        start_timeout_s: float,
        call_timeout_s: float,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_restart = on_restart
        self._name = name
        self._start_timeout_s = start_timeout_s
        self._call_timeout_s = call_timeout_s
        self._closing = False
        self._child = self._spawn()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        # Batches are numbered: an answer to a batch whose caller gave up is
        # dropped, never taken for the answer to the next one.
        self._number = 0
        self._pending: dict[int, asyncio.Future[list[ScoreResult]]] = {}
        self._restart_task: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def pid(self) -> int | None:
        return self._child.process.pid

    @property
    def described(self) -> dict[str, Any] | None:
        """What the process served when last asked (start-up or the last refresh)."""
        return self._child.described

    @property
    def available(self) -> bool:
        return self._restart_task is None and not self._closing

    def _spawn(self) -> _Incarnation:
        context = multiprocessing.get_context("spawn")
        ours, theirs = socket.socketpair()
        child_batches = Connection(theirs.detach())
        control, child_control = context.Pipe()
        process = context.Process(
            target=serve_model_process,
            args=(self._settings, child_batches, child_control),
            name=f"sentiloop-model-{self._name}",
            daemon=True,
        )
        process.start()
        child_batches.close()
        child_control.close()
        return _Incarnation(process=process, batches=ours, control=control)

    def _wait_started(self, child: _Incarnation) -> dict[str, Any]:
        if not child.control_lock.acquire(timeout=self._start_timeout_s):
            raise ModelProcessDied(f"model process {self._name} is busy starting")
        try:
            if child.described is None:
                try:
                    if not child.control.poll(self._start_timeout_s):
                        raise ModelProcessDied(
                            f"model process {self._name} did not start within "
                            f"{self._start_timeout_s:.0f}s"
                        )
                    child.described = _outcome(child.control.recv())
                except (EOFError, OSError) as exc:
                    raise ModelProcessDied(
                        f"model process {self._name} exited while starting "
                        f"(exit code {child.process.exitcode})"
                    ) from exc
                except ModelProcessDied:
                    raise
                except Exception as exc:  # it reported why it could not start
                    raise ModelProcessDied(f"model process {self._name}: {exc}") from exc
            return child.described
        finally:
            child.control_lock.release()

    def wait_started(self) -> dict[str, Any]:
        """Block until the process has loaded its models; what it serves."""
        return self._wait_started(self._child)

    def call(self, kind: str, timeout_s: float) -> Any:
        """A control request (``refresh``), answered between two batches.

        Refused at once while the process is being replaced; a process that does
        not answer within ``timeout_s`` is killed (its successor starts with the
        current models).
        """
        if not self.available:
            raise ModelProcessDied(f"model process {self._name} is restarting")
        child = self._child
        self._wait_started(child)
        if not child.control_lock.acquire(timeout=timeout_s):
            raise ModelProcessDied(f"model process {self._name} is busy with another request")
        try:
            child.control.send((0, kind, None))
            if not child.control.poll(timeout_s):
                logger.error("model process %s did not answer %r within %.0fs; killing it",
                             self._name, kind, timeout_s)  # fmt: skip
                child.process.kill()
                raise ModelProcessDied(f"model process {self._name} did not answer {kind!r}")
            answer = _outcome(child.control.recv())
        except (EOFError, OSError) as exc:
            raise ModelProcessDied(f"model process {self._name} died") from exc
        finally:
            child.control_lock.release()
        if isinstance(answer, dict) and "models" in answer:
            child.described = {k: v for k, v in answer.items() if k != "changes"}
        return answer

    async def ready(self) -> None:
        """Return once the process can take batches (after a restart)."""
        while self._restart_task is not None and not self._closing:
            await asyncio.shield(self._restart_task)

    async def _attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.StreamWriter:
        """Streams over the batch socket, on the running loop (once per loop)."""
        if self._writer is not None and self._loop is loop:
            return self._writer
        child = self._child
        await asyncio.to_thread(self._wait_started, child)
        # A duplicate descriptor: the streams own (and close) theirs, the incarnation its own.
        sock = socket.socket(fileno=os.dup(child.batches.fileno()))
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._loop, self._writer = loop, writer
        self._reader_task = loop.create_task(
            self._read_answers(reader, writer, child), name=f"model-{self._name}-answers"
        )
        return writer

    async def score(self, items: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        if not self.available:
            raise ModelProcessDied(f"model process {self._name} is restarting")
        loop = asyncio.get_running_loop()
        child = self._child
        self._number += 1
        number = self._number
        future: asyncio.Future[list[ScoreResult]] = loop.create_future()
        self._pending[number] = future
        try:
            async with asyncio.timeout(self._call_timeout_s):
                writer = await self._attach(loop)
                writer.write(_frame((number, "score", (list(items), alone))))
                await writer.drain()
                return await future
        except TimeoutError:
            self._replace(child, f"did not answer a batch of {len(items)} texts within "
                                 f"{self._call_timeout_s:.0f}s")  # fmt: skip
            raise ModelProcessDied(
                f"model process {self._name} did not answer in time; retry shortly"
            ) from None
        except (ConnectionError, OSError) as exc:
            self._replace(child, f"connection lost ({exc})")
            raise ModelProcessDied(f"model process {self._name} died") from exc
        except ModelProcessDied as exc:
            self._replace(child, str(exc))
            raise
        finally:
            self._pending.pop(number, None)

    async def _read_answers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, child: _Incarnation
    ) -> None:
        try:
            while True:
                frame = await _read_frame(reader)
                try:
                    answer = pickle.loads(frame)
                except Exception as exc:  # an answer that cannot be unpickled
                    error = ModelProcessDied(f"unreadable answer from model process: {exc!r}")
                    for pending in list(self._pending.values()):
                        if not pending.done():
                            pending.set_exception(error)
                    continue
                waiting = self._pending.get(answer[0])
                if waiting is None or waiting.done():
                    continue  # the answer to a batch whose caller went away
                try:
                    waiting.set_result(_outcome(answer))
                except Exception as exc:
                    waiting.set_exception(exc)
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
        self._replace(child, f"exited (exit code {child.process.exitcode})")

    def _replace(self, child: _Incarnation, reason: str) -> None:
        """Fail what ``child`` held and start its successor in the background (once)."""
        error = ModelProcessDied(f"model process {self._name} {reason}")
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)
        if self._closing or child is not self._child or self._restart_task is not None:
            return
        logger.error("model process %s (pid %s) %s; starting a new one",
                     self._name, child.process.pid, reason)  # fmt: skip
        child.process.kill()  # a hung process is ended; a dead one is unaffected
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        self._reader_task = None
        loop = asyncio.get_running_loop()
        self._restart_task = loop.create_task(self._restart(child), name=f"model-{self._name}")

    async def _restart(self, old: _Incarnation) -> None:
        try:
            await asyncio.to_thread(old.stop)
            attempt = 0
            while not self._closing:
                try:
                    child = await asyncio.to_thread(self._spawn)
                    self._child = child
                    await asyncio.to_thread(self._wait_started, child)
                    self.restarts += 1
                    if self._on_restart is not None:
                        self._on_restart()
                    logger.info("model process %s started again (pid %s)",
                                self._name, child.process.pid)  # fmt: skip
                    return
                except Exception as exc:
                    delay = _RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)]
                    logger.error("model process %s failed to start (%s); next try in %.0fs",
                                 self._name, exc, delay)  # fmt: skip
                    await asyncio.to_thread(self._child.stop)
                    await asyncio.sleep(delay)
                    attempt += 1
        finally:
            self._restart_task = None

    def close(self) -> None:
        """End the process (from any thread): its streams see end of file and stop."""
        self._closing = True
        self._child.stop()

"""Model processes: scoring engines that run outside the API worker's interpreter.

On CPUs the API worker hands each batch to one of several single-threaded model
processes (one per core by default, ``SENTILOOP_MODEL_PROCESSES``). Each holds
its own ``ScoringEngine`` with its own copy of the models. Why processes:

* model threads inside the worker queue with the event loop for one GIL; under
  load that left ~20% of the CPU idle;
* several API workers split keep-alive connections unevenly (the first idle
  worker accepts a whole burst of them) and leave a core idle at low concurrency;
* ``concurrent.futures.ProcessPoolExecutor`` adds two helper threads per process
  to the worker, the same GIL hand-offs again.

So the event loop talks to each process over a pipe it watches itself
(``loop.add_reader``): a batch costs one write and one read, no thread. Model
management (describe, refresh) goes over a second pipe, from any thread. A
process is started with ``spawn`` (forking a worker that runs threads is
unsafe); one that dies is started again, and the batch it held fails.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import feedback
from sentiloop.logging_setup import configure_logging
from sentiloop.settings import Settings
from service.engines import load_engine, refresh_report
from service.scoring import ScoreItem, ScoreResult
from service.templates import TemplateRegistry

logger = logging.getLogger(__name__)


class ModelProcessDied(RuntimeError):
    pass


# --- inside the model process ---------------------------------------------------


def _transportable(error: Exception) -> Exception:
    """``error`` if it survives pickling (custom signatures often do not), else its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def serve_model_process(settings: Settings, batches: Connection, control: Connection) -> None:
    """Main function of a model process: load the models, then answer both pipes.

    It ignores SIGINT/SIGTERM sent to the whole process group (Ctrl+C, a graceful
    stop): the worker decides when it ends, by closing the pipes (or by dying).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging()
    try:
        sessions = feedback.make_session_factory(
            feedback.make_engine(settings.resolved_database_url)
        )
        engine = load_engine(
            settings, TemplateRegistry.load(settings.resolved_templates_dir), sessions
        )
    except Exception as exc:
        control.send((0, False, RuntimeError(f"model process failed to start: {exc!r}")))
        raise
    gc.collect()
    gc.freeze()  # see service.bento: full collections over torch's objects stall a process
    control.send((0, True, engine.describe()))
    handlers: dict[str, Callable[[Any], Any]] = {
        "score": engine.score,
        "describe": lambda _: engine.describe(),
        "refresh": lambda _: refresh_report(engine),
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


def _outcome(answer: tuple[int, bool, Any]) -> Any:
    _, ok, value = answer
    if not ok:
        raise value
    return value


class ModelProcess:
    """The worker's handle on one model process. ``score`` is for the event loop (one
    call at a time, as the batcher guarantees); ``call`` for any thread."""

    def __init__(self, settings: Settings, name: str, start_timeout_s: float) -> None:
        self._settings = settings
        self._name = name
        self._start_timeout_s = start_timeout_s
        self._control_lock = threading.Lock()
        self._pending: asyncio.Future[list[ScoreResult]] | None = None
        # Numbers each batch, so that a late answer (its caller cancelled) can never
        # be taken for the answer to the next batch.
        self._batch_number = 0
        self._reading: asyncio.AbstractEventLoop | None = None
        self._restarting: asyncio.Future[None] | None = None
        self._closing = False
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._batches, child_batches = context.Pipe()
        self._control, child_control = context.Pipe()
        self._process = context.Process(
            target=serve_model_process,
            args=(self._settings, child_batches, child_control),
            name=f"sentiloop-model-{self._name}",
            daemon=True,
        )
        self._process.start()
        child_batches.close()
        child_control.close()
        self._started: dict[str, Any] | None = None

    def wait_started(self) -> dict[str, Any]:
        """Block until the process has loaded its models; what it serves."""
        if self._started is None:
            with self._control_lock:
                if not self._control.poll(self._start_timeout_s):
                    raise TimeoutError(f"model process {self._name} did not start in time")
                self._started = _outcome(self._control.recv())
        return self._started

    def call(self, kind: str) -> Any:
        """``describe`` or ``refresh``, answered between two batches."""
        self.wait_started()
        with self._control_lock:
            try:
                self._control.send((0, kind, None))
                return _outcome(self._control.recv())
            except (EOFError, OSError) as exc:
                raise ModelProcessDied(f"model process {self._name} died") from exc

    async def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        if self._restarting is not None:
            await self._restarting
        loop = asyncio.get_running_loop()
        if self._reading is not loop:
            await asyncio.to_thread(self.wait_started)
            loop.add_reader(self._batches.fileno(), self._on_answer)
            self._reading = loop
        future: asyncio.Future[list[ScoreResult]] = loop.create_future()
        self._pending = future
        self._batch_number += 1
        try:
            self._batches.send((self._batch_number, "score", list(items)))
        except OSError as exc:
            self._pending = None
            self._died(loop)
            raise ModelProcessDied(f"model process {self._name} died") from exc
        return await future

    def _on_answer(self) -> None:
        try:
            answer = self._batches.recv()
        except (EOFError, OSError):
            assert self._reading is not None
            future, self._pending = self._pending, None
            self._died(self._reading)
            if future is not None and not future.done():
                future.set_exception(ModelProcessDied(f"model process {self._name} died"))
            return
        except Exception as exc:  # an answer that cannot be unpickled
            error = RuntimeError(f"unreadable answer from model process: {exc!r}")
            answer = (self._batch_number, False, error)
        if answer[0] != self._batch_number:
            return  # the answer to a batch whose caller went away
        future, self._pending = self._pending, None
        if future is None or future.done():
            return
        try:
            future.set_result(_outcome(answer))
        except Exception as exc:
            future.set_exception(exc)

    def _died(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a new process off the event loop; calls wait for it."""
        if self._restarting is not None or self._closing:
            return
        logger.error("model process %s died (exit code %s); starting a new one",
                     self._name, self._process.exitcode)  # fmt: skip
        loop.remove_reader(self._batches.fileno())
        self._reading = None

        def restart() -> None:
            self._process.join(5)
            self._batches.close()
            self._control.close()
            self._start()
            self.wait_started()

        async def restarting() -> None:
            try:
                await asyncio.to_thread(restart)
            finally:
                self._restarting = None

        self._restarting = loop.create_task(restarting())

    def close(self) -> None:
        self._closing = True
        if self._reading is not None and not self._reading.is_closed():
            self._reading.remove_reader(self._batches.fileno())
        self._batches.close()
        self._control.close()
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()

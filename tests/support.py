"""Test helpers: a tiny real model, throwaway PostgreSQL databases, a real `bentoml serve`."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
# The benchmark corpora, never part of the project: ../shared/data beside the clone,
# or where SENTILOOP_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("SENTILOOP_SHARED_DATA") or ROOT.parent / "shared" / "data")
POSTGRES_URL = os.environ.get(
    "SENTILOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT classifier with the packaged tokenizer (random weights).

    Initialized with a wide weight range so that scores differ clearly between
    texts (BERT's default 0.02 gives nearly the same scores to everything).
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from model.base_models import minilm_directory
    from model.labels import LABELS

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_directory()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.2,
        id2label={index: str(label) for index, label in enumerate(LABELS)},
        label2id={str(label): index for index, label in enumerate(LABELS)},
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server; dropped afterwards."""
    admin = make_url(POSTGRES_URL)
    name = f"sentiloop_test_{uuid.uuid4().hex[:12]}"
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 30, interval_s: float = 0.1
) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Ready answers in a row, on fresh connections, before a server counts as ready.
READY_STREAK = 12


class ServerProcess:
    """A real `bentoml serve service.bento:SentiLoop` subprocess on a free port."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        host: str = "127.0.0.1",
        checkout: Path = ROOT,
        service: str = "service.bento:SentiLoop",
    ) -> None:
        """``checkout``: the source tree to serve (another one to compare versions);
        ``service``: the BentoML service to serve from it (the benchmark's peer)."""
        self.log_path = log_path
        self._log = log_path.open("wb")
        self._host, self._checkout, self._service = host, checkout, service
        # No shutdown drain unless a test asks for one: it would add seconds to every stop.
        self._env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true",
                     "SENTILOOP_SHUTDOWN_DRAIN_S": "0", **env}  # fmt: skip
        self._launch()

    def _launch(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", self._service,
             "--host", self._host, "--port", str(self.port)],
            cwd=self._checkout, env=self._env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Wait for /readyz. A free port can be taken by another process between its
        choice and the server's bind (BentoML picks its own internal ports the same
        way): then the server is started again on another port, twice at most."""
        deadline = time.monotonic() + timeout_s
        relaunches = 0
        # Every worker answers /readyz for itself and the kernel spreads connections
        # among them: a run of ready answers on fresh connections, not the first one
        # (with 2 workers a predict reached the one still loading its models: 503).
        streak = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Address already in use" in self.log_tail() and relaunches < 2:
                    relaunches += 1
                    self._launch()
                    continue
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            ready = False
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            streak = streak + 1 if ready else 0
            if streak == READY_STREAK:
                return
            time.sleep(0.05 if ready else 0.5)
        raise TimeoutError(f"server not ready in {timeout_s}s:\n{self.log_tail()}")

    def model_processes(self) -> list[Any]:
        """The live model processes (``psutil.Process``) under this server."""
        import psutil

        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if "spawn_main" in " ".join(child.cmdline()) and child.status() != "zombie":
                    found.append(child)
        return found

    def zombies(self) -> list[int]:
        import psutil

        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() == psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
        return found

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill_hard(self) -> None:
        """SIGKILL the server and every worker it started, as a crash of the host would.

        BentoML starts workers in sessions of their own, so the process group
        alone does not reach them.
        """
        import psutil

        try:
            family = [psutil.Process(self.process.pid)]
        except psutil.NoSuchProcess:
            return
        family += family[0].children(recursive=True)
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(family, timeout=10)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (graceful: BentoML stops its workers), then SIGKILL what is left."""
        import psutil

        if self.process.poll() is None:
            try:
                family = psutil.Process(self.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                family = []
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_hard()
            _, alive = psutil.wait_procs(family, timeout=10)
            for straggler in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    straggler.kill()
        self._log.close()


def prometheus_binary(name: str) -> str:
    """Path of `prometheus`/`promtool`; scripts/test.sh installs them and sets
    SENTILOOP_REQUIRE_PROMETHEUS=1, so there a missing binary fails instead of skipping."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package prometheus)"
        if os.environ.get("SENTILOOP_REQUIRE_PROMETHEUS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def shared_data(directory: Path = SHARED_DATA) -> Path:
    """The benchmark corpora beside the clone (``../shared/data``, never part of the
    project), or a skip saying so; scripts/test.sh sets SENTILOOP_REQUIRE_DATA=1, so
    that CI, which has the data, fails instead of skipping."""
    import pytest

    if not directory.is_dir():
        message = (
            f"needs the benchmark data in {directory} (../shared/data beside the clone, "
            "or SENTILOOP_SHARED_DATA)"
        )
        if os.environ.get("SENTILOOP_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return directory


def missing(message: str, *, required_by: str) -> NoReturn:
    """Skip a test whose means (root, a network address) this machine lacks, or fail it
    where the variable ``required_by`` is 1: scripts/test.sh sets it, as CI has them
    (SENTILOOP_REQUIRE_ROOT: a tmpfs mount, chattr +i; SENTILOOP_REQUIRE_REMOTE_ADDRESS:
    an address other than loopback), so that there a lost privilege fails, not skips."""
    import pytest

    if os.environ.get(required_by) == "1":
        pytest.fail(f"{message} ({required_by}=1)")
    pytest.skip(message)


class TcpProxy:
    """A TCP proxy to a real server whose link the test can cut and restore."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        import threading

        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while this one was connecting
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)


class S3Server:
    """A real S3 API server (moto's server mode, `moto_server`) on a free port, with
    one bucket: what every replica reads as the shared model store.

    It checks credentials as S3 does: after the three unsigned calls that create a
    user allowed s3:* and its access key, every request must carry that key id and
    be signed with its secret (a wrong, swapped or missing secret is refused:
    InvalidAccessKeyId / SignatureDoesNotMatch)."""

    REGION = "us-east-1"

    def __init__(self, log_path: Path, bucket: str = "sentiloop-models") -> None:
        import boto3

        self.bucket = bucket
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
             "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        )  # fmt: skip
        if not wait_until(self._answers, timeout_s=30):
            self.stop()
            raise TimeoutError(f"moto_server did not answer on {self.url}")
        try:
            iam = boto3.session.Session().client(
                "iam", endpoint_url=self.url, region_name=self.REGION,
                aws_access_key_id="unsigned", aws_secret_access_key="unsigned",
            )  # fmt: skip
            iam.create_user(UserName="sentiloop")
            statement = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
            allow_s3 = {"Version": "2012-10-17", "Statement": [statement]}
            iam.put_user_policy(
                UserName="sentiloop", PolicyName="models", PolicyDocument=json.dumps(allow_s3)
            )
            key = iam.create_access_key(UserName="sentiloop")["AccessKey"]
            self.key_id, self.secret = str(key["AccessKeyId"]), str(key["SecretAccessKey"])
            self.client().create_bucket(Bucket=bucket)
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {self.process.returncode}")
        try:
            return httpx.get(f"{self.url}/moto-api/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def env(self, prefix: str) -> dict[str, str]:
        """The settings of a process using ``s3://bucket/prefix`` on this server."""
        return {
            "SENTILOOP_MODEL_STORE_URL": f"s3://{self.bucket}/{prefix}",
            "SENTILOOP_MODEL_STORE_ENDPOINT_URL": self.url,
            "SENTILOOP_MODEL_STORE_REGION": self.REGION,
            "SENTILOOP_MODEL_STORE_ACCESS_KEY_ID": self.key_id,
            "SENTILOOP_MODEL_STORE_SECRET_ACCESS_KEY": self.secret,
        }

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=self.REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

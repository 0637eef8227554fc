"""Test helpers: a tiny real model, throwaway PostgreSQL databases, a real `bentoml serve`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
POSTGRES_URL = os.environ.get(
    "SENTILOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT classifier with the packaged tokenizer (random weights)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from sentiloop.settings import default_base_model
    from service.labels import LABELS

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(default_base_model()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A real `bentoml serve service.bento:SentiLoop` subprocess on a free port."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.bento:SentiLoop",
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"server not ready in {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
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

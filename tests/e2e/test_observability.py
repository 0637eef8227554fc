"""Metrics verified for real: 2 API workers, a real Prometheus, every dashboard and
alert query returning data, and the rules loaded without errors."""

from __future__ import annotations

import math
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text as sql

from core import database
from core.settings import Settings
from tests import monitoring
from tests.e2e.conftest import ONE_MODEL_PROCESS, start_server
from tests.support import ServerProcess, free_port, prometheus_binary
from training import AssemblyConfig, GateConfig, TrainingArguments
from training.pipeline import DataSource, TrainingPipeline, TrainingPlan

pytestmark = pytest.mark.slow

QUERY_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[dict[str, Any]]:
    """A 2-worker server serving a freshly trained (tiny) model, with traffic and feedback."""
    tmp = tmp_path_factory.mktemp("observed")
    model_name = f"obs-{uuid.uuid4().hex[:6]}"
    home = tmp / "home"
    env = {
        "BENTOML_CONFIG_OPTIONS": "services.sentiloop.workers=2",
        **ONE_MODEL_PROCESS,  # a model process per worker
        "SENTILOOP_BASE_MODEL": str(tiny_model_dir),
        "SENTILOOP_MODEL_NAME": model_name,
        "SENTILOOP_MODEL_POLL_INTERVAL_S": "0.5",
        "SENTILOOP_METRICS_REFRESH_INTERVAL_S": "1",
        "SENTILOOP_TRAFFIC_SPLIT": '[{"template_version": "v1", "weight": 3}, '
        '{"template_version": "v2", "model": "challenger", "weight": 1}]',
    }
    server = start_server(tmp, env)
    try:
        base = tmp / "base.csv"
        rows = [
            ("I love it", "positive"),
            ("awful and I hate it", "negative"),
            ("it is on page two", "neutral"),
        ]
        base.write_text(
            "text,label\n" + "".join(f"{t} {n},{label}\n" for n in range(20) for t, label in rows)
        )
        # Traffic before the run, so that its traffic guard (and the dashboard's
        # traffic panel) has logged texts to compare the candidate on.
        traffic = [
            f"My parcel {n} arrived late and the box was broken, which is really disappointing"
            for n in range(12)
        ]  # long enough for the language to be told (short texts are "und")
        assert httpx.post(f"{server.url}/v1/predict", json={"texts": traffic}).status_code == 200
        wait_for_logged_texts(home / "sentiloop.db", len(traffic))
        pipeline = TrainingPipeline(
            Settings(home=home, base_model=str(tiny_model_dir), model_name=model_name)
        )
        outcome = pipeline.run(
            TrainingPlan(
                base_data=DataSource(base),
                assembly=AssemblyConfig(holdout_fraction=0.3),
                arguments=TrainingArguments(epochs=1, batch_size=16, max_length=32, progress=False),
                gate=GateConfig(significance=1.0, base_tolerance=1.0),
            )
        )
        pipeline.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            models = httpx.get(f"{server.url}/v1/models").json()["models"]
            if any(m["model_version"] == outcome.candidate_tag for m in models):
                break
            time.sleep(0.5)
        texts_sent = len(traffic)
        # Connections held to each worker, the traffic shared between them in turn.
        clients = clients_of_every_worker(server)
        try:
            predictions = []
            for n in range(40):
                client = clients[n % len(clients)]
                texts = [f"message {n} about the order", f"so happy {n}", f"terrible {n}"][
                    : 1 + n % 3
                ]
                response = client.post("/v1/predict", json={"texts": texts, "routing_key": f"k{n}"})
                assert response.status_code == 200, response.text
                predictions += response.json()["predictions"]
                texts_sent += len(texts)
            assert clients[0].post("/v1/predict", json={"text": ""}).status_code == 400
            for n, prediction in enumerate(predictions[:30]):
                body = {"prediction_id": prediction["prediction_id"]}
                body |= {"verdict": "correct"} if n % 2 else {"label": "negative"}
                assert clients[n % len(clients)].post("/v1/feedback", json=body).status_code == 201
        finally:
            for client in clients:
                client.close()
        yield {"server": server, "texts_sent": texts_sent, "candidate": outcome.candidate_tag,
               "predictions": predictions}  # fmt: skip
    finally:
        server.stop()


def worker_of(server: ServerProcess, response: httpx.Response) -> int:
    """The pid of the API worker holding the (kept-alive) connection of ``response``."""
    _, port = response.extensions["network_stream"].get_extra_info("client_addr")
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    [pid] = {int(found) for found in re.findall(r"pid=(\d+)", listing)}
    return pid


def clients_of_every_worker(server: ServerProcess, workers: int = 2) -> list[httpx.Client]:
    """One client per API worker, each keeping its connection to that worker: new
    connections until every worker has accepted one (the kernel picks the worker)."""
    held: dict[int, httpx.Client] = {}
    for _ in range(64):
        client = httpx.Client(base_url=server.url, timeout=30)
        pid = worker_of(server, client.get("/readyz"))
        if pid in held:
            client.close()
        else:
            held[pid] = client
        if len(held) == workers:
            return list(held.values())
    for client in held.values():
        client.close()
    raise AssertionError(f"64 connections reached {len(held)} of {workers} workers")


def wait_for_logged_texts(db: Path, count: int, timeout_s: float = 30) -> None:
    """Until the server's log writer has stored ``count`` prediction texts."""
    engine = database.make_engine(f"sqlite:///{db}")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with engine.connect() as connection:
                stored = connection.execute(
                    sql("SELECT count(*) FROM predictions WHERE text IS NOT NULL")
                ).scalar_one()
            if stored >= count:
                return
            assert time.monotonic() < deadline, f"{stored} of {count} texts logged"
            time.sleep(0.2)
    finally:
        engine.dispose()


def test_counters_are_summed_over_workers(observed: dict[str, Any]) -> None:
    """Both workers served part of the traffic (a connection held to each), and the
    scrape each of them answers counts all of it."""
    server: ServerProcess = observed["server"]
    log = server.log_path.read_text()
    assert "entry_service:sentiloop:2" in log  # two API workers really ran
    # Fresh connections to each worker (those of the traffic may have idled out).
    scrapers = clients_of_every_worker(server)
    try:
        scraped_texts = [client.get("/metrics").text for client in scrapers]
    finally:
        for client in scrapers:
            client.close()
    for text in scraped_texts:
        counted = sum(
            float(v)
            for v in re.findall(r"^sentiloop_predictions_total\{[^}]*\} (\S+)$", text, re.M)
        )
        assert counted == observed["texts_sent"]
        feedback = sum(
            float(v) for v in re.findall(r"^sentiloop_feedback_total\{[^}]*\} (\S+)$", text, re.M)
        )
        assert feedback == 30


@pytest.fixture(scope="module")
def prometheus(observed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = prometheus_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    server: ServerProcess = observed["server"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(monitoring.RULES)],
        "scrape_configs": [
            {"job_name": "sentiloop", "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        # Keep traffic flowing while Prometheus collects samples for rate() windows.
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for n in range(20):
                client.post("/v1/predict", json={"text": f"still here {n}"})
                # A language the model was not trained on (its data is English).
                client.post("/v1/predict", json={"text": "最悪の商品でした、二度と買いません"})
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def finite(result: list[Any]) -> bool:
    """Whether a series has a finite value: a NaN (0/0, a quantile of no samples) is no
    data to show (one series of several may be NaN: an operation with no writes yet)."""
    return any(math.isfinite(float(r["value"][1])) for r in result)


def query_until_data(url: str, expr: str) -> list[Any]:
    """The instant result of ``expr`` once it is finite (or as it is after the timeout)."""
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while True:
        response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        if finite(body["data"]["result"]) or time.monotonic() > deadline:
            return list(body["data"]["result"])
        time.sleep(1)


def test_every_dashboard_query_returns_data(prometheus: str) -> None:
    answered = [
        (title, query_until_data(prometheus, expr))
        for title, expr in monitoring.dashboard_expressions()
    ]
    assert [(title, result) for title, result in answered if not finite(result)] == []


def test_every_recording_rule_and_alert_signal_returns_data(prometheus: str) -> None:
    expressions = [(name, name) for name, _ in monitoring.recording_rules()]
    expressions += [
        (name, monitoring.alert_signal(expr)) for name, expr in monitoring.alert_rules()
    ]
    results = [(name, query_until_data(prometheus, expr)) for name, expr in expressions]
    assert [(name, result) for name, result in results if not finite(result)] == []


def test_prometheus_evaluates_every_rule_without_error(prometheus: str) -> None:
    groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(monitoring.recording_rules()) + len(monitoring.alert_rules())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_drift_signals_use_the_trained_models_reference(
    prometheus: str, observed: dict[str, Any]
) -> None:
    """The reference Prometheus sees is the label mix stored with the trained model,
    and the recorded TVD is half the summed gap between that mix and the live one
    (recomputed here from the series the rule reads)."""
    candidate = observed["candidate"]
    selector = f'{{model_version="{candidate}"}}'
    [tvd] = query_until_data(prometheus, f"sentiloop:label_drift_tvd:1h{selector}")
    server: ServerProcess = observed["server"]
    models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
    # It serves as champion and as challenger (no other candidate): same metadata.
    served = next(m for m in models if m["model_version"] == candidate)
    stored = served["metadata"]["reference"]["label_share"]
    shares = f"max by (label) (sentiloop_reference_label_share{selector})"
    reference = {
        r["metric"]["label"]: float(r["value"][1]) for r in query_until_data(prometheus, shares)
    }
    assert reference == pytest.approx(stored)
    live = {
        r["metric"]["label"]: float(r["value"][1])
        for r in query_until_data(prometheus, f"sentiloop:label_share:rate1h{selector}")
    }
    assert live and sum(live.values()) == pytest.approx(1.0)
    expected = 0.5 * sum(abs(share - reference[label]) for label, share in live.items())
    assert float(tvd["value"][1]) == pytest.approx(expected, abs=0.02)

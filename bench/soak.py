"""Soak under faults: mixed predict/feedback traffic while a model process is killed
and the database restarts; nothing acknowledged may go missing.

A real `bentoml serve` on a fresh PostgreSQL database (authentication on, one
API key) takes ``--concurrency`` clients (64) for ``--minutes`` (10): each
scores one short text or a batch of up to 8 (a quarter of them long: 2,000 to
5,000 characters; tweets in English, French, German and Spanish), and sends
feedback on half of its predictions with an idempotency key. At 20% of the run
one model process gets SIGKILL; at 50% the PostgreSQL cluster stops for
``--outage-s`` seconds and starts again. Then the server stops with SIGTERM
and the script counts the acknowledged predictions (200) and feedback
(201/200) that are not in the database.

Target: 0 missing, and no 5xx except 503 with Retry-After (backpressure and
the outage).

    python -m bench.soak --minutes 10        # writes bench/results/soak.json

Needs root (it stops and starts the local PostgreSQL cluster) and
``../shared/data``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import machine, tweets, write_result, xlmt
from service.http.auth import hash_key
from tests.support import ServerProcess, throwaway_postgres

logger = logging.getLogger("bench.soak")

LABELS = ("negative", "neutral", "positive")


def texts_to_send(seed: int) -> tuple[list[str], list[str]]:
    """Short texts (tweets in four languages) and long ones (2,000-5,000 characters)."""
    rng = random.Random(seed)
    short = [e.text for e in tweets("test")[:400]]
    for language in ("fr", "de", "es"):
        short += [e.text for e in xlmt(language, "val")[:200]]
    long = []
    for _ in range(200):
        size = rng.randint(2000, 5000)
        text = ""
        while len(text) < size:
            text += rng.choice(short) + " "
        long.append(text[:size])
    return short, long


def postgres_cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    if action == "stop":
        command += ["--", "-m", "fast"]
    subprocess.run(command, check=True, capture_output=True)


def wait_postgres(url: str, timeout_s: float = 60) -> None:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError:
            time.sleep(0.5)
    raise TimeoutError("PostgreSQL did not come back")


class Tally:
    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {"predict": [], "feedback": []}
        self.predictions: set[str] = set()
        self.feedback: set[str] = set()
        self.bad_5xx: list[str] = []

    def record(
        self, kind: str, response: httpx.Response | None, error: str, seconds: float
    ) -> None:
        if response is None:
            self.status[f"{kind} {error}"] += 1
            return
        code = response.status_code
        self.status[f"{kind} {code}"] += 1
        self.latency[kind].append(seconds)
        if code >= 500 and not (code == 503 and response.headers.get("retry-after")):
            self.bad_5xx.append(f"{kind} {code} {response.text[:200]}")


async def client_loop(
    client: httpx.AsyncClient,
    tally: Tally,
    short: list[str],
    long: list[str],
    stop_at: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        count = 1 if rng.random() < 0.6 else rng.randint(2, 8)
        texts = [rng.choice(long if rng.random() < 0.25 else short) for _ in range(count)]
        body: dict[str, Any] = {"text": texts[0]} if count == 1 else {"texts": texts}
        started = time.monotonic()
        try:
            response = await client.post("/v1/predict", json=body)
        except httpx.HTTPError as exc:
            tally.record("predict", None, type(exc).__name__, 0)
            await asyncio.sleep(0.5)
            continue
        tally.record("predict", response, "", time.monotonic() - started)
        if response.status_code != 200:
            await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 5)
            continue
        predictions = response.json()["predictions"]
        tally.predictions.update(p["prediction_id"] for p in predictions)
        if rng.random() < 0.5:
            chosen = rng.choice(predictions)
            feedback = {"prediction_id": chosen["prediction_id"], "label": rng.choice(LABELS),
                        "idempotency_key": uuid.uuid4().hex}  # fmt: skip
            started = time.monotonic()
            try:
                answer = await client.post("/v1/feedback", json=feedback)
            except httpx.HTTPError as exc:
                tally.record("feedback", None, type(exc).__name__, 0)
                continue
            tally.record("feedback", answer, "", time.monotonic() - started)
            if answer.status_code in (200, 201):
                tally.feedback.add(answer.json()["feedback_id"])


async def run_load(
    server: ServerProcess, key: str, args: argparse.Namespace, tally: Tally, url: str
) -> list[str]:
    short, long = texts_to_send(args.seed)
    duration = args.minutes * 60
    stop_at = time.monotonic() + duration
    events: list[str] = []
    limits = httpx.Limits(max_connections=args.concurrency + 8)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=server.url, timeout=90, limits=limits, headers=headers
    ) as client:
        loops = [
            asyncio.ensure_future(client_loop(client, tally, short, long, stop_at, args.seed + n))
            for n in range(args.concurrency)
        ]
        await asyncio.sleep(duration * 0.2)
        victims = server.model_processes()
        if victims:
            victims[0].send_signal(signal.SIGKILL)
            events.append(f"{time.strftime('%X')} SIGKILL model process {victims[0].pid}")
            logger.info(events[-1])
        await asyncio.sleep(duration * 0.3)
        events.append(f"{time.strftime('%X')} PostgreSQL stopped for {args.outage_s}s")
        logger.info(events[-1])
        await asyncio.to_thread(postgres_cluster, "stop")
        await asyncio.sleep(args.outage_s)
        await asyncio.to_thread(postgres_cluster, "start")
        await asyncio.to_thread(wait_postgres, url)
        events.append(f"{time.strftime('%X')} PostgreSQL back")
        logger.info(events[-1])
        await asyncio.gather(*loops)
    return events


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--outage-s", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tally = Tally()
    key = "slk_soak_" + uuid.uuid4().hex
    ring = [{"name": "soak", "sha256": hash_key(key), "scopes": ["admin"]}]
    with throwaway_postgres() as url, tempfile.TemporaryDirectory() as tmp:
        env = {"DATABASE_URL": url, "SENTILOOP_API_KEYS": json.dumps(ring),
               "SENTILOOP_HOME": str(Path(tmp) / "home")}  # fmt: skip
        server = ServerProcess(env, Path(tmp) / "server.log")
        try:
            server.wait_ready()
            started = time.monotonic()
            events = asyncio.run(run_load(server, key, args, tally, url))
            seconds = time.monotonic() - started
            deadline = time.monotonic() + 120  # spooled records replayed
            while time.monotonic() < deadline and metric(
                server, "sentiloop_prediction_log_spooled_total"
            ) > metric(server, "sentiloop_prediction_log_replayed_total"):
                time.sleep(1)
            restarts = metric(server, "sentiloop_model_process_restarts_total")
            quarantined = metric(server, "sentiloop_prediction_log_quarantined_total")
        finally:
            server.stop()
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as connection:
            stored_predictions = {
                str(r[0]) for r in connection.execute("SELECT id FROM predictions")
            }
            stored_feedback = {str(r[0]) for r in connection.execute("SELECT id FROM feedback")}
    result = {
        "minutes": args.minutes,
        "seconds": round(seconds, 1),
        "concurrency": args.concurrency,
        "events": events,
        "requests": sum(tally.status.values()),
        "by_status": dict(sorted(tally.status.items())),
        "p99_ms": {kind: p99(values) for kind, values in tally.latency.items()},
        "acknowledged_predictions": len(tally.predictions),
        "acknowledged_feedback": len(tally.feedback),
        "missing_predictions": len(tally.predictions - stored_predictions),
        "missing_feedback": len(tally.feedback - stored_feedback),
        "unexpected_5xx": len(tally.bad_5xx),
        "unexpected_5xx_examples": tally.bad_5xx[:5],
        "model_process_restarts": restarts,
        "quarantined_records": quarantined,
        "machine": machine(),
    }
    write_result("soak", result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    clean = not (result["missing_predictions"] or result["missing_feedback"] or tally.bad_5xx)
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()

"""Throughput and latency of /v1/predict: sentiloop vs a naive baseline, in one run.

Both serve the same model (all-MiniLM-L6-v2 with a 3-class head) on this
machine: sentiloop through `bentoml serve` (adaptive batching, length-sorted
dynamic padding, inference mode, prediction logging to SQLite), the baseline
as a transformers pipeline called per request in a plain Starlette app
(bench/naive_app.py, one uvicorn worker). A closed-loop async client keeps C
requests in flight for a fixed time per configuration.

    python -m bench.serve [--seconds 10] [--concurrency 1 8 32 128]

Prints a table and writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, machine, tweets, write_result
from sentiloop.logging_setup import configure_logging
from tests.support import ServerProcess, free_port

logger = logging.getLogger("bench.serve")


def build_model(directory: Path) -> Path:
    """The packaged encoder with a (seeded) 3-class head: the compute of a fine-tuned model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentiloop.settings import default_base_model
    from service.labels import LABEL_TO_ID, LABELS

    torch.manual_seed(0)
    base = str(default_base_model())
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=3, id2label=dict(enumerate(LABELS)), label2id=dict(LABEL_TO_ID),
        local_files_only=True,
    )  # fmt: skip
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(directory)
    return directory


async def load(
    url: str, texts: list[str], batch: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        n = offset
        while time.perf_counter() < stop_at:
            chunk = [texts[(n + i) % len(texts)] for i in range(batch)]
            n += batch * concurrency
            body = {"text": chunk[0]} if batch == 1 else {"texts": chunk}
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/predict", json=body)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i * batch, client) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
            if latencies
            else float("nan")
        )

    return {
        "requests": len(latencies), "errors": errors,
        "requests_per_s": len(latencies) / elapsed, "texts_per_s": len(latencies) * batch / elapsed,
        "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }  # fmt: skip


def wait_ready(url: str, path: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}{path}", json={"text": "warm up"}, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def run_matrix(
    name: str, url: str, texts: list[str], plan: list[tuple[int, int]], seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for batch, concurrency in plan:
        asyncio.run(load(url, texts, batch, concurrency, 2))  # warm-up
        result = asyncio.run(load(url, texts, batch, concurrency, seconds))
        rows.append({"server": name, "batch": batch, "concurrency": concurrency, **result})
        logger.info("%s batch=%d c=%d: %s", name, batch, concurrency, result)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--batch", type=int, default=32, help="texts per request in batch runs")
    args = parser.parse_args()
    configure_logging()
    scratch = Path(tempfile.mkdtemp(prefix="sentiloop-bench-serve-"))
    os.environ["BENTOML_HOME"] = str(scratch / "bentoml")
    from service import model_store

    model_dir = build_model(scratch / "model")
    stored = model_store.save_model(model_dir, name="bench-serve", metadata={
        "base_model": "all-MiniLM-L6-v2", "template_versions": ["v1"], "data_sha256": "none",
        "metrics": {}})  # fmt: skip
    texts = [example.text for example in tweets("test")[:2000]]
    plan = [(1, c) for c in args.concurrency] + [(args.batch, 1), (args.batch, 8)]
    results: list[dict[str, Any]] = []

    baseline_port = free_port()
    baseline_log = (scratch / "baseline.log").open("wb")
    baseline = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--port", str(baseline_port),
         "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "NAIVE_MODEL_DIR": str(model_dir)},
        stdout=baseline_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{baseline_port}"
        wait_ready(url, "/v1/predict")
        results += run_matrix("baseline", url, texts, plan, args.seconds)
    finally:
        baseline.terminate()
        baseline.wait(30)
        baseline_log.close()

    for name, extra in (
        ("sentiloop", {}),
        ("sentiloop-no-log", {"SENTILOOP_LOG_PREDICTIONS": "false"}),
    ):
        home = scratch / name
        home.mkdir()
        server = ServerProcess(
            {"SENTILOOP_HOME": str(home / "home"), "SENTILOOP_MODEL_TAG": stored.tag,
             "SENTILOOP_AUTH": "disabled", **extra},
            home / "server.log",
        )  # fmt: skip
        try:
            server.wait_ready()
            wait_ready(server.url, "/v1/predict")
            sub_plan = plan if name == "sentiloop" else [(1, 32), (args.batch, 8)]
            results += run_matrix(name, server.url, texts, sub_plan, args.seconds)
        finally:
            server.stop()

    def rate(server: str, batch: int, concurrency: int) -> float:
        row = next(
            r for r in results
            if (r["server"], r["batch"], r["concurrency"]) == (server, batch, concurrency)
        )  # fmt: skip
        return float(row["texts_per_s"])

    b = args.batch
    ratios = {
        "throughput_vs_baseline_c32_single": rate("sentiloop", 1, 32) / rate("baseline", 1, 32),
        "throughput_vs_baseline_batch_c8": rate("sentiloop", b, 8) / rate("baseline", b, 8),
        "logging_on_vs_off_c32_single": rate("sentiloop", 1, 32) / rate("sentiloop-no-log", 1, 32),
        "logging_on_vs_off_batch_c8": rate("sentiloop", b, 8) / rate("sentiloop-no-log", b, 8),
    }
    write_result(
        "serve",
        {"machine": machine(), "seconds": args.seconds, "results": results, "ratios": ratios},
    )
    header = ("server", "batch", "conc", "texts/s", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors")
    print("".join(f"{h:>17}" for h in header))
    for r in results:
        values = (r["server"], r["batch"], r["concurrency"], f"{r['texts_per_s']:.1f}",
                  f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
                  f"{r['p99_ms']:.1f}", r["errors"])  # fmt: skip
        print("".join(f"{v!s:>17}" for v in values))
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")


if __name__ == "__main__":
    main()

"""Capacity of one replica (README, "Deployment": sizing a cluster and its HPA).

Serves the shipped multilingual model with `sentiloop serve`'s defaults (ONNX
Runtime int8, one single-threaded model process per core) once with one model
process and once with two, and measures at saturation, with wrk:

* texts/s for short texts (the tweet test set, ~20 tokens) and long ones (tweets
  joined up to the model's 128-token window), one text per request with 32 in
  flight and 32-text batches with 8 in flight; divided by the model processes,
  the figure per core;
* the memory of every process of the replica, sampled through the whole run:
  RSS of the arbiter, the API worker and each model process, and the pod's
  total as the sum of PSS (shared pages counted once, what a cgroup charges);
* with ``--trainer``: 1,200 labelled reviews (SST-2 train sentences) scored and
  corrected through the API, then `sentiloop train` with its defaults on the
  same store and database, and that process's peak RSS and time (the
  retraining CronJob's request); then the replica with two models in every model
  process (the retrained one and the shipped one as champion and challenger), its
  start, short-text throughput and memory peak; and the replica's memory peak
  through the retraining run and its swap to the new champion.

    python -m bench.capacity [--seconds 10] [--processes 1 2] [--trainer]

Prints a table and writes bench/results/capacity.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import ROOT, machine, sst2, tweets, write_result
from bench.serve import load_wrk, request_bodies, wait_for_quiet_cpu, wait_ready
from core.logs import configure_logging
from tests.support import ServerProcess

logger = logging.getLogger("bench.capacity")
MB = 1024 * 1024
LONG_CHARS = 700  # joined tweets past the 128-token window (truncated there)


def long_texts(short: list[str]) -> list[str]:
    joined, current = [], ""
    for text in short:
        current = f"{current} {text}".strip()
        if len(current) >= LONG_CHARS:
            joined.append(current)
            current = ""
    return joined


def role_of(process: psutil.Process, root_pid: int) -> str:
    if process.pid == root_pid:
        return "arbiter"
    command = " ".join(process.cmdline())
    if "spawn_main" in command:
        return "model process"
    if "_bentoml_impl.worker" in command or "worker" in command:
        return "API worker"
    return "other"


class MemorySampler:
    """Samples RSS per process and the sum of PSS of a server's process tree."""

    def __init__(self, root_pid: int, every_s: float = 0.5) -> None:
        self._root, self._every = root_pid, every_s
        self.peak_rss: dict[int, tuple[str, int]] = {}
        self.peak_pss_total = 0
        self.last: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        try:
            root = psutil.Process(self._root)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        pss_total, now = 0, {}
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                info = process.memory_full_info()
                role = role_of(process, self._root)
                now[process.pid] = (role, info.rss)
                pss_total += info.pss
                _, peak = self.peak_rss.get(process.pid, (role, 0))
                self.peak_rss[process.pid] = (role, max(peak, info.rss))
        self.last = now
        self.peak_pss_total = max(self.peak_pss_total, pss_total)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()

    @contextlib.contextmanager
    def running(self) -> Iterator[MemorySampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.sample()

    def by_role(self, figures: dict[int, tuple[str, int]]) -> dict[str, list[float]]:
        roles: dict[str, list[float]] = {}
        for role, rss in figures.values():
            roles.setdefault(role, []).append(round(rss / MB, 1))
        return {role: sorted(values) for role, values in sorted(roles.items())}


def measure(
    url: str, scratch: Path, texts: dict[str, list[str]], seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for kind, sample in texts.items():
        for batch, concurrency in ((1, 32), (32, 8)):
            bodies = scratch / f"{kind}-{batch}.jsonl"
            bodies.write_text("\n".join(request_bodies(sample, batch)) + "\n")
            wait_for_quiet_cpu()
            figures = load_wrk(url, bodies, concurrency, seconds)
            rows.append({"texts": kind, "batch": batch, "concurrency": concurrency, **figures})
            logger.info(
                "%s texts, %d per request, %d in flight: %.0f texts/s (p50 %.1f ms, %d errors)",
                kind, batch, concurrency, figures["texts_per_s"], figures["p50_ms"],
                figures["errors"],
            )  # fmt: skip
    return rows


def train_on_feedback(server: ServerProcess, env: dict[str, str], log: Path) -> dict[str, Any]:
    """1,200 SST-2 sentences as a customer's reviews, each corrected or confirmed
    through the API, then `sentiloop train`'s defaults; its peak RSS and time."""
    rows = sst2("train")[:1200]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for start in range(0, len(rows), 100):
            chunk = rows[start : start + 100]
            predicted = client.post("/v1/predict", json={"texts": [r.text for r in chunk]})
            predicted.raise_for_status()
            items = [
                {"prediction_id": p["prediction_id"], "label": r.label}
                for p, r in zip(predicted.json()["predictions"], chunk, strict=True)
            ]
            client.post("/v1/feedback/batch", json={"items": items}).raise_for_status()
    command = [str(Path(sys.executable).parent / "sentiloop"), "train", "--no-progress"]
    started = time.monotonic()
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )
        watched = psutil.Process(process.pid)
        peak = 0
        while process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                tree = [watched, *watched.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            time.sleep(0.2)
    took = time.monotonic() - started
    tail = log.read_text(errors="replace")[-1500:]
    logger.info("sentiloop train: exit %d in %.0f s, peak RSS %.0f MB", process.returncode,
                took, peak / MB)  # fmt: skip
    return {"champion": roles(env)["champion"],
            "command": " ".join(["sentiloop", *command[1:]]), "exit_code": process.returncode,
            "seconds": round(took, 1), "peak_rss_mb": round(peak / MB), "feedback_rows": len(rows),
            "log_tail": tail}  # fmt: skip


def roles(env: dict[str, str], *, challenge: bool = False) -> dict[str, str | None]:
    """The champion and challenger recorded in the replica's database; ``challenge``:
    make the shipped model the challenger where there is none (the run promoted)."""
    from core import database
    from core.settings import Settings
    from model.loader import cold_start_tag
    from storage import model_roles

    settings = Settings(home=Path(env["SENTILOOP_HOME"]), base_model=env["SENTILOOP_BASE_MODEL"])
    engine = database.make_engine(settings.resolved_database_url)
    with database.make_session_factory(engine)() as session:
        found = {role: model_roles.current(session=session, role=role)
                 for role in ("champion", "challenger")}  # fmt: skip
        if challenge and found["challenger"] is None:
            found["challenger"] = cold_start_tag(settings)
            model_roles.assign(session=session, role="challenger", model_tag=found["challenger"],
                               reason="bench: two models")  # fmt: skip
            session.commit()
    engine.dispose()
    return found


def serving(server: ServerProcess) -> dict[str, str]:
    models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
    return {m["reference"]: m["model_version"] for m in models}


def wait_for_champion(server: ServerProcess, tag: str | None, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while tag is not None and serving(server).get("champion") != tag:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag} was not served: {serving(server)}")
        time.sleep(1)


# 90% of the traffic to the champion, 10% to the challenger: both in every model process.
TWO_MODELS = json.dumps([
    {"template_version": "v1", "model": "champion", "weight": 9},
    {"template_version": "v1", "model": "challenger", "weight": 1},
])  # fmt: skip


def serve_two_models(
    server: ServerProcess, env: dict[str, str], scratch: Path, short: list[str], seconds: float
) -> dict[str, Any]:
    """The replica restarted with a champion and a challenger (the retrained model and
    the shipped one) in every model process: its start, throughput and memory."""
    wanted = roles(env)
    started = time.monotonic()  # from the launch (the caller's) to ready, about
    server.wait_ready(timeout_s=600)
    ready_s = time.monotonic() - started
    wait_ready(server.url, "/v1/predict")
    found = serving(server)
    assert all(found.get(role) == tag for role, tag in wanted.items()), (wanted, found)
    sampler = MemorySampler(server.process.pid)
    with sampler.running():
        load_wrk(server.url, _warm_up(scratch, short), 32, 5)
        rows = measure(server.url, scratch, {"short": short}, seconds)
    logger.info("serving %s", wanted)
    return {"serving": wanted, "ready_s": round(ready_s, 1), "load": rows,
            "rss_mb_peak": sampler.by_role(sampler.peak_rss),
            "pss_mb_peak_total": round(sampler.peak_pss_total / MB)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="per measurement")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trainer", action="store_true", help="also measure a retraining run")
    args = parser.parse_args()
    configure_logging()
    scratch = Path(tempfile.mkdtemp(prefix="sentiloop-bench-capacity-"))
    from core.settings import Settings
    from model.loader import prepare

    settings = Settings(base_model="multilingual-e5-small")
    assert prepare(settings) is not None, "the shipped model serves no ONNX file here"
    short = [example.text for example in tweets("test")[:2000]]
    texts = {"short": short, "long": long_texts([e.text for e in tweets("train")[:8000]])}
    result: dict[str, Any] = {"machine": machine(), "seconds": args.seconds, "replicas": []}
    for processes in args.processes:
        home = scratch / f"p{processes}"
        env = {"SENTILOOP_HOME": str(home / "home"), "BENTOML_HOME": str(home / "bentoml"),
               "SENTILOOP_BASE_MODEL": settings.base_model, "SENTILOOP_AUTH": "disabled",
               "SENTILOOP_MODEL_PROCESSES": str(processes)}  # fmt: skip
        home.mkdir()
        started = time.monotonic()
        server = ServerProcess(env, home / "server.log")
        try:
            server.wait_ready(timeout_s=600)
            ready_s = time.monotonic() - started
            wait_ready(server.url, "/v1/predict")
            sampler = MemorySampler(server.process.pid)
            sampler.sample()
            idle = sampler.by_role(sampler.last)
            with sampler.running():
                load_wrk(server.url, _warm_up(scratch, short), 32, 5)
                rows = measure(server.url, scratch, texts, args.seconds)
            replica = {
                "model_processes": processes, "ready_s": round(ready_s, 1),
                "rss_mb_idle": idle, "rss_mb_peak": sampler.by_role(sampler.peak_rss),
                "pss_mb_peak_total": round(sampler.peak_pss_total / MB),
                "load": rows,
            }  # fmt: skip
            if args.trainer and processes == max(args.processes):
                sampler = MemorySampler(server.process.pid)
                with sampler.running():  # the swap to the retrained champion included
                    replica["trainer"] = train_on_feedback(server, env, home / "train.log")
                    wait_for_champion(server, replica["trainer"]["champion"])
                replica["trainer"]["replica_rss_mb_peak"] = sampler.by_role(sampler.peak_rss)
                replica["trainer"]["replica_pss_mb_peak_total"] = round(sampler.peak_pss_total / MB)
                server.stop()
                roles(env, challenge=True)
                server = ServerProcess(
                    {**env, "SENTILOOP_TRAFFIC_SPLIT": TWO_MODELS}, home / "two.log"
                )
                replica["two_models"] = serve_two_models(server, env, scratch, short, args.seconds)
            result["replicas"].append(replica)
        finally:
            server.stop()
    result["long_text_chars_mean"] = round(sum(len(t) for t in texts["long"]) / len(texts["long"]))
    path = write_result("capacity", result)
    print_table(result)
    print(f"wrote {path}")


def _warm_up(scratch: Path, short: list[str]) -> Path:
    bodies = scratch / "warmup-1.jsonl"
    bodies.write_text("\n".join(request_bodies(short, 1)) + "\n")
    return bodies


def print_table(result: dict[str, Any]) -> None:
    lines = ["model processes | texts | per request | in flight | texts/s | per process | p50 ms"]
    for replica in result["replicas"]:
        n = replica["model_processes"]
        for row in replica["load"]:
            lines.append(
                f"{n} | {row['texts']} | {row['batch']} | {row['concurrency']} | "
                f"{row['texts_per_s']:.0f} | {row['texts_per_s'] / n:.0f} | {row['p50_ms']:.1f}"
            )
        lines.append(f"{n}: RSS peak MB {json.dumps(replica['rss_mb_peak'])}, "
                     f"PSS peak total {replica['pss_mb_peak_total']} MB")  # fmt: skip
        if "trainer" in replica:
            trainer, two = replica["trainer"], replica["two_models"]
            lines.append(f"trainer: exit {trainer['exit_code']}, {trainer['seconds']} s, "
                         f"peak RSS {trainer['peak_rss_mb']} MB")  # fmt: skip
            for row in two["load"]:
                lines.append(f"{n}, champion + challenger | short | {row['batch']} | "
                             f"{row['concurrency']} | {row['texts_per_s']:.0f} | "
                             f"{row['texts_per_s'] / n:.0f} | {row['p50_ms']:.1f}")  # fmt: skip
            lines.append(f"{n}, through the retraining and the swap: RSS peak MB "
                         f"{json.dumps(trainer['replica_rss_mb_peak'])}, PSS peak total "
                         f"{trainer['replica_pss_mb_peak_total']} MB")  # fmt: skip
            lines.append(f"{n}, champion + challenger (ready in {two['ready_s']} s): "
                         f"RSS peak MB {json.dumps(two['rss_mb_peak'])}, "
                         f"PSS peak total {two['pss_mb_peak_total']} MB")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()

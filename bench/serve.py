"""Throughput and latency of /v1/predict: sentiloop vs a plain peer and a naive baseline.

Both serve the same model on this machine: ``--model minilm`` (default),
all-MiniLM-L6-v2 with a 3-class head (pinned as champion); ``--model shipped``,
the shipped multilingual default (multilingual-e5-small with its adapter merged,
serving as the cold-start champion, as on a fresh install). Servers: sentiloop
through `bentoml serve` with its defaults (one API worker feeding a
single-threaded model process per core, ONNX Runtime int8, adaptive batching,
length-sorted dynamic padding, prediction logging to SQLite), the baseline as
a transformers pipeline called per request in a plain Starlette app
(bench/naive_app.py, one uvicorn worker), and the peer: a plain BentoML
service running the same int8 ONNX file sentiloop serves with ONNX Runtime's
default threads (bench/peer_app.py, one worker), sent the same requests; the
ratio sentiloop / peer is reported at every load. The ceiling: that file
called in-process by one single-threaded session per core, on batches of 32
texts with no HTTP (bench/ceiling.py), measured in the same interleaved rounds
as the servers at every load, so that "sentiloop % of ceiling" compares
figures of the same spell of the (shared) machine. For each sentiloop server
and load it also tells where the CPU went in the median round: the cores its
model processes and its API worker used, the model processes' CPU a text beside
the ceiling's, the client's (wrk only: aiohttp runs in this process) and the
whole machine's.
Variants: sentiloop without prediction logging, sentiloop running the eager
torch fp32 model, and sentiloop with the model in threads of the worker
instead of processes. A closed-loop client keeps C requests in flight for a
fixed time per configuration: wrk (Debian package `wrk`) where installed, as it
takes little of the CPU the servers share with it; else an aiohttp client.

    python -m bench.serve [--seconds 5] [--rounds 5] [--concurrency 1 8 32 128]
                          [--client wrk|aiohttp] [--reference-checkout DIR]
                          [--model minilm|shipped] [--ceiling-chunk N]

``--reference-checkout`` serves another source tree of sentiloop (say
``git worktree add /tmp/before HEAD~3``) as the variant "reference", with the
same settings, in the same interleaved rounds: before/after figures of a
change from one run.

Prints a table and writes bench/results/serve.json (serve-shipped.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.ceiling import Ceiling
from bench.common import ROOT, machine, tweets, write_result
from core.logs import configure_logging
from tests.support import ServerProcess, free_port

logger = logging.getLogger("bench.serve")


def build_model(directory: Path) -> Path:
    """The packaged encoder with a (seeded) 3-class head: the compute of a fine-tuned model."""
    import torch
    from transformers import AutoTokenizer

    from model.base_models import minilm_directory
    from model.classifiers import sentiment_model

    torch.manual_seed(0)
    base = minilm_directory()
    sentiment_model(base).save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(base), local_files_only=True).save_pretrained(directory)
    return directory


WRK_SCRIPT = ROOT / "bench" / "wrk_post.lua"


def request_bodies(texts: list[str], batch: int) -> list[str]:
    """JSON bodies of ``batch`` texts each (single-text requests use ``text``)."""
    return [
        json.dumps({"text": texts[start]} if batch == 1 else {"texts": [
            texts[(start + i) % len(texts)] for i in range(batch)]})
        for start in range(0, len(texts), batch)
    ]  # fmt: skip


def load_wrk(url: str, bodies: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """wrk with one thread keeps ``concurrency`` connections busy; a C client costs the
    servers far less CPU than a Python one (the machine is shared)."""
    output = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "120s",
         "-s", str(WRK_SCRIPT), f"{url}/v1/predict", "--", str(bodies)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"WRK_RESULT (\{.*\})", output)
    if found is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    raw = json.loads(found.group(1))
    elapsed = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["non_2xx"]
    batch = int(bodies.stem.rpartition("-")[2])
    return {
        "requests": ok, "errors": raw["errors"],
        "requests_per_s": ok / elapsed, "texts_per_s": ok * batch / elapsed,
        "p50_ms": raw["p50_us"] / 1000, "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000, "mean_ms": raw["mean_us"] / 1000,
    }  # fmt: skip


async def load(
    url: str, texts: list[str], batch: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight for ``seconds``; latency per request.

    The aiohttp client (where wrk is not installed) shares the cores with the
    servers; httpx's pool alone topped out near 400 requests/s here (aiohttp:
    ~1,300).
    """
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        n = offset
        while time.perf_counter() < stop_at:
            chunk = [texts[(n + i) % len(texts)] for i in range(batch)]
            n += batch * concurrency
            body = {"text": chunk[0]} if batch == 1 else {"texts": chunk}
            started = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/predict", json=body) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):  # a request past the client's timeout
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i * batch, session) for i in range(concurrency)))
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


def wait_for_quiet_cpu(busy_below: float = 15.0, longest_s: float = 30.0) -> None:
    """Wait until the machine is nearly idle. A server keeps working after its client
    stops (the baseline drained queued requests for seconds after a run at concurrency
    32), and that work would be charged to the next server measured."""
    import psutil

    deadline = time.monotonic() + longest_s
    while psutil.cpu_percent(interval=0.5) > busy_below and time.monotonic() < deadline:
        pass


def cpu_seconds(pid: int) -> dict[str, float]:
    """User and system CPU seconds used so far by a sentiloop server's API workers and
    model processes (the processes under ``pid``, as ``memory_mib`` tells them apart)."""
    import psutil

    used = {"api_workers": 0.0, "model_processes": 0.0}
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            role = role_of(" ".join(child.cmdline()))
            if role is not None:
                used[role] += sum(child.cpu_times()[:2])
    return used


class CpuUse:
    """Where the machine's CPU went while one load ran against one sentiloop server:
    its model processes, its API worker, the client (wrk, a child of this process)
    and the machine as a whole, in cores (CPU seconds per second)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.pid = pid
        self.server = cpu_seconds(pid)
        self.client = _children_cpu_seconds()
        self.machine = psutil.cpu_times()
        self.started = time.monotonic()

    def figures(self, result: dict[str, Any], batch: int) -> dict[str, float]:
        import psutil

        elapsed = time.monotonic() - self.started
        server = cpu_seconds(self.pid)
        machine = psutil.cpu_times()
        busy = _busy(machine) - _busy(self.machine)
        requests = max(1, int(result["requests"]))
        model = server["model_processes"] - self.server["model_processes"]
        api = server["api_workers"] - self.server["api_workers"]
        return {
            "seconds": round(elapsed, 3),
            "model_processes_cores": model / elapsed,
            "api_worker_cores": api / elapsed,
            "client_cores": (_children_cpu_seconds() - self.client) / elapsed,
            "machine_busy_cores": busy / elapsed,
            "model_cpu_ms_per_text": 1000 * model / (requests * batch),
            "api_worker_cpu_ms_per_request": 1000 * api / requests,
        }


def _busy(times: Any) -> float:
    """CPU seconds the machine's cores spent on anything but waiting (steal excluded)."""
    return float(times.user + times.nice + times.system + times.irq + times.softirq)


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have been waited for (wrk runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_interleaved(
    servers: dict[str, str],
    plans: dict[str, list[tuple[int, int]]],
    texts: list[str],
    seconds: float,
    rounds: int,
    bodies_dir: Path | None = None,
    ceiling: Ceiling | None = None,
    ceiling_chunk: int = 4,
    pids: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Every server runs, idle but up, through the whole benchmark; each configuration
    is measured in ``rounds`` rounds that visit the servers in turn, and the round
    with the median throughput is reported. A slow spell of the (shared) machine
    then hits every server alike instead of whichever ran at the time.

    With ``bodies_dir`` the client is wrk (request bodies written there), else aiohttp.
    With ``ceiling``, the in-process ceiling (``bench.ceiling``, chunks of
    ``ceiling_chunk`` texts) takes its turn in every configuration's rounds as the
    server "ceiling" (rows with texts/s only). With ``pids`` (server name: the pid of a
    sentiloop server), each of those rows also tells where the CPU went (``CpuUse``).
    """

    def measure(url: str, batch: int, concurrency: int, seconds: float) -> dict[str, Any]:
        if bodies_dir is None:
            return asyncio.run(load(url, texts, batch, concurrency, seconds))
        bodies = bodies_dir / f"bodies-{batch}.txt"
        if not bodies.exists():
            bodies.write_text("\n".join(request_bodies(texts, batch)) + "\n")
        return load_wrk(url, bodies, concurrency, seconds)

    configurations = sorted({config for plan in plans.values() for config in plan})
    rows = []
    for batch, concurrency in configurations:
        taking_part = [name for name in servers if (batch, concurrency) in plans[name]]
        taking_part += ["ceiling"] if ceiling is not None else []
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in taking_part}
        for round_number in range(rounds):
            order = taking_part[round_number % len(taking_part) :]
            order += taking_part[: round_number % len(taking_part)]
            for name in order:
                wait_for_quiet_cpu()
                if name == "ceiling" and ceiling is not None:
                    result = ceiling.measure(seconds, ceiling_chunk)
                else:
                    measure(servers[name], batch, concurrency, 1)  # warm-up
                    pid = (pids or {}).get(name)
                    use = CpuUse(pid) if pid is not None else None
                    result = measure(servers[name], batch, concurrency, seconds)
                    if use is not None:
                        result["cpu"] = use.figures(result, batch)
                measured[name].append(result)
                logger.info("%s batch=%d c=%d round %d: %.1f texts/s", name, batch,
                            concurrency, round_number, result["texts_per_s"])  # fmt: skip
        for name, results in measured.items():
            ranked = sorted(results, key=lambda r: r["texts_per_s"])
            rows.append({
                "server": name, "batch": batch, "concurrency": concurrency,
                **ranked[len(ranked) // 2],
                "texts_per_s_rounds": [r["texts_per_s"] for r in results],
            })  # fmt: skip
    return rows


def peer_table(
    results: list[dict[str, Any]], ceilings: list[dict[str, Any]], loads: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """sentiloop beside the peer at every load both were measured at, and as a share of
    the ceiling measured in the same rounds, as in issue 23."""
    found = {(r["server"], r["batch"], r["concurrency"]): r for r in results + ceilings}
    rows = []
    for batch, concurrency in loads:
        ours = found.get(("sentiloop", batch, concurrency))
        peer = found.get(("peer", batch, concurrency))
        ceiling = found.get(("ceiling", batch, concurrency))
        if ours is None or peer is None or ceiling is None:
            continue
        rows.append({
            "load": f"{batch} text{'s' if batch > 1 else ''}, {concurrency} in flight",
            "batch": batch, "concurrency": concurrency,
            "sentiloop_texts_per_s": ours["texts_per_s"], "sentiloop_p50_ms": ours["p50_ms"],
            "peer_texts_per_s": peer["texts_per_s"], "peer_p50_ms": peer["p50_ms"],
            "sentiloop_vs_peer": ours["texts_per_s"] / peer["texts_per_s"],
            "ceiling_texts_per_s": ceiling["texts_per_s"],
            "sentiloop_pct_of_ceiling": 100 * ours["texts_per_s"] / ceiling["texts_per_s"],
        })  # fmt: skip
        if "cpu" in ours and "cpu_ms_per_text" in ceiling:  # where the CPU went
            rows[-1]["sentiloop_cpu"] = ours["cpu"]
            rows[-1]["ceiling_cpu_ms_per_text"] = ceiling["cpu_ms_per_text"]
        before = found.get(("reference", batch, concurrency))
        if before is not None:  # --reference-checkout: the same figures before a change
            rows[-1].update({
                "reference_texts_per_s": before["texts_per_s"],
                "reference_p50_ms": before["p50_ms"],
                "reference_vs_peer": before["texts_per_s"] / peer["texts_per_s"],
                "reference_pct_of_ceiling": 100 * before["texts_per_s"] / ceiling["texts_per_s"],
            })  # fmt: skip
    return rows


def memory_mib(pid: int) -> dict[str, list[float]]:
    """RSS (MiB) of a sentiloop server's processes under ``pid``: its API workers and its
    model processes (ONNX Runtime, one per core), largest first."""
    import psutil

    found: dict[str, list[float]] = {"api_workers": [], "model_processes": []}
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            role = role_of(" ".join(child.cmdline()))
            if role is not None:
                found[role].append(round(child.memory_info().rss / 2**20, 1))
    return {role: sorted(sizes, reverse=True) for role, sizes in found.items()}


def role_of(command: str) -> str | None:
    """A sentiloop server's process by its command line: an API worker, a model
    process, or neither (the arbiter, multiprocessing's resource tracker)."""
    if "multiprocessing.spawn" in command:
        return "model_processes"
    return "api_workers" if "_bentoml_impl.worker" in command else None


def start_baseline(model_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "NAIVE_MODEL_DIR": str(model_dir)},
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--batch", type=int, default=32, help="texts per request in batch runs")
    parser.add_argument(
        "--client", choices=["wrk", "aiohttp"], default="wrk" if shutil.which("wrk") else "aiohttp"
    )
    parser.add_argument(
        "--reference-checkout",
        type=Path,
        help="another sentiloop source tree to serve beside this one (before/after)",
    )
    parser.add_argument("--model", choices=["minilm", "shipped"], default="minilm")
    parser.add_argument(
        "--ceiling-chunk",
        type=int,
        help="texts per model call in the in-process ceiling (default: sentiloop's on a CPU)",
    )
    args = parser.parse_args()
    configure_logging()
    scratch = Path(tempfile.mkdtemp(prefix="sentiloop-bench-serve-"))
    os.environ["BENTOML_HOME"] = str(scratch / "bentoml")
    from core.settings import Settings
    from model import model_store
    from model.classifiers import CPU_CHUNK_TEXTS
    from model.loader import model_directory, prepare
    from model.onnx_runtime import onnx_model_file
    from model.shipped import shipped_for_base
    from model.templates import TemplateRegistry

    if args.model == "shipped":
        settings = Settings(base_model="multilingual-e5-small")
        shipped = shipped_for_base(settings.base_model)
        assert shipped is not None, "no shipped model for multilingual-e5-small"
        # Converted, merged and exported before the servers start: the file they serve.
        onnx_file = prepare(settings)
        assert onnx_file is not None, "the shipped model serves no ONNX file here"
        model_dir = model_directory(settings, shipped.version)
        model_env = {"SENTILOOP_BASE_MODEL": settings.base_model}
    else:
        settings = Settings()
        model_dir = build_model(scratch / "model")
        stored = model_store.save_model(model_dir, name="bench-serve", metadata={
            "base_model": "all-MiniLM-L6-v2", "template_versions": ["v1"],
            "data_sha256": "none", "metrics": {}})  # fmt: skip
        model_env = {"SENTILOOP_MODEL_TAG": stored.tag}
        # The export sentiloop makes of the stored model, made the same way here.
        onnx_file = onnx_model_file(
            model_dir, scratch / "onnx", quantize=settings.resolved_quantize
        )
    template = TemplateRegistry.load(settings.resolved_templates_dir).get(
        settings.default_template_version
    )
    texts = [example.text for example in tweets("test")[:2000]]
    b = args.batch
    plan = [(1, c) for c in args.concurrency] + [(b, 1), (b, 8)]
    variants: dict[str, tuple[dict[str, str], list[tuple[int, int]]]] = {
        "sentiloop": ({}, plan),
        "sentiloop-no-log": ({"SENTILOOP_LOG_PREDICTIONS": "false"}, [(1, 32), (b, 8)]),
        # The same server on the eager torch fp32 model: what the runtime contributes.
        "sentiloop-torch-fp32": (
            {"SENTILOOP_INFERENCE_BACKEND": "torch", "SENTILOOP_QUANTIZE": "none"},
            [(1, 1), (1, 32)],
        ),
        # The previous layout: single-threaded model calls in threads of the worker.
        "sentiloop-threads": (
            {
                "SENTILOOP_MODEL_PROCESSES": "0",
                "SENTILOOP_CONCURRENT_BATCHES": str(os.cpu_count() or 1),
            },
            [(1, 32), (b, 8)],
        ),
    }
    checkouts = {name: ROOT for name in variants}
    if args.reference_checkout is not None:
        variants["reference"] = ({}, plan)  # before/after at every load
        checkouts["reference"] = args.reference_checkout.resolve()
    with contextlib.ExitStack() as running:
        baseline, baseline_url = start_baseline(model_dir, scratch / "baseline.log")
        running.callback(baseline.wait, 30)
        running.callback(baseline.terminate)
        servers = {"baseline": baseline_url}
        sentiloops: dict[str, ServerProcess] = {}
        plans = {"baseline": plan}
        for name, (extra, sub_plan) in variants.items():
            home = scratch / name
            home.mkdir()
            server = ServerProcess(
                {"SENTILOOP_HOME": str(home / "home"), **model_env,
                 "SENTILOOP_AUTH": "disabled", **extra},
                home / "server.log",
                checkout=checkouts[name],
            )  # fmt: skip
            running.callback(server.stop)
            server.wait_ready(timeout_s=600)
            servers[name], plans[name] = server.url, sub_plan
            if name in ("sentiloop", "reference"):
                sentiloops[name] = server
        peer = ServerProcess(
            {"PEER_ONNX_FILE": str(onnx_file), "PEER_MODEL_DIR": str(model_dir),
             "PEER_INPUT_TEMPLATE": template.input_template,
             "PEER_MAX_LENGTH": str(settings.max_length)},
            scratch / "peer.log",
            service="bench.peer_app:PeerService",
        )  # fmt: skip
        running.callback(peer.stop)
        peer.wait_ready(timeout_s=600)
        servers["peer"], plans["peer"] = peer.url, plan
        for url in servers.values():
            wait_ready(url, "/v1/predict")
        bodies_dir = scratch if args.client == "wrk" else None
        ceiling_chunk = args.ceiling_chunk or CPU_CHUNK_TEXTS
        in_process = Ceiling(onnx_file, model_dir, [template.render(text) for text in texts],
                             processes=os.cpu_count() or 1, batch=b,
                             max_length=settings.max_length)  # fmt: skip
        running.callback(in_process.close)
        pids = {name: process.process.pid for name, process in sentiloops.items()}
        rows = measure_interleaved(servers, plans, texts, args.seconds, args.rounds, bodies_dir,
                                   in_process, ceiling_chunk, pids)  # fmt: skip
        # After every load: the memory of each sentiloop server warmed up by it.
        memory = {name: memory_mib(process.process.pid) for name, process in sentiloops.items()}
    results = [row for row in rows if row["server"] != "ceiling"]
    ceilings = [row for row in rows if row["server"] == "ceiling"]
    ceiling = {"processes": in_process.processes, "batch": in_process.batch,
               "chunk": ceiling_chunk, "by_load": ceilings}  # fmt: skip

    def rate(server: str, batch: int, concurrency: int) -> float | None:
        found = [
            float(r["texts_per_s"]) for r in results
            if (r["server"], r["batch"], r["concurrency"]) == (server, batch, concurrency)
        ]  # fmt: skip
        return found[0] if found else None

    b = args.batch
    wanted = {  # name: (server, other server, texts per request, concurrency)
        "throughput_vs_baseline_c32_single": ("sentiloop", "baseline", 1, 32),
        "throughput_vs_baseline_batch_c8": ("sentiloop", "baseline", b, 8),
        "logging_on_vs_off_c32_single": ("sentiloop", "sentiloop-no-log", 1, 32),
        "logging_on_vs_off_batch_c8": ("sentiloop", "sentiloop-no-log", b, 8),
        "onnx_int8_vs_torch_fp32_c32_single": ("sentiloop", "sentiloop-torch-fp32", 1, 32),
        "processes_vs_threads_c32_single": ("sentiloop", "sentiloop-threads", 1, 32),
        "processes_vs_threads_batch_c8": ("sentiloop", "sentiloop-threads", b, 8),
        "this_vs_reference_c1_single": ("sentiloop", "reference", 1, 1),
        "this_vs_reference_c32_single": ("sentiloop", "reference", 1, 32),
        "this_vs_reference_batch_c8": ("sentiloop", "reference", b, 8),
    }
    for batch, concurrency in plan:  # sentiloop / peer at every load
        load = f"c{concurrency}_single" if batch == 1 else f"batch_c{concurrency}"
        wanted[f"sentiloop_vs_peer_{load}"] = ("sentiloop", "peer", batch, concurrency)
    ratios = {}
    for name, (ours, other, batch, concurrency) in wanted.items():
        mine, theirs = rate(ours, batch, concurrency), rate(other, batch, concurrency)
        if mine is not None and theirs:  # measured in this run (--concurrency picks)
            ratios[name] = mine / theirs
    table = peer_table(results, ceilings, plan)
    p50_c1 = next((r["p50_ms"] for r in results if (r["server"], r["batch"], r["concurrency"])
                  == ("sentiloop", 1, 1)), None)  # fmt: skip
    write_result(
        "serve" if args.model == "minilm" else "serve-shipped",
        {
            "machine": machine(),
            "model": args.model,
            "client": args.client,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "results": results,
            "ratios": ratios,
            "ceiling": ceiling,
            "peer_table": table,
            "memory_mib": memory,
        },
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
    if p50_c1 is not None:
        print(f"sentiloop p50 at concurrency 1: {p50_c1:.1f} ms")
    print(
        f"\nceiling: in-process, {ceiling['processes']} single-threaded sessions, batches of "
        f"{ceiling['batch']} in chunks of {ceiling['chunk']}, measured in each load's rounds"
    )
    print("| load | sentiloop | peer | sentiloop / peer | ceiling | sentiloop % of ceiling |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in table:
        print(
            f"| {row['load']} | {row['sentiloop_texts_per_s']:.0f} texts/s, p50 "
            f"{row['sentiloop_p50_ms']:.1f} ms | {row['peer_texts_per_s']:.0f} texts/s, p50 "
            f"{row['peer_p50_ms']:.1f} ms | {row['sentiloop_vs_peer']:.2f}x | "
            f"{row['ceiling_texts_per_s']:.0f} | {row['sentiloop_pct_of_ceiling']:.0f}% |"
        )
    if any("sentiloop_cpu" in row for row in table):
        print("\nwhere the CPU went (sentiloop, the median round; cores = CPU seconds a second)")
        print(
            "| load | % of ceiling | model processes, cores | their CPU a text (ceiling's) "
            "| API worker, cores (CPU a request) | client, cores | machine busy, cores |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in table:
            if "sentiloop_cpu" not in row:
                continue
            cpu = row["sentiloop_cpu"]
            print(
                f"| {row['load']} | {row['sentiloop_pct_of_ceiling']:.0f}% | "
                f"{cpu['model_processes_cores']:.2f} | {cpu['model_cpu_ms_per_text']:.2f} ms "
                f"({row['ceiling_cpu_ms_per_text']:.2f}) | {cpu['api_worker_cores']:.2f} "
                f"({cpu['api_worker_cpu_ms_per_request']:.2f} ms) | {cpu['client_cores']:.2f} | "
                f"{cpu['machine_busy_cores']:.2f} |"
            )
    for name, sizes in memory.items():
        print(f"RSS after the loads, {name}: model processes {sizes['model_processes']} MiB, "
              f"API workers {sizes['api_workers']} MiB")  # fmt: skip
    if any("reference_texts_per_s" in row for row in table):
        print("\nbefore (--reference-checkout) and after, in the same rounds")
        print("| load | before | after | before / peer | after / peer | before % of ceiling "
              "| after % of ceiling |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in table:
            if "reference_texts_per_s" not in row:
                continue
            print(
                f"| {row['load']} | {row['reference_texts_per_s']:.0f} texts/s, p50 "
                f"{row['reference_p50_ms']:.1f} ms | {row['sentiloop_texts_per_s']:.0f} texts/s, "
                f"p50 {row['sentiloop_p50_ms']:.1f} ms | {row['reference_vs_peer']:.2f}x | "
                f"{row['sentiloop_vs_peer']:.2f}x | {row['reference_pct_of_ceiling']:.0f}% | "
                f"{row['sentiloop_pct_of_ceiling']:.0f}% |"
            )


if __name__ == "__main__":
    main()

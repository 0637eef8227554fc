"""The feedback flywheel, measured end to end through a real server.

1. Train a model on part of tweet_sentiment_extraction and promote it.
2. Serve it with a real `bentoml serve` (SQLite store, scratch BentoML home).
3. Target domain: SST-2 movie reviews. Accuracy on SST-2 dev (binary) is
   measured through /v1/predict.
4. In rounds, score SST-2 train sentences through /v1/predict and send what an
   agent would: a correction through /v1/feedback when the answer is wrong
   (`label`), a thumbs-up when it is right (`verdict=correct`).
5. After each round retrain (base tweets + logged feedback), gate, and let the
   server hot-swap the promoted model; measure SST-2 dev and tweet test again.

    python -m bench.flywheel [--rounds 3] [--per-round 600] [--base-examples 4000]

Prints the figures and writes bench/results/flywheel.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import DATA, machine, sst2, tweets, write_result
from core.logs import configure_logging
from core.settings import Settings
from sentiloop.client import SentiloopClient
from tests.support import ServerProcess
from training import AssemblyConfig, GateConfig, TrainingArguments
from training.evaluate import evaluate
from training.examples import Example
from training.pipeline import DataSource, TrainingPipeline, TrainingPlan

logger = logging.getLogger("bench.flywheel")
BINARY = ("negative", "positive")
THREE_CLASS = ("negative", "neutral", "positive")


def api_accuracy(
    client: SentiloopClient, rows: list[Example], labels: tuple[str, ...]
) -> dict[str, Any]:
    scores, versions = [], set()
    for start in range(0, len(rows), 128):
        for prediction in client.predict([e.text for e in rows[start : start + 128]]):
            scores.append(prediction["scores"])
            versions.add(prediction["model_version"])
    metrics = evaluate([e.label for e in rows], scores, labels=labels)
    return {"n": metrics["n"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "model_versions": sorted(versions)}  # fmt: skip


def measure(
    client: SentiloopClient, dev: list[Example], tweet_eval: list[Example]
) -> dict[str, Any]:
    return {
        "sst2_dev": api_accuracy(client, dev, BINARY),
        "tweet_test": api_accuracy(client, tweet_eval, THREE_CLASS),
    }


def send_round(client: SentiloopClient, rows: list[Example]) -> dict[str, int]:
    """Predict, then correct the wrong answers and confirm the right ones."""
    sent = {"predictions": 0, "corrections": 0, "confirmations": 0}
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        for example, prediction in zip(chunk, client.predict([e.text for e in chunk]), strict=True):
            sent["predictions"] += 1
            if prediction["label"] == example.label:
                client.feedback(prediction["prediction_id"], verdict="correct", source="bench")
                sent["confirmations"] += 1
            else:
                client.feedback(prediction["prediction_id"], label=example.label, source="bench")
                sent["corrections"] += 1
    return sent


def wait_for_champion(server: ServerProcess, tag: str, timeout_s: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
        if any(m["reference"] == "champion" and m["model_version"] == tag for m in models):
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"the server did not switch to {tag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=600)
    parser.add_argument("--base-examples", type=int, default=4000)
    parser.add_argument("--tweet-eval", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    configure_logging()
    scratch = Path(tempfile.mkdtemp(prefix="sentiloop-flywheel-"))
    env = {
        "BENTOML_HOME": str(scratch / "bentoml"),
        "SENTILOOP_HOME": str(scratch / "home"),
        "SENTILOOP_TEXT_STORAGE": "raw",
        "SENTILOOP_MODEL_POLL_INTERVAL_S": "1",
    }
    os.environ.update(env)
    settings = Settings()
    rng = random.Random(args.seed)
    tweet_eval = rng.sample(tweets("test"), args.tweet_eval)
    holdout_file = scratch / "tweet_holdout.jsonl"
    holdout_file.write_text(
        "".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in tweet_eval)
    )
    dev = sst2("dev")
    pool = [e for e in sst2("train") if len(e.text.split()) >= 8]
    rng.shuffle(pool)

    def plan(gate: GateConfig) -> TrainingPlan:
        return TrainingPlan(
            base_data=DataSource(DATA / "tweet_sentiment_extraction" / "train.jsonl"),
            holdout_data=DataSource(holdout_file),
            assembly=AssemblyConfig(max_base_examples=args.base_examples),
            arguments=TrainingArguments(epochs=1, progress=False),
            gate=gate,
        )

    pipeline = TrainingPipeline(settings)
    first = pipeline.run(plan(GateConfig(min_improvement=-1.0)), trigger="bench:initial")
    logger.info("initial model %s (%s)", first.candidate_tag, first.reason)
    server = ServerProcess(env, scratch / "server.log")
    result: dict[str, Any] = {"machine": machine(), "arguments": vars(args), "rounds": []}
    try:
        server.wait_ready()
        with SentiloopClient(server.url) as client:
            before = measure(client, dev, tweet_eval)
            result["before"] = before
            logger.info("before: %s", before)
            corrections = 0
            for round_number in range(1, args.rounds + 1):
                batch = pool[(round_number - 1) * args.per_round : round_number * args.per_round]
                sent = send_round(client, batch)
                corrections += sent["corrections"]
                started = time.perf_counter()
                outcome = pipeline.run(
                    plan(GateConfig(min_improvement=-0.02, min_feedback_improvement=0.01)),
                    trigger=f"bench:round{round_number}",
                )
                train_seconds = time.perf_counter() - started
                swap_seconds = None
                if outcome.decision == "promoted":
                    swap_seconds = wait_for_champion(server, outcome.candidate_tag)
                after = measure(client, dev, tweet_eval)
                entry = {
                    "round": round_number,
                    "sent": sent,
                    "cumulative_corrections": corrections,
                    "decision": outcome.decision,
                    "reason": outcome.reason,
                    "candidate": outcome.candidate_tag,
                    "feedback_holdout": outcome.report["evaluation"]["feedback_holdout"],
                    "dataset": outcome.report["dataset"]["counts"],
                    "retrain_seconds": train_seconds,
                    "hot_swap_seconds": swap_seconds,
                    "after": after,
                }
                result["rounds"].append(entry)
                logger.info(
                    "round %d: %s",
                    round_number,
                    {k: entry[k] for k in ("sent", "decision", "after")},
                )
    finally:
        server.stop()
        pipeline.close()
    write_result("flywheel", result)
    b = result["before"]
    print(
        f"before: SST-2 dev acc {b['sst2_dev']['accuracy']:.4f}  "
        f"tweet test acc {b['tweet_test']['accuracy']:.4f}"
    )
    for entry in result["rounds"]:
        a = entry["after"]
        print(
            f"round {entry['round']}: {entry['sent']['corrections']} corrections "
            f"(total {entry['cumulative_corrections']}), {entry['decision']}; "
            f"SST-2 dev acc {a['sst2_dev']['accuracy']:.4f}  "
            f"tweet test acc {a['tweet_test']['accuracy']:.4f}  "
            f"retrain {entry['retrain_seconds']:.0f}s"
        )


if __name__ == "__main__":
    main()

"""The feedback flywheel, measured end to end through a real server, with the
gate's defaults (those of `sentiloop train`).

``--scenario reviews`` (English preset, all-minilm-l6-v2):

1. Train a model on part of tweet_sentiment_extraction and promote it.
2. Serve it with a real `bentoml serve` (SQLite store, scratch BentoML home).
3. Target domain: SST-2 movie reviews. Accuracy on SST-2 dev (binary) is
   measured through /v1/predict.
4. In rounds, score SST-2 train sentences through /v1/predict and send what an
   agent would: a correction through /v1/feedback when the answer is wrong
   (`label`), a thumbs-up when it is right (`verdict=correct`).
5. After each round retrain (base tweets + logged feedback, from the champion's
   weights), gate, and let the server hot-swap the promoted model; measure SST-2
   dev (in domain) and tweet test (base domain) again.

``--scenario german`` (the default multilingual preset): the shipped model serves
from the start; corrections arrive on German tweets only (XLM-T de train); each
round retrains from the champion on the feedback alone (a team with no training
data of its own), the tweet sample is the base guard; measured on XLM-T val de
(in domain) and on XLM-T val en/fr/es and tweet test (elsewhere).

``--scenario queue`` (English preset): the review queue against random traffic at
the same number of labels. From the same initial tweet model, each arm gets a fresh
server and database, scores the same SST-2 train pool through /v1/predict, then
labels ``--per-round`` predictions (arm "queue": those GET /v1/review-queue returns
with its default exploration share; "uncertainty": the queue without exploration;
"random": a random sample of the pool) through /v1/feedback/batch, retrains
once from the champion and serves the candidate (gate significance 1.0: it is
measured whatever the gate would say); SST-2 dev and tweet test are measured
through the API.

``--scenario domain`` (issue 20, the default multilingual preset): a CRM team with
the shipped model, one domain's feedback and the README's defaults, no base data.
Each round its server scores ``--per-round`` short reviews (SST-2 train phrases of
2-5 words, binary) with ticket ids and ``--traffic`` more that get no feedback,
then sends a label by ticket id for each of the first (the correction when the
answer was wrong, ``verdict=correct`` when right) and `sentiloop train`'s
pipeline runs with its defaults (a correction of the champion). Round 1 also runs
the recipes of ``--compare`` (the previous one by default: every
weight, no rehearsal, no class balance) on a copy of the same database. Every
candidate, promoted or not, is measured through a second server's API (so that the
measurement traffic never joins the CRM's logged traffic) on the domain's held-out
reviews, the tweet test (a sample), SST-2 dev and XLM-T val en/fr/de/es.

    python -m bench.flywheel [--scenario reviews|german|queue|domain] [--rounds 3] [--per-round 600]

Prints the figures and writes bench/results/flywheel[-german|-queue|-domain].json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.common import DATA, machine, sst2, tweets, write_result, xlmt
from core.logs import configure_logging
from core.settings import Settings
from feedback.review_queue import DEFAULT_EXPLORATION
from model import model_store
from sentiloop.client import Client, Prediction
from tests.support import ServerProcess
from training import AssemblyConfig, GateConfig, TrainingArguments
from training.evaluate import evaluate
from training.examples import Example
from training.pipeline import DataSource, TrainingPipeline, TrainingPlan

logger = logging.getLogger("bench.flywheel")
BINARY = ("negative", "positive")
THREE_CLASS = ("negative", "neutral", "positive")


def write_jsonl(path: Path, examples: list[Example]) -> None:
    """``examples`` as a JSONL data file the training pipeline reads."""
    path.write_text(
        "".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples)
    )


def api_accuracy(client: Client, rows: list[Example], labels: tuple[str, ...]) -> dict[str, Any]:
    scores: list[dict[str, float]] = []
    versions = set()
    for start in range(0, len(rows), 128):
        for prediction in client.predict([e.text for e in rows[start : start + 128]]):
            scores.append(dict(prediction.scores.items()))
            versions.add(prediction.model_version)
    metrics = evaluate([e.label for e in rows], scores, labels=labels)
    return {"n": metrics["n"], "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "model_versions": sorted(versions)}  # fmt: skip


def measure(
    client: Client, sets: dict[str, tuple[list[Example], tuple[str, ...]]]
) -> dict[str, Any]:
    return {name: api_accuracy(client, rows, labels) for name, (rows, labels) in sets.items()}


def send_round(client: Client, rows: list[Example]) -> dict[str, int]:
    """Predict, then correct the wrong answers and confirm the right ones."""
    sent = {"predictions": 0, "corrections": 0, "confirmations": 0}
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        for example, prediction in zip(chunk, client.predict([e.text for e in chunk]), strict=True):
            sent["predictions"] += 1
            if prediction.label == example.label:
                client.feedback(prediction.prediction_id, verdict="correct", source="bench")
                sent["confirmations"] += 1
            else:
                client.feedback(prediction.prediction_id, label=example.label, source="bench")
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
    parser.add_argument(
        "--scenario", choices=("reviews", "german", "queue", "domain"), default="reviews"
    )
    parser.add_argument(
        "--traffic",
        type=int,
        default=1500,
        help="domain: reviews scored per round that get no feedback (logged traffic)",
    )
    parser.add_argument(
        "--domain-eval", type=int, default=800, help="domain: held-out domain rows measured"
    )
    parser.add_argument(
        "--pool", type=int, default=3000, help="queue: SST-2 train sentences scored per arm"
    )
    parser.add_argument(
        "--start",
        choices=("multilingual", "english", "shipped"),
        default="multilingual",
        help="german: start from a model trained on tweets and XLM-T en/fr/es (no German; "
        "held-out XLM-T train rows of each language join the guard holdout), on English "
        "tweets only, or from the shipped model (trained on XLM-T de train, the texts "
        "the corrections come from: nothing new to learn)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compare",
        nargs="*",
        choices=[name for name in RECIPES if name != "default"],
        default=["full-fine-tune"],
        help="--scenario domain: recipes run in round 1 beside the default, each on a "
        "copy of the CRM's database",
    )
    parser.add_argument("--per-round", type=int, default=600)
    parser.add_argument("--base-examples", type=int, default=4000)
    parser.add_argument("--tweet-eval", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    configure_logging()
    if args.scenario == "domain":
        domain_scenario(args)
        return
    scratch = Path(tempfile.mkdtemp(prefix="sentiloop-flywheel-"))
    german = args.scenario == "german"
    env = {
        "BENTOML_HOME": str(scratch / "bentoml"),
        "SENTILOOP_HOME": str(scratch / "home"),
        "SENTILOOP_TEXT_STORAGE": "raw",
        "SENTILOOP_MODEL_POLL_INTERVAL_S": "1",
        "SENTILOOP_BASE_MODEL": "multilingual-e5-small" if german else "all-minilm-l6-v2",
    }
    os.environ.update(env)
    settings = Settings()
    rng = random.Random(args.seed)
    tweet_eval = rng.sample(tweets("test"), args.tweet_eval)
    holdout_file = scratch / "tweet_holdout.jsonl"
    write_jsonl(holdout_file, tweet_eval)
    sets: dict[str, tuple[list[Example], tuple[str, ...]]]
    if german:
        in_domain = "xlmt_val_de"
        sets = {"xlmt_val_de": (xlmt("de", "val"), THREE_CLASS)}
        for language in ("en", "fr", "es"):
            sets[f"xlmt_val_{language}"] = (xlmt(language, "val"), THREE_CLASS)
        sets["tweet_test"] = (tweet_eval, THREE_CLASS)
        pool = xlmt("de", "train")
        # From the shipped model a team has only its feedback; from an English model
        # the tweets stay in training beside the German corrections.
        base_data = None
        if args.start == "english":
            base_data = DataSource(DATA / "tweet_sentiment_extraction" / "train.jsonl")
        elif args.start == "multilingual":
            english = rng.sample(tweets("train"), args.base_examples)
            guard: list[Example] = []
            for language in ("en", "fr", "es"):
                rows = xlmt(language, "train")
                rng.shuffle(rows)
                guard += rows[:150]
                english += rows[150:]
            base_file = scratch / "base.jsonl"
            write_jsonl(base_file, english)
            base_data = DataSource(base_file)
            write_jsonl(holdout_file, tweet_eval + guard)
    else:
        in_domain = "sst2_dev"
        sets = {"sst2_dev": (sst2("dev"), BINARY), "tweet_test": (tweet_eval, THREE_CLASS)}
        pool = [e for e in sst2("train") if len(e.text.split()) >= 8]
        base_data = DataSource(DATA / "tweet_sentiment_extraction" / "train.jsonl")
    rng.shuffle(pool)

    def plan(gate: GateConfig, start_from: Literal["champion", "base"]) -> TrainingPlan:
        return TrainingPlan(
            base_data=base_data,
            holdout_data=DataSource(holdout_file),
            assembly=AssemblyConfig(
                max_base_examples=None
                if german and args.start == "multilingual"
                else args.base_examples
            ),
            arguments=TrainingArguments(epochs=1, progress=False),
            gate=gate,
            start_from=start_from,
        )

    if args.scenario == "queue":
        queue_vs_random(args, env, scratch, plan, pool, sets, rng)
        return
    pipeline = TrainingPipeline(settings)
    if not (german and args.start == "shipped"):  # an initial model trained on tweets
        first = pipeline.run(plan(GateConfig(significance=1.0), "base"), trigger="bench:initial")
        logger.info("initial model %s (%s)", first.candidate_tag, first.reason)
    server = ServerProcess(env, scratch / "server.log")
    result: dict[str, Any] = {
        "machine": machine(),
        "arguments": vars(args),
        "gate": asdict(GateConfig()),
        "in_domain": in_domain,
        "rounds": [],
    }
    try:
        server.wait_ready(timeout_s=600)
        with Client(server.url) as client:
            before = measure(client, sets)
            result["before"] = before
            logger.info("before: %s", before)
            corrections = 0
            previous = before
            for round_number in range(1, args.rounds + 1):
                batch = pool[(round_number - 1) * args.per_round : round_number * args.per_round]
                sent = send_round(client, batch)
                corrections += sent["corrections"]
                started = time.perf_counter()
                outcome = pipeline.run(
                    plan(GateConfig(), "champion"), trigger=f"bench:round{round_number}"
                )
                train_seconds = time.perf_counter() - started
                swap_seconds = None
                if outcome.decision == "promoted":
                    swap_seconds = wait_for_champion(server, outcome.candidate_tag)
                after = measure(client, sets)
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
                    "change_vs_before": {
                        name: after[name]["macro_f1"] - before[name]["macro_f1"] for name in sets
                    },
                    "change_vs_previous_round": {
                        name: after[name]["macro_f1"] - previous[name]["macro_f1"] for name in sets
                    },
                }
                previous = after
                result["rounds"].append(entry)
                logger.info(
                    "round %d: %s",
                    round_number,
                    {k: entry[k] for k in ("sent", "decision", "change_vs_before")},
                )
    finally:
        server.stop()
        pipeline.close()
    write_result("flywheel" if not german else f"flywheel-german-from-{args.start}", result)
    names = list(sets)
    print("macro-F1 through the API; in domain: " + in_domain)
    print("before: " + "  ".join(f"{n} {result['before'][n]['macro_f1']:.4f}" for n in names))
    for entry in result["rounds"]:
        figures = "  ".join(
            f"{n} {entry['after'][n]['macro_f1']:.4f} ({entry['change_vs_before'][n]:+.4f})"
            for n in names
        )
        print(
            f"round {entry['round']}: {entry['sent']['corrections']} corrections "
            f"(total {entry['cumulative_corrections']}), {entry['decision']}, "
            f"retrain {entry['retrain_seconds']:.0f}s: {figures}"
        )
        print(f"  gate: {entry['reason']}")


# The recipes compared by ``--scenario domain``: the one `sentiloop train` ran before
# issue 20 (every weight, no rehearsal, no class balance, and with feedback alone no
# validation rows: no early stopping, no temperature), the LoRA recipe that was the
# default for a while (a rank-8 adapter, class balance, rehearsal on logged traffic;
# all three in bench/results/flywheel-domain.json) and today's default (a correction).
RECIPES: dict[str, tuple[AssemblyConfig, TrainingArguments]] = {
    "full-fine-tune": (
        AssemblyConfig(rehearsal_ratio=0.0, validation_fraction=0.0),
        TrainingArguments(recipe="fine-tune", lora_rank=None, class_balance=False, progress=False),
    ),
    "lora": (AssemblyConfig(), TrainingArguments(recipe="fine-tune", progress=False)),
    "default": (AssemblyConfig(), TrainingArguments(progress=False)),
}


def domain_metrics(
    rows: list[Example], scores: list[dict[str, float]], classes: tuple[str, ...]
) -> dict[str, Any]:
    """A domain whose labels are ``classes`` judged as its team sees the answers: the
    3-class label the API returns (a "neutral" answer to a review labelled positive is
    wrong), macro-F1 over the domain's classes, each class's recall, and the share of
    each answer."""
    metrics = evaluate([e.label for e in rows], scores, labels=THREE_CLASS)
    per_class = metrics["per_class"]
    answers = [max(THREE_CLASS, key=lambda label: row[label]) for row in scores]
    return {
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "macro_f1": sum(per_class[c]["f1"] for c in classes) / len(classes),
        "recall": {c: per_class[c]["recall"] for c in classes},
        "answer_share": {c: answers.count(c) / len(answers) for c in THREE_CLASS},
    }


def measure_domain(
    client: Client,
    sets: dict[str, tuple[list[Example], tuple[str, ...]]],
    domain: tuple[list[Example], tuple[str, ...]],
) -> dict[str, Any]:
    """The general sets as ``measure`` does, per-class recall beside, and the domain."""
    result = {}
    for name, (rows, labels) in {**sets, "domain": domain}.items():
        scores: list[dict[str, float]] = []
        versions = set()
        for start in range(0, len(rows), 128):
            for prediction in client.predict([e.text for e in rows[start : start + 128]]):
                scores.append(dict(prediction.scores.items()))
                versions.add(prediction.model_version)
        if name == "domain":
            entry = domain_metrics(rows, scores, labels)
        else:
            metrics = evaluate([e.label for e in rows], scores, labels=labels)
            entry = {key: metrics[key] for key in ("n", "accuracy", "macro_f1")}
            entry["recall"] = {c: metrics["per_class"][c]["recall"] for c in labels}
        result[name] = entry | {"model_versions": sorted(versions)}
    return result


def crm_round(
    url: str, labelled: list[Example], traffic: list[Example], round_number: int
) -> dict[str, int]:
    """What a CRM does in a week: score every review with its id (``traffic`` is scored
    and never labelled), then send a label for each of ``labelled`` by id: the
    correction when the answer was wrong, ``verdict=correct`` when it was right."""
    sent = {"predictions": 0, "corrections": 0, "confirmations": 0, "unlabelled": 0}
    rows = [(f"R{round_number}-{i}", e, True) for i, e in enumerate(labelled)]
    rows += [(f"U{round_number}-{i}", e, False) for i, e in enumerate(traffic)]
    random.Random(round_number).shuffle(rows)
    with httpx.Client(base_url=url, timeout=120) as http:
        answers: dict[str, str] = {}
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            body = {"texts": [e.text for _, e, _ in chunk],
                    "external_ids": [i for i, _, _ in chunk], "source": "crm"}  # fmt: skip
            response = http.post("/v1/predict", json=body)
            response.raise_for_status()
            for (ticket, _, _), prediction in zip(
                chunk, response.json()["predictions"], strict=True
            ):
                answers[ticket] = prediction["label"]
            sent["predictions"] += len(chunk)
        items = []
        for ticket, example, is_labelled in rows:
            if not is_labelled:
                sent["unlabelled"] += 1
                continue
            item: dict[str, Any] = {"external_id": ticket, "source": "crm"}
            if answers[ticket] == example.label:
                item["verdict"] = "correct"
                sent["confirmations"] += 1
            else:
                item["label"] = example.label
                sent["corrections"] += 1
            items.append(item)
        for start in range(0, len(items), 500):
            response = http.post("/v1/feedback/batch", json={"items": items[start : start + 500]})
            response.raise_for_status()
    return sent


def copy_database(source: Settings, target: Settings) -> None:
    """A consistent copy of a SQLite store (the server may be writing)."""
    import sqlite3

    target.home.mkdir(parents=True, exist_ok=True)
    source_path = source.resolved_database_url.removeprefix("sqlite:///")
    target_path = target.resolved_database_url.removeprefix("sqlite:///")
    with sqlite3.connect(source_path) as src, sqlite3.connect(target_path) as dst:
        src.backup(dst)


def domain_scenario(args: argparse.Namespace) -> None:
    """Issue 20's table: one domain's feedback only, README defaults, no base data.

    Two servers share one model store: the CRM's (its database logs the domain's
    traffic and feedback, and `sentiloop train`'s pipeline runs on it) and an
    evaluation server whose champion is set to each model in turn, so that the
    measurement traffic never enters the CRM's logged traffic (which the default
    recipe rehearses on). Each recipe of ``--compare`` trains on a copy of the CRM's
    database taken when round 1's feedback is in.
    """
    import signal

    from core import database
    from training import promote

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")  # the servers stop in `finally`

    signal.signal(signal.SIGTERM, stop)
    scratch = Path(tempfile.mkdtemp(prefix="sentiloop-flywheel-domain-"))
    env = {"BENTOML_HOME": str(scratch / "bentoml"), "SENTILOOP_MODEL_POLL_INTERVAL_S": "1",
           "SENTILOOP_BASE_MODEL": "multilingual-e5-small"}  # fmt: skip
    os.environ.update(env)
    homes = {name: scratch / name for name in ("crm", "eval")}
    settings = {name: Settings(home=home) for name, home in homes.items()}
    rng = random.Random(args.seed)
    # Short review snippets: SST-2 train phrases of 2 to 5 words. The shipped model was
    # trained on SST-2 sentences of 8+ words and already answers those as a team would
    # (accuracy 0.85, 0.5% "neutral"), so they leave nothing to learn; on the snippets
    # it answers "neutral" to about a fifth of the reviews the team calls positive or
    # negative: the situation, a domain whose convention differs.
    pool = [e for e in sst2("train") if 2 <= len(e.text.split()) <= 5]
    rng.shuffle(pool)
    holdout, pool = pool[: args.domain_eval], pool[args.domain_eval :]
    sets: dict[str, tuple[list[Example], tuple[str, ...]]] = {
        "tweet_test": (rng.sample(tweets("test"), args.tweet_eval), THREE_CLASS),
        "sst2_dev": (sst2("dev"), BINARY),
    }
    for language in ("en", "fr", "de", "es"):
        sets[f"xlmt_val_{language}"] = (xlmt(language, "val"), THREE_CLASS)
    domain = (holdout, BINARY)
    result: dict[str, Any] = {
        "machine": machine(),
        "arguments": vars(args),
        "domain": "SST-2 train phrases of 2-5 words as a team's binary review snippets; "
        "judged on the 3-class answer (macro-F1 over negative and positive)",
        "recipes": {
            name: {"assembly": asdict(a), "arguments": asdict(t)}
            for name, (a, t) in RECIPES.items()
        },
        "rounds": [],
    }

    def save() -> None:
        write_result("flywheel-domain", result)

    servers = {
        name: ServerProcess({**env, "SENTILOOP_HOME": str(homes[name])}, scratch / f"{name}.log")
        for name in ("crm", "eval")
    }
    eval_sessions = None
    try:
        for server in servers.values():
            server.wait_ready(timeout_s=900)
        eval_engine = database.make_engine(settings["eval"].resolved_database_url)
        eval_sessions = database.make_session_factory(eval_engine)

        def measured(tag: str | None) -> dict[str, Any]:
            if tag is not None:
                promote(settings=settings["eval"], sessions=eval_sessions, tag=tag,
                        reason="bench: measured")  # fmt: skip
                wait_for_champion(servers["eval"], tag, timeout_s=600)
            with Client(servers["eval"].url, timeout_s=300) as client:
                return measure_domain(client, sets, domain)

        def load() -> list[float]:
            return [round(value, 2) for value in os.getloadavg()]

        result["before"] = measured(None)
        logger.info("before: %s", result["before"])
        save()
        per_round, traffic = args.per_round, args.traffic
        for round_number in range(1, args.rounds + 1):
            offset = (round_number - 1) * (per_round + traffic)
            labelled = pool[offset : offset + per_round]
            unlabelled = pool[offset + per_round : offset + per_round + traffic]
            sent = crm_round(servers["crm"].url, labelled, unlabelled, round_number)
            recipes = ["default"]
            if round_number == 1:
                recipes = ["default", *args.compare]
                for recipe in args.compare:  # the CRM's database as round 1's feedback left it
                    settings[recipe] = Settings(home=scratch / recipe)
                    copy_database(settings["crm"], settings[recipe])
            entry: dict[str, Any] = {"round": round_number, "sent": sent, "recipes": {}}
            for recipe in recipes:
                assembly, arguments = RECIPES[recipe]
                home = "crm" if recipe == "default" else recipe
                pipeline = TrainingPipeline(settings[home])
                load_before = load()
                started = time.perf_counter()
                try:
                    outcome = pipeline.run(
                        TrainingPlan(assembly=assembly, arguments=arguments),
                        trigger=f"bench:{recipe}:round{round_number}",
                    )
                finally:
                    pipeline.close()
                seconds = time.perf_counter() - started
                stored = model_store.get_model(outcome.candidate_tag)
                after = measured(outcome.candidate_tag)
                entry["recipes"][recipe] = {
                    "decision": outcome.decision,
                    "reason": outcome.reason,
                    "candidate": outcome.candidate_tag,
                    "stored_as": stored.metadata.get("stored_as", "full"),
                    "stored_bytes": sum(
                        f.stat().st_size for f in stored.path.rglob("*") if f.is_file()
                    ),
                    "dataset": outcome.report["dataset"]["counts"],
                    "training": outcome.report["training"],
                    "retrain_seconds": seconds,
                    "load_average_before_after": [load_before, load()],
                    "after": after,
                    "change_vs_before": {
                        name: after[name]["macro_f1"] - result["before"][name]["macro_f1"]
                        for name in after
                    },
                }
                logger.info("round %d %s: %s", round_number, recipe,
                            entry["recipes"][recipe]["change_vs_before"])  # fmt: skip
                result["rounds"] = [*result["rounds"][: round_number - 1], entry]
                save()
                if recipe == "default" and outcome.decision != "promoted":
                    # The CRM's server keeps its champion; later rounds build on it.
                    logger.info("round %d: the default recipe's candidate was not promoted",
                                round_number)  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    print_domain_table(result)


def print_domain_table(result: dict[str, Any]) -> None:
    before = result["before"]
    columns = [("shipped", before)]
    for entry in result["rounds"]:
        for recipe, figures in entry["recipes"].items():
            columns.append((f"{recipe} r{entry['round']}", figures["after"]))
    print("macro-F1 through the API (n rows); domain: " + result["domain"])
    print(f"{'set':<14} {'n':>5} " + " ".join(f"{name:>18}" for name, _ in columns))
    for name in before:
        cells = " ".join(f"{after[name]['macro_f1']:>18.4f}" for _, after in columns)
        print(f"{name:<14} {before[name]['n']:>5} {cells}")
    for entry in result["rounds"]:
        for recipe, figures in entry["recipes"].items():
            print(f"round {entry['round']} {recipe}: {figures['decision']}, "
                  f"{figures['retrain_seconds']:.0f} s, stored {figures['stored_as']} "
                  f"{figures['stored_bytes'] / 1e6:.1f} MB; gate: {figures['reason']}")  # fmt: skip


def queue_vs_random(
    args: argparse.Namespace,
    env: dict[str, str],
    scratch: Path,
    plan: Any,
    pool: list[Example],
    sets: dict[str, tuple[list[Example], tuple[str, ...]]],
    rng: random.Random,
) -> None:
    """The review queue against random traffic, one fresh server and database per arm."""
    import storage
    from core import database
    from training import promote

    pool = rng.sample(pool, min(args.pool, len(pool)))
    truth = {e.text: e.label for e in pool}
    first = TrainingPipeline(Settings()).run(
        plan(GateConfig(significance=1.0), "base"), trigger="bench:initial"
    )
    assert first.candidate_tag is not None
    result: dict[str, Any] = {"machine": machine(), "arguments": vars(args), "arms": {}}
    explorations = {"queue": DEFAULT_EXPLORATION, "uncertainty": 0.0}
    for arm in ("queue", "uncertainty", "random"):
        home = scratch / f"home-{arm}"
        os.environ["SENTILOOP_HOME"] = str(home)
        settings = Settings()
        engine = database.make_engine(settings.resolved_database_url)
        storage.upgrade(settings.resolved_database_url)
        promote(
            settings=settings,
            sessions=database.make_session_factory(engine),
            tag=first.candidate_tag,
            reason="bench: initial",
        )
        engine.dispose()
        server = ServerProcess({**env, "SENTILOOP_HOME": str(home)}, scratch / f"server-{arm}.log")
        pipeline = TrainingPipeline(settings)
        try:
            server.wait_ready(timeout_s=600)
            with Client(server.url) as client:
                # The pool first: the queue must choose among the pool's predictions
                # (the measurements are logged too).
                predictions: list[tuple[str, Prediction]] = []
                for start in range(0, len(pool), 128):
                    texts = [e.text for e in pool[start : start + 128]]
                    predictions += zip(texts, client.predict(texts), strict=True)
                if arm in explorations:
                    queue = httpx.get(
                        f"{server.url}/v1/review-queue",
                        params={
                            "limit": args.per_round,
                            "days": 1,
                            "exploration": explorations[arm],
                        },
                        timeout=60,
                    ).json()["items"]
                    chosen = [(item["text"], item["prediction_id"]) for item in queue]
                else:
                    picked = rng.sample(predictions, args.per_round)
                    chosen = [(text, p.prediction_id) for text, p in picked]
                before = measure(client, sets)
                items = [{"prediction_id": pid, "label": truth[text]} for text, pid in chosen]
                by_id = {p.prediction_id: p.label for _, p in predictions}
                wrong = sum(by_id[pid] != truth[text] for text, pid in chosen)
                response = httpx.post(
                    f"{server.url}/v1/feedback/batch", json={"items": items}, timeout=120
                ).json()
                started = time.perf_counter()
                outcome = pipeline.run(
                    plan(GateConfig(significance=1.0), "champion"), trigger=f"bench:{arm}"
                )
                retrain_seconds = time.perf_counter() - started
                if outcome.decision == "promoted":
                    wait_for_champion(server, outcome.candidate_tag)
                after = measure(client, sets)
        finally:
            server.stop()
            pipeline.close()
        result["arms"][arm] = {
            "labels": len(items),
            "stored": response["stored"],
            "labels_correcting_a_wrong_answer": wrong,
            "decision": outcome.decision,
            "retrain_seconds": retrain_seconds,
            "before": before,
            "after": after,
            "gain": {name: after[name]["macro_f1"] - before[name]["macro_f1"] for name in sets},
        }
        logger.info("%s: %s", arm, result["arms"][arm]["gain"])
    write_result("flywheel-queue", result)
    print(f"labels per arm: {args.per_round} (pool {len(pool)}); macro-F1 through the API")
    for arm, entry in result["arms"].items():
        gains = "  ".join(f"{name} {value:+.4f}" for name, value in entry["gain"].items())
        print(
            f"{arm:>11}: {entry['labels_correcting_a_wrong_answer']} of {entry['labels']} labels "
            f"corrected a wrong 3-class answer; {entry['decision']}; gain {gains}"
        )


if __name__ == "__main__":
    main()

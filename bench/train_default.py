"""Accuracy of the fine-tuned default model, and its training time on this machine.

Trains all-MiniLM-L6-v2 with the default arguments on tweet_sentiment_extraction
train through the real training pipeline (fixed holdout = its test split), then
scores tweet test (3-class) and SST-2 dev (binary: neutral is mapped away by
taking the better of negative/positive). The zero-shot cold-start model is
measured on the same rows for comparison.

    python bench/train_default.py [--epochs 2] [--max-base-examples N]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from bench.common import DATA, machine, sst2, tweets, write_result
from core.logs import configure_logging
from core.settings import Settings
from model import model_store
from model.base_models import base_model_dir
from model.classifiers import FineTunedClassifier, ZeroShotClassifier
from training import AssemblyConfig, TrainingArguments
from training.evaluate import evaluate
from training.pipeline import DataSource, TrainingPipeline, TrainingPlan

logger = logging.getLogger("bench.train_default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=TrainingArguments.epochs)
    parser.add_argument("--max-base-examples", type=int, default=None)
    parser.add_argument("--output", default="train_default")
    args = parser.parse_args()
    configure_logging()
    scratch = Path(tempfile.mkdtemp(prefix="sentiloop-bench-"))
    os.environ.setdefault("BENTOML_HOME", str(scratch / "bentoml"))
    settings = Settings(
        home=scratch / "home",
        database_url=f"sqlite:///{scratch / 'bench.db'}",
        base_model="all-minilm-l6-v2",
        cold_start_model="zero-shot",
    )
    plan = TrainingPlan(
        base_data=DataSource(DATA / "tweet_sentiment_extraction" / "train.jsonl"),
        holdout_data=DataSource(DATA / "tweet_sentiment_extraction" / "test.jsonl"),
        assembly=AssemblyConfig(max_base_examples=args.max_base_examples),
        arguments=TrainingArguments(epochs=args.epochs, progress=False),
    )
    pipeline = TrainingPipeline(settings)
    started = time.perf_counter()
    outcome = pipeline.run(plan, trigger="bench")
    wall = time.perf_counter() - started
    pipeline.close()
    template = pipeline.templates.get(settings.default_template_version)
    stored = model_store.get_model(outcome.candidate_tag)
    fine_tuned = FineTunedClassifier(stored.path, version=stored.tag)
    zero_shot = ZeroShotClassifier(base_model_dir(settings))
    results = {}
    for name, rows, labels in (
        ("tweet_test_3class", tweets("test"), ("negative", "neutral", "positive")),
        ("sst2_dev_binary", sst2("dev"), ("negative", "positive")),
    ):
        for model_name, model in (("fine_tuned", fine_tuned), ("zero_shot", zero_shot)):
            scores = model.predict([template.render(e.text) for e in rows], template)
            metrics = evaluate([e.label for e in rows], scores, labels=labels)
            results[f"{name}/{model_name}"] = {
                k: metrics[k] for k in ("n", "accuracy", "macro_f1", "ece")
            }
            logger.info("%s / %s: %s", name, model_name, results[f"{name}/{model_name}"])
    result = {
        "machine": machine(),
        "epochs_requested": args.epochs,
        "training": outcome.report["training"],
        "dataset": outcome.report["dataset"]["counts"],
        "pipeline_wall_seconds": wall,
        "decision": outcome.decision,
        "results": results,
    }
    write_result(args.output, result)
    for key, value in results.items():
        print(f"{key:<34} n={value['n']:<5} acc={value['accuracy']:.4f} "
              f"macro-F1={value['macro_f1']:.4f} ECE={value['ece']:.4f}")  # fmt: skip
    training = outcome.report["training"]
    print(f"training seconds: {training['seconds']:.0f} "
          f"(pipeline wall {wall:.0f}s, best epoch {training['best_epoch']})")  # fmt: skip


if __name__ == "__main__":
    main()

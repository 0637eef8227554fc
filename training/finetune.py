"""Full fine-tuning of the encoder with a classification head (plain torch loop).

Inputs are rendered through the template version(s) being trained; with several
versions every example is seen once per version, so one model serves them all.
Defaults suit 2 CPU cores: short max length, length-bucketed batches (little
padding), a couple of epochs with early stopping on the validation split.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model.classifiers import classify_texts, torch_logits
from model.labels import LABEL_TO_ID, LABELS
from model.templates import PromptTemplate
from model.tokenization import ChunkTokenizer
from training.config import TrainingArguments
from training.evaluate import evaluate
from training.examples import Example

logger = logging.getLogger(__name__)


@dataclass
class FineTuneResult:
    output_dir: Path
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    train_examples: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["output_dir"]  # usually a scratch folder
        return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _rendered(
    examples: Sequence[Example], templates: Sequence[PromptTemplate]
) -> list[tuple[str, int, float]]:
    return [
        (template.render(example.text), LABEL_TO_ID[example.label], example.weight)
        for template in templates
        for example in examples
    ]


def _length_bucketed_batches(
    items: list[tuple[str, int, float]], batch_size: int, rng: random.Random
) -> list[list[tuple[str, int, float]]]:
    """Shuffle, sort within windows of 50 batches by length, then shuffle the batches."""
    order = items[:]
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda item: len(item[0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def fine_tune(
    train: Sequence[Example],
    validation: Sequence[Example],
    *,
    base_model: Path,
    templates: Sequence[PromptTemplate],
    args: TrainingArguments,
    output_dir: Path,
) -> FineTuneResult:
    """Train on ``train``, keep the epoch best on ``validation``, save it to ``output_dir``."""
    if not train:
        raise ValueError("no training examples")
    if not templates:
        raise ValueError("at least one template version is needed")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    seed_everything(args.seed)
    rng = random.Random(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model),
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id=dict(LABEL_TO_ID),
        local_files_only=True,
    )
    items = _rendered(train, templates)
    steps_per_epoch = math.ceil(len(items) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(total_steps * args.warmup_ratio)
    no_decay = ("bias", "LayerNorm.weight", "norm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": args.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    validation_texts = [t.render(e.text) for t in templates for e in validation]
    validation_labels = [e.label for _ in templates for e in validation]

    result = FineTuneResult(output_dir=output_dir, train_examples=len(items))
    best_score, best_state, stale = -1.0, None, 0
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        batches = _length_bucketed_batches(items, args.batch_size, rng)
        running_loss, seen = 0.0, 0
        progress = tqdm(
            batches, desc=f"epoch {epoch}/{args.epochs}", disable=not args.progress, unit="batch"
        )
        for batch in progress:
            encoded = tokenizer(
                [text for text, _, _ in batch],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            )
            targets = torch.tensor([label for _, label, _ in batch])
            weights = torch.tensor([weight for _, _, weight in batch], dtype=torch.float)
            logits = model(**encoded).logits
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            loss = (losses * weights).sum() / weights.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            running_loss += float(loss.detach()) * len(batch)
            seen += len(batch)
            progress.set_postfix(loss=f"{running_loss / seen:.4f}")
        epoch_metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": running_loss / max(1, seen),
            "seconds": time.perf_counter() - started,
        }
        if validation_texts:
            model.eval()
            scores = classify_texts(
                torch_logits(model, torch.device("cpu")),
                ChunkTokenizer(tokenizer, args.max_length),
                validation_texts,
                id2label=dict(enumerate(LABELS)),
            )
            metrics = evaluate(validation_labels, scores)
            epoch_metrics.update(
                validation_accuracy=metrics["accuracy"], validation_macro_f1=metrics["macro_f1"]
            )
            score = metrics["macro_f1"]
        else:
            score = -epoch_metrics["train_loss"]
        result.epochs.append(epoch_metrics)
        logger.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in epoch_metrics.items()})
        if score > best_score:
            best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
            result.best_epoch = epoch
        else:
            stale += 1
            if stale > args.patience - 1:
                logger.info("early stopping after epoch %d (best %d)", epoch, result.best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return result

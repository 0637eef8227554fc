"""Fine-tuning of the encoder with a classification head (plain torch loop).

Training starts from ``init_model``: a base encoder (a new head is added) or a
sequence classifier saved earlier (the champion: retraining continues from its
weights). Every weight is trained except the vocabulary embeddings, or, with
``lora_rank``, a LoRA adapter (``peft``) on the encoder's linear layers plus the
pooler and head; the adapter is saved beside the merged model.

Retraining from the champion keeps what it knows (README "Training loop"): the
default trains a LoRA adapter, weighs labelled rows by the inverse frequency of
their label (``class_balance``) and mixes in rehearsal rows (``rehearsal``:
logged texts with the champion's probabilities as soft targets, a
self-distillation term). Every row's loss is the cross-entropy against a target
distribution: one-hot for a labelled row, the champion's for a rehearsal row.

Inputs are rendered through the template version(s) being trained; with several
versions every example is seen once per version, so one model serves them all.
Defaults suit 2 CPU cores: short max length, length-bucketed batches (little
padding), a couple of epochs with early stopping on the validation split; then
a softmax temperature fitted on the validation split is folded into the head
(``training.calibration``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from model.calibration import fit_temperature, fold_temperature
from model.classifiers import classify_texts, sentiment_model, torch_logits
from model.labels import LABEL_TO_ID, LABELS
from model.templates import PromptTemplate
from model.tokenization import ChunkTokenizer
from training.config import TrainingArguments
from training.evaluate import evaluate
from training.examples import Example
from training.rehearsal import SoftExample

logger = logging.getLogger(__name__)


@dataclass
class FineTuneResult:
    output_dir: Path
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    train_examples: int = 0
    rehearsal_examples: int = 0
    trainable_parameters: int = 0
    temperature: float = 1.0
    # "fine-tune" (this module), or "correction" (``training.correction``: its figures).
    recipe: str = "fine-tune"
    correction: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["output_dir"]  # usually a scratch folder
        return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# A row to train on: rendered text, target distribution over LABELS, weight.
Item = tuple[str, tuple[float, ...], float]


def class_weights(labels: Sequence[str]) -> dict[str, float]:
    """Each label's weight, inversely proportional to its frequency and 1 on average
    over the rows (scikit-learn's "balanced"), so that a label the feedback rarely
    gives is not trained away."""
    counts = Counter(labels)
    return {label: len(labels) / (len(counts) * count) for label, count in counts.items()}


def _one_hot(label: str) -> tuple[float, ...]:
    return tuple(1.0 if index == LABEL_TO_ID[label] else 0.0 for index in range(len(LABELS)))


def _rendered(
    examples: Sequence[Example],
    rehearsal: Sequence[SoftExample],
    templates: Sequence[PromptTemplate],
    class_balance: bool,
) -> list[Item]:
    balance = class_weights([e.label for e in examples]) if class_balance else {}
    labelled = [
        (template.render(e.text), _one_hot(e.label), e.weight * balance.get(e.label, 1.0))
        for template in templates
        for e in examples
    ]
    soft = [
        (template.render(e.text), e.probabilities, e.weight)
        for template in templates
        for e in rehearsal
    ]
    return labelled + soft


def _length_bucketed_batches(
    items: list[Item], batch_size: int, rng: random.Random
) -> list[list[Item]]:
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
    init_model: Path,
    templates: Sequence[PromptTemplate],
    args: TrainingArguments,
    output_dir: Path,
    rehearsal: Sequence[SoftExample] = (),
) -> FineTuneResult:
    """Train on ``train`` (and ``rehearsal``'s soft targets), keep the epoch best on
    ``validation``, save it to ``output_dir`` (with a LoRA run's adapter in
    ``output_dir/adapter``)."""
    if not train:
        raise ValueError("no training examples")
    if not templates:
        raise ValueError("at least one template version is needed")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    seed_everything(args.seed)
    rng = random.Random(args.seed)
    device = training_device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(str(init_model), local_files_only=True)
    model = _trainable_model(init_model, args).to(device)
    logger.info("training on %s", device)
    items = _rendered(train, rehearsal, templates, args.class_balance)
    steps_per_epoch = math.ceil(len(items) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(total_steps * args.warmup_ratio)
    no_decay = ("bias", "LayerNorm.weight", "norm.weight")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for n, p in trainable if not n.endswith(no_decay)],
            "weight_decay": args.weight_decay,
        },
        {"params": [p for n, p in trainable if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.resolved_learning_rate)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    validation_texts = [t.render(e.text) for t in templates for e in validation]
    validation_labels = [e.label for _ in templates for e in validation]

    result = FineTuneResult(
        output_dir=output_dir,
        train_examples=len(items),
        rehearsal_examples=len(rehearsal) * len(templates),
        trainable_parameters=sum(p.numel() for _, p in trainable),
    )
    best_score, best_state, stale = -1.0, None, 0
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
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
            targets = torch.tensor([target for _, target, _ in batch], device=device)
            weights = torch.tensor(
                [weight for _, _, weight in batch], dtype=torch.float, device=device
            )
            logits = model(**encoded.to(device)).logits
            # Cross-entropy against the target distribution (KL divergence to a soft
            # target, up to a constant).
            losses = -(targets * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
            loss = (losses * weights).sum() / weights.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            running_loss += float(loss.detach()) * len(batch)
            seen += len(batch)
            progress.set_postfix(loss=f"{running_loss / seen:.4f}")
        epoch_metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": running_loss / max(1, seen),
            "seconds": time.perf_counter() - epoch_started,
        }
        if validation_texts:
            model.eval()
            scores = classify_texts(
                torch_logits(model, device),
                ChunkTokenizer.from_transformers(tokenizer, args.max_length),
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
            best_score, stale = score, 0
            best_state = {name: p.detach().clone() for name, p in trainable}
            result.best_epoch = epoch
        else:
            stale += 1
            if stale > args.patience - 1:
                logger.info("early stopping after epoch %d (best %d)", epoch, result.best_epoch)
                break
    if best_state is not None:
        with torch.no_grad():
            for name, parameter in trainable:
                parameter.copy_(best_state[name])
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    if args.lora_rank is not None:
        model.save_pretrained(output_dir / "adapter")
        model = model.merge_and_unload()
    model.eval()
    if args.calibrate and validation_texts:
        chunked = ChunkTokenizer.from_transformers(tokenizer, args.max_length)
        logits = _logits(model, chunked, validation_texts)
        labels = np.array([LABEL_TO_ID[label] for label in validation_labels])
        result.temperature = fit_temperature(logits, labels)
        fold_temperature(model.classifier, result.temperature)
        logger.info("calibrated: temperature %.3f", result.temperature)
    result.seconds = time.perf_counter() - started
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return result


def training_device(requested: str | None) -> torch.device:
    """The device to train on: ``requested``, or a CUDA GPU when there is one."""
    if requested is not None:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


LORA_TARGETS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"


def _trainable_model(init_model: Path, args: TrainingArguments) -> Any:
    """The model to train, from a base encoder or a saved classifier, with the
    parameters ``args`` leaves frozen."""
    model = sentiment_model(init_model)
    if args.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if args.lora_rank is None:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        lora_dropout=0.1,
        target_modules=LORA_TARGETS,
        modules_to_save=["pooler", "classifier"],
    )
    return get_peft_model(model, config)


def _logits(model: Any, tokenizer: ChunkTokenizer, texts: Sequence[str]) -> np.ndarray:
    """Logits of ``texts`` in input order (torch fp32)."""
    logits_of = torch_logits(model, torch.device("cpu"))
    rows: list[np.ndarray] = [np.empty(0)] * len(texts)
    for chunk, inputs in tokenizer.chunks(texts, 64):
        values = logits_of(inputs)
        for row, index in enumerate(chunk):
            rows[index] = values[row]
    return np.stack(rows)

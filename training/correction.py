"""Training a local correction (``model.corrections``): the default way a fine-tuned
champion learns from feedback (README "Training loop").

The champion's weights stay as they are. Its forward pass over the training rows
gives, per row, its logits, the gate's features (mid-layer) and the residual's
features (last layer); a linear residual, starting at zero, is fitted on them
with the class-balanced cross-entropy of the champion's logits plus the residual
(AdamW, a few seconds on a CPU); the gate's keys are the rows' mid-layer
features and its radius the similarity that keeps ``COVERAGE`` of the rows
within reach of another row (leave-one-out). A champion that is itself a
correction is retrained from its parent with every feedback row so far: rounds
replace the correction, they never stack, so they cannot drift.

Measured on the issue's scenario (bench/flywheel.py --scenario domain, one run):
the LoRA recipe this replaced as the default lost 13 to 21 points macro-F1 on
tweets and XLM-T for +5.1 in the domain; a correction lost at most 0.7 anywhere
outside its domain for +6.4 inside it, fitted in 17 s (98 s for the whole run with
the candidate's export and evaluation, 158 s with LoRA) and is stored in 0.7 MB.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model import correction_modules, corrections
from model.labels import LABEL_TO_ID, LABELS
from model.templates import PromptTemplate
from model.tokenization import ChunkTokenizer
from training.config import TrainingArguments
from training.evaluate import evaluate
from training.examples import Example
from training.finetune import FineTuneResult, class_weights, seed_everything, training_device

logger = logging.getLogger(__name__)

EPOCHS = 40
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
# The share of the training rows whose nearest other row is within the radius.
COVERAGE = 0.98
# At most this many keys (a random sample beyond): 20,000 keys are 30 MB and a
# 20,000 x 384 product per text.
MAX_KEYS = 20_000


@torch.inference_mode()
def features_of(
    model: Any, tokenizer: ChunkTokenizer, texts: Sequence[str], gate_layer: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, gate features and residual features of ``texts`` (rows in order)."""
    logits: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    gates: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    residuals: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for chunk, inputs in tokenizer.chunks(texts, 16):
        tensors = {name: torch.from_numpy(array).to(device) for name, array in inputs.items()}
        batch = correction_modules.features(model, gate_layer, **tensors)
        for row, index in enumerate(chunk):
            logits[index], gates[index], residuals[index] = (t[row].float().cpu() for t in batch)
    return torch.stack(logits), torch.stack(gates), torch.stack(residuals)


def radius(keys: torch.Tensor, coverage: float = COVERAGE) -> float:
    """The similarity that keeps ``coverage`` of the keys within reach of another key."""
    if len(keys) < 2:
        return 1.0
    nearest = torch.empty(len(keys))
    for start in range(0, len(keys), 1024):
        similarity = keys[start : start + 1024] @ keys.T
        rows = torch.arange(start, min(start + 1024, len(keys)))
        similarity[rows - start, rows] = -1.0  # not itself
        nearest[start : start + 1024] = similarity.max(dim=-1).values
    return float(torch.quantile(nearest, 1 - coverage))


def fit_residual(
    logits: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    args: TrainingArguments,
) -> tuple[torch.nn.Linear, list[dict[str, Any]]]:
    """The linear residual over ``features``, from zero, that the rows' ``labels`` ask
    of the champion's ``logits`` (weighted cross-entropy, AdamW); the per-epoch losses."""
    residual = torch.nn.Linear(features.shape[1], len(LABELS))
    torch.nn.init.zeros_(residual.weight)
    torch.nn.init.zeros_(residual.bias)
    return residual, fit_module(residual, logits, features, labels, weights, args)


def fit_module(
    module: torch.nn.Module,
    logits: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    args: TrainingArguments,
) -> list[dict[str, Any]]:
    """Train ``module`` (features -> a change of the logits) as ``fit_residual`` trains
    its linear one; the per-epoch losses. ``bench.domain_headroom`` fits others with it."""
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(args.seed)
    epochs = []
    for epoch in range(1, EPOCHS + 1):
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(labels), args.batch_size):
            batch = order[start : start + args.batch_size]
            loss = torch.nn.functional.cross_entropy(
                logits[batch] + module(features[batch]), labels[batch], reduction="none"
            )
            loss = (loss * weights[batch]).sum() / weights[batch].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        if epoch == 1 or epoch % 10 == 0:
            epochs.append({"epoch": epoch, "train_loss": round(total / len(labels), 5)})
    module.eval()
    return epochs


def fit_correction(
    train: Sequence[Example],
    validation: Sequence[Example],
    *,
    parent_dir: Path,
    parent: str,
    templates: Sequence[PromptTemplate],
    args: TrainingArguments,
    output_dir: Path,
) -> FineTuneResult:
    """Fit a correction of the model in ``parent_dir`` (tagged ``parent``) on ``train``;
    ``output_dir`` then serves it (the parent's files linked, the correction beside)."""
    if not train:
        raise ValueError("no training examples")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    seed_everything(args.seed)
    started = time.perf_counter()
    device = training_device(args.device)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(parent_dir), local_files_only=True
    )
    model = model.to(device).eval()
    tokenizer = ChunkTokenizer.from_transformers(
        AutoTokenizer.from_pretrained(str(parent_dir), local_files_only=True), args.max_length
    )
    gate_layer = correction_modules.gate_layer_of(model)
    rows = [(template.render(e.text), e) for template in templates for e in train]
    logits, gates, features = features_of(
        model, tokenizer, [t for t, _ in rows], gate_layer, device
    )
    labels = torch.tensor([LABEL_TO_ID[e.label] for _, e in rows])
    balance = class_weights([e.label for _, e in rows]) if args.class_balance else {}
    weights = torch.tensor([e.weight * balance.get(e.label, 1.0) for _, e in rows])

    residual, epochs = fit_residual(logits, features, labels, weights, args)

    keys = _deduplicated(gates, args.seed)
    threshold = radius(keys)
    tensors = {
        "keys": keys.half(),  # float16: half the bytes; read back as float32
        "weight": residual.weight.detach().clone(),
        "bias": residual.bias.detach().clone(),
    }
    config = {"gate_layer": gate_layer, "threshold": threshold, "coverage": COVERAGE}
    corrections.link_parent(parent_dir, output_dir)
    corrections.write_correction(output_dir, parent=parent, tensors=tensors, config=config)
    result = FineTuneResult(
        output_dir=output_dir,
        epochs=epochs,
        best_epoch=EPOCHS,
        train_examples=len(rows),
        trainable_parameters=sum(p.numel() for p in residual.parameters()),
        recipe="correction",
        correction={
            "parent": parent,
            "keys": len(keys),
            "threshold": round(threshold, 5),
            "gate_layer": gate_layer,
            "stored_bytes": corrections.correction_bytes(output_dir),
        },
    )
    if validation:
        texts = [templates[0].render(e.text) for e in validation]
        v_logits, v_gates, v_features = features_of(model, tokenizer, texts, gate_layer, device)
        with torch.no_grad():
            inside = (v_gates @ tensors["keys"].float().T).max(dim=-1).values >= threshold
            corrected = v_logits + inside.float().unsqueeze(-1) * residual(v_features)
        truth = [e.label for e in validation]
        assert result.correction is not None
        result.correction["validation"] = {
            "n": len(validation),
            "inside_radius": round(float(inside.float().mean()), 4),
            "macro_f1": _macro_f1(truth, corrected),
            "parent_macro_f1": _macro_f1(truth, v_logits),
        }
    result.seconds = time.perf_counter() - started
    logger.info(
        "correction of %s: %d keys, radius %.4f, %d rows, %.1f s",
        parent,
        len(keys),
        threshold,
        len(rows),
        result.seconds,
    )
    return result


def _deduplicated(gates: torch.Tensor, seed: int) -> torch.Tensor:
    """The gate's keys: unique rows, at most ``MAX_KEYS`` (a seeded sample)."""
    keys = torch.unique(gates, dim=0)
    if len(keys) > MAX_KEYS:
        chosen = sorted(random.Random(seed).sample(range(len(keys)), MAX_KEYS))
        keys = keys[chosen]
    return keys


def _macro_f1(truth: Sequence[str], logits: torch.Tensor) -> float:
    probabilities = torch.softmax(logits, dim=-1).tolist()
    scores = [dict(zip(LABELS, row, strict=True)) for row in probabilities]
    return round(float(evaluate(list(truth), scores)["macro_f1"]), 4)

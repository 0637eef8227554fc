"""Classification metrics, a readable summary and plots.

Metrics: accuracy, macro-F1, per-class precision/recall/F1, the confusion matrix
(rows: true label, columns: predicted) and the expected calibration error (ECE,
15 equal-width confidence bins). ``labels`` restricts the decision to a subset,
e.g. ``("negative", "positive")`` for a binary data set: the prediction is then
the best-scoring label of the subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.labels import LABELS

ECE_BINS = 15


def _safe_div(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> tuple[float, list[dict[str, float]]]:
    """ECE and the reliability table (one row per non-empty bin)."""
    table = []
    total = len(confidences)
    ece = 0.0
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        members = [
            i
            for i, confidence in enumerate(confidences)
            if low < confidence <= high or (index == 0 and confidence == 0)
        ]
        if not members:
            continue
        accuracy = sum(correct[i] for i in members) / len(members)
        confidence = sum(confidences[i] for i in members) / len(members)
        ece += len(members) / total * abs(accuracy - confidence)
        table.append(
            {"low": low, "high": high, "count": len(members), "accuracy": accuracy,
             "confidence": confidence}
        )  # fmt: skip
    return ece, table


def evaluate(
    true_labels: Sequence[str],
    scores: Sequence[Mapping[str, float]],
    labels: Sequence[str] = LABELS,
) -> dict[str, Any]:
    if len(true_labels) != len(scores):
        raise ValueError(f"{len(true_labels)} labels but {len(scores)} score rows")
    if not true_labels:
        return {"n": 0}
    predicted = []
    confidences = []
    for row in scores:
        subset = {label: row[label] for label in labels}
        total = sum(subset.values()) or 1.0
        best = max(labels, key=lambda label: subset[label])
        predicted.append(best)
        confidences.append(subset[best] / total)
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for truth, guess in zip(true_labels, predicted, strict=True):
        if truth not in index:
            raise ValueError(f"true label {truth!r} is not among {list(labels)}")
        confusion[index[truth]][index[guess]] += 1
    per_class = {}
    for label, i in index.items():
        true_positive = confusion[i][i]
        predicted_count = sum(confusion[row][i] for row in range(len(labels)))
        actual_count = sum(confusion[i])
        precision = _safe_div(true_positive, predicted_count)
        recall = _safe_div(true_positive, actual_count)
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": _safe_div(2 * precision * recall, precision + recall),
            "support": actual_count,
        }
    correct = [t == p for t, p in zip(true_labels, predicted, strict=True)]
    ece, reliability = expected_calibration_error(confidences, correct)
    return {
        "n": len(true_labels),
        "labels": list(labels),
        "accuracy": sum(correct) / len(correct),
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(per_class),
        "per_class": per_class,
        "confusion_matrix": confusion,
        "ece": ece,
        "mean_confidence": sum(confidences) / len(confidences),
        "reliability": reliability,
        # Per row, in input order: what a paired test compares (not stored with reports).
        "correct": correct,
        "truth": list(true_labels),
        "predicted": predicted,
    }


def summary_line(name: str, metrics: Mapping[str, Any]) -> str:
    if not metrics.get("n"):
        return f"{name:<28} (no rows)"
    line = (
        f"{name:<28} n={metrics['n']:<6} acc={metrics['accuracy']:.4f} "
        f"macro-F1={metrics['macro_f1']:.4f} ECE={metrics['ece']:.4f}"
    )
    recalls = metrics.get("per_class", {})
    if recalls:
        line += " recall " + " ".join(
            f"{label}={values['recall']:.3f}" for label, values in recalls.items()
        )
    languages = metrics.get("per_language", {})
    if languages:
        line += " macro-F1 by language " + " ".join(
            f"{language}={values['macro_f1']:.3f}({values['n']})"
            for language, values in languages.items()
        )
    return line


def render_summary(report: Mapping[str, Any]) -> str:
    """A readable text summary of a training run report."""
    lines = [f"training run {report.get('run_id', '?')}: {report.get('decision', '?')}"]
    if report.get("reason"):
        lines.append(f"  reason: {report['reason']}")
    for split, by_model in report.get("evaluation", {}).items():
        for model, metrics in by_model.items():
            lines.append("  " + summary_line(f"{split} / {model}", metrics))
    traffic = report.get("traffic_guard") or {}
    if traffic.get("unavailable"):
        lines.append(f"  recent traffic: no guard ({traffic['unavailable']})")
    for language, values in traffic.get("languages", {}).items():
        lines.append(
            f"  recent traffic {language}: {values['changed']} of {values['rows']} answers "
            f"changed ({100 * values['changed_share']:.1f}%; corrections asked to change "
            f"{100 * values['corrected_share']:.1f}%)"
        )
    counts = report.get("dataset", {}).get("counts", {})
    if counts:
        lines.append("  data: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    dropped = report.get("dataset", {}).get("dropped", {})
    if dropped:
        lines.append("  dropped: " + ", ".join(f"{k}={v}" for k, v in dropped.items()))
    return "\n".join(lines)


def plot_evaluation(metrics: Mapping[str, Any], title: str, path: Path) -> None:
    """Confusion matrix and reliability diagram side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = metrics["labels"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    matrix = metrics["confusion_matrix"]
    left.imshow(matrix, cmap="Blues")
    left.set_xticks(range(len(labels)), labels)
    left.set_yticks(range(len(labels)), labels)
    left.set_xlabel("predicted")
    left.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            color = "white" if value > peak / 2 else "black"
            left.text(j, i, str(value), ha="center", va="center", color=color)
    left.set_title(f"confusion (acc {metrics['accuracy']:.3f})")
    bins = metrics["reliability"]
    right.plot([0, 1], [0, 1], linestyle="--", color="grey")
    right.bar(
        [(b["low"] + b["high"]) / 2 for b in bins],
        [b["accuracy"] for b in bins],
        width=1 / ECE_BINS,
        edgecolor="black",
        alpha=0.7,
    )
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_xlabel("confidence")
    right.set_ylabel("accuracy")
    right.set_title(f"reliability (ECE {metrics['ece']:.3f})")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)

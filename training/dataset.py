"""Turns base data plus logged feedback into train / validation / holdout sets.

Rules:

* A correction gives its corrected label; ``verdict=correct`` confirms the
  predicted label; ``verdict=incorrect`` without a label is excluded (counted).
  Feedback whose text was not stored (``text_storage=none``) is excluded.
* Feedback on the same normalized text that disagrees is resolved by the
  conflict policy: ``latest`` (default) keeps the newest, ``majority`` the most
  frequent label (ties: newest), ``drop`` drops the text.
* Deduplication by normalized text: feedback overrides base data; the first of
  duplicate base rows is kept.
* Splits are fixed by a hash of the normalized text, so a text stays in the same
  split as data grows: the **holdout** (or a holdout file the user gives) and the
  **feedback holdout** are never trained on; validation (base and feedback rows)
  drives early stopping and the temperature.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.buckets import stable_bucket
from model.labels import LABELS, normalize_label
from training.config import AssemblyConfig
from training.examples import Example


@dataclass
class AssemblyReport:
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AssembledDataset:
    train: list[Example]
    validation: list[Example]
    holdout: list[Example]
    feedback_holdout: list[Example]
    report: AssemblyReport
    data_sha256: str


def _created_at(row: Mapping[str, Any]) -> datetime:
    value = row.get("feedback_created_at")
    if isinstance(value, datetime):
        moment = value
    elif value:
        moment = datetime.fromisoformat(str(value))
    else:
        moment = datetime.min
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def feedback_examples(
    rows: Iterable[Mapping[str, Any]], config: AssemblyConfig, report: AssemblyReport
) -> list[Example]:
    """One example per normalized text from exported feedback rows."""
    by_text: dict[str, list[tuple[datetime, str, str]]] = defaultdict(list)
    for row in rows:
        if row.get("effective_label") is None:
            report.drop("feedback_incorrect_without_label")
            continue
        text = row.get("text")
        if not text:
            report.drop("feedback_text_not_stored")
            continue
        example = Example(text=str(text), label=normalize_label(row["effective_label"]))
        by_text[example.key].append((_created_at(row), example.text, example.label))
    examples = []
    for entries in by_text.values():
        entries.sort(key=lambda entry: entry[0])
        newest_at, newest_text, newest_label = entries[-1]
        labels = {label for _, _, label in entries}
        chosen = newest_label
        if len(labels) > 1:
            if config.conflict_policy == "drop":
                report.drop("feedback_conflict_dropped", len(entries))
                continue
            if config.conflict_policy == "majority":
                tally = Counter(label for _, _, label in entries)
                top = max(tally.values())
                chosen = next(label for _, _, label in reversed(entries) if tally[label] == top)
        if len(entries) > 1:
            report.drop("feedback_superseded", len(entries) - 1)
        examples.append(
            Example(
                text=newest_text,
                label=chosen,  # type: ignore[arg-type]
                source="feedback",
                weight=config.feedback_weight,
                created_at=newest_at,
            )
        )
    return examples


def _digest(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in sorted(examples, key=lambda e: (e.key, e.label, e.weight)):
        digest.update(f"{example.key}\t{example.label}\t{example.weight}\n".encode())
    return digest.hexdigest()


def assemble(
    base: Sequence[Example],
    feedback_rows: Iterable[Mapping[str, Any]],
    config: AssemblyConfig,
    *,
    holdout: Sequence[Example] | None = None,
) -> AssembledDataset:
    report = AssemblyReport()
    from_feedback = feedback_examples(feedback_rows, config, report)
    feedback_keys = {example.key for example in from_feedback}

    base_by_key: dict[str, Example] = {}
    for example in base:
        if example.key in feedback_keys:
            report.drop("base_overridden_by_feedback")
        elif example.key in base_by_key:
            report.drop("base_duplicate")
        else:
            base_by_key[example.key] = example
    unique_base = list(base_by_key.values())
    if config.max_base_examples is not None:
        unique_base.sort(key=lambda e: stable_bucket(e.key, "sample"))
        report.drop("base_over_limit", max(0, len(unique_base) - config.max_base_examples))
        unique_base = unique_base[: config.max_base_examples]

    fixed_holdout: list[Example] = []
    if holdout is not None:
        seen: set[str] = set()
        for example in holdout:
            if example.key not in seen:
                seen.add(example.key)
                fixed_holdout.append(example)
    holdout_keys = {example.key for example in fixed_holdout}

    train: list[Example] = []
    validation: list[Example] = []
    feedback_holdout: list[Example] = []
    for example in from_feedback:
        if example.key in holdout_keys:
            report.drop("feedback_in_holdout")
        elif stable_bucket(example.key, "feedback-holdout") < config.feedback_holdout_fraction:
            feedback_holdout.append(example)
        elif stable_bucket(example.key, "split") >= 1 - config.validation_fraction:
            # Early stopping and the temperature need rows a team has even without base
            # data: with feedback alone the validation split was empty, so the last epoch
            # was kept and the temperature was never fitted (issue 20).
            validation.append(example)
        else:
            train.append(example)
    for example in unique_base:
        if example.key in holdout_keys:
            report.drop("base_in_holdout")
            continue
        bucket = stable_bucket(example.key, "split")
        if holdout is None and bucket < config.holdout_fraction:
            fixed_holdout.append(example)
        elif bucket >= 1 - config.validation_fraction:
            validation.append(example)
        else:
            train.append(example)
    feedback_holdout.sort(key=lambda e: e.created_at or datetime.min.replace(tzinfo=UTC))

    report.counts = {
        "base_rows": len(base),
        "feedback_examples": len(from_feedback),
        "train": len(train),
        "train_from_feedback": sum(e.source == "feedback" for e in train),
        "validation": len(validation),
        "validation_from_feedback": sum(e.source == "feedback" for e in validation),
        "holdout": len(fixed_holdout),
        "feedback_holdout": len(feedback_holdout),
    }
    return AssembledDataset(
        train=train,
        validation=validation,
        holdout=fixed_holdout,
        feedback_holdout=feedback_holdout,
        report=report,
        data_sha256=_digest(train),
    )


class DatasetTooSmall(ValueError):
    """Too little data to train on, found before any training starts."""


def check_trainable(dataset: AssembledDataset, config: AssemblyConfig) -> None:
    """Refuse a dataset on which no model can be trained and compared: fewer than two
    labels with ``config.min_examples_per_class`` training rows each."""
    per_class = Counter(example.label for example in dataset.train)
    enough = [label for label in LABELS if per_class[label] >= config.min_examples_per_class]
    if len(enough) >= 2:
        return
    per_label = ", ".join(f"{label} {per_class[label]}" for label in LABELS)
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(dataset.report.dropped.items()))
    after = f" after drops ({dropped})" if dropped else ""
    counts = dataset.report.counts
    raise DatasetTooSmall(
        f"too little data to train: {len(dataset.train)} training rows ({per_label}){after}, "
        f"of {counts['base_rows']} base rows and {counts['feedback_examples']} feedback "
        "examples; at "
        f"least {config.min_examples_per_class} rows for each of two labels are needed "
        "(--min-examples-per-class)"
    )

"""The settings of a training run, as dataclasses that validate themselves: how
the dataset is assembled, how the encoder is fine-tuned, how the gate decides,
when the schedule retrains. Light to import: the command line takes its
defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ConflictPolicy = Literal["latest", "majority", "drop"]
Metric = Literal["macro_f1", "accuracy"]
Recipe = Literal["correction", "fine-tune"]

DEFAULT_FULL_LEARNING_RATE = 5e-5
DEFAULT_LORA_LEARNING_RATE = 5e-4


@dataclass(frozen=True)
class AssemblyConfig:
    holdout_fraction: float = 0.1
    feedback_holdout_fraction: float = 0.2
    validation_fraction: float = 0.05
    feedback_weight: float = 2.0
    conflict_policy: ConflictPolicy = "latest"
    max_base_examples: int | None = None
    # Refuse to train unless at least two labels have this many training rows.
    min_examples_per_class: int = 8
    # Rehearsal (``training.rehearsal``): up to this many logged texts without feedback
    # per training feedback row, labelled softly by the champion, so that retraining
    # from the champion keeps what it knows (0: none).
    rehearsal_ratio: float = 1.0
    # At most this many rehearsal rows (a cap on the retraining time).
    max_rehearsal_rows: int = 2000
    # The weight of a rehearsal row (a feedback row weighs ``feedback_weight``).
    rehearsal_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.min_examples_per_class < 1:
            raise ValueError(
                f"min_examples_per_class must be at least 1, got {self.min_examples_per_class}"
            )
        for name in ("holdout_fraction", "feedback_holdout_fraction", "validation_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.holdout_fraction + self.validation_fraction >= 1:
            raise ValueError("holdout_fraction + validation_fraction must be below 1")
        if self.feedback_weight <= 0:
            raise ValueError(f"feedback_weight must be positive, got {self.feedback_weight}")
        if self.rehearsal_ratio < 0:
            raise ValueError(f"rehearsal_ratio must be at least 0, got {self.rehearsal_ratio}")
        if self.max_rehearsal_rows < 0:
            raise ValueError(
                f"max_rehearsal_rows must be at least 0, got {self.max_rehearsal_rows}"
            )
        if self.rehearsal_weight <= 0:
            raise ValueError(f"rehearsal_weight must be positive, got {self.rehearsal_weight}")
        if self.conflict_policy not in ("latest", "majority", "drop"):
            raise ValueError(
                f"conflict_policy must be latest, majority or drop, got {self.conflict_policy!r}"
            )


@dataclass(frozen=True)
class TrainingArguments:
    # How a fine-tuned champion learns from feedback. "correction" (the default,
    # ``training.correction``): the champion's weights stay; a small correction
    # applies what the feedback taught to texts like those it came from, and nothing
    # else changes (a domain's feedback cost 13-31 points elsewhere with "fine-tune").
    # "fine-tune": the encoder is trained (a LoRA adapter or every weight, below).
    # Training from the base encoder (no fine-tuned champion, or start_from "base")
    # always fine-tunes.
    recipe: Recipe = "correction"
    epochs: int = 2
    batch_size: int = 32
    # None: ``DEFAULT_LORA_LEARNING_RATE`` for a LoRA adapter, ``DEFAULT_FULL_LEARNING_RATE``
    # for full fine-tuning (an adapter starts at zero and needs a larger step).
    learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 64
    patience: int = 1
    seed: int = 13
    max_grad_norm: float = 1.0
    torch_threads: int | None = None
    progress: bool = True
    # Keep the vocabulary embeddings as they are (most of a multilingual model's
    # weights: training is faster, needs less memory, and keeps the rows of words
    # the training data never shows).
    freeze_embeddings: bool = True
    # Train a LoRA adapter of this rank on every encoder linear layer (with the
    # pooler and head trained fully) instead of every weight; None: full fine-tuning.
    # The default: with rehearsal and class balance, a model retrained on one domain's
    # feedback lost 0.6 to 9 points less on the other sets than with every weight
    # trained, and is stored as a 3.3 MB delta on its parent instead of 488 MB
    # (README "Training loop", bench/results/flywheel-domain.json).
    lora_rank: int | None = 8
    # Weigh each labelled row by the inverse frequency of its label, so that a label
    # rare in the feedback (often "neutral") cannot collapse.
    class_balance: bool = True
    # Fit a softmax temperature on the validation split and fold it into the head.
    calibrate: bool = True
    # Where to train: "cpu", "cuda", "cuda:1"...; None: a CUDA GPU when there is one.
    device: str | None = None

    def __post_init__(self) -> None:
        if self.recipe not in ("correction", "fine-tune"):
            raise ValueError(f"recipe must be correction or fine-tune, got {self.recipe!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 8 <= self.max_length <= 512:
            raise ValueError(f"max_length must be in [8, 512], got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1, got {self.lora_rank}")

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        if self.lora_rank is None:
            return DEFAULT_FULL_LEARNING_RATE
        return DEFAULT_LORA_LEARNING_RATE


@dataclass(frozen=True)
class GateConfig:
    """``training.gate``: the feedback holdout is primary from ``min_feedback_rows``
    rows on, judged with a paired test of ``metric`` at ``significance``; the base
    holdout is then a guard that may lose at most ``base_tolerance`` of ``metric``, and
    of accuracy on each language with ``min_language_rows`` rows in it; each such
    language of the feedback holdout may lose at most ``base_tolerance`` of ``metric``;
    on up to ``traffic_rows_per_language`` recent answers per language (of the last
    ``traffic_days`` days, outside the feedback) the candidate may change at most
    ``flip_tolerance`` more of the answers than the corrections asked to change.
    ``general_guard``: without a base holdout, the general guard set shipped with the
    model (``model.shipped.GENERAL_GUARD``) is one, judged per language with a noise
    allowance (``training.gate.general_guard_losses``)."""

    metric: Metric = "macro_f1"
    significance: float = 0.05
    min_feedback_rows: int = 50
    base_tolerance: float = 0.02
    min_language_rows: int = 50
    flip_tolerance: float = 0.10
    traffic_days: float = 30.0
    traffic_rows_per_language: int = 300
    general_guard: bool = True

    def __post_init__(self) -> None:
        if self.metric not in ("macro_f1", "accuracy"):
            raise ValueError(f"metric must be macro_f1 or accuracy, got {self.metric!r}")
        if not 0 < self.significance <= 1:
            raise ValueError(f"significance must be in (0, 1], got {self.significance}")
        if self.min_feedback_rows < 1:
            raise ValueError("min_feedback_rows must be at least 1")
        if self.min_language_rows < 1:
            raise ValueError("min_language_rows must be at least 1")
        if not 0 <= self.base_tolerance <= 1:
            raise ValueError(f"base_tolerance must be in [0, 1], got {self.base_tolerance}")
        if not 0 <= self.flip_tolerance <= 1:
            raise ValueError(f"flip_tolerance must be in [0, 1], got {self.flip_tolerance}")
        if self.traffic_days <= 0:
            raise ValueError(f"traffic_days must be positive, got {self.traffic_days}")
        if self.traffic_rows_per_language < 0:
            raise ValueError(
                f"traffic_rows_per_language must be at least 0 (0: no traffic guard), "
                f"got {self.traffic_rows_per_language}"
            )


@dataclass(frozen=True)
class Schedule:
    min_new_feedback: int = 200
    interval_s: float = 24 * 3600.0
    poll_s: float = 60.0

    def __post_init__(self) -> None:
        if self.min_new_feedback < 1:
            raise ValueError("min_new_feedback must be at least 1")
        if self.interval_s <= 0 or self.poll_s <= 0:
            raise ValueError("interval_s and poll_s must be positive")

"""The settings of a training run, as dataclasses that validate themselves: how
the dataset is assembled, how the encoder is fine-tuned, how the gate decides,
when the schedule retrains. Light to import: the command line takes its
defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ConflictPolicy = Literal["latest", "majority", "drop"]
Metric = Literal["macro_f1", "accuracy"]


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
        if self.conflict_policy not in ("latest", "majority", "drop"):
            raise ValueError(
                f"conflict_policy must be latest, majority or drop, got {self.conflict_policy!r}"
            )


@dataclass(frozen=True)
class TrainingArguments:
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 5e-5
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
    lora_rank: int | None = None
    # Fit a softmax temperature on the validation split and fold it into the head.
    calibrate: bool = True
    # Where to train: "cpu", "cuda", "cuda:1"...; None: a CUDA GPU when there is one.
    device: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 8 <= self.max_length <= 512:
            raise ValueError(f"max_length must be in [8, 512], got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1, got {self.lora_rank}")


@dataclass(frozen=True)
class GateConfig:
    """``training.gate``: the feedback holdout is primary from ``min_feedback_rows``
    rows on, judged with a paired test at ``significance``; the base holdout is then a
    guard that may lose at most ``base_tolerance`` of ``metric``, and of accuracy on
    each language with ``min_language_rows`` rows in it."""

    metric: Metric = "macro_f1"
    significance: float = 0.05
    min_feedback_rows: int = 50
    base_tolerance: float = 0.02
    min_language_rows: int = 50

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

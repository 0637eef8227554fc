"""The label set, in the order every model's output uses."""

from __future__ import annotations

from typing import Literal

Label = Literal["negative", "neutral", "positive"]
LABELS: tuple[Label, ...] = ("negative", "neutral", "positive")
LABEL_TO_ID: dict[str, int] = {label: index for index, label in enumerate(LABELS)}

# Common spellings in user data, mapped onto the label set.
_ALIASES: dict[str, Label] = {
    "negative": "negative",
    "neg": "negative",
    "0": "negative",
    "neutral": "neutral",
    "neu": "neutral",
    "1": "neutral",
    "positive": "positive",
    "pos": "positive",
    "2": "positive",
}


def normalize_label(value: object) -> Label:
    """Map a label as users write it (name, short name or class id) onto the label set."""
    key = str(value).strip().lower()
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(
            f"unknown label {value!r}; expected one of {', '.join(LABELS)} (or 0/1/2)"
        ) from None


def scores_to_label(scores: dict[str, float]) -> Label:
    return max(LABELS, key=lambda label: scores[label])

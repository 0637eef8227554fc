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


# Label maps for common rating schemes, by name (``--label-map stars5``), shared by
# training's data files and ``sentiloop feedback import``.
LABEL_MAP_PRESETS: dict[str, dict[str, Label]] = {
    "stars5": {"1": "negative", "2": "negative", "3": "neutral", "4": "positive", "5": "positive"},
    "binary": {"0": "negative", "1": "positive"},
}
LABEL_MAP_HELP = "stars5 (1-2 negative, 3 neutral, 4-5 positive), binary (0 negative, 1 positive)"


class LabelMapError(ValueError):
    """A ``--label-map`` that cannot be read."""


def parse_label_map(spec: str | None) -> dict[str, Label] | None:
    """A preset name (``stars5``, ``binary``) or ``"0=negative,1=positive"`` as a map."""
    if not spec:
        return None
    if spec.strip() in LABEL_MAP_PRESETS:
        return dict(LABEL_MAP_PRESETS[spec.strip()])
    mapping: dict[str, Label] = {}
    for pair in spec.split(","):
        raw, _, label = pair.partition("=")
        if not label:
            raise LabelMapError(
                f"--label-map entry {pair!r} must look like RAW=LABEL, or name a preset: "
                f"{LABEL_MAP_HELP}"
            )
        try:
            mapping[raw.strip()] = normalize_label(label)
        except ValueError as error:
            raise LabelMapError(f"--label-map entry {pair!r}: {error}") from None
    return mapping


def scores_to_label(scores: dict[str, float]) -> Label:
    return max(LABELS, key=lambda label: scores[label])

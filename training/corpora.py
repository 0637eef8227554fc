"""Readers of the public sentiment corpora the shipped model is trained and
measured on (``../shared/data`` in this workplace; never part of the project):

* ``tweet_sentiment_extraction``: English tweets, 3 classes (JSONL, ``label``);
* ``sst2``: English movie-review sentences, binary (TSV, 0 negative, 1 positive);
* ``xlmt_multilingual``: XLM-T tweets, 3 classes, one folder per language
  (``<split>_text.txt`` / ``<split>_labels.txt``, 0 negative, 1 neutral, 2 positive).
"""

from __future__ import annotations

import codecs
from pathlib import Path

from model.labels import LABELS
from training.examples import LABEL_MAP_PRESETS, Example, load_examples

XLMT_LANGUAGES = {"en": "english", "fr": "french", "de": "german", "es": "spanish"}


def tweets(data: Path, split: str) -> list[Example]:
    return load_examples(data / "tweet_sentiment_extraction" / f"{split}.jsonl").examples


def sst2(data: Path, split: str) -> list[Example]:
    path = data / "sst2" / f"{split}.tsv"
    return load_examples(path, label_map=LABEL_MAP_PRESETS["binary"]).examples


def xlmt(data: Path, language: str, split: str) -> list[Example]:
    """``language``: an ISO 639-1 code of ``XLMT_LANGUAGES``."""
    folder = data / "xlmt_multilingual" / XLMT_LANGUAGES[language]
    texts = (folder / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
    labels = (folder / f"{split}_labels.txt").read_text(encoding="utf-8").splitlines()
    examples = []
    for text, label in zip(texts, labels, strict=True):
        # The files escape some characters Python-style ("\u2019").
        decoded = codecs.decode(text, "unicode_escape") if "\\u" in text else text
        if decoded.strip():
            examples.append(Example(text=decoded, label=LABELS[int(label.strip())]))
    return examples

"""The normalized form of a text, shared by the prediction log and training dedup."""

from __future__ import annotations

import hashlib


def normalize_text(text: str) -> str:
    """Whitespace-collapsed, lower-cased text: the deduplication key."""
    return " ".join(text.split()).lower()


def text_sha256(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()

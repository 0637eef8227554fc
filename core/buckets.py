"""Deterministic buckets: a key and a salt always land on the same number in [0, 1).

Training splits by the text's bucket (a text stays in its split as data grows);
the A/B router sends a routing key to the arm its bucket falls in (sticky).
"""

from __future__ import annotations

import hashlib


def stable_bucket(key: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``key`` alone (SHA-256)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64

from __future__ import annotations

import time
import uuid

from storage import time_ordered_id


def test_ids_are_version_7_uuids_with_the_creation_time_in_front() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = uuid.UUID(time_ordered_id())
    after_ms = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before_ms <= value.int >> 80 <= after_ms


def test_ids_made_apart_sort_in_creation_order_and_never_repeat() -> None:
    made = []
    for _ in range(20):
        made.append(time_ordered_id())
        time.sleep(0.002)
    assert made == sorted(made)
    many = [time_ordered_id() for _ in range(20_000)]
    assert len(set(many)) == len(many)

"""CRM signals read as feedback: a satisfaction rating, a tag or field an agent set.

Opt-in, per connector (``SENTILOOP_WEBHOOK_FEEDBACK``): each ``FeedbackRule`` names
an event type, where its value is (JSONPath) and which values mean which label. A
connector asks its reader about every event before reading it as a text to score;
an event a rule maps becomes a ``FeedbackEvent``, any other is read as before. The
feedback is stored in the inbox as a text is, as a row of kind ``feedback`` with its
label and the CRM's value (``signal``) in columns of their own (``storage.inbox``),
and applied by the inbox worker through ``POST /v1/feedback``'s path
(``service.http.inbox``), by ticket id.

A list value (the tags an agent added) gives the one label its mapped items agree
on; items mapping to different labels (``sentiment_negative`` and
``sentiment_positive`` added at once) say nothing, and the event is read as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors import jsonpath
from connectors.events import FeedbackEvent
from connectors.fields import identifier
from core.settings import FeedbackRule


def _named(path: str, where: str) -> str:
    """A path as errors name it: ``$.objectId`` of the third event is ``[2].objectId``."""
    return path.replace("$", where, 1) if where else path


def _signals(value: Any) -> list[str]:
    """The value's items as text: a string or a number, or a list of them."""
    items = value if isinstance(value, list) else [value]
    return [
        str(item).strip()
        for item in items
        if isinstance(item, str | int | float) and not isinstance(item, bool)
    ]


class FeedbackReader:
    """A connector's feedback rules; ``external_id``: the JSONPath of the ticket id in
    the connector's events, for rules that name none."""

    def __init__(self, connector: str, rules: Sequence[FeedbackRule], *, external_id: str) -> None:
        self._rules: dict[str, list[FeedbackRule]] = {}
        for index, rule in enumerate(rules):
            for field in ("value", "external_id", "author"):
                path = getattr(rule, field)
                if path is None:
                    continue
                try:  # a bad path fails at start, not on the first delivery
                    jsonpath.parse(path)
                except jsonpath.JsonPathError as exc:
                    raise ValueError(
                        f"SENTILOOP_WEBHOOK_FEEDBACK.{connector}[{index}].{field}: {exc}"
                    ) from exc
            self._rules.setdefault(rule.event_type, []).append(rule)
        self._external_id = external_id

    def read(
        self, *, event_id: str, event_type: str, document: Any, where: str = ""
    ) -> FeedbackEvent | None:
        """The event as feedback, or None when no rule maps it. ``where`` prefixes the
        paths named in errors (``[2]`` for the third event of a HubSpot delivery)."""
        for rule in self._rules.get(event_type, ()):
            signals = _signals(jsonpath.select(document, rule.value))
            mapped = {
                signal: rule.labels[signal.casefold()]
                for signal in signals
                if signal.casefold() in rule.labels
            }
            if len(set(mapped.values())) != 1:
                continue  # nothing mapped, or items that disagree
            [(signal, label), *_] = mapped.items()
            path = rule.external_id or self._external_id
            external_id = identifier(jsonpath.select(document, path), _named(path, where))
            assert external_id is not None
            author = None
            if rule.author is not None:
                author = identifier(
                    jsonpath.select(document, rule.author),
                    _named(rule.author, where),
                    required=False,
                )
            return FeedbackEvent(
                event_id=event_id,
                event_type=event_type,
                external_id=external_id,
                label=label,
                signal=signal,
                author=author,
                where={
                    "external_id": _named(path, where),
                    "signal": _named(rule.value, where),
                },
            )
        return None

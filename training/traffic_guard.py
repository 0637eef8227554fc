"""The traffic guard's measurement: how many of the champion's answers on recent
traffic a candidate would change, per language, beside the share of answers the
corrections asked to change there (the gate judges it: ``training.gate``).

Why: a team that retrains from feedback alone has no base holdout, so nothing
labelled shows what the candidate forgot. Its own logged traffic does: texts the
service scored in the last ``traffic_days`` days that got no feedback. Both
models answer them on the serving runtime (``model.loader``); where the candidate
changes far more answers than the corrections asked to change in that language,
it learned more than it was taught. In the run of issue 20 (English review
corrections) French macro-F1 fell 13 points although nobody corrected French.

The texts are those the service stored (redacted by default, which leaves their
sentiment alone); with ``SENTILOOP_TEXT_STORAGE=none`` there are none and the
run's reason says there is no traffic guard. Texts the candidate trained on
(labelled or rehearsal rows) or that a holdout holds are left out, so that the
candidate is judged on answers it never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from model.classifiers import Classifier
from model.labels import LABELS
from model.templates import PromptTemplate
from model.text_keys import normalize_text
from storage import stats
from training.config import GateConfig
from training.gate import LanguageTraffic, TrafficComparison

logger = logging.getLogger(__name__)

# Languages compared at most (the most frequent in the window): a bound on the time.
MAX_LANGUAGES = 12
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def answers(classifier: Classifier, template: PromptTemplate, texts: Sequence[str]) -> list[str]:
    """The label ``classifier`` answers for each text."""
    scores = classifier.predict([template.render(text) for text in texts], template)
    return [max(LABELS, key=lambda label: row[label]) for row in scores]


def compare_on_traffic(
    *,
    sessions: sessionmaker[Session],
    candidate: Classifier,
    champion: Classifier,
    template: PromptTemplate,
    until: datetime,
    exclude: Collection[str],
    config: GateConfig,
    text_storage: str,
) -> TrafficComparison:
    """Candidate and champion on recent traffic outside the feedback, per language.
    ``exclude``: normalized texts left out (trained on, or in a holdout)."""
    if config.traffic_rows_per_language == 0:
        return TrafficComparison(unavailable="turned off (traffic_rows_per_language = 0)")
    since = until - timedelta(days=config.traffic_days)
    with sessions() as session:
        # Twice the sample: room for the texts left out and the duplicates.
        logged = stats.unjudged_texts_by_language(
            session=session,
            since=since,
            until=until,
            per_language=2 * config.traffic_rows_per_language,
            languages=MAX_LANGUAGES,
        )
        feedback = stats.feedback_agreement_by_language(session=session, since=_EPOCH)
    corrected = {code or "und": (judged, judged - agreeing) for code, judged, agreeing in feedback}
    excluded = {"trained_or_held_out": 0, "duplicate": 0}
    sample: dict[str, list[str]] = {}
    for language, texts in logged.items():
        seen: set[str] = set()
        for text in texts:
            key = normalize_text(text)
            if key in exclude:
                excluded["trained_or_held_out"] += 1
            elif key in seen:
                excluded["duplicate"] += 1
            elif len(seen) < config.traffic_rows_per_language:
                seen.add(key)
                sample.setdefault(language, []).append(text)
    if not sample:
        why = (
            f"no prediction of the last {config.traffic_days:g} days without feedback has a "
            "stored text"
        )
        if text_storage == "none":
            why = (
                "text storage is off (SENTILOOP_TEXT_STORAGE=none), so there are no recent "
                "texts to compare the answers on"
            )
        return TrafficComparison(
            window_days=config.traffic_days, unavailable=why, excluded=excluded
        )
    texts = [text for rows in sample.values() for text in rows]
    new, old = answers(candidate, template, texts), answers(champion, template, texts)
    languages = []
    start = 0
    for language, rows in sample.items():
        changed = sum(1 for i in range(start, start + len(rows)) if new[i] != old[i])
        start += len(rows)
        judged, corrections = corrected.get(language, (0, 0))
        languages.append(LanguageTraffic(language, len(rows), changed, judged, corrections))
    logger.info(
        "traffic guard: %s",
        ", ".join(f"{item.language} {item.changed}/{item.rows} changed" for item in languages),
    )
    return TrafficComparison(
        languages=tuple(languages), window_days=config.traffic_days, excluded=excluded
    )

"""The traffic guard's sample (``training.traffic_guard.compare_on_traffic``) over a
real SQLite file and a real PostgreSQL database: the candidate is judged only on
recent texts it never saw (not trained on, not in a holdout), each text once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

import storage
from core.settings import packaged_templates_dir
from model.classifiers import Scores
from model.templates import PromptTemplate, TemplateRegistry
from model.text_keys import normalize_text
from tests.integration.test_store import insert, make_prediction
from training.config import GateConfig
from training.gate import TrafficComparison
from training.traffic_guard import compare_on_traffic


class Rule:
    """A classifier by rule: negative where the text holds ``word``, else positive."""

    kind, runtime = "rule", "python"

    def __init__(self, word: str) -> None:
        self.version = f"rule:{word}"
        self.word = word
        self.seen: list[str] = []

    def predict(
        self, rendered: Sequence[str], template: PromptTemplate, *, alone: bool = False
    ) -> list[Scores]:
        self.seen += rendered
        return [
            {"negative": 0.8, "neutral": 0.1, "positive": 0.1}
            if self.word in text
            else {"negative": 0.1, "neutral": 0.1, "positive": 0.8}
            for text in rendered
        ]


def test_texts_trained_on_or_held_out_and_repeats_are_left_out_of_the_traffic_guard(
    sessions: sessionmaker[Session],
) -> None:
    now = datetime.now(UTC)

    def logged(text: str, language: str) -> storage.PredictionRecord:
        record = make_prediction(created_at=now - timedelta(minutes=1))
        return replace(record, text=text, language=language)

    # French: 4 unseen texts, 2 the candidate trained on (in other case and spacing),
    # one unseen text twice. German: 3 unseen texts.
    french = [f"colis {n} arrivé" for n in range(4)] + ["COLIS  en retard", "colis perdu"]
    french += ["colis 0 arrivé"]
    german = [f"paket {n} kam an" for n in range(3)]
    insert(sessions, *[logged(text, "fr") for text in french])
    insert(sessions, *[logged(text, "de") for text in german])
    trained = {normalize_text(text) for text in ("colis en retard", "colis perdu")}
    template = TemplateRegistry.load(packaged_templates_dir()).get("v1")
    # The candidate answers differently wherever a text holds "retard", "perdu" or "1":
    # only the unseen text with "1" may count as a change.
    candidate, champion = Rule("1"), Rule("nothing")
    candidate_on_excluded = Rule("retard")

    def guard(candidate: Rule, exclude: set[str]) -> TrafficComparison:
        return compare_on_traffic(
            sessions=sessions, candidate=candidate, champion=champion, template=template,
            until=now, exclude=exclude, config=GateConfig(traffic_rows_per_language=10),
            text_storage="raw",
        )  # fmt: skip

    traffic = guard(candidate, trained)
    assert traffic.excluded == {"trained_or_held_out": 2, "duplicate": 1}
    rows = {item.language: (item.rows, item.changed) for item in traffic.languages}
    assert rows == {"fr": (4, 1), "de": (3, 1)}
    assert not any("retard" in text or "perdu" in text for text in candidate.seen)

    # The same traffic without the exclusion: the trained-on texts are compared too.
    unguarded = guard(candidate_on_excluded, set())
    assert unguarded.excluded == {"trained_or_held_out": 0, "duplicate": 1}
    assert {item.language: item.changed for item in unguarded.languages} == {"fr": 1, "de": 0}

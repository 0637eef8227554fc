"""The typed client (sentiloop.client) against a real server: the shared A/B server
(SQLite, authentication off); with keys: tests/e2e/test_security.py. Retries against
scripted failures: tests/unit/test_client.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from sentiloop.cli import app
from sentiloop.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    FeedbackItem,
    NotFound,
    Prediction,
)
from tests.support import ROOT, ServerProcess

pytestmark = pytest.mark.slow


def test_predict_one_and_many_return_typed_predictions(ab_server: ServerProcess) -> None:
    with Client(ab_server.url) as client:
        one = client.predict_one("The parcel arrived broken.", external_id="C-1", source="crm")
        assert isinstance(one, Prediction) and one.external_id == "C-1"
        assert one.label in one.scores and one.template_version in ("v1", "v2")
        # 300 texts: two requests (256 + 44), in order, each text matched by its id.
        ids = [f"C-many-{i}" for i in range(300)]
        many = list(client.predict_many((f"ticket {i} is fine" for i in range(300)),
                                        external_ids=ids, routing_key="customer-7"))  # fmt: skip
    assert [p.external_id for p in many] == ids
    assert len({p.prediction_id for p in many}) == 300
    assert len({p.template_version for p in many}) == 1  # one routing key, one arm


def test_feedback_typed_results_and_errors(ab_server: ServerProcess) -> None:
    key = f"client-{uuid.uuid4()}"
    with Client(ab_server.url) as client:
        prediction = client.predict_one("Nobody answers my emails.")
        stored = client.feedback(prediction.prediction_id, label="neu", idempotency_key=key)
        assert stored.effective_label == "neutral" and not stored.replayed
        again = client.feedback(prediction.prediction_id, label="neu", idempotency_key=key)
        assert again.replayed and again.feedback_id == stored.feedback_id
        with pytest.raises(Conflict) as conflict:
            client.feedback(prediction.prediction_id, label="positive", idempotency_key=key)
        assert conflict.value.field == "idempotency_key"
        with pytest.raises(BadRequest) as bad:
            client.feedback(prediction.prediction_id, label="mixed")
        assert bad.value.field == "label" and "mixed" in bad.value.message
        with pytest.raises(NotFound) as unknown:
            client.feedback("00000000-0000-0000-0000-000000000000", verdict="correct")
        assert unknown.value.field == "prediction_id"
        with pytest.raises(BadRequest) as too_long:
            client.predict(["ok", "x" * 5001])
        assert too_long.value.field == "texts.1"


def test_feedback_many_and_the_export(ab_server: ServerProcess) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    with Client(ab_server.url) as client:
        predictions = client.predict([f"batch text {i}" for i in range(3)])
        items: list[FeedbackItem | dict[str, str]] = [
            FeedbackItem(prediction_id=predictions[0].prediction_id, verdict="correct"),
            {"prediction_id": predictions[1].prediction_id, "label": "mixed"},
            FeedbackItem(prediction_id=predictions[2].prediction_id, label="positive"),
        ]
        result = client.feedback_many(items, batch_size=2)
        assert [(r.index, r.status, r.field) for r in result.results] == [
            (0, 201, None), (1, 400, "label"), (2, 201, None)
        ]  # fmt: skip
        assert (result.stored, result.failed) == (2, 1)
        rows = [row for row in client.export_feedback(since=since)
                if row.prediction_id in {p.prediction_id for p in predictions}]  # fmt: skip
        assert sorted((row.prediction_id, row.kind) for row in rows) == sorted(
            [(predictions[0].prediction_id, "verdict"), (predictions[2].prediction_id, "label")]
        )
        models = client.models()
        assert {arm["template_version"] for arm in models.traffic_split} == {"v1", "v2"}


def test_the_async_client(ab_server: ServerProcess) -> None:
    async def scenario() -> tuple[list[Prediction], str, list[str]]:
        since = datetime.now(UTC) - timedelta(seconds=1)
        async with AsyncClient(ab_server.url) as client:
            predictions = [
                p async for p in client.predict_many(["a fine day", "awful"], chunk_size=1)
            ]
            stored = await client.feedback(predictions[1].prediction_id, label="negative")
            exported = [row.feedback_id async for row in client.export_feedback(since=since)]
            return predictions, stored.feedback_id, exported

    predictions, feedback_id, exported = asyncio.run(scenario())
    assert len(predictions) == 2 and feedback_id in exported


def test_the_cli_predicts_through_the_client(
    ab_server: ServerProcess,
) -> None:
    result = CliRunner().invoke(app, ["predict", "Great service!", "--url", ab_server.url])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["label"] in ("negative", "neutral", "positive") and "prediction_id" in line
    bad = CliRunner().invoke(app, ["predict", "x" * 5001, "--url", ab_server.url])
    assert bad.exit_code == 2 and "400 (texts.0)" in bad.stderr


def test_the_readme_python_examples_run(ab_server: ServerProcess) -> None:
    """The API section's Python examples, run in order against a real server (the
    names they leave to the reader given here)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The API") : readme.index("## Security")]
    examples = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(examples) == 3
    names = {
        "texts": ["Arrived broken.", "Thanks, all good!"],
        "ticket_ids": ["T-readme-1", "T-readme-2"],
        "agent_tags": [("T-readme-1", "negative"), ("T-readme-2", "bad tag")],
    }
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for example in examples:
            exec(example.replace("http://localhost:3000", ab_server.url), names)
    lines = printed.getvalue().splitlines()
    assert lines[0].split()[0] in ("negative", "neutral", "positive")
    assert lines[1].split()[0] == "neutral"  # the correction's effective label
    assert "1 1 ['label']" in lines  # one stored, one refused: the bad tag's label
    assert any(line.startswith("T-readme-1 ") for line in lines)

"""The deeper feedback loop end to end: a real `bentoml serve` on PostgreSQL with an
A/B split of two template versions; CRM ids on predictions, late labels by ticket id
(one at a time and in batches), the experiments report, concluding from the command
line (the server follows), the review queue, label imports. (The accuracy estimate:
tests/e2e/test_observability.py checks its recording rule and alert against a real
Prometheus; tests/integration/test_shipped_model.py how well it estimates.)"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from sentiloop.cli import app
from tests.e2e.conftest import ONE_MODEL_PROCESS, start_server
from tests.support import ServerProcess, throwaway_postgres, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SPLIT = json.dumps(
    [
        {"template_version": "v1", "model": "zero-shot", "weight": 1},
        {"template_version": "v2", "model": "zero-shot", "weight": 1},
    ]
)


@pytest.fixture(scope="module")
def loop_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("loop-server")
    with throwaway_postgres() as url:
        env = {
            "SENTILOOP_DATABASE_URL": url,
            "SENTILOOP_AUTH": "disabled",  # loopback only (tests/e2e/test_security.py: keys)
            "SENTILOOP_TRAFFIC_SPLIT": SPLIT,
            "SENTILOOP_TEXT_STORAGE": "raw",
            "SENTILOOP_MODEL_POLL_INTERVAL_S": "0.5",
            "SENTILOOP_METRICS_REFRESH_INTERVAL_S": "0.5",
            **ONE_MODEL_PROCESS,
        }
        server = start_server(tmp, env)
        try:
            yield server, {**env, "SENTILOOP_HOME": str(tmp / "home")}
        finally:
            server.stop()


def post(server: ServerProcess, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, list(args))


def test_late_labels_by_ticket_id_one_and_in_batches(
    loop_server: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, _ = loop_server
    body = {"text": "Where is my refund?", "external_id": "T-100", "source": "zendesk"}
    first = post(server, "/v1/predict", body).json()["predictions"][0]
    again = post(server, "/v1/predict", body).json()["predictions"][0]
    response = post(
        server, "/v1/feedback", {"external_id": "T-100", "source": "zendesk", "label": "Negative"}
    )
    assert response.status_code == 201, response.text
    judged = response.json()
    assert judged["prediction_id"] == again["prediction_id"] != first["prediction_id"]
    assert (judged["external_id"], judged["predictions_with_external_id"]) == ("T-100", 2)
    many = post(
        server,
        "/v1/predict",
        {
            "texts": ["great", "bad", "fine"],
            "external_ids": ["T-1", None, "T-3"],
            "source": "zendesk",
        },
    )
    assert many.status_code == 200
    mismatch = post(server, "/v1/predict", {"texts": ["a", "b"], "external_ids": ["T-1"]})
    assert mismatch.status_code == 400 and "external_ids" in mismatch.text
    items = [
        {"external_id": "T-1", "source": "zendesk", "label": 2, "idempotency_key": "csat-1"},
        {"external_id": "T-404", "source": "zendesk", "label": "neutral"},
        {"external_id": "T-3", "label": "bogus"},
        {"external_id": "T-3", "source": "zendesk", "verdict": "correct"},
        {"external_id": "T-1", "source": "zendesk", "label": 2, "idempotency_key": "csat-1"},
        "not an object",  # one such item never drops the others
    ]
    response = post(server, "/v1/feedback/batch", {"items": items})
    assert response.status_code == 200, response.text
    batch = response.json()
    assert [r["status"] for r in batch["results"]] == [201, 404, 400, 201, 200, 400]
    assert (batch["stored"], batch["replayed"], batch["failed"]) == (2, 1, 3)
    assert batch["results"][2]["field"] == "label"
    assert batch["results"][2]["error"].startswith("unknown label 'bogus'")
    assert "JSON object" in batch["results"][5]["error"]
    assert "T-404" in batch["results"][1]["error"]
    too_many = post(server, "/v1/feedback/batch", {"items": [items[0]] * 1001})
    assert too_many.status_code == 400


def test_experiment_report_then_conclude_from_the_command_line(
    loop_server: tuple[ServerProcess, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, env = loop_server
    predictions = []
    for n in range(60):
        response = post(
            server,
            "/v1/predict",
            {"texts": [f"order {n} arrived", f"note {n}"], "routing_key": f"c{n}"},
        )
        predictions += response.json()["predictions"]
    arms = {p["template_version"] for p in predictions}
    assert arms == {"v1", "v2"}
    # v2 is judged right far more often than v1.
    items = [
        {
            "prediction_id": p["prediction_id"],
            "verdict": "correct" if p["template_version"] == "v2" or n % 2 else "incorrect",
        }
        for n, p in enumerate(predictions)
    ]
    assert post(server, "/v1/feedback/batch", {"items": items}).json()["failed"] == 0
    report = httpx.get(f"{server.url}/v1/experiments", timeout=30).json()
    assert report["control"].startswith("v1/")
    [comparison] = report["comparisons"]
    assert comparison["significant"] and comparison["winner"].startswith("v2/")
    assert re.match(r"arm v2/\S+ beats v1/\S+ by \+\d+\.\d points, p = ", comparison["verdict"])
    low, high = next(a for a in report["arms"] if a["template_version"] == "v2")["interval"]
    assert 0 < low < high <= 1
    bad = httpx.get(f"{server.url}/v1/experiments", params={"control": "v9"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["field"] == "control"

    def served_arms() -> set[str]:  # unkeyed: an arm per request
        served = [post(server, "/v1/predict", {"text": f"t{n}"}).json() for n in range(30)]
        return {r["predictions"][0]["template_version"] for r in served}

    # The probe sees the split before the conclusion (30 requests on a 50/50 split
    # all landing on one arm: 2 ** -29), so seeing only v2 afterwards is the conclusion.
    assert served_arms() == {"v1", "v2"}
    printed = cli(env, monkeypatch, "experiments", "report")
    assert printed.exit_code == 0 and "beats" in printed.output
    concluded = cli(env, monkeypatch, "experiments", "conclude", "--actor", "ana@crm")
    assert concluded.exit_code == 0, concluded.output
    assert "default template: v2 (was v1)" in concluded.output

    assert wait_until(lambda: all(served_arms() == {"v2"} for _ in range(2)), timeout_s=20)
    history = cli(env, monkeypatch, "experiments", "history")
    assert "ana@crm" in history.output and "beats" in history.output
    reverted = cli(env, monkeypatch, "experiments", "revert", "--reason", "test over")
    assert reverted.exit_code == 0 and "default template: v1" in reverted.output

    assert wait_until(lambda: served_arms() == {"v1", "v2"}, timeout_s=20)


def test_experiments_started_and_concluded_from_a_shell_without_the_split(
    loop_server: tuple[ServerProcess, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server follows the split the database records: `conclude` from a shell
    without SENTILOOP_TRAFFIC_SPLIT moves its traffic, and `experiments start` from
    such a shell makes it split again, without a restart."""
    server, env = loop_server
    shell = {name: value for name, value in env.items() if name != "SENTILOOP_TRAFFIC_SPLIT"}
    monkeypatch.delenv("SENTILOOP_TRAFFIC_SPLIT", raising=False)

    def served() -> set[str]:
        answers = [post(server, "/v1/predict", {"text": f"t{n}"}).json() for n in range(30)]
        return {answer["predictions"][0]["template_version"] for answer in answers}

    assert served() == {"v1", "v2"}  # the server's variable, recorded at its start
    concluded = cli(
        shell, monkeypatch, "experiments", "conclude", "--winner", "v2", "--reason", "v2 is better"
    )
    assert concluded.exit_code == 0, concluded.output
    assert "now serves its v2 arms" in concluded.output
    assert wait_until(lambda: served() == {"v2"}, timeout_s=20)
    again = cli(shell, monkeypatch, "experiments", "conclude", "--winner", "v1", "--reason", "r")
    assert again.exit_code == 2 and "concluded already" in again.output

    started = cli(
        shell, monkeypatch, "experiments", "start", "--split", "v2/zero-shot=1,v1/zero-shot=3"
    )
    assert started.exit_code == 0, started.output
    assert "split v2/zero-shot=1,v1/zero-shot=3 runs" in started.output
    assert wait_until(lambda: served() == {"v1", "v2"}, timeout_s=20)
    concluded = cli(
        shell, monkeypatch, "experiments", "conclude", "--winner", "v1", "--reason", "back to v1"
    )
    assert concluded.exit_code == 0, concluded.output
    assert wait_until(lambda: served() == {"v1"}, timeout_s=20)
    history = cli(shell, monkeypatch, "experiments", "history").output.splitlines()
    assert "v2/zero-shot=1,v1/zero-shot=3 (concluded)" in history[1]


def test_review_queue_export_label_and_import(
    loop_server: tuple[ServerProcess, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    server, env = loop_server
    post(server, "/v1/predict", {"texts": ["meh, not sure", "It is ok", "It is OK!", "so so"]})
    queue = httpx.get(f"{server.url}/v1/review-queue", params={"limit": 10}, timeout=30).json()[
        "items"
    ]
    assert 0 < len(queue) <= 10
    reasons = [item["chosen_for"] for item in queue]
    assert reasons == sorted(reasons, reverse=True) and reasons[0] == "uncertainty"
    margins = [item["margin"] for item in queue if item["chosen_for"] == "uncertainty"]
    assert margins == sorted(margins)
    assert len({re.sub(r"\W", "", item["text"].lower()) for item in queue}) == len(queue)
    bad = httpx.get(f"{server.url}/v1/review-queue", params={"limit": 0}, timeout=30)
    assert bad.status_code == 400 and bad.json()["field"] == "limit"
    assert bad.json()["error"].startswith("limit: Input should be greater than")  # as a body's

    exported = tmp_path / "queue.csv"
    result = cli(env, monkeypatch, "review", "export", "--limit", "3", "--output", str(exported))
    assert result.exit_code == 0, result.output
    lines = exported.read_text().splitlines()
    assert (
        lines[0].endswith("predicted_label,confidence,margin,chosen_for,label") and len(lines) == 4
    )
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(
        "\n".join([lines[0], lines[1] + "neutral", lines[2] + "POS", lines[3]]) + "\n"
    )
    imported = cli(env, monkeypatch, "feedback", "import", str(labelled))
    assert imported.exit_code == 0, imported.output
    assert "3 rows: 2 stored, 0 already there, 1 without a label, 0 failed" in imported.output
    after = httpx.get(f"{server.url}/v1/review-queue", params={"limit": 500}, timeout=30).json()[
        "items"
    ]
    labelled_ids = {line.split(",")[0] for line in lines[1:3]}
    assert not labelled_ids & {item["prediction_id"] for item in after}

    feedback = tmp_path / "feedback.csv"
    result = cli(
        env, monkeypatch, "feedback", "export", "--format", "csv", "--output", str(feedback)
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(feedback.read_text(encoding="utf-8").splitlines()))
    assert labelled_ids <= {row["prediction_id"] for row in rows}
    assert f"wrote {len(rows)} feedback rows to {feedback}" in result.stderr

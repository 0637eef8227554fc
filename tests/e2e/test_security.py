"""API keys, scopes and body limits against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from service.http.auth import hash_key
from tests.e2e.conftest import start_server
from tests.support import ServerProcess

pytestmark = pytest.mark.slow

KEYS = {"crm": ("slk_crm_secret", ["predict", "feedback"]), "ops": ("slk_ops_secret", ["admin"]),
        "reader": ("slk_reader_secret", ["predict"])}  # fmt: skip


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    ring = [{"name": n, "sha256": hash_key(k), "scopes": s} for n, (k, s) in KEYS.items()]
    server = start_server(
        tmp_path_factory.mktemp("secured"),
        {"SENTILOOP_AUTH": "required", "SENTILOOP_API_KEYS": json.dumps(ring),
         "SENTILOOP_MAX_BODY_BYTES": "20000"},
    )  # fmt: skip
    yield server
    server.stop()


def call(
    server: ServerProcess, method: str, path: str, key: str | None, **kwargs: object
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_missing_or_unknown_key_is_401(secured: ServerProcess) -> None:
    for key in (None, "slk_wrong"):
        response = call(secured, "POST", "/v1/predict", key, json={"text": "hi"})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["field"] == "Authorization"


def test_scopes_per_endpoint(secured: ServerProcess) -> None:
    crm, ops, reader = (KEYS[name][0] for name in ("crm", "ops", "reader"))
    predicted = call(secured, "POST", "/v1/predict", reader, json={"text": "great"})
    assert predicted.status_code == 200
    prediction_id = predicted.json()["predictions"][0]["prediction_id"]
    feedback = {"prediction_id": prediction_id, "verdict": "correct"}
    assert call(secured, "POST", "/v1/feedback", reader, json=feedback).status_code == 403
    assert call(secured, "POST", "/v1/feedback", crm, json=feedback).status_code == 201
    assert call(secured, "GET", "/v1/feedback/export", crm).status_code == 403
    assert call(secured, "GET", "/v1/feedback/export", ops).status_code == 200
    assert call(secured, "POST", "/v1/admin/reload-models", crm, json={}).status_code == 403
    assert call(secured, "POST", "/v1/admin/reload-models", ops, json={}).status_code == 200
    assert call(secured, "GET", "/v1/models", reader).status_code == 200
    assert call(secured, "GET", "/v1/models", None).status_code == 401
    # Probes, metrics and the API description stay open.
    for path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert call(secured, "GET", path, None).status_code == 200, path


def test_oversized_body_is_413_naming_the_limit(secured: ServerProcess) -> None:
    crm = KEYS["crm"][0]
    response = call(secured, "POST", "/v1/predict", crm, json={"texts": ["x" * 4000] * 6})
    assert response.status_code == 413
    assert response.json() == {
        "error": "request body exceeds 20000 bytes",
        "field": "body",
        "limit": 20000,
    }

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"texts": ["'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"]}'

    streamed = httpx.post(
        f"{secured.url}/v1/predict",
        content=chunks(),
        headers={"Authorization": f"Bearer {crm}", "content-type": "application/json"},
        timeout=30,
    )
    assert streamed.status_code == 413


def test_keys_never_reach_the_log(secured: ServerProcess) -> None:
    call(secured, "POST", "/v1/predict", KEYS["crm"][0], json={"text": "log check"})
    log = secured.log_path.read_text()
    assert all(key not in log for key, _ in KEYS.values())


def test_non_json_bodies_are_415_naming_the_header(secured: ServerProcess) -> None:
    response = httpx.post(
        f"{secured.url}/v1/predict",
        content=b"text=hello",
        headers={
            "Authorization": f"Bearer {KEYS['crm'][0]}",
            "content-type": "multipart/form-data",
        },
        timeout=30,
    )
    assert response.status_code == 415 and response.json()["field"] == "Content-Type"


def test_two_credential_headers_are_a_400_not_the_last_one_winning(secured: ServerProcess) -> None:
    reader, ops = KEYS["reader"][0], KEYS["ops"][0]
    for headers in (
        [("X-API-Key", reader), ("X-API-Key", ops)],
        [("Authorization", f"Bearer {reader}"), ("X-API-Key", ops)],
        [("Authorization", f"Bearer {reader}"), ("Authorization", f"Bearer {ops}")],
    ):
        response = httpx.get(f"{secured.url}/v1/feedback/export", headers=headers, timeout=30)
        assert response.status_code == 400, headers
        assert response.json()["field"] == "Authorization"


def test_a_trailing_slash_gets_the_same_authorization_answer(secured: ServerProcess) -> None:
    reader = KEYS["reader"][0]
    body = {"prediction_id": "x", "verdict": "correct"}
    for path in ("/v1/feedback", "/v1/feedback/"):
        response = call(secured, "POST", path, reader, json=body)
        assert response.status_code == 403, path
    for path in ("/v1/feedback/export", "/v1/feedback/export/", "/v1/admin/reload-models/"):
        assert call(secured, "GET", path, reader).status_code == 403, path
    assert call(secured, "GET", "/v1/feedback/export/", None).status_code == 401

"""API keys, scopes and body limits against a real server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from service.http.auth import hash_key
from tests.e2e.conftest import ONE_MODEL_PROCESS, start_server
from tests.support import ServerProcess, wait_until

pytestmark = pytest.mark.slow

KEYS = {"crm": ("slk_crm_secret", ["predict", "feedback"]), "ops": ("slk_ops_secret", ["admin"]),
        "reader": ("slk_reader_secret", ["predict"])}  # fmt: skip


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    ring = [{"name": n, "sha256": hash_key(k), "scopes": s} for n, (k, s) in KEYS.items()]
    tmp = tmp_path_factory.mktemp("secured")
    (tmp / "api-keys.json").write_text("[]")  # keys made and revoked by the CLI
    server = start_server(
        tmp,
        {"SENTILOOP_AUTH": "required", "SENTILOOP_API_KEYS": json.dumps(ring),
         "SENTILOOP_API_KEYS_FILE": str(tmp / "api-keys.json"),
         "SENTILOOP_MAX_BODY_BYTES": "20000",
         # Access lines on (off by default): the log where a key would most likely leak.
         "BENTOML_CONFIG_OPTIONS": "services.sentiloop.logging.access.enabled=true",
         **ONE_MODEL_PROCESS},
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


def test_the_client_sends_its_key_and_raises_typed_auth_errors(secured: ServerProcess) -> None:
    from sentiloop.client import Client, PermissionDenied, Unauthorized

    with Client(secured.url, api_key=KEYS["reader"][0]) as reader:
        prediction = reader.predict_one("great")
        with pytest.raises(PermissionDenied) as denied:
            reader.feedback(prediction.prediction_id, verdict="correct")
        assert denied.value.status == 403
    with Client(secured.url, api_key=KEYS["crm"][0]) as crm:
        assert crm.feedback(prediction.prediction_id, verdict="correct").agrees
    with Client(secured.url, api_key=KEYS["ops"][0]) as ops:
        assert prediction.prediction_id in {r.prediction_id for r in ops.export_feedback()}
    with Client(secured.url) as anonymous, pytest.raises(Unauthorized) as missing:
        anonymous.models()
    assert missing.value.field == "Authorization"


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


def access_lines(server: ServerProcess, method: str, path: str, status: int) -> int:
    """How many access-log lines the server wrote for ``method path`` answered ``status``."""
    request, answer = f"method={method},path={path}", f"status={status}"
    log = server.log_path.read_text(errors="replace").splitlines()
    return sum(request in line and answer in line for line in log)


def access_line_after(
    server: ServerProcess, method: str, path: str, status: int, before: int
) -> Callable[[], bool]:
    """Whether an access line beyond the ``before`` seen ones has been written."""
    return lambda: access_lines(server, method, path, status) > before


def test_keys_never_reach_the_log(secured: ServerProcess) -> None:
    """Valid, rejected and forbidden keys, in both headers: each request's access line
    is written, and no key appears anywhere in the log."""
    rejected = f"slk_rejected_{uuid.uuid4().hex}"
    crm, reader = KEYS["crm"][0], KEYS["reader"][0]
    sent = [
        ("POST", "/v1/predict", {"Authorization": f"Bearer {crm}"}, 200),
        ("POST", "/v1/predict", {"X-API-Key": crm}, 200),
        ("POST", "/v1/predict", {"Authorization": f"Bearer {rejected}"}, 401),
        ("POST", "/v1/predict", {"X-API-Key": rejected}, 401),
        ("GET", "/v1/feedback/export", {"Authorization": f"Bearer {reader}"}, 403),
        ("GET", "/v1/feedback/export", {"X-API-Key": reader}, 403),
    ]
    for method, path, headers, status in sent:
        before = access_lines(secured, method, path, status)
        body = {"text": "log check"} if method == "POST" else None
        response = httpx.request(
            method, f"{secured.url}{path}", headers=headers, json=body, timeout=30
        )
        assert response.status_code == status, (headers, response.text)
        logged = access_line_after(secured, method, path, status, before)
        assert wait_until(logged, timeout_s=10), (method, path, status, secured.log_tail())
    log = secured.log_path.read_text(errors="replace")
    for key in (rejected, *(key for key, _ in KEYS.values())):
        assert key not in log, key


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
    body = {"prediction_id": "0192f0a4-7c1e-7b3a-9d2e-5f6a7b8c9d0e", "verdict": "correct"}
    for path in ("/v1/feedback", "/v1/feedback/"):
        response = call(secured, "POST", path, reader, json=body)
        assert response.status_code == 403, path
    for path in ("/v1/feedback/export", "/v1/feedback/export/", "/v1/admin/reload-models/"):
        assert call(secured, "GET", path, reader).status_code == 403, path
    assert call(secured, "GET", "/v1/feedback/export/", None).status_code == 401


def test_docs_is_the_openapi_ui_without_a_third_party_script(secured: ServerProcess) -> None:
    import re

    docs = call(secured, "GET", "/docs", None)  # open, as the README's table says
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in docs.text and "/docs.json" in docs.text
    sources = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", docs.text)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    for source in sources:  # served by this server
        assert call(secured, "GET", source, None).status_code == 200, source
    assert "default-src 'self'" in docs.headers["content-security-policy"]
    assert call(secured, "GET", "/docs.json", None).json()["paths"]
    for path in ("/", "/docs"):
        page = call(secured, "GET", path, None).text
        assert "googletagmanager" not in page and "https://" not in page, path
    # FastAPI's own pages load Swagger UI and ReDoc from a CDN: not served.
    assert call(secured, "GET", "/v1/docs", "slk_reader_secret").status_code == 404
    assert call(secured, "GET", "/v1/openapi.json", "slk_reader_secret").status_code == 200


def test_a_key_revoked_through_the_cli_is_refused_within_seconds(secured: ServerProcess) -> None:
    """Issue 24, item 19: no restart needed."""
    import time

    from typer.testing import CliRunner

    from sentiloop.cli import app

    key_file = secured.log_path.parent / "api-keys.json"
    runner = CliRunner()
    created = runner.invoke(
        app, ["keys", "create", "--name", "temp", "--scopes", "predict", "--file", str(key_file)]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    body = {"text": "hello"}
    assert wait_until(
        lambda: call(secured, "POST", "/v1/predict", key, json=body).status_code == 200, 5
    )
    listed = runner.invoke(app, ["keys", "list", "--file", str(key_file)])
    assert listed.exit_code == 0 and listed.stdout.startswith("temp\t"), listed.output
    key_id = listed.stdout.split("\t")[1]
    revoked = runner.invoke(app, ["keys", "revoke", key_id, "--file", str(key_file)])
    assert revoked.exit_code == 0 and "revoked key 'temp'" in revoked.stdout, revoked.output
    started = time.monotonic()
    assert wait_until(
        lambda: call(secured, "POST", "/v1/predict", key, json=body).status_code == 401, 5
    ), "a revoked key still works after 5 s"
    assert time.monotonic() - started < 5
    assert call(secured, "POST", "/v1/predict", KEYS["reader"][0], json=body).status_code == 200
    again = runner.invoke(app, ["keys", "revoke", "temp", "--file", str(key_file)])
    assert again.exit_code == 2 and again.output.startswith("error: "), again.output

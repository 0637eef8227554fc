"""The client's retries, idempotency keys and typed errors, against a real HTTP server
on a local socket that answers as scripted: 429 with Retry-After, 503, a dropped
connection, a body cut short. (Against the real service: tests/e2e/test_client.py.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sentiloop.client import (
    APIConnectionError,
    APIError,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    FeedbackItem,
    PermissionDenied,
    RateLimited,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
)
from service.http.responses import ExportedFeedback
from tests.support import ROOT, free_port

# Retries without waiting, unless the server says how long (Retry-After).
FAST = RetryPolicy(max_retries=3, backoff_s=0.01, max_backoff_s=0.01)


@dataclass
class Seen:
    """A request as the server read it."""

    at: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without an answer
    cut_after: bytes | None = None  # send these body bytes of a longer body, then close


Action = Reply | Callable[[Seen], Reply]


class ScriptedServer:
    """An HTTP/1.1 server in a thread answering each request with the next scripted
    reply (then 500s), keeping what it was sent."""

    def __init__(self) -> None:
        self.script: list[Action] = []
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                seen = Seen(
                    time.monotonic(),
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw else None,
                )
                outer.seen.append(seen)
                action = outer.script.pop(0) if outer.script else Reply(500, {"error": "?"})
                reply = action(seen) if callable(action) else action
                if reply.drop:
                    self.close_connection = True
                    return
                payload = (
                    reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                )
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if reply.cut_after is not None:
                    self.wfile.write(reply.cut_after)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            do_GET = do_POST = handle_any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def prediction(text: str, index: int = 0) -> dict[str, Any]:
    return {
        "prediction_id": f"p-{index}",
        "label": "negative",
        "scores": {"negative": 0.8, "neutral": 0.1, "positive": 0.1},
        "confidence": 0.8,
        "model_version": "m",
        "template_version": "v1",
        "language": "en",
        "language_supported": True,
        "latency_ms": 1.0,
        "external_id": None,
    }


def predictions(seen: Seen) -> Reply:
    texts = seen.body.get("texts") or [seen.body["text"]]
    return Reply(200, {"predictions": [prediction(t, i) for i, t in enumerate(texts)]})


def stored(seen: Seen, status: int = 201) -> Reply:
    return Reply(status, feedback_body(replayed=status == 200))


def feedback_body(replayed: bool = False) -> dict[str, Any]:
    return {
        "feedback_id": "f-1",
        "prediction_id": "p-1",
        "created_at": "2026-01-01T00:00:00+00:00",
        "kind": "label",
        "predicted_label": "negative",
        "effective_label": "neutral",
        "agrees": False,
        "model_version": "m",
        "template_version": "v1",
        "replayed": replayed,
    }


UNAVAILABLE = {"error": "the models are loading; retry shortly", "field": None}


def test_the_client_imports_without_the_server_modules() -> None:
    """A client imports pydantic and httpx, not torch, BentoML, the store or the
    server's settings (``core.retry_after`` alone of the core)."""
    probe = (
        "import sys, time; t = time.perf_counter(); import sentiloop.client; "
        "print(time.perf_counter() - t); "
        "print(sorted(m for m in ('torch', 'bentoml', 'sqlalchemy', 'transformers', "
        "'starlette', 'storage', 'feedback', 'core.settings', 'core.database') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    seconds, loaded = done.stdout.split("\n")[:2]
    assert loaded == "[]", done.stderr
    assert float(seconds) < 2.0  # ~0.2 s here; the server's schemas alone took 0.5 s


def test_a_503_is_retried_until_answered(server: ScriptedServer) -> None:
    server.script = [Reply(503, UNAVAILABLE), Reply(503, UNAVAILABLE), predictions]
    with Client(server.url, retry=FAST) as client:
        answered = client.predict(["a", "b"])
    assert [p.prediction_id for p in answered] == ["p-0", "p-1"]
    assert len(server.seen) == 3
    assert all(seen.body == {"texts": ["a", "b"]} for seen in server.seen)


def test_retry_after_is_honoured(server: ScriptedServer) -> None:
    server.script = [Reply(429, {"error": "slow down"}, {"Retry-After": "1"}), predictions]
    with Client(server.url, retry=FAST) as client:
        client.predict_one("a")
    first, second = server.seen
    assert 1.0 <= second.at - first.at < 1.5  # the backoff alone would wait 10 ms


def test_a_retry_after_beyond_the_longest_wait_is_raised_not_waited(
    server: ScriptedServer,
) -> None:
    server.script = [Reply(503, UNAVAILABLE, {"Retry-After": "3600"})]
    started = time.monotonic()
    with Client(server.url, retry=FAST) as client, pytest.raises(ServiceUnavailable) as caught:
        client.predict_one("a")
    assert time.monotonic() - started < 1.0 and len(server.seen) == 1
    assert caught.value.retry_after == 3600.0 and caught.value.status == 503


def test_a_dropped_connection_is_retried(server: ScriptedServer) -> None:
    server.script = [Reply(drop=True), predictions]
    with Client(server.url, retry=FAST) as client:
        assert client.predict_one("a").label == "negative"
    assert len(server.seen) == 2


def test_retries_run_out_into_a_typed_error(server: ScriptedServer) -> None:
    server.script = [Reply(503, UNAVAILABLE, {"Retry-After": "0"})] * 4
    with Client(server.url, retry=FAST) as client, pytest.raises(ServiceUnavailable) as caught:
        client.predict_one("a")
    assert len(server.seen) == 4  # the first try and 3 retries
    assert caught.value.message == UNAVAILABLE["error"] and caught.value.retry_after == 0.0
    server.script = [Reply(429, {"error": "slow down"})] * 2
    with (
        Client(server.url, retry=RetryPolicy(max_retries=1, backoff_s=0.01)) as client,
        pytest.raises(RateLimited),
    ):
        client.predict_one("a")


def test_no_server_is_a_connection_error_after_the_retries() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", retry=FAST) as client,
        pytest.raises(APIConnectionError, match="ConnectError"),
    ):
        client.predict_one("a")


def test_a_feedback_call_keeps_its_idempotency_key_across_retries(
    server: ScriptedServer,
) -> None:
    server.script = [Reply(503, UNAVAILABLE), Reply(drop=True), stored, stored]
    with Client(server.url, retry=FAST) as client:
        result = client.feedback("p-1", label="neutral", comment="status question")
        client.feedback("p-1", verdict="correct")
    assert result.effective_label == "neutral" and not result.replayed
    keys = [seen.body["idempotency_key"] for seen in server.seen]
    assert len(keys) == 4 and keys[0] == keys[1] == keys[2]  # one call, three tries
    assert keys[3] != keys[0]  # the next call, its own key
    assert server.seen[0].body == {
        "prediction_id": "p-1",
        "label": "neutral",
        "comment": "status question",
        "idempotency_key": keys[0],
    }


def test_a_given_idempotency_key_is_sent_as_is(server: ScriptedServer) -> None:
    server.script = [Reply(drop=True), lambda seen: stored(seen, 200)]
    with Client(server.url, retry=FAST) as client:
        assert client.feedback(external_id="T-1", verdict="correct", idempotency_key="k-1").replayed
    assert [seen.body["idempotency_key"] for seen in server.seen] == ["k-1", "k-1"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        # A validation error, as BentoML answers it.
        ({"error": "1 validation error for the body of POST /v1/feedback",
          "detail": [{"loc": ["label"], "msg": "Value error, unknown label 'mixed'"}]},
         "label", "unknown label 'mixed'"),
        ({"error": "...", "detail": [{"loc": ["texts", 3], "msg": "too long"}]}, "texts.3",
         "too long"),
        # As the server names the field: pydantic's prefix is not repeated.
        ({"error": "prediction_id: is not a prediction id",
          "detail": [{"loc": ["prediction_id"], "msg": "Value error, is not a prediction id"}]},
         "prediction_id", "prediction_id: is not a prediction id"),
        # A domain or read-endpoint error.
        ({"error": "since is after until", "field": "since"}, "since", "since is after until"),
    ],
)  # fmt: skip
def test_a_400_raises_bad_request_naming_the_field(
    server: ScriptedServer, body: dict[str, Any], field: str, message: str
) -> None:
    server.script = [Reply(400, body)]
    with Client(server.url, retry=FAST) as client, pytest.raises(BadRequest) as caught:
        client.feedback("p-1", label="mixed")
    assert caught.value.status == 400 and caught.value.field == field
    assert message in caught.value.message and field in str(caught.value)
    assert "Value error" not in caught.value.message
    assert len(server.seen) == 1  # a 400 is not retried


@pytest.mark.parametrize(
    ("status", "kind"), [(401, Unauthorized), (403, PermissionDenied), (409, Conflict)]
)
def test_each_status_has_its_error(
    server: ScriptedServer, status: int, kind: type[APIError]
) -> None:
    server.script = [Reply(status, {"error": "no", "field": "Authorization"})]
    with Client(server.url, retry=FAST) as client, pytest.raises(kind) as caught:
        client.models()
    assert caught.value.field == "Authorization" and len(server.seen) == 1


def test_the_api_key_goes_in_the_authorization_header(server: ScriptedServer) -> None:
    server.script = [predictions]
    with Client(server.url, api_key="slk_secret") as client:
        client.predict_one("a")
        assert "slk_secret" not in repr(client)
    assert server.seen[0].headers["authorization"] == "Bearer slk_secret"


def test_predict_many_sends_chunks_of_at_most_256(server: ScriptedServer) -> None:
    server.script = [predictions] * 3
    texts = [f"text {i}" for i in range(600)]
    ids = [f"T-{i}" for i in range(600)]
    with Client(server.url) as client:
        answered = list(client.predict_many(iter(texts), external_ids=ids, source="crm"))
    assert len(answered) == 600
    assert [len(seen.body["texts"]) for seen in server.seen] == [256, 256, 88]
    assert server.seen[2].body["external_ids"] == ids[512:]
    assert {seen.body["source"] for seen in server.seen} == {"crm"}
    with Client(server.url) as client, pytest.raises(ValueError, match="256"):
        client.predict(texts)
    with Client(server.url) as client, pytest.raises(TypeError, match="predict_one"):
        client.predict("one text")


def batch_reply(statuses: list[int], retry_after: str | None = None) -> Callable[[Seen], Reply]:
    def reply(seen: Seen) -> Reply:
        assert len(seen.body["items"]) == len(statuses)
        results = [
            {"index": i, "status": s, "feedback": feedback_body() if s == 201 else None,
             "error": None if s < 300 else "x", "field": "label" if s == 400 else None}
            for i, s in enumerate(statuses)
        ]  # fmt: skip
        body = {"results": results, "stored": 0, "replayed": 0, "failed": 0}
        return Reply(200, body, {"Retry-After": retry_after} if retry_after else {})

    return reply


def test_feedback_many_batches_and_resends_the_503_items_with_their_keys(
    server: ScriptedServer,
) -> None:
    items: list[FeedbackItem | dict[str, Any]] = [
        FeedbackItem(prediction_id="p-0", verdict="correct"),
        {"prediction_id": "p-1", "label": "mixed"},
        FeedbackItem(external_id="T-2", label="positive", idempotency_key="mine"),
    ]
    # Batches of 2: [201, 503] then the 503 item again (201), then [503] twice.
    server.script = [batch_reply([201, 503], "0"), batch_reply([400]), batch_reply([503], "0"),
                     batch_reply([503], "0")]  # fmt: skip
    policy = RetryPolicy(max_retries=1, backoff_s=0.01)
    with Client(server.url, retry=policy) as client:
        result = client.feedback_many(items, batch_size=2)
    assert [(r.index, r.status, r.field) for r in result.results] == [
        (0, 201, None), (1, 400, "label"), (2, 503, None)
    ]  # fmt: skip
    assert (result.stored, result.replayed, result.failed) == (1, 0, 2)
    sent = [[item["idempotency_key"] for item in seen.body["items"]] for seen in server.seen]
    assert sent[1] == [sent[0][1]]  # the resent item, with its key
    assert sent[2] == sent[3] == ["mine"]


def exported_row(index: int, at: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ExportedFeedback.model_fields)
    row.update(feedback_id=f"f-{index}", feedback_created_at=at, prediction_id=f"p-{index}",
               prediction_created_at=at, text_storage="redacted", text_sha256="0" * 64,
               predicted_label="negative", confidence=0.9, scores={"negative": 0.9},
               model_version="m", template_version="v1", kind="verdict", verdict="correct",
               effective_label="negative", agrees=True)  # fmt: skip
    return row


def test_the_export_resumes_where_a_broken_connection_stopped(server: ScriptedServer) -> None:
    at = ["2026-01-01T00:00:01+00:00", "2026-01-01T00:00:02+00:00", "2026-01-01T00:00:02+00:00",
          "2026-01-01T00:00:03+00:00"]  # fmt: skip
    lines = [json.dumps(exported_row(i, t)).encode() + b"\n" for i, t in enumerate(at)]
    # Two rows of four, then the connection breaks; the server answers the retry from
    # the time it is given (rows 1, 2, 3: the second one's time included).
    server.script = [Reply(200, b"".join(lines), cut_after=b"".join(lines[:2])),
                     Reply(200, b"".join(lines[1:]))]  # fmt: skip
    with Client(server.url, retry=FAST) as client:
        rows = list(client.export_feedback(since=datetime(2026, 1, 1)))
    assert [row.feedback_id for row in rows] == ["f-0", "f-1", "f-2", "f-3"]
    first, second = server.seen
    assert first.query == {"format": ["jsonl"], "since": ["2026-01-01T00:00:00+00:00"]}
    assert second.query["since"] == ["2026-01-01T00:00:02+00:00"]


def test_the_async_client_retries_and_keeps_the_key(server: ScriptedServer) -> None:
    server.script = [
        Reply(429, {"error": "slow"}, {"Retry-After": "0"}),
        Reply(drop=True),
        stored,  # one feedback call, three tries
        Reply(503, UNAVAILABLE),
        predictions,
        Reply(400, {"error": "bad", "field": "x"}),
    ]

    async def scenario() -> None:
        async with AsyncClient(server.url, retry=FAST, api_key="k") as client:
            await client.feedback("p-1", label="neutral")
            texts = [text async for text in client.predict_many(["a", "b", "c"])]
            assert len(texts) == 3
            with pytest.raises(BadRequest, match="x"):
                await client.models()

    asyncio.run(scenario())
    keys = {seen.body["idempotency_key"] for seen in server.seen[:3]}
    assert len(keys) == 1 and None not in keys
    assert {seen.headers["authorization"] for seen in server.seen} == {"Bearer k"}


def test_an_exported_row_has_the_export_columns_in_order() -> None:
    from storage.store import EXPORT_FIELDS

    assert tuple(ExportedFeedback.model_fields) == EXPORT_FIELDS

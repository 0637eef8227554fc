"""Fake CRM APIs for the write-back: real HTTP servers on 127.0.0.1, each in a thread.

Each fake checks what the real API checks, from its documentation, and answers as
it would: the path and method (404/405), the credentials (401), the body's shape
(400/415/422), and the effect (Zendesk's ``PUT .../tags`` adds tags, ``POST``
replaces them all, ``DELETE`` removes those named; HubSpot refuses properties the
account does not define; a Standard Webhooks receiver refuses a bad signature).
Before it succeeds, a fake answers the failures it is given, by default a 429 with
``Retry-After: 1`` once and a 500 twice (``DEFAULT_FAILURES``); like a real rate
limiter it answers 429 again to any request sent before the ``Retry-After`` it
gave has passed, and records that request as ``early``. Every request is recorded
(``received``) with the answer it got.

    with FakeZendesk(email="bot@acme.test", token="t0k") as zendesk:
        zendesk.tickets["5158"] = {"vip"}
        ... SENTILOOP_WRITEBACK_ZENDESK_URL=zendesk.url ...
        zendesk.tickets["5158"]  # {"vip", "sentiment_negative"}
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from standardwebhooks import Webhook, WebhookVerificationError

Failure = tuple[int, dict[str, str]]
DEFAULT_FAILURES: tuple[Failure, ...] = ((429, {"Retry-After": "1"}), (500, {}), (500, {}))
Answer = tuple[int, dict[str, str], Any]


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or the raw text when it is not JSON
    status: int  # the answer
    at: float  # time.monotonic()
    early: bool = False  # sent before the Retry-After this fake gave had passed


@dataclass
class _Limit:
    until: float = 0.0


class FakeCrm:
    """A CRM API on a free local port; subclasses route (``handle``)."""

    def __init__(self, failures: Sequence[Failure] = DEFAULT_FAILURES) -> None:
        self._lock = threading.Lock()
        self._failures = list(failures)
        self._only: str | None = None
        self._limit = _Limit()
        self.received: list[Received] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, extra, body = fake._answer(self.command, self.path, headers, raw)
                payload = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, failures: Sequence[Failure], *, only: str | None = None) -> None:
        """Answer these failures (status, headers) to the next valid requests (those
        whose path contains ``only``, when given: a test's own ticket)."""
        with self._lock:
            self._failures = list(failures)
            self._only = only

    def statuses(self) -> list[int]:
        with self._lock:
            return [request.status for request in self.received]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(
        self, method: str, path: str, headers: dict[str, str], body: Any, raw: bytes
    ) -> Answer | None:
        """Check a request as the real API does: an error answer, or None to go on."""
        raise NotImplementedError

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        """The effect of a valid request, and the API's answer."""
        raise NotImplementedError

    def rate_limited(self, retry_after: str) -> Any:
        return {"error": "TooManyRequests", "description": f"Retry after {retry_after} s"}

    def _answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Answer:
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            now = time.monotonic()
            answer = self.check(method, path, headers, body, raw)
            early = False
            if answer is None and now < self._limit.until:
                early = True
                wait = str(max(1, round(self._limit.until - now)))
                answer = (429, {"Retry-After": wait}, self.rate_limited(wait))
            if answer is None and self._failures and (self._only or "") in path:
                status, extra = self._failures.pop(0)
                if "Retry-After" in extra:
                    self._limit.until = now + float(extra["Retry-After"])
                error = self.rate_limited(extra.get("Retry-After", "?")) if status == 429 else None
                answer = (status, extra, error or {"error": f"injected {status}"})
            if answer is None:
                answer = self.handle(method, path, headers, body)
            self.received.append(Received(method, path, headers, body, answer[0], now, early))
            return answer


def _tags_of(body: Any) -> list[str] | None:
    if not isinstance(body, dict) or set(body) - {"tags", "safe_update", "updated_stamp"}:
        return None
    tags = body.get("tags")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        return None
    return tags


@dataclass
class _Ticket:
    tags: set[str] = field(default_factory=set)
    custom_fields: dict[int, Any] = field(default_factory=dict)


class FakeZendesk(FakeCrm):
    """Zendesk's Tags API (``/api/v2/tickets/{id}/tags``: GET shows, PUT adds, POST
    sets, DELETE removes) and Update Ticket's ``custom_fields``, with API-token basic
    auth (``{email}/token:{token}``). ``tickets`` maps the ticket ids that exist to
    their tags; ``closed`` tickets refuse the Tags API (422), as Zendesk's do."""

    TAGS = re.compile(r"^/api/v2/tickets/(\d+)/tags(?:\.json)?$")
    TICKET = re.compile(r"^/api/v2/tickets/(\d+)(?:\.json)?$")

    def __init__(
        self, *, email: str, token: str, failures: Sequence[Failure] = DEFAULT_FAILURES
    ) -> None:
        self._auth = "Basic " + base64.b64encode(f"{email}/token:{token}".encode()).decode()
        self._tickets: dict[str, _Ticket] = {}
        self.closed: set[str] = set()
        self.tickets = _TagView(self._tickets)
        super().__init__(failures)

    def custom_fields(self, ticket: str) -> dict[int, Any]:
        return dict(self._tickets[ticket].custom_fields)

    def check(
        self, method: str, path: str, headers: dict[str, str], body: Any, raw: bytes
    ) -> Answer | None:
        tags, ticket = self.TAGS.match(path), self.TICKET.match(path)
        if not tags and not ticket:
            return 404, {}, {"error": "InvalidEndpoint", "description": "Not found"}
        if headers.get("authorization") != self._auth:
            return 401, {}, {"error": "Couldn't authenticate you"}
        allowed = {"GET", "PUT", "POST", "DELETE"} if tags else {"GET", "PUT"}
        if method not in allowed:
            return 405, {}, {"error": "MethodNotAllowed"}
        ticket_id = (tags or ticket).group(1)  # type: ignore[union-attr]
        if ticket_id not in self._tickets:
            return 404, {}, {"error": "RecordNotFound", "description": "Not found"}
        if method == "GET":
            return None
        if not headers.get("content-type", "").startswith("application/json"):
            return 415, {}, {"error": "Unsupported Media Type"}
        if tags:
            if _tags_of(body) is None:
                return 400, {}, {"error": "InvalidValue", "description": 'expected {"tags": [...]}'}
            if ticket_id in self.closed:
                return 422, {}, {"error": "RecordInvalid", "description": "Ticket is closed"}
            return None
        fields = body.get("ticket", {}).get("custom_fields") if isinstance(body, dict) else None
        if not isinstance(fields, list) or not all(
            isinstance(f, dict) and isinstance(f.get("id"), int) and "value" in f for f in fields
        ):
            return 400, {}, {"error": "InvalidValue", "description": "ticket.custom_fields"}
        return None

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        tags = self.TAGS.match(path)
        ticket = self._tickets[(tags or self.TICKET.match(path)).group(1)]  # type: ignore[union-attr]
        if tags:
            named = set(_tags_of(body) or ())
            if method == "PUT":
                ticket.tags |= named
            elif method == "POST":  # "Set Tags": replaces every tag
                ticket.tags = named
            elif method == "DELETE":
                ticket.tags -= named
            return 200, {}, {"tags": sorted(ticket.tags)}
        if method == "PUT":
            for entry in body["ticket"]["custom_fields"]:
                ticket.custom_fields[entry["id"]] = entry["value"]
        fields = [{"id": key, "value": value} for key, value in ticket.custom_fields.items()]
        return 200, {}, {"ticket": {"tags": sorted(ticket.tags), "custom_fields": fields}}


class _TagView:
    """``fake.tickets[id]``: the ticket's tags (assigning one creates the ticket)."""

    def __init__(self, tickets: dict[str, _Ticket]) -> None:
        self._tickets = tickets

    def __getitem__(self, ticket: str) -> set[str]:
        return set(self._tickets[ticket].tags)

    def __setitem__(self, ticket: str, tags: set[str]) -> None:
        self._tickets[ticket] = _Ticket(tags=set(tags))

    def __contains__(self, ticket: object) -> bool:
        return ticket in self._tickets


class FakeHubSpot(FakeCrm):
    """HubSpot's CRM objects API v3 for tickets (``PATCH /crm/v3/objects/tickets/{id}``
    with ``{"properties": {...}}``), a private app's bearer token. ``tickets`` maps the
    ticket ids that exist to their properties; ``defined`` names the properties the
    account has (others are refused, 400 VALIDATION_ERROR, as HubSpot does)."""

    TICKET = re.compile(r"^/crm/v3/objects/tickets/([^/?]+)$")

    def __init__(
        self,
        *,
        token: str,
        defined: Sequence[str] = ("subject", "content", "sentiloop_sentiment"),
        failures: Sequence[Failure] = DEFAULT_FAILURES,
    ) -> None:
        self._token = token
        self.defined = set(defined)
        self.tickets: dict[str, dict[str, Any]] = {}
        super().__init__(failures)

    def rate_limited(self, retry_after: str) -> Any:
        return {
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "policyName": "TEN_SECONDLY_ROLLING",
        }

    def check(
        self, method: str, path: str, headers: dict[str, str], body: Any, raw: bytes
    ) -> Answer | None:
        match = self.TICKET.match(path)
        if not match:
            return 404, {}, {"status": "error", "message": "resource not found"}
        if headers.get("authorization") != f"Bearer {self._token}":
            return 401, {}, {"status": "error", "category": "INVALID_AUTHENTICATION"}
        if method not in ("GET", "PATCH"):
            return 405, {}, {"status": "error", "message": "method not allowed"}
        if match.group(1) not in self.tickets:
            return 404, {}, {"status": "error", "category": "OBJECT_NOT_FOUND"}
        if method == "GET":
            return None
        if not headers.get("content-type", "").startswith("application/json"):
            return 415, {}, {"status": "error", "message": "Unsupported Media Type"}
        properties = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(properties, dict) or not properties or set(body) != {"properties"}:
            return 400, {}, {"status": "error", "category": "VALIDATION_ERROR"}
        unknown = sorted(set(properties) - self.defined)
        if unknown:
            message = f"Property values were not valid: {unknown} does not exist"
            return 400, {}, {"status": "error", "category": "VALIDATION_ERROR", "message": message}
        return None

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        ticket_id = self.TICKET.match(path).group(1)  # type: ignore[union-attr]
        if method == "PATCH":
            self.tickets[ticket_id].update(body["properties"])
        return 200, {}, {"id": ticket_id, "properties": dict(self.tickets[ticket_id])}


class FakeCallback(FakeCrm):
    """A receiver of Standard Webhooks callbacks at ``path``: JSON (415 otherwise), the
    signature checked with the ``standardwebhooks`` library (401 when wrong or over 5
    minutes old), the body ``{"type", "timestamp", "data"}``; ``delivered`` keeps each webhook-id's
    first body (a repeat is acknowledged and not kept again, as a receiver using
    the id as idempotency key does)."""

    def __init__(
        self, *, secret: str, path: str = "/hooks/sentiment", failures: Sequence[Failure] = ()
    ) -> None:
        self._webhook = Webhook(secret)
        self.path = path
        self.delivered: dict[str, Any] = {}
        super().__init__(failures)

    def check(
        self, method: str, path: str, headers: dict[str, str], body: Any, raw: bytes
    ) -> Answer | None:
        if path != self.path:
            return 404, {}, {"error": "not found"}
        if method != "POST":
            return 405, {}, {"error": "method not allowed"}
        if not headers.get("content-type", "").startswith("application/json"):
            return 415, {}, {"error": "expected application/json"}
        try:  # the signature covers the raw body
            self._webhook.verify(raw, headers, json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:
            return 401, {}, {"error": f"bad signature: {exc}"}
        if not isinstance(body, dict) or set(body) != {"type", "timestamp", "data"}:
            return 400, {}, {"error": "expected type, timestamp, data"}
        return None

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        self.delivered.setdefault(headers["webhook-id"], body)
        return 204, {}, None

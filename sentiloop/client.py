"""A small HTTP client of the sentiloop API (used by the CLI, benchmarks and tests)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx


class SentiloopAPIError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            f"{response.request.method} {response.request.url}: "
            f"{response.status_code} {response.text[:500]}"
        )
        self.status_code = response.status_code
        self.body = response.text


class SentiloopClient:
    def __init__(self, base_url: str, *, timeout_s: float = 60.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def __enter__(self) -> SentiloopClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _checked(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise SentiloopAPIError(response)
        return response.json()

    def predict(
        self,
        texts: list[str],
        template_version: str | None = None,
        routing_key: str | None = None,
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"texts": texts}
        if template_version is not None:
            body["template_version"] = template_version
        if routing_key is not None:
            body["routing_key"] = routing_key
        return list(self._checked(self._http.post("/v1/predict", json=body))["predictions"])

    def feedback(self, prediction_id: str, **fields: Any) -> dict[str, Any]:
        body = {"prediction_id": prediction_id, **fields}
        return dict(self._checked(self._http.post("/v1/feedback", json=body)))

    def models(self) -> dict[str, Any]:
        return dict(self._checked(self._http.get("/v1/models")))

"""The naive baseline: a transformers pipeline called once per request in a plain ASGI app.

NAIVE_MODEL_DIR=/path/to/model uvicorn bench.naive_app:app --port 8001
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers import pipeline

classifier = pipeline("text-classification", model=os.environ["NAIVE_MODEL_DIR"], top_k=None)


async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    texts = body["texts"] if "texts" in body else [body["text"]]
    outputs: Any = classifier(texts)
    return JSONResponse(
        {"predictions": [{row["label"]: row["score"] for row in output} for output in outputs]}
    )


app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])])

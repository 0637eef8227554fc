"""The honest peer: a plain BentoML service running an ONNX file with ONNX Runtime.

What a team would write in an afternoon from BentoML's documentation: one
service class that loads a transformers tokenizer and an
``onnxruntime.InferenceSession`` (default options: ONNX Runtime picks its
threads) once, and one synchronous API that wraps the request's texts in the
model's input template, tokenizes them (padded to the longest of them), runs
the model and returns label probabilities. BentoML's defaults otherwise: one
worker, one thread for the synchronous API, access logs on. It takes the bodies
sentiloop's /v1/predict takes (``{"text": ...}`` or ``{"texts": [...]}``), so a
benchmark sends both the same requests.

    PEER_ONNX_FILE=model.int8.onnx PEER_MODEL_DIR=/path/to/model \
        PEER_INPUT_TEMPLATE='Customer message: {text}' \
        bentoml serve bench.peer_app:PeerService --port 8002
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml
import numpy as np


@bentoml.service(workers=1)
class PeerService:
    def __init__(self) -> None:
        import onnxruntime
        from transformers import AutoTokenizer

        model_dir = Path(os.environ["PEER_MODEL_DIR"])
        self.max_length = int(os.environ.get("PEER_MAX_LENGTH", "128"))
        self.input_template = os.environ.get("PEER_INPUT_TEMPLATE", "{text}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.session = onnxruntime.InferenceSession(
            os.environ["PEER_ONNX_FILE"], providers=["CPUExecutionProvider"]
        )
        self.input_names = [node.name for node in self.session.get_inputs()]
        config = json.loads((model_dir / "config.json").read_text())
        self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]

    @bentoml.api(route="/v1/predict")
    def predict(
        self, texts: list[str] | None = None, text: str | None = None
    ) -> dict[str, list[dict[str, float]]]:
        batch = [
            self.input_template.format(text=one)
            for one in (texts if texts is not None else [text or ""])
        ]
        encoded = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        feed = {name: encoded[name].astype(np.int64) for name in self.input_names}
        logits = self.session.run(["logits"], feed)[0]
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = (shifted / shifted.sum(axis=-1, keepdims=True)).tolist()
        return {"predictions": [dict(zip(self.labels, row, strict=True)) for row in probabilities]}

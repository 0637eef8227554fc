"""Sentiment classifiers over rendered inputs (torch/ONNX Runtime, no BentoML).

* ``FineTunedClassifier``: a sequence-classification model saved by training,
  run by ONNX Runtime on CPUs (``model.onnx_runtime``) or by torch.
* ``ZeroShotClassifier``: the cold-start model. It embeds the rendered input
  and each label's verbalizer sentences with the base encoder (mean pooling)
  and turns the cosine similarities into scores with a softmax.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from model.corrections import logits_module
from model.labels import LABEL_TO_ID, LABELS, normalize_label
from model.onnx_runtime import cached_onnx_logits
from model.templates import PromptTemplate
from model.tokenization import ChunkTokenizer

logger = logging.getLogger(__name__)

Scores = dict[str, float]
Backend = Literal["torch", "onnx"]
Quantization = Literal["none", "int8"]
# Logits (batch x labels) of tokenized numpy inputs (input_ids, attention_mask, ...).
LogitsFunction = Callable[[Mapping[str, np.ndarray]], np.ndarray]

# Texts are sorted by length and cut into chunks, so that each chunk is padded
# only to its own longest text (dynamic padding). On a CPU a model call costs
# about the same per token at chunks of 4 to 16 texts (one thread alone: 806,
# 816 and 795 texts/s; two calls side by side: 4 beat 8 by ~6%), and 32 is
# slower (749), so small chunks (least padding in a mixed batch) are used
# (bench/cpu_speedups.py); a GPU wants large ones.
CPU_CHUNK_TEXTS = 4
GPU_CHUNK_TEXTS = 64


def chunk_texts_for(device: str) -> int:
    return CPU_CHUNK_TEXTS if device == "cpu" else GPU_CHUNK_TEXTS


ZERO_SHOT_SCALE = 25.0


class Classifier(Protocol):
    version: str
    kind: str
    runtime: str  # what executes it, e.g. "onnx-int8", "torch-fp32"

    def predict(self, rendered: Sequence[str], template: PromptTemplate) -> list[Scores]: ...


def sentiment_model(directory: Path) -> Any:
    """A torch sequence classifier with the label set, from ``directory``: a base
    encoder (a new, randomly initialized head) or a classifier saved earlier."""
    return AutoModelForSequenceClassification.from_pretrained(
        str(directory),
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id=dict(LABEL_TO_ID),
        local_files_only=True,
    )


def torch_logits(model: Any, device: torch.device) -> LogitsFunction:
    """The logits function of a torch sequence-classification model in eval mode."""

    @torch.inference_mode()
    def logits(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        tensors = {name: torch.from_numpy(array).to(device) for name, array in inputs.items()}
        return np.asarray(model(**tensors).logits.float().cpu().numpy())

    return logits


def module_logits(module: torch.nn.Module, device: torch.device) -> LogitsFunction:
    """The logits function of a ``model.corrections.logits_module`` in eval mode."""

    @torch.inference_mode()
    def logits(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        tensors = {name: torch.from_numpy(array).to(device) for name, array in inputs.items()}
        return np.asarray(module(**tensors).float().cpu().numpy())

    return logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


def classify_texts(
    logits: LogitsFunction,
    tokenizer: ChunkTokenizer,
    texts: Sequence[str],
    *,
    id2label: Mapping[int, str],
    chunk_texts: int = CPU_CHUNK_TEXTS,
) -> list[Scores]:
    """Label probabilities per text, from a logits function over tokenized chunks."""
    results: list[Scores] = [{} for _ in texts]
    for chunk, inputs in tokenizer.chunks(texts, chunk_texts):
        probabilities = _softmax(logits(inputs)).tolist()
        for row, index in enumerate(chunk):
            results[index] = {
                id2label[class_id]: probability
                for class_id, probability in enumerate(probabilities[row])
            }
    return results


class FineTunedClassifier:
    """A model saved by training, run by ONNX Runtime (CPU) or torch.

    ``backend="onnx"`` exports the model once to ``onnx_cache_dir`` (int8 when
    ``quantize="int8"``); ``backend="torch"`` runs it eagerly (int8: torch's
    dynamic quantization of the linear layers).
    """

    kind = "fine-tuned"

    def __init__(
        self,
        directory: Path,
        *,
        version: str,
        device: str = "cpu",
        max_length: int = 128,
        quantize: Quantization = "none",
        backend: Backend = "torch",
        onnx_cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.version = version
        self.directory = directory
        self.chunk_texts = chunk_texts_for(device)
        self.runtime = f"{backend}-{'fp32' if quantize == 'none' else quantize}"
        self.tokenizer = ChunkTokenizer(
            AutoTokenizer.from_pretrained(str(directory), local_files_only=True), max_length
        )
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        id2label = {int(i): normalize_label(name) for i, name in config.id2label.items()}
        if sorted(id2label.values()) != sorted(LABELS):
            raise ValueError(
                f"model in {directory} has labels {sorted(id2label.values())}; "
                f"expected {list(LABELS)}"
            )
        self._id2label = id2label
        if quantize != "none" and device != "cpu":
            raise ValueError(f"{quantize} quantization runs on the CPU; use quantize=none")
        if backend == "onnx":
            if device != "cpu":
                raise ValueError("the onnx backend runs on the CPU; use backend=torch on GPUs")
            if onnx_cache_dir is None:
                raise ValueError("the onnx backend needs a cache directory for the export")
            self._logits: LogitsFunction = cached_onnx_logits(
                directory, onnx_cache_dir, quantize=quantize, threads=threads
            )
            return
        module = logits_module(directory).to(torch.device(device))
        if quantize == "int8":
            module = torch.ao.quantization.quantize_dynamic(
                module, {torch.nn.Linear}, dtype=torch.qint8
            )
        self._logits = module_logits(module, torch.device(device))

    def predict(self, rendered: Sequence[str], template: PromptTemplate) -> list[Scores]:
        return classify_texts(
            self._logits,
            self.tokenizer,
            rendered,
            id2label=self._id2label,
            chunk_texts=self.chunk_texts,
        )


def zero_shot_version(base_model: Path) -> str:
    """``zero-shot:<base model directory name>`` (the package name for the packaged model)."""
    name = base_model.name if base_model.name != "model" else base_model.parent.name
    return f"zero-shot:{name}"


class ZeroShotClassifier:
    kind = "zero-shot"

    def __init__(self, base_model: Path, *, device: str = "cpu", max_length: int = 128) -> None:
        self.version = zero_shot_version(base_model)
        self.runtime = "torch-fp32"
        self.device = torch.device(device)
        self.tokenizer = ChunkTokenizer(
            AutoTokenizer.from_pretrained(str(base_model), local_files_only=True), max_length
        )
        self.encoder = AutoModel.from_pretrained(str(base_model), local_files_only=True)
        self.encoder = self.encoder.to(self.device).eval()
        self._label_embeddings: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized mean-pooled embeddings, one row per text."""
        rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        for chunk, inputs in self.tokenizer.chunks(texts, chunk_texts_for(self.device.type)):
            encoded = {name: torch.from_numpy(a).to(self.device) for name, a in inputs.items()}
            hidden = self.encoder(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
            for row, index in enumerate(chunk):
                rows[index] = pooled[row]
        return torch.stack(rows)

    def label_embeddings(self, template: PromptTemplate) -> torch.Tensor:
        """One normalized centroid of the verbalizer sentences per label, cached per template."""
        cached = self._label_embeddings.get(template.sha256)
        if cached is None:
            centroids = []
            for label in LABELS:
                centroid = self.embed(template.verbalizers[label]).mean(dim=0)
                centroids.append(torch.nn.functional.normalize(centroid, dim=-1))
            cached = torch.stack(centroids)
            self._label_embeddings[template.sha256] = cached
        return cached

    def predict(self, rendered: Sequence[str], template: PromptTemplate) -> list[Scores]:
        if not rendered:
            return []
        similarities = self.embed(rendered) @ self.label_embeddings(template).T
        probabilities = torch.softmax(similarities * ZERO_SHOT_SCALE, dim=-1)
        return [
            {label: float(row[index]) for index, label in enumerate(LABELS)}
            for row in probabilities
        ]

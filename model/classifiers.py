"""Sentiment classifiers over rendered inputs (torch/ONNX Runtime, no BentoML).

* ``FineTunedClassifier``: a sequence-classification model saved by training,
  run by ONNX Runtime on CPUs (``model.onnx_runtime``) or by torch.
* ``ZeroShotClassifier``: the cold-start model. It embeds the rendered input
  and each label's verbalizer sentences with the base encoder (mean pooling)
  and turns the cosine similarities into scores with a softmax.

torch and transformers are imported by the code that runs them (the torch
backend, the zero-shot model, training's helpers), never at import: a model
process serving on ONNX Runtime does without them (~240 MB of its memory).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from model.labels import LABEL_TO_ID, LABELS, normalize_label
from model.onnx_runtime import cached_onnx_logits
from model.templates import PromptTemplate
from model.tokenization import ChunkTokenizer, serving_tokenizer

if TYPE_CHECKING:
    import torch

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

    def predict(
        self, rendered: Sequence[str], template: PromptTemplate, *, alone: bool = False
    ) -> list[Scores]:
        """Scores per rendered text. ``alone``: no other model call runs on the machine
        now, so this one may use every core (where the runtime can)."""
        ...


def sentiment_model(directory: Path) -> Any:
    """A torch sequence classifier with the label set, from ``directory``: a base
    encoder (a new, randomly initialized head) or a classifier saved earlier."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(directory),
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id=dict(LABEL_TO_ID),
        local_files_only=True,
    )


def torch_logits(model: Any, device: torch.device) -> LogitsFunction:
    """The logits function of a torch sequence-classification model in eval mode."""
    import torch

    @torch.inference_mode()
    def logits(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        tensors = {name: torch.from_numpy(array).to(device) for name, array in inputs.items()}
        return np.asarray(model(**tensors).logits.float().cpu().numpy())

    return logits


def module_logits(module: torch.nn.Module, device: torch.device) -> LogitsFunction:
    """The logits function of a ``model.correction_modules.logits_module`` in eval mode."""
    import torch

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


def saved_labels(directory: Path) -> dict[int, str]:
    """The label of each class id of the classifier saved in ``directory`` (its config.json)."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    id2label: dict[int, str] = {
        int(i): normalize_label(name) for i, name in config.get("id2label", {}).items()
    }
    if sorted(id2label.values()) != sorted(LABELS):
        raise ValueError(
            f"model in {directory} has labels {sorted(id2label.values())}; expected {list(LABELS)}"
        )
    return id2label


def _torch_model(
    directory: Path, device: str, max_length: int, quantize: Quantization, threads: int | None
) -> tuple[ChunkTokenizer, LogitsFunction]:
    """The tokenizer and logits function of ``directory``'s model run by torch."""
    import torch
    from transformers import AutoTokenizer

    from model.correction_modules import logits_module

    if threads:
        torch.set_num_threads(threads)
    tokenizer = ChunkTokenizer.from_transformers(
        AutoTokenizer.from_pretrained(str(directory), local_files_only=True), max_length
    )
    module = logits_module(directory).to(torch.device(device))
    if quantize == "int8":
        module = torch.ao.quantization.quantize_dynamic(
            module, {torch.nn.Linear}, dtype=torch.qint8
        )
    return tokenizer, module_logits(module, torch.device(device))


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
        alone_threads: int | None = None,
    ) -> None:
        self.version = version
        self.directory = directory
        self.chunk_texts = chunk_texts_for(device)
        self.runtime = f"{backend}-{'fp32' if quantize == 'none' else quantize}"
        self._id2label = saved_labels(directory)
        if quantize != "none" and device != "cpu":
            raise ValueError(f"{quantize} quantization runs on the CPU; use quantize=none")
        if backend == "onnx":
            if device != "cpu":
                raise ValueError("the onnx backend runs on the CPU; use backend=torch on GPUs")
            if onnx_cache_dir is None:
                raise ValueError("the onnx backend needs a cache directory for the export")
            logits = cached_onnx_logits(
                directory,
                onnx_cache_dir,
                quantize=quantize,
                threads=threads,
                alone_threads=alone_threads,
            )
            # The inputs the export took are those the tokenizer names (model.onnx_runtime).
            self.tokenizer = serving_tokenizer(
                directory, onnx_cache_dir, max_length, input_names=logits.input_names
            )
            self._logits: LogitsFunction = logits
            self._alone_logits: LogitsFunction = functools.partial(logits, alone=True)
            return
        self.tokenizer, self._logits = _torch_model(
            directory, device, max_length, quantize, threads
        )
        self._alone_logits = self._logits

    def predict(
        self, rendered: Sequence[str], template: PromptTemplate, *, alone: bool = False
    ) -> list[Scores]:
        return classify_texts(
            self._alone_logits if alone else self._logits,
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
    """Runs on torch (imported here, as the model loads)."""

    kind = "zero-shot"

    def __init__(
        self,
        base_model: Path,
        *,
        device: str = "cpu",
        max_length: int = 128,
        threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.version = zero_shot_version(base_model)
        self.runtime = "torch-fp32"
        self.device = torch.device(device)
        self.tokenizer = ChunkTokenizer.from_transformers(
            AutoTokenizer.from_pretrained(str(base_model), local_files_only=True), max_length
        )
        self.encoder = AutoModel.from_pretrained(str(base_model), local_files_only=True)
        self.encoder = self.encoder.to(self.device).eval()
        self._label_embeddings: dict[str, torch.Tensor] = {}

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized mean-pooled embeddings, one row per text."""
        import torch

        rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        with torch.inference_mode():
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
        import torch

        cached = self._label_embeddings.get(template.sha256)
        if cached is None:
            centroids = []
            for label in LABELS:
                centroid = self.embed(template.verbalizers[label]).mean(dim=0)
                centroids.append(torch.nn.functional.normalize(centroid, dim=-1))
            cached = torch.stack(centroids)
            self._label_embeddings[template.sha256] = cached
        return cached

    def predict(
        self, rendered: Sequence[str], template: PromptTemplate, *, alone: bool = False
    ) -> list[Scores]:
        import torch

        if not rendered:
            return []
        similarities = self.embed(rendered) @ self.label_embeddings(template).T
        probabilities = torch.softmax(similarities * ZERO_SHOT_SCALE, dim=-1)
        return [
            {label: float(row[index]) for index, label in enumerate(LABELS)}
            for row in probabilities
        ]

"""Sentiment classifiers over rendered inputs (plain torch/transformers, no BentoML).

* ``FineTunedClassifier``: a sequence-classification model saved by training.
* ``ZeroShotClassifier``: the cold-start model. It embeds the rendered input
  and each label's verbalizer sentences with the base encoder (mean pooling)
  and turns the cosine similarities into scores with a softmax.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from service.labels import LABELS, normalize_label
from service.templates import PromptTemplate

logger = logging.getLogger(__name__)

Scores = dict[str, float]

# Texts are sorted by length and cut into chunks of this size, so that each
# chunk is padded only to its own longest text (dynamic padding).
INFERENCE_CHUNK = 32
ZERO_SHOT_SCALE = 25.0


class Classifier(Protocol):
    version: str
    kind: str

    def predict(self, rendered: Sequence[str], template: PromptTemplate) -> list[Scores]: ...


def _length_sorted_chunks(texts: Sequence[str], size: int) -> list[list[int]]:
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    return [order[start : start + size] for start in range(0, len(order), size)]


def _encoded_chunks(
    tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device
) -> Iterator[tuple[list[int], Any]]:
    """(indices, tokenized chunk) per length-sorted chunk, each padded to its longest text."""
    for chunk in _length_sorted_chunks(texts, INFERENCE_CHUNK):
        encoded = tokenizer(
            [texts[index] for index in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        yield chunk, encoded.to(device)


@torch.inference_mode()
def classify_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    device: torch.device,
    id2label: Mapping[int, str],
) -> list[Scores]:
    """Label probabilities of a sequence-classification model (in eval mode) per text."""
    results: list[Scores] = [{} for _ in texts]
    for chunk, encoded in _encoded_chunks(tokenizer, texts, max_length, device):
        probabilities = torch.softmax(model(**encoded).logits.float(), dim=-1).cpu()
        for row, index in enumerate(chunk):
            results[index] = {
                id2label[class_id]: float(probabilities[row, class_id])
                for class_id in range(probabilities.shape[1])
            }
    return results


class FineTunedClassifier:
    kind = "fine-tuned"

    def __init__(
        self,
        directory: Path,
        *,
        version: str,
        device: str = "cpu",
        max_length: int = 128,
        quantize: str = "none",
    ) -> None:
        self.version = version
        self.directory = directory
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(directory), local_files_only=True
        )
        model = model.to(self.device).eval()
        if quantize == "int8":
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
        self.model = model
        id2label = {int(i): normalize_label(name) for i, name in model.config.id2label.items()}
        if sorted(id2label.values()) != sorted(LABELS):
            raise ValueError(
                f"model in {directory} has labels {sorted(id2label.values())}; "
                f"expected {list(LABELS)}"
            )
        self._id2label = id2label

    def predict(self, rendered: Sequence[str], template: PromptTemplate) -> list[Scores]:
        return classify_texts(
            self.model,
            self.tokenizer,
            rendered,
            max_length=self.max_length,
            device=self.device,
            id2label=self._id2label,
        )


def zero_shot_version(base_model: Path) -> str:
    """``zero-shot:<base model directory name>`` (the package name for the packaged model)."""
    name = base_model.name if base_model.name != "model" else base_model.parent.name
    return f"zero-shot:{name}"


class ZeroShotClassifier:
    kind = "zero-shot"

    def __init__(self, base_model: Path, *, device: str = "cpu", max_length: int = 128) -> None:
        self.version = zero_shot_version(base_model)
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
        self.encoder = AutoModel.from_pretrained(str(base_model), local_files_only=True)
        self.encoder = self.encoder.to(self.device).eval()
        self._label_embeddings: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized mean-pooled embeddings, one row per text."""
        rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        for chunk, encoded in _encoded_chunks(self.tokenizer, texts, self.max_length, self.device):
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

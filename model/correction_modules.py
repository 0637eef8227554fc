"""The torch side of a correction (``model.corrections``): the features a correction
is fitted on and the modules that compute a model's logits, corrected where its gate
opens. Used by training, the torch backend and the ONNX export; never on the ONNX
serving path (torch is not loaded there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.corrections import WEIGHTS_FILE, is_correction, read_config


def _pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalized mean of the states of the real (unpadded) tokens."""
    summed = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed, dim=-1)


def gate_layer_of(model: Any) -> int:
    """The parent's middle layer (6 of 12, 3 of 6): ``hidden_states`` index."""
    return max(1, int(model.config.num_hidden_layers) // 2)


def features(model: Any, gate_layer: int, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The parent's logits, the gate's features and the residual's features of a batch."""
    output = model(**inputs, output_hidden_states=True)
    mask = inputs["attention_mask"].unsqueeze(-1).to(output.hidden_states[0].dtype)
    last = output.hidden_states[-1]
    residual_features = torch.cat(
        [_pooled(last, mask), torch.nn.functional.normalize(last[:, 0], dim=-1)], dim=-1
    )
    return output.logits, _pooled(output.hidden_states[gate_layer], mask), residual_features


class CorrectedLogits(torch.nn.Module):
    """The parent's logits, plus the residual where the gate is open."""

    def __init__(self, model: Any, tensors: dict[str, torch.Tensor], config: dict[str, Any]):
        super().__init__()
        self.model = model
        self.gate_layer = int(config["gate_layer"])
        self.threshold = float(config["threshold"])
        self.keys: torch.Tensor
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.register_buffer("keys", tensors["keys"].float())
        self.register_buffer("weight", tensors["weight"].float())
        self.register_buffer("bias", tensors["bias"].float())

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        logits, gate_features, residual_features = features(self.model, self.gate_layer, **inputs)
        similarity = (gate_features @ self.keys.T).max(dim=-1).values
        open_gate = (similarity >= self.threshold).to(logits.dtype).unsqueeze(-1)
        return logits + open_gate * (residual_features @ self.weight.T + self.bias)


class PlainLogits(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**inputs).logits


def logits_module(directory: Path, **load: Any) -> torch.nn.Module:
    """What computes the logits of the model in ``directory`` (in eval mode): its
    sequence classifier, corrected when the directory holds a correction. ``load``
    goes to ``from_pretrained`` (e.g. ``attn_implementation``)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(directory), local_files_only=True, **load
    ).eval()
    if not is_correction(directory):
        return PlainLogits(model).eval()
    tensors = load_file(str(directory / WEIGHTS_FILE))
    return CorrectedLogits(model, tensors, read_config(directory)).eval()

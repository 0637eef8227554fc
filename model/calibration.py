"""Temperature scaling (Guo et al., 2017): one scalar T that divides the logits,
fitted on held-out rows by minimizing the negative log-likelihood, then folded
into the classification head (weights and bias divided by T) so that every
runtime serving the saved model returns calibrated probabilities unchanged."""

from __future__ import annotations

import numpy as np
import torch

# T is searched in log space; outside these bounds a fit means broken inputs.
_MIN_T, _MAX_T = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimizing the mean NLL of ``softmax(logits / T)`` for ``labels`` (class ids)."""
    if len(logits) == 0:
        return 1.0
    values = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(values / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(float(log_t.detach().exp()), _MIN_T, _MAX_T))


@torch.no_grad()
def fold_temperature(head: torch.nn.Linear, temperature: float) -> None:
    """Divide the head's output by ``temperature`` (in place)."""
    head.weight.div_(temperature)
    if head.bias is not None:
        head.bias.div_(temperature)

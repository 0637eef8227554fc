"""The service's Prometheus metrics (bounded label sets only: never texts or ids).

Built through ``bentoml.metrics`` so that BentoML's multiprocess collection
serves them on ``/metrics`` next to its own ``bentoml_service_*`` metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import bentoml


class ServiceMetrics:
    def __init__(self) -> None:
        self.predictions = bentoml.metrics.Counter(
            name="sentiloop_predictions",
            documentation="Predictions served, by label, model version and template version.",
            labelnames=["label", "model_version", "template_version"],
        )
        self.confidence = bentoml.metrics.Histogram(
            name="sentiloop_prediction_confidence",
            documentation="Probability of the predicted label.",
            labelnames=["model_version", "template_version"],
            buckets=(0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
        )
        self.feedback = bentoml.metrics.Counter(
            name="sentiloop_feedback",
            documentation="Feedback stored, by kind and agreement with the prediction.",
            labelnames=["kind", "agrees", "model_version", "template_version"],
        )
        self.log_dropped = bentoml.metrics.Counter(
            name="sentiloop_prediction_log_dropped",
            documentation="Prediction records not logged because the log queue was full.",
        )
        self.log_written = bentoml.metrics.Counter(
            name="sentiloop_prediction_log_written",
            documentation="Prediction records written to the database.",
        )
        self.log_write_errors = bentoml.metrics.Counter(
            name="sentiloop_prediction_log_write_errors",
            documentation="Failed prediction-log batch writes (each retried).",
        )
        self.log_queue_depth = bentoml.metrics.Gauge(
            name="sentiloop_prediction_log_queue_depth",
            documentation="Prediction records waiting to be written.",
            multiprocess_mode="livesum",
        )
        self.db_write_seconds = bentoml.metrics.Histogram(
            name="sentiloop_db_write_seconds",
            documentation="Latency of database writes, by operation.",
            labelnames=["operation"],
        )

    def observe_predictions(
        self, labels: Sequence[str], confidences: Sequence[float], model: str, template: str
    ) -> None:
        for label, confidence in zip(labels, confidences, strict=True):
            self.predictions.labels(label, model, template).inc()
            self.confidence.labels(model, template).observe(confidence)

    # PredictionLogWriter observer protocol
    def written(self, count: int, seconds: float) -> None:
        self.log_written.inc(count)
        self.db_write_seconds.labels("prediction_log").observe(seconds)

    def dropped(self, count: int) -> None:
        self.log_dropped.inc(count)

    def write_failed(self) -> None:
        self.log_write_errors.inc()

    def queue_depth(self, depth: int) -> None:
        self.log_queue_depth.set(depth)

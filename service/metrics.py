"""Every Prometheus metric sentiloop exports, in one place.

Label sets are bounded: labels, kinds, template versions and the few model
versions in use; never user text, ids or routing keys. Metrics are created
through ``bentoml.metrics`` (a proxy of prometheus-client) so that BentoML's
multiprocess collection serves them on ``/metrics`` next to its own
``bentoml_service_*`` metrics, correctly summed over workers. Gauges derived
from the database (feedback accuracy, training runs) hold the same value in
every worker, so they are combined with ``livemax``.

``ApiMetrics`` covers requests, feedback and the database; ``ModelMetrics`` the
models each worker serves and its batching.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import bentoml

CONFIDENCE_BUCKETS = (0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ApiMetrics:
    def __init__(self) -> None:
        m = bentoml.metrics
        self._split_arms: set[tuple[str, str]] = set()
        self.predictions = m.Counter(
            name="sentiloop_predictions",
            documentation="Predictions served, by label, model version, template version and "
            "language (ISO 639-1 for common languages, und: undetermined, other).",
            labelnames=["label", "model_version", "template_version", "language"],
        )
        self.unsupported_language = m.Counter(
            name="sentiloop_unsupported_language_predictions",
            documentation="Predictions of texts in a language the serving model was not "
            "trained on, or whose language could not be told (und) (answered, flagged "
            "language_supported=false).",
            labelnames=["model_version", "language"],
        )
        self.confidence = m.Histogram(
            name="sentiloop_prediction_confidence",
            documentation="Probability of the predicted label.",
            labelnames=["model_version", "template_version"],
            buckets=CONFIDENCE_BUCKETS,
        )
        self.request_texts = m.Histogram(
            name="sentiloop_request_texts",
            documentation="Texts per /v1/predict request.",
            buckets=SIZE_BUCKETS,
        )
        self.feedback = m.Counter(
            name="sentiloop_feedback",
            documentation="Feedback stored, by kind and agreement with the prediction.",
            labelnames=["kind", "agrees", "model_version", "template_version"],
        )
        self.feedback_accuracy = m.Gauge(
            name="sentiloop_feedback_accuracy",
            documentation="Share of predictions judged over the rolling window whose latest "
            "feedback agrees with them (from the database, all replicas), by model and "
            "template version.",
            labelnames=["model_version", "template_version"],
            multiprocess_mode="livemax",
        )
        self.feedback_accuracy_by_language = m.Gauge(
            name="sentiloop_feedback_accuracy_by_language",
            documentation="Share of predictions judged over the rolling window whose latest "
            "feedback agrees with them, by language of the text (all models and templates).",
            labelnames=["language"],
            multiprocess_mode="livemax",
        )
        self.experiment_agreement = m.Gauge(
            name="sentiloop_experiment_agreement",
            documentation="A/B arms over the feedback window: agreement of the latest "
            "feedback per prediction (bound=estimate) and its 95% Wilson interval "
            "(bound=low|high).",
            labelnames=["template_version", "model_version", "bound"],
            multiprocess_mode="livemax",
        )
        self.feedback_window = m.Gauge(
            name="sentiloop_feedback_window_rows",
            documentation="Predictions judged in the rolling window behind "
            "sentiloop_feedback_accuracy (each once, however often judged).",
            labelnames=["model_version", "template_version"],
            multiprocess_mode="livemax",
        )
        self.log_dropped = m.Counter(
            name="sentiloop_prediction_log_dropped",
            documentation="Prediction records not logged because the log queue was full.",
        )
        self.log_written = m.Counter(
            name="sentiloop_prediction_log_written",
            documentation="Prediction records written to the database.",
        )
        self.log_spooled = m.Counter(
            name="sentiloop_prediction_log_spooled",
            documentation="Prediction records written to the disk spool (database down).",
        )
        self.log_replayed = m.Counter(
            name="sentiloop_prediction_log_replayed",
            documentation="Spooled prediction records replayed into the database.",
        )
        self.log_quarantined = m.Counter(
            name="sentiloop_prediction_log_quarantined",
            documentation="Prediction records the database refused (kept in the spool's "
            "quarantine folder, never retried).",
        )
        self.log_degraded = m.Gauge(
            name="sentiloop_prediction_log_degraded",
            documentation="1 while prediction-log writes fail (records wait in the spool or "
            "in memory), else 0.",
            multiprocess_mode="livemax",
        )
        self.log_queue_depth = m.Gauge(
            name="sentiloop_prediction_log_queue_depth",
            documentation="Prediction records waiting to be written.",
            multiprocess_mode="livesum",
        )
        self.db_write_seconds = m.Histogram(
            name="sentiloop_db_write_seconds",
            documentation="Latency of database writes, by operation.",
            labelnames=["operation"],
        )
        self.db_errors = m.Counter(
            name="sentiloop_db_errors",
            documentation="Failed database operations, by operation.",
            labelnames=["operation"],
        )
        for operation in ("prediction_log", "feedback"):
            self.db_errors.labels(operation)  # export 0 before the first error
        self.traffic_share = m.Gauge(
            name="sentiloop_traffic_share",
            documentation="Configured share of traffic per A/B arm.",
            labelnames=["template_version", "model"],
            multiprocess_mode="livemax",
        )
        self.training_runs = m.Gauge(
            name="sentiloop_training_runs",
            documentation="Recorded training runs, by status and decision (from the database).",
            labelnames=["status", "decision"],
            multiprocess_mode="livemax",
        )
        self.training_last_duration = m.Gauge(
            name="sentiloop_training_last_duration_seconds",
            documentation="Duration of the newest finished training run.",
            multiprocess_mode="livemax",
        )
        self.training_last_finished = m.Gauge(
            name="sentiloop_training_last_finished_timestamp_seconds",
            documentation="End time of the newest finished training run (Unix seconds).",
            multiprocess_mode="livemax",
        )
        self.training_last_metric = m.Gauge(
            name="sentiloop_training_last_metric",
            documentation="Metrics of the newest successful run, by split, model and metric.",
            labelnames=["split", "model", "metric"],
            multiprocess_mode="livemax",
        )
        self.training_last_promoted = m.Gauge(
            name="sentiloop_training_last_promoted",
            documentation="1 if the newest successful run promoted its candidate, else 0.",
            multiprocess_mode="livemax",
        )
        self.training_last_recall = m.Gauge(
            name="sentiloop_training_last_class_recall",
            documentation="Recall of each class in the newest successful run, by split and "
            "model (candidate, champion): a class that collapses shows before promotion.",
            labelnames=["split", "model", "label"],
            multiprocess_mode="livemax",
        )
        self.training_last_language_metric = m.Gauge(
            name="sentiloop_training_last_language_metric",
            documentation="Accuracy and macro-F1 of each language of a holdout in the newest "
            "successful run, by split and model (languages as in sentiloop_predictions; "
            "NaN: not in the newest run).",
            labelnames=["split", "model", "language", "metric"],
            multiprocess_mode="livemax",
        )
        self.training_last_traffic = m.Gauge(
            name="sentiloop_training_last_traffic_share",
            documentation="The newest successful run's traffic guard, per language: share of "
            "recent answers outside the feedback the candidate changes (share=changed) and "
            "share the corrections asked to change (share=corrected); NaN: not in that run.",
            labelnames=["language", "share"],
            multiprocess_mode="livemax",
        )
        self._training_series: set[tuple[str, ...]] = set()

    def observe_prediction(
        self,
        label: str,
        confidence: float,
        model: str,
        template: str,
        language: str,
        language_supported: bool,
    ) -> None:
        self.predictions.labels(label, model, template, language).inc()
        self.confidence.labels(model, template).observe(confidence)
        if not language_supported:
            self.unsupported_language.labels(model, language).inc()

    def set_traffic_split(self, arms: Iterable[Mapping[str, Any]]) -> None:
        shares = {(arm["template_version"], arm["model"]): arm["share"] for arm in arms}
        for gone in self._split_arms - shares.keys():  # arms that left the split
            self.traffic_share.labels(*gone).set(0)
        for key, share in shares.items():
            self.traffic_share.labels(*key).set(share)
        self._split_arms = set(shares)

    def set_training_languages(
        self,
        languages: Mapping[tuple[str, str, str, str], float],
        traffic: Mapping[tuple[str, str], float],
    ) -> None:
        """The newest run's per-language figures; a series of an earlier run that the
        newest lacks turns NaN (a gauge series cannot be removed across workers)."""
        current: set[tuple[str, ...]] = {("metric", *key) for key in languages}
        current |= {("traffic", *key) for key in traffic}
        for gone in self._training_series - current:
            gauge = (
                self.training_last_language_metric
                if gone[0] == "metric"
                else (self.training_last_traffic)
            )
            gauge.labels(*gone[1:]).set(float("nan"))
        for key, value in languages.items():
            self.training_last_language_metric.labels(*key).set(value)
        for key2, value in traffic.items():
            self.training_last_traffic.labels(*key2).set(value)
        self._training_series = current

    # PredictionLogWriter observer protocol
    def written(self, count: int, seconds: float) -> None:
        self.log_written.inc(count)
        self.db_write_seconds.labels("prediction_log").observe(seconds)

    def dropped(self, count: int) -> None:
        self.log_dropped.inc(count)

    def write_failed(self) -> None:
        self.db_errors.labels("prediction_log").inc()

    def queue_depth(self, depth: int) -> None:
        self.log_queue_depth.set(depth)

    def spooled(self, count: int) -> None:
        self.log_spooled.inc(count)

    def replayed(self, count: int) -> None:
        self.log_replayed.inc(count)

    def quarantined(self, count: int) -> None:
        self.log_quarantined.inc(count)

    def degraded(self, is_degraded: bool) -> None:
        self.log_degraded.set(1 if is_degraded else 0)


class ModelMetrics:
    def __init__(self) -> None:
        m = bentoml.metrics
        self.batch_size = m.Histogram(
            name="sentiloop_model_batch_size",
            documentation="Texts scored per model call (after adaptive batching).",
            buckets=SIZE_BUCKETS,
        )
        self.batch_requests = m.Histogram(
            name="sentiloop_model_batch_requests",
            documentation="Requests sharing one model call (after adaptive batching).",
            buckets=SIZE_BUCKETS,
        )
        self.call_seconds = m.Histogram(
            name="sentiloop_model_call_seconds",
            documentation="Duration of a batch from its dispatch to its answer: the model call "
            "(tokenization and inference), the hop to a model process and back, and any wait "
            "there behind the batch before it (a model process holds two).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.alone_calls = m.Counter(
            name="sentiloop_model_alone_calls",
            documentation="Model calls that ran alone (no other batch in flight or waiting), "
            "on every core; of all calls: sentiloop_model_call_seconds_count.",
        )
        self.serving = m.Gauge(
            name="sentiloop_serving_model_info",
            documentation="1 for the model serving each reference (champion, challenger, ...).",
            labelnames=["reference", "model_version", "kind"],
            multiprocess_mode="livemax",
        )
        self.reference_label_share = m.Gauge(
            name="sentiloop_reference_label_share",
            documentation="Label mix of the model's training data (the drift reference).",
            labelnames=["model_version", "label"],
            multiprocess_mode="livemax",
        )
        self.reference_confidence = m.Gauge(
            name="sentiloop_reference_mean_confidence",
            documentation="Mean confidence of the model on its holdout (the drift reference).",
            labelnames=["model_version"],
            multiprocess_mode="livemax",
        )
        self.reference_accuracy = m.Gauge(
            name="sentiloop_reference_accuracy",
            documentation="Accuracy of the model on its holdout (shipped: its served test "
            "set): the bar for the estimate sentiloop:estimated_accuracy:1h.",
            labelnames=["model_version"],
            multiprocess_mode="livemax",
        )
        self.swaps = m.Counter(
            name="sentiloop_model_swaps",
            documentation="Live model switches, by reference (counted in every worker).",
            labelnames=["reference"],
        )
        self.process_restarts = m.Counter(
            name="sentiloop_model_process_restarts",
            documentation="Model processes replaced after they died or missed a deadline.",
        )
        self.load_errors = m.Counter(
            name="sentiloop_model_load_errors",
            documentation="Models that failed to load (the previous one kept serving), "
            "counted in every worker.",
        )
        self._serving: dict[str, tuple[str, str]] = {}

    # MicroBatcher observer protocol
    def batch_scored(self, texts: int, requests: int, seconds: float, alone: bool) -> None:
        self.batch_size.observe(texts)
        self.batch_requests.observe(requests)
        self.call_seconds.observe(seconds)
        if alone:
            self.alone_calls.inc()

    def process_restarted(self) -> None:
        self.process_restarts.inc()

    # Scorer observer protocol
    def load_failed(self) -> None:
        self.load_errors.inc()

    def model_serving(
        self, reference: str, version: str, kind: str, metadata: Mapping[str, Any]
    ) -> None:
        previous = self._serving.get(reference)
        if previous == (version, kind):
            return
        if previous is None:
            self.swaps.labels(reference)  # export 0 before the first swap
        else:
            self.serving.labels(reference, *previous).set(0)
            self.swaps.labels(reference).inc()
        self.serving.labels(reference, version, kind).set(1)
        self._serving[reference] = (version, kind)
        drift_reference = metadata.get("reference", {})
        for label, share in drift_reference.get("label_share", {}).items():
            self.reference_label_share.labels(version, label).set(share)
        if "accuracy" in drift_reference:
            self.reference_accuracy.labels(version).set(drift_reference["accuracy"])
        if "mean_confidence" in drift_reference:
            self.reference_confidence.labels(version).set(drift_reference["mean_confidence"])


class WebhookMetrics:
    """CRM webhooks: deliveries by outcome, events by what became of them, the inbox,
    and the labels written back to the tickets (the outbox, its dead letters)."""

    def __init__(self) -> None:
        m = bentoml.metrics
        self.deliveries = m.Counter(
            name="sentiloop_webhook_deliveries",
            documentation="Webhook requests by connector and outcome: accepted (stored, "
            "or all duplicates/ignored), unsigned_refused, signature (401), origin (403: "
            "a Salesforce org not configured), invalid (400), off (404 for a configured "
            "name without a secret), unavailable (503).",
            labelnames=["connector", "outcome"],
        )
        self.events = m.Counter(
            name="sentiloop_webhook_events",
            documentation="Webhook events by connector and fate: stored (to score, or "
            "feedback to apply), "
            "duplicate (an event id already in the inbox: a retry or replay), unsupported "
            "(an event type that is not scored, or no text: acknowledged).",
            labelnames=["connector", "fate"],
        )
        self.scored = m.Counter(
            name="sentiloop_webhook_scored",
            documentation="Inbox events by connector and result: scored, retry (an "
            "attempt failed), failed (given up).",
            labelnames=["connector", "result"],
        )
        self.feedback = m.Counter(
            name="sentiloop_webhook_feedback",
            documentation="Feedback from CRM webhooks (SENTILOOP_WEBHOOK_FEEDBACK) by "
            "connector and result: stored, replayed (stored before: applied again after a "
            "crash), unmatched (no prediction of the ticket: acknowledged, not applied), "
            "retry (an attempt failed), failed (given up).",
            labelnames=["connector", "result"],
        )
        self.inbox = m.Gauge(
            name="sentiloop_webhook_inbox",
            documentation="Inbox rows by status (pending: waiting to be scored or applied; "
            "failed: given up; unmatched: feedback on a ticket without a prediction; both "
            "listed and replayed by sentiloop webhooks), from the database.",
            labelnames=["status"],
            multiprocess_mode="livemax",
        )
        self.writebacks = m.Counter(
            name="sentiloop_writeback",
            documentation="Write-backs of labels to CRM tickets by connector and result: sent, "
            "retry (an attempt failed; retried), dead (given up: sentiloop writeback list "
            "--status dead), superseded (a newer label of the ticket replaced it unsent).",
            labelnames=["connector", "result"],
        )
        self.outbox = m.Gauge(
            name="sentiloop_writeback_outbox",
            documentation="Write-back outbox rows by status (pending: to send or waiting "
            "for a retry; dead: dead letters, to replay), from the database.",
            labelnames=["status"],
            multiprocess_mode="livemax",
        )

"""The one settings object; built once at the edge and passed down.

Every value can be set by an environment variable named ``SENTILOOP_<FIELD>``
(``DATABASE_URL`` is accepted as well for the database).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

TextStorage = Literal["raw", "redacted", "none"]

CHAMPION = "champion"
CHALLENGER = "challenger"
ZERO_SHOT = "zero-shot"


class TrafficArm(BaseModel):
    """One share of traffic: a template version served by a model.

    ``model`` is ``champion`` (the promoted model, or the zero-shot model when
    none exists), ``challenger`` (the newest candidate that was not promoted;
    the champion while there is none), ``zero-shot``, or a BentoML model tag
    such as ``sentiloop-sentiment:abc123``.
    """

    template_version: str = Field(min_length=1)
    model: str = Field(default=CHAMPION, min_length=1)
    weight: float = Field(gt=0)


class GenericMapping(BaseModel):
    """Where the generic connector finds each field of a delivery, as singular JSONPath
    queries (``$.a.b[0].c``). ``event_type`` with ``event_types``: only those types are
    scored, the others acknowledged; the event id is the ``webhook-id`` header."""

    text: str = "$.text"
    external_id: str = "$.external_id"
    language: str | None = "$.language"
    comment_id: str | None = None
    author: str | None = None
    event_type: str | None = None
    event_types: list[str] = Field(default_factory=list)


class SalesforceObject(BaseModel):
    """How the salesforce connector reads one sObject type of an outbound message: the
    fields scored as the text (joined by line breaks, empty ones left out), the field
    that names the ticket (``external_id``), and optionally the fields of its language
    and author. Field names are the API names (``Description``, ``Sentiment__c``)."""

    text: list[str] = Field(default_factory=lambda: ["Subject", "Description"], min_length=1)
    external_id: str = "Id"
    language: str | None = None
    author: str | None = None


FeedbackLabel = Literal["negative", "neutral", "positive"]


class FeedbackRule(BaseModel):
    """A CRM signal read as feedback (opt-in: ``webhook_feedback``). In the connector's
    events of type ``event_type``, the value at ``value`` (a JSONPath: a string, a
    number, or a list such as the tags an agent added) that ``labels`` maps (any case)
    is a label for the latest prediction of the ticket at ``external_id`` (the
    connector's ticket id when unset). Values ``labels`` does not map leave the event
    as it was: acknowledged, and scored if it is a text event."""

    event_type: str = Field(min_length=1)
    value: str = Field(min_length=1)
    labels: dict[str, FeedbackLabel] = Field(min_length=1)
    external_id: str | None = None
    author: str | None = None

    @field_validator("labels")
    @classmethod
    def _any_case(cls, labels: dict[str, FeedbackLabel]) -> dict[str, FeedbackLabel]:
        return {value.strip().casefold(): label for value, label in labels.items()}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sentiloop`` (``~/.cache/sentiloop``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "sentiloop"


def packaged_templates_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "model" / "prompt_templates"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENTILOOP_", extra="ignore")

    home: Path = Field(
        default=Path("var"), description="Directory for the SQLite file and spool files."
    )
    bentoml_home: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SENTILOOP_BENTOML_HOME", "BENTOML_HOME"),
        description="BentoML's home, whose models/ is the model store; `home`/bentoml "
        "when unset, so that every command of a checkout (CLI, server, training) reads "
        "and writes one store.",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Machine-wide cache of derived files: converted base encoders and the "
        "shipped model merged onto its base (made once per machine, shared by every home).",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SENTILOOP_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; SQLite file under `home` when unset.",
    )
    auto_migrate: bool = Field(
        default=True, description="Apply database migrations when the service starts."
    )

    base_model: str = Field(
        default="multilingual-e5-small",
        min_length=1,
        description="Base encoder: a preset (multilingual-e5-small, all-minilm-l6-v2) or "
        "a local Hugging Face model directory.",
    )
    cold_start_model: Literal["shipped", "zero-shot"] = Field(
        default="shipped",
        description="What serves as champion until a model is promoted: the shipped "
        "fine-tuned model of the base preset (zero-shot where the base has none), or the "
        "zero-shot model.",
    )
    model_name: str = Field(
        default="sentiloop-sentiment", description="Name of the models in the BentoML store."
    )
    model_tag: str | None = Field(
        default=None,
        description="Pin this BentoML model tag as champion (ignores promotions).",
    )
    model_store_url: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$",
        description="Shared model store every replica reads, s3://bucket/prefix (AWS S3, "
        "GCS's S3 API, MinIO, Ceph; needs `pip install 'sentiloop[s3]'`): a model is "
        "uploaded before it gets a role, and a replica lacking it downloads it. Unset: "
        "the local BentoML store only (one machine, or a shared volume).",
    )
    model_store_endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint of the shared model store (MinIO, Ceph, GCS: "
        "https://storage.googleapis.com); AWS's when unset.",
    )
    model_store_region: str | None = Field(
        default=None,
        description="Region of the shared model store's bucket (AWS_REGION when unset).",
    )
    model_store_access_key_id: str | None = Field(
        default=None,
        description="Access key of the shared model store; unset: the standard AWS chain "
        "(AWS_ACCESS_KEY_ID, a web identity, an instance role).",
    )
    model_store_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret key going with model_store_access_key_id."
    )
    model_poll_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often each worker checks the database for a new champion.",
    )
    auth: Literal["required", "disabled"] | None = Field(
        default=None,
        description="API-key authentication; when unset: required on PostgreSQL, disabled "
        "on the embedded SQLite default (local development).",
    )
    allow_unauthenticated_remote: bool = Field(
        default=False,
        description="With authentication off, also answer /v1 requests from other hosts "
        "(and let `sentiloop serve` bind a public address). Off: local clients only.",
    )
    api_keys: SecretStr | None = Field(
        default=None, description='JSON list of {"name", "sha256", "scopes"} (hashed keys).'
    )
    api_keys_file: Path | None = Field(default=None, description="File with the same JSON.")
    max_body_bytes: int = Field(
        default=6_000_000, ge=1024, description="Largest accepted request body."
    )
    device: str = Field(default="cpu", description="torch device for inference.")
    max_length: int = Field(default=128, ge=8, le=512, description="Tokenizer max length.")
    inference_backend: Literal["auto", "onnx", "torch"] = Field(
        default="auto",
        description="Runtime of fine-tuned models: onnx (ONNX Runtime, CPU only) or torch; "
        "auto: onnx on the CPU, torch on other devices.",
    )
    quantize: Literal["auto", "none", "int8"] = Field(
        default="auto",
        description="Dynamic int8 quantization of fine-tuned models (CPU only); "
        "auto: int8 on the CPU, none on other devices.",
    )
    inference_threads: int | None = Field(
        default=None,
        ge=1,
        description="Threads per model call; unset: 1 on the CPU (calls run side by side "
        "instead), the runtime's default elsewhere.",
    )
    alone_threads: int | None = Field(
        default=None,
        ge=1,
        description="Threads of a model call that runs alone (no other batch in flight or "
        "waiting), on a second ONNX Runtime session whose threads spin: a lone request "
        "uses the idle cores. Unset: as many as model_processes (the cores a worker is "
        "sized for) on the CPU; 1: off (one session).",
    )
    max_batch_texts: int = Field(
        default=64, ge=1, description="Most texts the batcher scores in one model call."
    )
    model_processes: int | None = Field(
        default=None,
        ge=0,
        description="Model processes per API worker, each running one single-threaded "
        "model call at a time; 0: the model runs in threads of the worker "
        "(concurrent_batches of them). Unset: one per CPU core on the CPU, 0 elsewhere.",
    )
    concurrent_batches: int = Field(
        default=1,
        ge=1,
        description="Model calls one worker runs at the same time when model_processes is 0.",
    )
    model_call_timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=25,
        description="Deadline of a batch sent to a model process (its call, and the one "
        "batch it may wait behind there); a process that misses it is killed and restarted, "
        "and its batches are tried once more elsewhere (two tries stay within the 60 s "
        "request timeout).",
    )
    shutdown_drain_s: float = Field(
        default=3.0,
        ge=0,
        description="On SIGTERM, keep serving this long with readiness 503 and "
        "`Connection: close` before the server stops accepting and finishes in-flight "
        "requests.",
    )
    max_queued_texts: int = Field(
        default=4096,
        ge=1,
        description="Texts waiting for the model per worker beyond which requests get 503.",
    )

    templates_dir: Path | None = Field(
        default=None, description="Directory of prompt template files; the packaged ones if unset."
    )
    default_template_version: str = "v1"
    traffic_split: list[TrafficArm] = Field(
        default_factory=list,
        description='JSON list of {"template_version", "model", "weight"}; '
        "all traffic to the default template and the champion when empty.",
    )
    routing_salt: str = Field(default="sentiloop", description="Salt of the sticky routing hash.")
    _split_configured: bool = PrivateAttr(default=False)

    text_storage: TextStorage = Field(
        default="redacted",
        description="How prediction texts are logged: raw, redacted (PII masked) or none.",
    )
    log_predictions: bool = Field(
        default=True, description="Log every prediction to the database (off: benchmarks only)."
    )
    log_queue_size: int = Field(
        default=10_000, ge=1, description="Bound of the prediction-log queue; beyond it, drops."
    )
    log_batch_size: int = Field(
        default=256,
        ge=1,
        description="Prediction-log rows per transaction; a full batch is written at once.",
    )
    log_flush_interval_s: float = Field(
        default=0.2, gt=0, description="Longest a logged prediction waits before it is written."
    )
    metrics_refresh_interval_s: float = Field(
        default=15.0, gt=0, description="How often database-derived gauges are refreshed."
    )
    feedback_accuracy_window_s: float = Field(
        default=24 * 3600.0, gt=0, description="Rolling window of the feedback-accuracy gauge."
    )
    feedback_lookup_wait_s: float = Field(
        default=2.0,
        ge=0,
        description="How long feedback waits for its prediction's log row to be written.",
    )
    feedback_lookup_waiters: int = Field(
        default=4,
        ge=1,
        description="Feedback requests that may wait for log rows at once (of the 8 "
        "threads for feedback): the others answer at once, so that requests naming "
        "predictions that do not exist yet cannot hold every thread.",
    )
    feedback_batch_budget_s: float = Field(
        default=30.0,
        gt=0,
        le=55,
        description="Time a feedback batch may take, below the HTTP timeout (60 s): "
        "items not reached by then are answered 503 (retry) and were not stored.",
    )

    # CRM connectors (POST /v1/webhooks/{connector}, the connectors package). A
    # connector without a secret is off unless webhook_allow_unsigned.
    webhook_secret_zendesk: SecretStr | None = Field(
        default=None,
        description="Zendesk webhook's signing secret (off when unset); several, comma-"
        "separated, for several webhooks (events and triggers) or a rotation.",
    )
    webhook_secret_hubspot: SecretStr | None = Field(
        default=None, description="HubSpot app's client secret (signature v3; off when unset)."
    )
    webhook_secret_intercom: SecretStr | None = Field(
        default=None, description="Intercom app's client secret (X-Hub-Signature; off when unset)."
    )
    webhook_secret_generic: SecretStr | None = Field(
        default=None,
        description="Standard Webhooks secret (whsec_...) of the generic connector "
        "(off when unset).",
    )
    webhook_allow_unsigned: bool = Field(
        default=False,
        description="Accept webhooks of connectors without a secret, unchecked (local "
        "development only): refused at start when authentication is required, and served "
        "to local clients only unless allow_unauthenticated_remote.",
    )
    webhook_tolerance_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Oldest (and furthest ahead) a Zendesk signature timestamp may be; "
        "HubSpot's and Standard Webhooks' windows are their own 5 minutes.",
    )
    webhook_public_url: str | None = Field(
        default=None,
        description="The service's URL as the CRM calls it (e.g. https://sentiloop.example.com) "
        "when a proxy terminates TLS: HubSpot signs the full URI it called.",
    )
    webhook_hubspot_text_properties: list[str] = Field(
        default_factory=lambda: ["content"],
        description="HubSpot ticket properties whose changes (ticket.propertyChange) are scored.",
    )
    webhook_generic_mapping: GenericMapping = Field(
        default_factory=GenericMapping,
        description="JSON: where the generic connector finds each field, as JSONPath (e.g. "
        '{"text": "$.data.message", "external_id": "$.data.ticket_id"}).',
    )
    webhook_secret_salesforce: SecretStr | None = Field(
        default=None,
        description="Salesforce outbound messages' shared token (at least 32 characters), "
        "sent in the endpoint URL as ?token=...: Salesforce signs nothing (off when unset).",
    )
    webhook_salesforce_organization_id: str | None = Field(
        default=None,
        pattern=r"^00D[A-Za-z0-9]{12}([A-Za-z0-9]{3})?$",
        description="The Salesforce org whose outbound messages are accepted (15 or 18 "
        "characters, 00D...); required with webhook_secret_salesforce.",
    )
    webhook_salesforce_objects: dict[str, SalesforceObject] = Field(
        default_factory=lambda: {"Case": SalesforceObject()},
        description="JSON: per sObject type, the fields scored and the one naming the ticket "
        '(e.g. {"Case": {"text": ["Description"], "external_id": "CaseNumber"}}); other '
        "types are acknowledged, not scored.",
    )
    webhook_feedback: dict[str, list[FeedbackRule]] = Field(
        default_factory=dict,
        description="JSON, per connector: the CRM signals read as feedback by ticket id "
        '(e.g. {"zendesk": [{"event_type": "zen:event-type:ticket.tags_changed", '
        '"value": "$.event.tags_added", "labels": {"sentiment_neutral": "neutral"}}]}); '
        "none by default.",
    )
    webhook_inbox_poll_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often each worker looks for webhook events to score that another "
        "worker received or that are due for a retry (its own are scored at once).",
    )
    webhook_retention_days: float = Field(
        default=30.0,
        ge=1,
        description="Days the webhook inbox and write-back outbox keep handled rows (events "
        "scored or applied, labels sent or superseded) after the event arrived; until then "
        "a CRM's late retry of an event is told and stored once. Pending rows are kept.",
    )
    webhook_dead_letter_retention_days: float = Field(
        default=90.0,
        ge=1,
        description="Days rows given up (inbox failed and unmatched, outbox dead) are kept "
        "to replay after the event arrived; at least webhook_retention_days.",
    )

    # Write-back: the label written to the ticket after a webhook event is scored
    # (connectors/writeback.py, service/http/writeback.py). Off per connector until
    # its target is set.
    writeback_zendesk_url: str | None = Field(
        default=None,
        description="Zendesk account URL, e.g. https://acme.zendesk.com: scored comments "
        "tag their ticket (needs writeback_zendesk_email and writeback_zendesk_api_token).",
    )
    writeback_zendesk_email: str | None = Field(
        default=None, description="Zendesk agent whose API token writes back ({email}/token)."
    )
    writeback_zendesk_api_token: SecretStr | None = Field(
        default=None, description="Zendesk API token of writeback_zendesk_email."
    )
    writeback_zendesk_tag_prefix: str = Field(
        default="sentiment_",
        pattern=r"^[a-z0-9_\-:/]{0,40}$",
        description="Prefix of the label tag added to the ticket (sentiment_negative).",
    )
    writeback_zendesk_remove_other_tags: bool = Field(
        default=True,
        description="Also remove the ticket's tags of the other labels, so that it carries "
        "its newest label only (other tags are never touched).",
    )
    writeback_zendesk_custom_field_id: int | None = Field(
        default=None,
        gt=0,
        description="Id of a ticket custom field to set to the label as well (a text field, "
        "or a drop-down whose option values are negative, neutral, positive).",
    )
    writeback_hubspot_token: SecretStr | None = Field(
        default=None,
        description="HubSpot private app access token (scope tickets): scored tickets get "
        "the label in writeback_hubspot_property.",
    )
    writeback_hubspot_property: str = Field(
        default="sentiloop_sentiment",
        pattern=r"^[a-z][a-z0-9_]{0,99}$",
        description="Internal name of the HubSpot ticket property set to the label.",
    )
    writeback_hubspot_url: str = Field(
        default="https://api.hubapi.com", description="HubSpot API base URL."
    )
    writeback_generic_url: str | None = Field(
        default=None,
        description="URL the generic connector's labels are POSTed to, signed with Standard "
        "Webhooks (needs writeback_generic_secret).",
    )
    writeback_generic_secret: SecretStr | None = Field(
        default=None, description="Standard Webhooks secret (whsec_...) signing the callbacks."
    )
    writeback_max_attempts: int = Field(
        default=12,
        ge=1,
        le=50,
        description="Attempts of a write-back before it is dead (sentiloop writeback replay).",
    )
    writeback_retry_base_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="First retry delay of a write-back, doubled per attempt (with jitter, "
        "at most an hour), unless the CRM's Retry-After says otherwise.",
    )
    writeback_timeout_s: float = Field(
        default=10.0, gt=0, le=60, description="Timeout of one write-back request."
    )

    @field_validator("webhook_secret_salesforce")
    @classmethod
    def _long_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < 32:
            raise ValueError(
                "the Salesforce token is shorter than 32 characters: generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return token

    @model_validator(mode="after")
    def _dead_letters_outlast_handled_rows(self) -> Settings:
        if self.webhook_dead_letter_retention_days < self.webhook_retention_days:
            raise ValueError(
                "webhook_dead_letter_retention_days "
                f"({self.webhook_dead_letter_retention_days:g}) is shorter than "
                f"webhook_retention_days ({self.webhook_retention_days:g}): rows waiting "
                "to be replayed would go before rows already handled; raise it"
            )
        return self

    @field_validator("traffic_split")
    @classmethod
    def _weights_positive_sum(cls, arms: list[TrafficArm]) -> list[TrafficArm]:
        seen = set()
        for arm in arms:
            key = (arm.template_version, arm.model)
            if key in seen:
                raise ValueError(f"traffic_split lists {key} twice; merge the weights")
            seen.add(key)
        return arms

    @property
    def traffic_split_configured(self) -> bool:
        """Whether a split was set (an experiment) rather than left to the default
        template version and the champion."""
        return self._split_configured

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self._split_configured = bool(self.traffic_split)
        if not self.traffic_split:
            self.traffic_split = [
                TrafficArm(template_version=self.default_template_version, weight=1.0)
            ]
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'sentiloop.db').resolve()}"

    @property
    def resolved_auth(self) -> Literal["required", "disabled"]:
        if self.auth is not None:
            return self.auth
        return "disabled" if self.resolved_database_url.startswith("sqlite") else "required"

    def webhook_secret(self, connector: str) -> SecretStr | None:
        """``webhook_secret_<connector>``; None for a connector without one."""
        secret = getattr(self, f"webhook_secret_{connector}", None)
        return secret if isinstance(secret, SecretStr) else None

    @property
    def resolved_bentoml_home(self) -> Path:
        """Absolute, so that processes started elsewhere (model processes) agree."""
        home = self.bentoml_home if self.bentoml_home is not None else self.home / "bentoml"
        return home.expanduser().resolve()

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def onnx_cache_dir(self) -> Path:
        return self.home / "cache" / "onnx"

    @property
    def resolved_inference_threads(self) -> int | None:
        if self.inference_threads is not None:
            return self.inference_threads
        return 1 if self.device == "cpu" else None

    @property
    def resolved_alone_threads(self) -> int | None:
        """Threads of a model call alone on the machine (None: no second session)."""
        if self.device != "cpu":
            return None
        threads = (
            self.alone_threads if self.alone_threads is not None else self.resolved_model_processes
        )
        return threads if threads > 1 else None

    @property
    def resolved_model_processes(self) -> int:
        if self.model_processes is not None:
            return self.model_processes
        if self.device != "cpu":
            return 0
        # The CPUs this process may run on (a container's cpuset); set the value
        # explicitly under a CPU quota (docker --cpus), which this cannot see.
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )

    @property
    def resolved_quantize(self) -> Literal["none", "int8"]:
        if self.quantize != "auto":
            return self.quantize
        return "int8" if self.device == "cpu" else "none"

    @property
    def resolved_inference_backend(self) -> Literal["onnx", "torch"]:
        if self.inference_backend != "auto":
            return self.inference_backend
        return "onnx" if self.device == "cpu" else "torch"

    @property
    def resolved_templates_dir(self) -> Path:
        return self.templates_dir if self.templates_dir is not None else packaged_templates_dir()

"""The ``sentiloop`` command line. Each command is a few lines over the libraries."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import typer.core
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.logs import configure_logging
from core.settings import Settings
from feedback.review_queue import DEFAULT_EXPLORATION
from sentiloop.input_files import TextsRead, read_texts
from training import AssemblyConfig, GateConfig, Schedule, TrainingArguments

_DEBUG = False  # --debug: tracebacks instead of one-line errors


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that a command's user fixes (a file, an option, the data, the database
    address): one or two lines naming it, never a traceback (except with --debug)."""
    from bentoml.exceptions import BentoMLException
    from sqlalchemy.exc import OperationalError

    from feedback.experiments import ExperimentError
    from feedback.imports import ImportFileError
    from model.base_models import BaseModelError
    from model.model_store import ModelStoreError
    from model.templates import UnknownTemplateVersion
    from sentiloop.client import SentiloopError
    from sentiloop.input_files import InputFileError
    from training.dataset import DatasetTooSmall
    from training.examples import DataFileError
    from training.pipeline import TrainingBusy
    from training.promotion import PromotionError

    return (
        DataFileError,
        DatasetTooSmall,
        TrainingBusy,
        PromotionError,
        ModelStoreError,
        BentoMLException,
        UnknownTemplateVersion,
        BaseModelError,
        InputFileError,
        ImportFileError,
        ExperimentError,
        SentiloopError,  # the API's answer (its status, field and message) or no answer
        OperationalError,
        OSError,
        ValueError,
    )


def _one_line(error: BaseException) -> str:
    from sqlalchemy.exc import OperationalError

    if isinstance(error, OperationalError):
        from core import database

        return f"database unavailable: {database.describe_error(error)}"
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    # Some messages span lines (pydantic's validation errors): one line still.
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


class _Commands(typer.core.TyperGroup):
    """The root command group: maps what a user fixes to a one-line error, exit 2."""

    def invoke(self, ctx: Any) -> Any:  # typer's click Context
        try:
            return super().invoke(ctx)
        except _user_errors() as error:
            if _DEBUG:
                raise
            raise _fail(_one_line(error)) from None  # `sentiloop --debug` shows the traceback


app = typer.Typer(
    help="sentiloop: sentiment serving with a feedback loop.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
templates_app = typer.Typer(
    help="Versioned prompt templates.", no_args_is_help=True, rich_markup_mode=None
)
db_app = typer.Typer(
    help="The prediction and feedback database.", no_args_is_help=True, rich_markup_mode=None
)
feedback_app = typer.Typer(help="Logged feedback.", no_args_is_help=True, rich_markup_mode=None)
models_app = typer.Typer(
    help="Models: store, champion/challenger, runs.", no_args_is_help=True, rich_markup_mode=None
)
keys_app = typer.Typer(
    help="API keys (stored hashed).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(keys_app, name="keys")
app.add_typer(templates_app, name="templates")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
experiments_app = typer.Typer(
    help="A/B experiments over the traffic split: start, report, conclude, revert.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
review_app = typer.Typer(
    help="The review queue: predictions that most need a human label.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(feedback_app, name="feedback")
app.add_typer(review_app, name="review")
app.add_typer(experiments_app, name="experiments")
locks_app = typer.Typer(
    help="Database locks (the training lock): show them, break a stale one.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(locks_app, name="locks")
writeback_app = typer.Typer(
    help="Labels written back to CRM tickets (the outbox): list them, replay dead letters.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(writeback_app, name="writeback")
webhooks_app = typer.Typer(
    help="CRM webhook events in the inbox: list them, replay failed events and unmatched feedback.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(webhooks_app, name="webhooks")

DEFAULT_URL = "http://127.0.0.1:3000"
logger = logging.getLogger("sentiloop.cli")


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


@contextlib.contextmanager
def _database(ctx: typer.Context, *, migrate: bool) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured database; the engine is disposed on the way out."""
    import storage
    from core import database

    settings = _settings(ctx)
    if migrate and settings.auto_migrate:
        storage.upgrade(settings.resolved_database_url)
    engine = database.make_engine(settings.resolved_database_url)
    try:
        yield database.make_session_factory(engine)
    finally:
        engine.dispose()


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug
    configure_logging()
    settings = Settings()
    from model.model_store import use_store

    use_store(settings.resolved_bentoml_home)  # before anything reads the store
    ctx.obj = settings


LOCAL_HOST = "127.0.0.1"


def serving_host(settings: Settings, host: str | None) -> str:
    """The address to bind: all interfaces with authentication on, the loopback
    address with it off; a public address without authentication only when
    ``allow_unauthenticated_remote`` says so."""
    authenticated = settings.resolved_auth == "required"
    if host is None:
        return "0.0.0.0" if authenticated else LOCAL_HOST
    local = host in ("localhost", "::1") or host.startswith("127.")
    if not (authenticated or local or settings.allow_unauthenticated_remote):
        raise typer.BadParameter(
            f"refusing to serve on {host} with authentication off: anyone who can reach it "
            "could read and change data. Configure API keys (`sentiloop keys create`, "
            "SENTILOOP_API_KEYS_FILE) or set SENTILOOP_ALLOW_UNAUTHENTICATED_REMOTE=true",
            param_hint="--host",
        )
    return host


def check_port_free(host: str, port: int) -> None:
    """A clear error when ``host:port`` is taken (a second `sentiloop serve`, say),
    before the models are prepared; BentoML's own is a traceback from its arbiter."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise _fail(
                f"cannot bind {host}:{port}: {error.strerror or error} (another sentiloop "
                "serve, or another program, listens there; choose another with --port)"
            ) from None


@app.command()
def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the HTTP API.")] = 3000,
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to bind (default: 0.0.0.0 with authentication on, 127.0.0.1 with it off)."
        ),
    ] = None,
) -> None:
    """Serve the API with BentoML (`bentoml serve service.bento:SentiLoop`)."""
    settings = _settings(ctx)
    host = serving_host(settings, host)
    check_port_free(host, port)
    if settings.resolved_auth == "required":
        access = "authentication on"
    elif settings.allow_unauthenticated_remote:
        access = "authentication OFF"
    else:
        access = "authentication OFF: local clients only"
    _prepare(settings)
    logger.info("serving on http://%s:%d (%s)", host, port, access)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    command = [
        sys.executable, "-m", "bentoml", "serve", "service.bento:SentiLoop",
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    os.execvp(command[0], command)


def _prepare(settings: Settings) -> None:
    from model.loader import prepare

    logger.info("preparing the models (once per machine: a minute or two the first time)")
    serving_file = prepare(settings)
    if serving_file is not None:
        logger.info("cold-start model ready: %s", serving_file)


@app.command(name="prepare")
def prepare_models(ctx: typer.Context) -> None:
    """Build the machine's model cache now (base encoder conversion, the shipped model
    merged and exported), e.g. while building a container image."""
    _prepare(_settings(ctx))


@app.command()
def predict(
    text: Annotated[str | None, typer.Argument(help="A text to score.")] = None,
    file: Annotated[
        Path | None, typer.Option(help="Texts to score: .txt (a line each), .csv or .jsonl.")
    ] = None,
    text_field: Annotated[
        str, typer.Option(help="Column or key of the text in CSV/JSONL.")
    ] = "text",
    output: Annotated[Path | None, typer.Option(help="Write JSONL here (stdout if unset).")] = None,
    url: Annotated[str, typer.Option(help="Base URL of a running sentiloop.")] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SENTILOOP_KEY",
            help="API key (a server with authentication on needs one with the predict scope).",
        ),
    ] = None,
    template_version: Annotated[str | None, typer.Option()] = None,
    routing_key: Annotated[str | None, typer.Option()] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=256)] = 64,
) -> None:
    """Score a text or a file of texts through a running service (JSONL out)."""
    from sentiloop.client import Client

    if (text is None) == (file is None):
        raise typer.BadParameter("give a TEXT or --file, not both")
    # From a file, each answer says the line its text was read from ("line").
    if file is not None:
        read = read_texts(file, text_field)
    else:
        assert text is not None
        read = TextsRead(lines=[(0, text)])
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        with (
            Client(url, api_key=api_key) as client,
            typer.progressbar(length=len(read.lines), label="scoring", file=sys.stderr) as bar,
        ):
            predictions = client.predict_many(
                read.texts,
                chunk_size=batch_size,
                template_version=template_version,
                routing_key=routing_key,
            )
            for (line, _), prediction in zip(read.lines, predictions, strict=True):
                answer = prediction.model_dump(mode="json")
                if file is not None:
                    answer["line"] = line
                out.write(json.dumps(answer) + "\n")
                bar.update(1)
    finally:
        if output:
            out.close()
    if read.empty:
        typer.echo(f"skipped {read.empty} empty texts of {file}", err=True)
    if output:
        typer.echo(f"wrote {len(read.lines)} predictions to {output}", err=True)


@templates_app.command("list")
def templates_list(ctx: typer.Context) -> None:
    """List the released template versions."""
    from model.templates import TemplateRegistry

    registry = TemplateRegistry.load(_settings(ctx).resolved_templates_dir)
    for version in registry.versions:
        template = registry.get(version)
        typer.echo(f"{version}\t{template.sha256[:12]}\t{template.description}")


@templates_app.command("show")
def templates_show(ctx: typer.Context, version: str) -> None:
    """Print one template version as JSON."""
    from model.templates import TemplateRegistry

    registry = TemplateRegistry.load(_settings(ctx).resolved_templates_dir)
    typer.echo(json.dumps(registry.get(version).to_dict(), indent=2))


@templates_app.command("diff")
def templates_diff(ctx: typer.Context, old: str, new: str) -> None:
    """Show a unified diff between two template versions."""
    from model.templates import TemplateRegistry, diff

    registry = TemplateRegistry.load(_settings(ctx).resolved_templates_dir)
    typer.echo(diff(registry, old, new), nl=False)


@templates_app.command("release")
def templates_release(ctx: typer.Context, version: str) -> None:
    """Record the hash of <version>.toml: from now on the file is immutable."""
    from model.templates import release

    digest = release(_settings(ctx).resolved_templates_dir, version)
    typer.echo(f"released {version} sha256={digest}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Apply the database migrations (SQLite file or DATABASE_URL)."""
    import storage

    settings = _settings(ctx)
    storage.upgrade(settings.resolved_database_url, revision)
    typer.echo(f"database at revision {revision}")


@db_app.command("purge-texts")
def db_purge_texts(
    ctx: typer.Context,
    older_than_days: Annotated[float, typer.Option(min=0, help="Age of texts to remove.")],
) -> None:
    """Retention: remove logged prediction texts and feedback comments older than N
    days (rows stay), and the copies the database still keeps on disk."""
    from datetime import timedelta

    from core import database
    from storage import store

    with _database(ctx, migrate=False) as sessions:
        with sessions() as session:
            texts, comments = store.purge_texts(
                session=session, before=store.utcnow() - timedelta(days=older_than_days)
            )
            session.commit()
            engine = session.get_bind()
        assert isinstance(engine, Engine)
        disk = database.discard_freed_pages(engine)
    typer.echo(
        f"removed the text of {texts} predictions and the comment of {comments} feedback "
        f"rows older than {older_than_days} days; {disk}"
    )


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who uses the key, e.g. crm-prod.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: predict,feedback,admin.")],
    file: Annotated[Path, typer.Option(help="Key file (SENTILOOP_API_KEYS_FILE).")] = Path(
        "var/api-keys.json"
    ),
) -> None:
    """Create an API key: prints it once and stores only its hash in the key file."""
    from service.http.auth import add_key

    key = add_key(file, name, [scope.strip() for scope in scopes.split(",") if scope.strip()])
    typer.echo(key)
    typer.echo(f"stored the hash of key {name!r} in {file}; set SENTILOOP_API_KEYS_FILE", err=True)


@keys_app.command("list")
def keys_list(
    file: Annotated[Path, typer.Option(help="Key file (SENTILOOP_API_KEYS_FILE).")] = Path(
        "var/api-keys.json"
    ),
) -> None:
    """List the keys of the key file: name, id (the start of its hash) and scopes."""
    from service.http.auth import read_key_file

    keys = read_key_file(file) if file.exists() else []
    if not keys:
        typer.echo(f"no keys in {file}", err=True)
    for key in keys:
        typer.echo(f"{key.name}\t{key.id}\t{','.join(sorted(key.scopes))}")


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's name or id (from `keys list`).")],
    file: Annotated[Path, typer.Option(help="Key file (SENTILOOP_API_KEYS_FILE).")] = Path(
        "var/api-keys.json"
    ),
) -> None:
    """Revoke a key: remove it from the key file; running servers refuse it within
    seconds (they reload the file when it changes), no restart."""
    from service.http.auth import revoke_key

    revoked = revoke_key(file, key)
    typer.echo(f"revoked key {revoked.name!r} ({revoked.id}) in {file}")


@feedback_app.command("export")
def feedback_export(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option(help="File to write (stdout if unset).")] = None,
    format: Annotated[
        Literal["jsonl", "csv"] | None,
        typer.Option(help="jsonl or csv [default: csv for an --output ending in .csv, else jsonl]"),
    ] = None,
    since: Annotated[datetime | None, typer.Option(help="Feedback at or after (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Feedback before (UTC).")] = None,
) -> None:
    """Export feedback joined with its predictions, for training and audit."""
    from storage import store
    from storage.export import serialize

    if format is None:  # `--output f.csv` alone wrote JSON Lines into f.csv
        format = "csv" if output is not None and output.suffix.lower() == ".csv" else "jsonl"
    since, until = store.utc_bounds(since, until)
    out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        with _database(ctx, migrate=False) as sessions, sessions() as session:
            rows = store.iter_feedback_export(session=session, since=since, until=until)
            lines = 0  # a chunk is a line: a row, or the CSV header
            for chunk in serialize(rows, format):
                out.write(chunk)
                lines += 1
    finally:
        if output:
            out.close()
    if output:
        written = lines - 1 if format == "csv" else lines
        typer.echo(f"wrote {written} feedback rows to {output}", err=True)


@feedback_app.command("import")
def feedback_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV, TSV or JSONL of labels.")],
    source: Annotated[
        str | None,
        typer.Option(
            help="The system of the file's external_ids, for rows without a "
            "source column (e.g. the CRM)."
        ),
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(
            help="Raw labels to labels: a preset (stars5: 1-2 negative, 3 neutral, "
            '4-5 positive; binary: 0 negative, 1 positive) or pairs, e.g. "0=negative,1=positive". '
            "CSAT rates the support, not the text: see the README before mapping it."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Store labels from a file: rows with prediction_id or external_id (+ source) and
    label (negative/neutral/positive, any case, or 0/1/2; other values through
    --label-map) or verdict (correct/incorrect), checked, redacted and limited as the
    API does. Importing the same file again stores nothing twice; unlabelled rows are
    skipped; a bad row is reported by number and the others are imported."""
    from feedback.imports import ImportFileError, import_feedback
    from model.labels import LabelMapError, parse_label_map

    if not file.is_file():
        raise _fail(f"{file}: no such file")
    try:
        mapping = parse_label_map(label_map)
    except LabelMapError as error:
        raise _fail(str(error)) from None
    with _database(ctx, migrate=True) as sessions:
        try:
            summary = import_feedback(
                file,
                sessions=sessions,
                text_storage=_settings(ctx).text_storage,
                source=source,
                label_map=mapping,
            )
        except ImportFileError as error:
            raise _fail(str(error)) from None
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        typer.echo(
            f"{file}: {summary.rows} rows: {summary.stored} stored, {summary.replayed} "
            f"already there, {summary.skipped_unlabelled} without a label, "
            f"{summary.failed} failed"
        )
        for problem in summary.errors:
            typer.echo(f"  {problem}", err=True)
        if summary.failed > len(summary.errors):
            typer.echo(f"  ... and {summary.failed - len(summary.errors)} more", err=True)
    if summary.failed:
        raise typer.Exit(code=1)


@review_app.command("export")
def review_export(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option(help="File to write (stdout if unset).")] = None,
    format: Annotated[Literal["csv", "jsonl"], typer.Option()] = "csv",
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 200,
    days: Annotated[float, typer.Option(help="Predictions of the last DAYS days.")] = 30.0,
    model_version: Annotated[str | None, typer.Option()] = None,
    language: Annotated[str | None, typer.Option(help="ISO 639-1 code.")] = None,
    exploration: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share drawn at random from the other "
            "unlabelled predictions (what the model is confidently wrong about).",
        ),
    ] = DEFAULT_EXPLORATION,
) -> None:
    """Write the predictions that most need a label, with an empty 'label' column for
    an annotation tool; load the labels back with `sentiloop feedback import`."""
    from datetime import UTC, timedelta

    from feedback.review_queue import review_queue
    from storage.export import serialize

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        items = review_queue(
            session=session,
            since=datetime.now(UTC) - timedelta(days=days),
            limit=limit,
            model_version=model_version,
            language=language,
            exploration=exploration,
        )
    columns = ("prediction_id", "external_id", "source", "language", "text", "predicted_label")
    rows = (
        {
            **{name: item.to_dict()[name] for name in columns},
            "confidence": round(item.confidence, 4),
            "margin": item.margin,
            "chosen_for": item.chosen_for,
            "label": "",
        }
        for item in items
    )
    fields = (*columns, "confidence", "margin", "chosen_for", "label")
    out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        for chunk in serialize(rows, format, fields):
            out.write(chunk)
    finally:
        if output:
            out.close()
    if output:
        typer.echo(f"wrote {len(items)} predictions to label to {output}", err=True)


# `train --if-due`: another run holds the training lock (sysexits' EX_TEMPFAIL, "try
# again later"). Not due exits 0 like a run: a CronJob counts every non-zero exit as
# a failed Job (retried up to backoffLimit, then alerted on), and a check that found
# nothing to do has not failed; Kubernetes has no way to read another code as success.
EXIT_BUSY = 75

# The training options take their defaults from the training dataclasses.
_ASSEMBLY, _ARGUMENTS, _GATE, _SCHEDULE = (
    AssemblyConfig(),
    TrainingArguments(),
    GateConfig(),
    Schedule(),
)


@app.command()
def train(
    ctx: typer.Context,
    base_data: Annotated[
        Path | None,
        typer.Option(
            help="Base training data: .csv or .tsv (with or without a header row), "
            ".jsonl or .parquet."
        ),
    ] = None,
    holdout: Annotated[
        Path | None,
        typer.Option(help="Fixed holdout file (else a stable hash split of the base data)."),
    ] = None,
    text_field: Annotated[
        str | None,
        typer.Option(help="Text column: a name, or a 1-based position (auto-detected by name)."),
    ] = None,
    label_field: Annotated[
        str, typer.Option(help="Label column: a name, or a 1-based position.")
    ] = "label",
    no_header: Annotated[
        bool,
        typer.Option(
            "--no-header",
            help="The CSV/TSV has no header row: name columns by "
            "position (--text-field 2 --label-field 3).",
        ),
    ] = False,
    label_map: Annotated[
        str | None,
        typer.Option(
            help="Raw labels to labels: a preset (stars5: 1-2 negative, 3 neutral, "
            '4-5 positive; binary: 0 negative, 1 positive) or pairs, e.g. "0=negative,1=positive".'
        ),
    ] = None,
    drop_unknown_labels: Annotated[
        bool,
        typer.Option(
            "--drop-unknown-labels",
            help="Drop (and count) rows whose label is "
            "neither a label nor in --label-map, instead of stopping.",
        ),
    ] = False,
    min_examples_per_class: Annotated[
        int,
        typer.Option(help="Refuse to train unless two labels have this many training rows."),
    ] = _ASSEMBLY.min_examples_per_class,
    template_version: Annotated[
        list[str] | None, typer.Option(help="Template version(s) to train on (repeatable).")
    ] = None,
    recipe: Annotated[
        Literal["correction", "fine-tune"],
        typer.Option(
            help="How a fine-tuned champion learns: correction (its weights stay; a "
            "few-MB correction changes answers only on texts like the feedback's) or "
            "fine-tune (the encoder is trained: --lora-rank). From the base encoder "
            "training always fine-tunes.",
        ),
    ] = _ARGUMENTS.recipe,
    epochs: int = _ARGUMENTS.epochs,
    batch_size: int = _ARGUMENTS.batch_size,
    learning_rate: Annotated[
        float | None,
        typer.Option(help="Default: 5e-4 with a LoRA adapter, 5e-5 for full fine-tuning."),
    ] = _ARGUMENTS.learning_rate,
    lora_rank: Annotated[
        int,
        typer.Option(
            help="Rank of the LoRA adapter trained on the encoder (a retrained model is "
            "stored as a few-MB delta on its parent); 0: every weight (stored in full)."
        ),
    ] = _ARGUMENTS.lora_rank or 0,
    class_balance: Annotated[
        bool, typer.Option(help="Weigh labelled rows by the inverse frequency of their label.")
    ] = _ARGUMENTS.class_balance,
    rehearsal_ratio: Annotated[
        float,
        typer.Option(
            help="Logged texts without feedback, labelled softly by the champion, per "
            "feedback row trained on (keeps what the champion knows); 0: none."
        ),
    ] = _ASSEMBLY.rehearsal_ratio,
    max_length: int = _ARGUMENTS.max_length,
    seed: int = _ARGUMENTS.seed,
    max_base_examples: Annotated[
        int | None, typer.Option(help="Sample the base data.")
    ] = _ASSEMBLY.max_base_examples,
    feedback_weight: float = _ASSEMBLY.feedback_weight,
    conflict_policy: Annotated[
        Literal["latest", "majority", "drop"], typer.Option()
    ] = _ASSEMBLY.conflict_policy,
    holdout_fraction: float = _ASSEMBLY.holdout_fraction,
    feedback_holdout_fraction: float = _ASSEMBLY.feedback_holdout_fraction,
    metric: Annotated[Literal["macro_f1", "accuracy"], typer.Option()] = _GATE.metric,
    significance: Annotated[
        float, typer.Option(help="Paired-test p-value a candidate must reach to be promoted.")
    ] = _GATE.significance,
    min_feedback_rows: Annotated[
        int, typer.Option(help="Feedback-holdout rows from which it decides (not the base).")
    ] = _GATE.min_feedback_rows,
    min_language_rows: Annotated[
        int,
        typer.Option(
            help="Rows of a language (in a holdout, or answers on recent traffic) from "
            "which it is guarded."
        ),
    ] = _GATE.min_language_rows,
    base_tolerance: Annotated[
        float,
        typer.Option(
            help="Largest tolerated loss of --metric on the base holdout and on each "
            "language of the feedback holdout."
        ),
    ] = _GATE.base_tolerance,
    flip_tolerance: Annotated[
        float,
        typer.Option(
            help="Largest share of recent answers (outside the feedback) a candidate may "
            "change in a language beyond the share the corrections asked to change there."
        ),
    ] = _GATE.flip_tolerance,
    traffic_days: Annotated[
        float, typer.Option(help="Days of logged traffic the traffic guard compares on.")
    ] = _GATE.traffic_days,
    traffic_rows_per_language: Annotated[
        int,
        typer.Option(help="Newest logged texts per language it compares on (0: no traffic guard)."),
    ] = _GATE.traffic_rows_per_language,
    general_guard: Annotated[
        bool,
        typer.Option(
            help="Without a base holdout, guard with the general guard set shipped with the "
            "model (per language, within a noise allowance)."
        ),
    ] = _GATE.general_guard,
    start_from: Annotated[
        Literal["champion", "base"],
        typer.Option(help="Continue from the champion's weights, or a new head on the base."),
    ] = "champion",
    schedule: Annotated[
        bool, typer.Option("--schedule", help="Keep running; retrain when due.")
    ] = False,
    if_due: Annotated[
        bool,
        typer.Option(
            "--if-due",
            help="Check once and train when due (a CronJob's command). Exit 0: trained, "
            f"or not due (a line 'not due: ...'); {EXIT_BUSY}: busy, another run holds "
            "the training lock (try again later); 2: an error.",
        ),
    ] = False,
    min_new_feedback: Annotated[
        int, typer.Option(help="--schedule/--if-due: feedback rows.")
    ] = _SCHEDULE.min_new_feedback,
    interval_minutes: Annotated[
        float, typer.Option(help="--schedule/--if-due: max minutes.")
    ] = _SCHEDULE.interval_s / 60,
    poll_seconds: Annotated[
        float, typer.Option(help="--schedule: check period.")
    ] = _SCHEDULE.poll_s,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = _ARGUMENTS.progress,
) -> None:
    """Re-fine-tune from base data + feedback, evaluate against the champion, gate promotion."""
    import threading

    from training import (
        DataSource,
        TrainingBusy,
        TrainingPipeline,
        TrainingPlan,
        check_now,
        parse_label_map,
        run_schedule,
    )

    if schedule and if_due:
        raise typer.BadParameter("give --schedule or --if-due, not both", param_hint="--if-due")
    mapping = parse_label_map(label_map)
    sources = [
        DataSource(path, text_field, label_field, mapping, not no_header, drop_unknown_labels)
        if path is not None
        else None
        for path in (base_data, holdout)
    ]
    plan = TrainingPlan(
        base_data=sources[0],
        holdout_data=sources[1],
        template_versions=tuple(template_version or ()),
        assembly=AssemblyConfig(
            holdout_fraction=holdout_fraction,
            feedback_holdout_fraction=feedback_holdout_fraction,
            feedback_weight=feedback_weight,
            rehearsal_ratio=rehearsal_ratio,
            conflict_policy=conflict_policy,
            max_base_examples=max_base_examples,
            min_examples_per_class=min_examples_per_class,
        ),
        arguments=TrainingArguments(
            recipe=recipe,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            lora_rank=lora_rank or None,
            class_balance=class_balance,
            max_length=max_length,
            seed=seed,
            progress=progress,
        ),
        gate=GateConfig(
            metric=metric,
            significance=significance,
            min_feedback_rows=min_feedback_rows,
            min_language_rows=min_language_rows,
            base_tolerance=base_tolerance,
            flip_tolerance=flip_tolerance,
            traffic_days=traffic_days,
            traffic_rows_per_language=traffic_rows_per_language,
            general_guard=general_guard,
        ),
        start_from=start_from,
    )
    plan_schedule = Schedule(min_new_feedback, interval_minutes * 60, poll_seconds)
    if not progress:  # transformers' own bars too ("Loading weights" at every load)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    pipeline = TrainingPipeline(_settings(ctx))
    try:
        with _sigterm_unwinds():
            if schedule:
                run_schedule(pipeline, plan, plan_schedule, threading.Event())
                return
            if if_due:
                check = check_now(pipeline, plan_schedule)
                if check.reason is None:
                    typer.echo(f"not due: {check.describe(plan_schedule)}")
                    return
                typer.echo(f"due ({check.reason}): {check.describe(plan_schedule)}")
                try:
                    outcome = pipeline.run(plan, trigger=check.trigger)
                except TrainingBusy as busy:
                    typer.echo(f"busy: {busy}; try again later", err=True)
                    raise typer.Exit(code=EXIT_BUSY) from None
            else:
                outcome = pipeline.run(plan)
    except Terminated as stop:
        _fail(f"training stopped by {stop}: the run is recorded failed, the lock released")
        raise typer.Exit(code=128 + signal.SIGTERM) from None
    finally:
        pipeline.close()
    typer.echo((outcome.report_dir / "summary.txt").read_text(), nl=False)
    typer.echo(f"report: {outcome.report_dir}")


_JSON = typer.Option("--json", help="Print JSON (one object per row) for scripts.")


class Terminated(BaseException):
    """SIGTERM (how Kubernetes, Docker and systemd stop a process) raised in the main
    thread, a BaseException like KeyboardInterrupt so that nothing on the way swallows
    it: what it interrupts unwinds (a training run is recorded failed, its lock
    released, its scratch directory removed) instead of dying where it stands."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second must not cut the clean-up
        raise Terminated(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _table(rows: list[dict[str, Any]], as_json: bool, empty: str) -> None:
    """Rows as an aligned table with a header, or as JSON lines."""
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, default=str))
        return
    if not rows:
        typer.echo(empty)
        return
    columns = list(rows[0])
    cells = [[("-" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    for line in [columns, *cells]:
        typer.echo(
            "  ".join(
                value.ljust(width) for value, width in zip(line, widths, strict=True)
            ).rstrip()
        )


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: Annotated[bool, _JSON] = False) -> None:
    """The shipped models, then those in the BentoML store, oldest first, with their
    current roles (a model can hold both)."""
    from model import model_store
    from model.loader import cold_start_tag
    from model.shipped import shipped_models
    from storage import model_roles

    settings = _settings(ctx)
    with _database(ctx, migrate=True) as sessions, sessions() as session:
        champion = model_roles.current(session=session, role="champion")
        challenger = model_roles.current(session=session, role="challenger")
    # The champion as the service resolves it (service.inference.scoring.Scorer.target_tag).
    champion = settings.model_tag or champion or cold_start_tag(settings)

    def role(tag: str) -> str | None:
        held = (("champion", champion), ("challenger", challenger))
        return ",".join(name for name, holder in held if holder == tag) or None

    rows = [
        {
            "tag": shipped.version,
            "role": role(shipped.version),
            "created_at": None,
            "holdout_macro_f1": None,
            "languages": ",".join(shipped.card.get("languages", [])) or None,
        }
        for shipped in shipped_models()
    ]
    for stored in model_store.list_models(settings.model_name):
        holdout = stored.metadata.get("metrics", {}).get("holdout", {})
        score = holdout.get("macro_f1")
        rows.append(
            {
                "tag": stored.tag,
                "role": role(stored.tag),
                "created_at": stored.created_at[:19],
                "holdout_macro_f1": None if score is None else round(score, 4),
                "languages": ",".join(stored.metadata.get("languages", [])) or None,
            }
            | _versus(
                stored.metadata.get("metrics", {}),
                stored.metadata.get("parent_metrics", {}),
                as_json,
            )
        )
    for row in rows:  # the shipped models were not trained here: no comparison
        for key in _VERSUS_KEYS:
            row.setdefault(key, None)
    _table(rows, as_json, "no stored models yet (`sentiloop train` makes one)")


_VERSUS_KEYS = ("split", "macro_f1", "recall", "language_macro_f1")


def _versus(candidate: dict[str, Any], champion: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """A run's figures of candidate vs champion on the same rows, on the feedback
    holdout when it has rows (else the base holdout): macro-F1, each class's recall and
    each language's macro-F1; "candidate/champion" in a table, nested in JSON."""
    split = "feedback_holdout" if candidate.get("feedback_holdout", {}).get("n") else "holdout"
    new, old = candidate.get(split, {}), champion.get(split, {})
    if not new.get("n"):
        return dict.fromkeys(_VERSUS_KEYS)

    def recalls(metrics: dict[str, Any]) -> dict[str, float]:
        if "recall" in metrics:  # as the model store keeps them
            return dict(metrics["recall"])
        return {label: f["recall"] for label, f in metrics.get("per_class", {}).items()}

    def languages(metrics: dict[str, Any]) -> dict[str, float]:
        return {code: f["macro_f1"] for code, f in metrics.get("per_language", {}).items()}

    pairs = {
        "macro_f1": {"": (new.get("macro_f1"), old.get("macro_f1"))},
        "recall": {k: (v, recalls(old).get(k)) for k, v in recalls(new).items()},
        "language_macro_f1": {k: (v, languages(old).get(k)) for k, v in languages(new).items()},
    }
    row: dict[str, Any] = {"split": split}
    for key, values in pairs.items():
        if as_json:
            nested = {
                name: {"candidate": pair[0], "champion": pair[1]} for name, pair in values.items()
            }
            row[key] = nested.get("", nested) if key == "macro_f1" else nested
        else:
            row[key] = (
                " ".join(
                    f"{name}{'=' if name else ''}{_short(pair[0])}/{_short(pair[1])}"
                    for name, pair in values.items()
                )
                or None
            )
    return row


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@models_app.command("promote")
def models_promote(ctx: typer.Context, tag: str) -> None:
    """Make a stored model the champion (the service switches within its poll interval)."""
    from training import promote

    with _database(ctx, migrate=True) as sessions:
        assignment = promote(
            settings=_settings(ctx), sessions=sessions, tag=tag, reason="manual promotion"
        )
    typer.echo(f"champion: {assignment.model_tag}")


@models_app.command("rollback")
def models_rollback(
    ctx: typer.Context,
    tag: Annotated[
        str | None, typer.Argument(help="Earlier model (default: the previous).")
    ] = None,
) -> None:
    """Make an earlier model champion again."""
    from training import rollback

    with _database(ctx, migrate=True) as sessions:
        assignment = rollback(settings=_settings(ctx), sessions=sessions, tag=tag)
    typer.echo(f"champion: {assignment.model_tag or 'zero-shot'} ({assignment.reason})")


@models_app.command("prune")
def models_prune(
    ctx: typer.Context,
    keep_champions: Annotated[
        int, typer.Option(min=1, help="Keep this many of the latest champions (rollback).")
    ] = 5,
    keep_hours: Annotated[
        float, typer.Option(min=0, help="Keep what was published within these hours.")
    ] = 24,
    dry_run: Annotated[
        bool, typer.Option(help="Say what would be deleted; delete nothing.")
    ] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Delete the shared model store's models that nothing needs (training runs do it
    after each run): kept are the champion, the challenger, the latest champions, what
    was just published, and the parents of those. Exit 75 while a training run holds
    the lock."""
    from datetime import timedelta

    from storage import runs
    from training import prune_shared_store
    from training.pipeline import LOCK_NAME, LOCK_TTL

    with _database(ctx, migrate=True) as sessions:
        # Under the training lock, as after a run: no upload is assigned meanwhile.
        lease = runs.Lease(session_factory=sessions, name=LOCK_NAME, ttl=LOCK_TTL)
        try:
            lease.acquire()
        except runs.LockHeld as held:
            typer.echo(f"busy: {held}", err=True)
            raise typer.Exit(code=EXIT_BUSY) from None
        try:
            plan = prune_shared_store(
                settings=_settings(ctx),
                sessions=sessions,
                keep_champions=keep_champions,
                keep_within=timedelta(hours=keep_hours),
                dry_run=dry_run,
            )
        finally:
            lease.release()
    if plan is None:
        raise _fail("no shared model store is configured (SENTILOOP_MODEL_STORE_URL)")
    verb = "would delete" if dry_run else "deleted"
    rows = [{"model": tag, "kept": "yes", "why": why} for tag, why in plan.kept.items()]
    rows += [{"model": tag, "kept": "no", "why": verb} for tag in plan.deleted]
    _table(rows, as_json, f"no published models in {plan.store}")


@models_app.command("history")
def models_history(
    ctx: typer.Context, limit: int = 20, as_json: Annotated[bool, _JSON] = False
) -> None:
    """Champion/challenger assignments, newest first."""
    from storage import model_roles

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        rows = [
            {
                "when": a.created_at.isoformat(timespec="seconds"),
                "role": a.role,
                "model": a.model_tag,
                "reason": a.reason,
            }
            for a in model_roles.history(session=session, limit=limit)
        ]
    _table(rows, as_json, "no assignments yet")


@models_app.command("runs")
def models_runs(
    ctx: typer.Context, limit: int = 20, as_json: Annotated[bool, _JSON] = False
) -> None:
    """Training runs, newest first: status, decision, counts, candidate; then candidate
    vs champion (candidate/champion) on the feedback holdout (else the base holdout):
    macro-F1, each class's recall and each language's macro-F1, each language's
    macro-F1 on the general guard set (when it guarded the run), and per language of
    recent traffic the share of answers the candidate changes vs the share the
    corrections asked to change (changed/corrected)."""
    from storage import runs

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        rows = [
            {
                "run": run.id,
                "started_at": run.started_at.isoformat(timespec="seconds"),
                "trigger": run.trigger,
                "status": run.status,
                "decision": run.decision,
                "candidate": run.candidate_tag,
                "train_rows": (run.counts or {}).get("train"),
                "error": run.error,
            }
            | _versus(
                {split: m.get("candidate", {}) for split, m in _splits(run.metrics).items()},
                {split: m.get("champion", {}) for split, m in _splits(run.metrics).items()},
                as_json,
            )
            | {"general_guard": _general_guard(run.metrics, as_json)}
            | {"traffic_changed": _traffic((run.metrics or {}).get("traffic_guard"), as_json)}
            for run in runs.list_runs(session=session, limit=limit)
        ]
    _table(rows, as_json, "no training runs yet")


def _splits(metrics: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {
        split: values
        for split, values in (metrics or {}).items()
        if split in ("holdout", "feedback_holdout") and isinstance(values, dict)
    }


def _general_guard(metrics: dict[str, Any] | None, as_json: bool) -> Any:
    """A run's general guard set: each language's macro-F1, candidate/champion."""
    guard = (metrics or {}).get("general_guard")
    if not isinstance(guard, dict):
        return None
    old = guard.get("champion", {}).get("per_language", {})
    pairs = {
        code: (figures.get("macro_f1"), old.get(code, {}).get("macro_f1"))
        for code, figures in guard.get("candidate", {}).get("per_language", {}).items()
    }
    if as_json:
        return {code: {"candidate": new, "champion": was} for code, (new, was) in pairs.items()}
    return " ".join(f"{code}={_short(new)}/{_short(was)}" for code, (new, was) in pairs.items())


def _traffic(guard: dict[str, Any] | None, as_json: bool) -> Any:
    """The traffic guard of a run: per language, changed/corrected shares."""
    if not guard:
        return None
    if as_json:
        return guard
    if guard.get("unavailable"):
        return "no guard"
    return (
        " ".join(
            f"{code}={100 * v['changed_share']:.0f}%/{100 * v['corrected_share']:.0f}%"
            for code, v in guard.get("languages", {}).items()
        )
        or None
    )


def _fail(message: str) -> typer.Exit:
    """A one-line error on stderr; the caller raises what this returns."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _actor() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


def _report(
    ctx: typer.Context, sessions: sessionmaker[Session], days: float, control: str | None
) -> Any:
    from datetime import UTC, timedelta

    from feedback import experiments
    from storage import template_decisions

    settings = _settings(ctx)
    with sessions() as session:
        default = template_decisions.default_version(
            session=session, fallback=settings.default_template_version
        )
        try:
            return experiments.build_report(
                session=session,
                since=datetime.now(UTC) - timedelta(days=days),
                default_template=default,
                control=control,
            )
        except experiments.ExperimentError as error:
            raise _fail(str(error)) from None


_DAYS = typer.Option(help="Predictions made in the last DAYS days.", min=0.001)
_CONTROL = typer.Option(
    help="The control arm (template/model, or a template version); default: the arm "
    "of the default template with the most predictions."
)


@experiments_app.command("report")
def experiments_report(
    ctx: typer.Context,
    days: Annotated[float, _DAYS] = 7.0,
    control: Annotated[str | None, _CONTROL] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Per arm: predictions, judged predictions, agreement with a 95% interval; per arm
    against the control: the difference, its interval, p-value and a verdict."""
    with _database(ctx, migrate=True) as sessions:
        report = _report(ctx, sessions, days, control)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(f"default template: {report.default_template_version}; control: {report.control}")
    header = f"{'arm':<48} {'predictions':>11} {'judged':>7} {'agreement':>9}  95% interval"
    typer.echo(header)
    for arm in report.arms:
        agreement = f"{arm.agreement:.3f}" if arm.agreement is not None else "-"
        interval = f"{arm.interval[0]:.3f}-{arm.interval[1]:.3f}" if arm.interval else "-"
        typer.echo(
            f"{arm.name:<48} {arm.predictions:>11} {arm.judged:>7} {agreement:>9}  {interval}"
        )
    for comparison in report.comparisons:
        typer.echo(f"{comparison.arm} vs {comparison.control}: {comparison.verdict}")
    if not report.arms:
        typer.echo("no predictions in the window")


@experiments_app.command("conclude")
def experiments_conclude(
    ctx: typer.Context,
    days: Annotated[float, _DAYS] = 7.0,
    control: Annotated[str | None, _CONTROL] = None,
    winner: Annotated[
        str | None,
        typer.Option(
            help="The template version to make the default when no arm wins "
            "significantly (needs --reason)."
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (recorded).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who decides (default: user@host).")] = None,
) -> None:
    """Make the winning arm's template version the default (recorded with who, when
    and why; `experiments revert` undoes it) and send all of the running split's
    traffic to its arms: the split the database records, whatever this shell's
    environment says. The service follows within its poll interval."""
    from feedback import experiments
    from model.templates import TemplateRegistry

    settings = _settings(ctx)
    if winner is not None:
        TemplateRegistry.load(settings.resolved_templates_dir).get(winner)
    with _database(ctx, migrate=True) as sessions:
        report = _report(ctx, sessions, days, control)
        with sessions() as session:
            try:
                decision = experiments.conclude(
                    session=session,
                    report=report,
                    actor=actor or _actor(),
                    reason=reason,
                    winner_template=winner,
                )
            except experiments.ExperimentError as error:
                raise _fail(str(error)) from None
            session.commit()
    experiment = decision.experiment
    serves = (
        f"; split {experiment.describe()} now serves its {decision.template_version} arms"
        if experiment is not None
        else ""
    )
    typer.echo(
        f"default template: {decision.template_version} (was {decision.previous_version})"
        f"{serves}; decision {decision.id} by {decision.actor}: {decision.reason}"
    )


@experiments_app.command("start")
def experiments_start(
    ctx: typer.Context,
    split: Annotated[
        str,
        typer.Option(
            help="The arms: TEMPLATE[/MODEL]=WEIGHT, comma-separated (the model: champion "
            "unless named: challenger, zero-shot or a stored tag), e.g. 'v1=90,v2=10'; "
            "or the JSON list SENTILOOP_TRAFFIC_SPLIT takes."
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "experiment started",
    actor: Annotated[str | None, typer.Option(help="Who decides (default: user@host).")] = None,
) -> None:
    """Run a traffic split as an experiment: recorded in the database, which every
    server follows within its poll interval (no restart, no environment variable)."""
    from feedback import experiments
    from model.templates import TemplateRegistry

    settings = _settings(ctx)
    try:
        arms = experiments.parse_split(split)
    except experiments.ExperimentError as error:
        raise _fail(str(error)) from None
    registry = TemplateRegistry.load(settings.resolved_templates_dir)
    for arm in arms:
        registry.get(arm.template_version)
    with _database(ctx, migrate=True) as sessions, sessions() as session:
        try:
            decision = experiments.start(
                session=session,
                arms=arms,
                actor=actor or _actor(),
                reason=reason,
                default_version=settings.default_template_version,
            )
        except experiments.ExperimentError as error:
            raise _fail(str(error)) from None
        session.commit()
    experiment = decision.experiment
    assert experiment is not None
    typer.echo(f"split {experiment.describe()} runs; decision {decision.id} by {decision.actor}")


@experiments_app.command("revert")
def experiments_revert(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why (recorded).")],
    actor: Annotated[str | None, typer.Option(help="Who decides (default: user@host).")] = None,
) -> None:
    """Undo the latest template decision: the default template and the split are what
    they were before it (a concluded split runs again; a started one stops)."""
    from feedback import experiments

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        try:
            decision = experiments.revert(session=session, actor=actor or _actor(), reason=reason)
        except experiments.ExperimentError as error:
            raise _fail(str(error)) from None
        session.commit()
    typer.echo(f"default template: {decision.template_version} (decision {decision.id})")


@experiments_app.command("history")
def experiments_history(ctx: typer.Context, limit: int = 20) -> None:
    """Template decisions, newest first: the default template and the split each left
    running (`concluded`: its arms of the default take all traffic)."""
    from storage import template_decisions

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        decisions = template_decisions.history(session=session, limit=limit)
    typer.echo(
        f"{'id':>4}  {'when (UTC)':<25} {'default':<10} {'was':<10} {'split':<24} {'who':<24} why"
    )
    for d in decisions:
        experiment = d.experiment
        split = "-" if experiment is None else experiment.describe()
        if experiment is not None and experiment.concluded:
            split += " (concluded)"
        typer.echo(
            f"{d.id:>4}  {d.created_at.isoformat(timespec='seconds'):<25} "
            f"{d.template_version:<10} {d.previous_version or '-':<10} {split:<24} "
            f"{d.actor:<24} {d.reason}"
        )


@locks_app.command("list")
def locks_list(ctx: typer.Context, as_json: Annotated[bool, _JSON] = False) -> None:
    """Locks held: by which process (HOST:PID), until when (renewed while it works),
    and whether it is stale (expired, or its process on this host is gone)."""
    from storage import runs

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        rows = [
            {
                "name": lock.name,
                "holder": lock.holder,
                "expires_at": lock.expires_at.isoformat(timespec="seconds"),
                "state": lock.stale or "held",
            }
            for lock in runs.list_locks(session=session)
        ]
    _table(rows, as_json, "no locks held")


@locks_app.command("break")
def locks_break(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The lock, e.g. training.")],
    force: Annotated[
        bool, typer.Option("--force", help="Break it even though its holder still renews it.")
    ] = False,
) -> None:
    """Remove a lock. A stale one is taken over by the next run anyway; this is for a
    holder that hangs, or one on another host known to be gone (a live holder loses
    the lock at its next renewal and stops without promoting)."""
    from storage import runs

    with _database(ctx, migrate=True) as sessions:
        with sessions() as session:
            current = next((x for x in runs.list_locks(session=session) if x.name == name), None)
        if current is None:
            raise _fail(f"no lock {name!r} is held")
        if current.stale is None and not force:
            raise _fail(
                f"lock {name!r} is held by {current.holder}, which renews it (until "
                f"{current.expires_at.isoformat(timespec='seconds')}): stop that process, "
                "or break it with --force"
            )
        broken = runs.break_lock(session_factory=sessions, name=name)
    if broken is None:
        raise _fail(f"no lock {name!r} is held")
    typer.echo(f"broke lock {name!r} held by {broken.holder} ({broken.stale or 'held'})")


@writeback_app.command("list")
def writeback_list(
    ctx: typer.Context,
    status: Annotated[
        Literal["all", "pending", "done", "dead", "superseded"],
        typer.Option(help="Only rows of this status (dead: the dead letters)."),
    ] = "all",
    connector: Annotated[
        str | None, typer.Option(help="Only this connector's rows (zendesk, hubspot, generic).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest rows shown.")] = 50,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Write-backs, newest first: the ticket, the label, the status, the attempts made,
    the CRM's last answer and error, and when a pending one is next tried."""
    from storage import outbox

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        found = outbox.list_rows(
            session=session,
            status=None if status == "all" else status,
            connector=connector,
            limit=limit,
        )
    rows = [
        {
            "id": r.id,
            "connector": r.connector,
            "ticket": r.external_id,
            "label": r.label,
            "status": r.status,
            "attempts": r.attempts,
            "created_at": r.created_at.isoformat(timespec="seconds"),
            "next_attempt_at": r.next_attempt_at.isoformat(timespec="seconds")
            if r.next_attempt_at
            else None,
            "last_status": r.last_status,
            "last_error": r.last_error if as_json or not r.last_error else r.last_error[:80],
        }
        for r in found
    ]
    _table(rows, as_json, f"no write-backs{'' if status == 'all' else f' {status}'}")


@writeback_app.command("replay")
def writeback_replay(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None, typer.Argument(help="Dead write-backs to send again (writeback list).")
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Every dead write-back (of --connector).")
    ] = False,
    connector: Annotated[
        str | None, typer.Option(help="With --all: only this connector's dead write-backs.")
    ] = None,
) -> None:
    """Make dead write-backs pending again, with a fresh count of attempts: a running
    server sends them within SENTILOOP_WEBHOOK_INBOX_POLL_INTERVAL_S (2 s). An old
    label whose ticket got a newer one since is superseded rather than sent (Zendesk,
    HubSpot)."""
    from storage import outbox

    if bool(ids) == replay_all:
        raise _fail("name the write-backs to replay (IDs from `sentiloop writeback list`) or --all")
    if connector is not None and not replay_all:
        raise _fail("--connector goes with --all")
    with _database(ctx, migrate=True) as sessions, sessions() as session:
        replayed = outbox.replay(session=session, ids=ids or None, connector=connector)
    skipped = sorted(set(ids or ()) - set(replayed))
    if skipped:
        typer.echo(f"not dead, left as they are: {', '.join(map(str, skipped))}", err=True)
    if not replayed:
        raise _fail("no dead write-backs to replay")
    typer.echo(
        f"replayed {len(replayed)} write-back(s): {', '.join(map(str, replayed[:20]))}"
        f"{' ...' if len(replayed) > 20 else ''}"
    )


@webhooks_app.command("list")
def webhooks_list(
    ctx: typer.Context,
    status: Annotated[
        Literal["all", "pending", "done", "failed", "unmatched"],
        typer.Option(
            help="Only rows of this status (failed: events given up; unmatched: feedback on "
            "a ticket without a prediction)."
        ),
    ] = "all",
    kind: Annotated[
        Literal["all", "text", "feedback"],
        typer.Option(help="Only texts to score, or only feedback from the CRM."),
    ] = "all",
    connector: Annotated[
        str | None, typer.Option(help="Only this connector's rows (zendesk, hubspot...).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest rows shown.")] = 50,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Webhook events, newest first: the ticket, the kind (a text to score, or feedback
    with its label and the CRM's value), the status, the attempts made, the last error
    (for unmatched feedback: why), and when a pending one is next tried. Texts are
    never shown."""
    from storage import inbox

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        found = inbox.list_rows(
            session=session,
            statuses=inbox.STATUSES if status == "all" else (status,),
            connector=connector,
            kind=None if kind == "all" else kind,
            limit=limit,
        )
    rows = [
        {
            "id": r.id,
            "connector": r.connector,
            "kind": r.kind,
            "ticket": r.external_id,
            "event_type": r.event_type,
            "label": r.label,
            "signal": r.signal,
            "status": r.status,
            "attempts": r.attempts,
            "received_at": r.received_at.isoformat(timespec="seconds"),
            "next_attempt_at": r.next_attempt_at.isoformat(timespec="seconds")
            if r.next_attempt_at
            else None,
            "prediction_id": r.prediction_id,
            "last_error": r.last_error if as_json or not r.last_error else r.last_error[:80],
        }
        for r in found
    ]
    _table(rows, as_json, f"no webhook events{'' if status == 'all' else f' {status}'}")


@webhooks_app.command("replay")
def webhooks_replay(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None,
        typer.Argument(
            help="Failed events or unmatched feedback to take up again (webhooks list)."
        ),
    ] = None,
    replay_all: Annotated[
        bool,
        typer.Option(
            "--all", help="Every failed event and unmatched feedback (of --status, --connector)."
        ),
    ] = False,
    status: Annotated[
        Literal["all", "failed", "unmatched"],
        typer.Option(help="With --all: only failed events, or only unmatched feedback."),
    ] = "all",
    connector: Annotated[
        str | None, typer.Option(help="With --all: only this connector's rows.")
    ] = None,
) -> None:
    """Make failed events and unmatched feedback pending again, with a fresh count of
    attempts: a running server takes them up within
    SENTILOOP_WEBHOOK_INBOX_POLL_INTERVAL_S (2 s). A text is scored; feedback is
    applied to its ticket's latest prediction (unmatched again, after three tries, if
    the ticket still has none)."""
    from storage import inbox

    if bool(ids) == replay_all:
        raise _fail("name the events to replay (IDs from `sentiloop webhooks list`) or --all")
    if (connector is not None or status != "all") and not replay_all:
        raise _fail("--status and --connector go with --all")
    with _database(ctx, migrate=True) as sessions, sessions() as session:
        replayed = inbox.replay(
            session=session,
            ids=ids or None,
            statuses=inbox.GIVEN_UP if status == "all" else (status,),
            connector=connector,
        )
    skipped = sorted(set(ids or ()) - set(replayed))
    if skipped:
        typer.echo(
            f"not failed or unmatched, left as they are: {', '.join(map(str, skipped))}",
            err=True,
        )
    if not replayed:
        raise _fail("no failed or unmatched webhook events to replay")
    typer.echo(
        f"replayed {len(replayed)} webhook event(s): {', '.join(map(str, replayed[:20]))}"
        f"{' ...' if len(replayed) > 20 else ''}"
    )


if __name__ == "__main__":  # pragma: no cover
    app()

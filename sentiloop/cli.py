"""The ``sentiloop`` command line. Each command is a few lines over the libraries."""

from __future__ import annotations

import contextlib
import json
import logging
import os
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
from sentiloop.input_files import read_texts
from training import AssemblyConfig, GateConfig, Schedule, TrainingArguments

_DEBUG = False  # --debug: tracebacks instead of one-line errors


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that a command's user fixes (a file, an option, the data, the database
    address): one or two lines naming it, never a traceback (except with --debug)."""
    from sqlalchemy.exc import OperationalError

    from feedback.experiments import ExperimentError
    from feedback.imports import ImportFileError
    from model.base_models import BaseModelError
    from model.model_store import ModelNotFound
    from model.templates import UnknownTemplateVersion
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
        ModelNotFound,
        UnknownTemplateVersion,
        BaseModelError,
        InputFileError,
        ImportFileError,
        ExperimentError,
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
    return str(error).strip()


class _Commands(typer.core.TyperGroup):
    """The root command group: maps what a user fixes to a one-line error, exit 2."""

    def invoke(self, ctx: Any) -> Any:  # typer's click Context
        try:
            return super().invoke(ctx)
        except _user_errors() as error:
            if _DEBUG:
                raise
            failed = _fail(_one_line(error))
            typer.echo("(run with --debug for the traceback)", err=True)
            raise failed from None


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
    help="A/B experiments over the traffic split: report, conclude, revert.",
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
    ctx.obj = Settings()


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


@app.command()
def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port of the HTTP API.")] = 3000,
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
    template_version: Annotated[str | None, typer.Option()] = None,
    routing_key: Annotated[str | None, typer.Option()] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=256)] = 64,
) -> None:
    """Score a text or a file of texts through a running service (JSONL out)."""
    from sentiloop.client import SentiloopClient

    if (text is None) == (file is None):
        raise typer.BadParameter("give a TEXT or --file, not both")
    texts = [text] if text is not None else read_texts(file, text_field)  # type: ignore[arg-type]
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    with (
        SentiloopClient(url) as client,
        typer.progressbar(length=len(texts), label="scoring", file=sys.stderr) as bar,
    ):
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            for prediction in client.predict(chunk, template_version, routing_key):
                out.write(json.dumps(prediction) + "\n")
            bar.update(len(chunk))
    if output:
        out.close()


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


@feedback_app.command("export")
def feedback_export(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option(help="File to write (stdout if unset).")] = None,
    format: Annotated[Literal["jsonl", "csv"], typer.Option()] = "jsonl",
    since: Annotated[datetime | None, typer.Option(help="Feedback at or after (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Feedback before (UTC).")] = None,
) -> None:
    """Export feedback joined with its predictions, for training and audit."""
    from storage import store
    from storage.export import serialize

    since, until = store.utc_bounds(since, until)
    out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        with _database(ctx, migrate=False) as sessions, sessions() as session:
            rows = store.iter_feedback_export(session=session, since=since, until=until)
            for chunk in serialize(rows, format):
                out.write(chunk)
    finally:
        if output:
            out.close()


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
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Store labels from a file: rows with prediction_id or external_id (+ source) and
    label (negative/neutral/positive, any case, or 0/1/2) or verdict (correct/incorrect).
    Importing the same file again stores nothing twice; unlabelled rows are skipped."""
    from feedback.imports import ImportFileError, import_feedback

    if not file.is_file():
        raise _fail(f"{file}: no such file")
    with _database(ctx, migrate=True) as sessions:
        try:
            summary = import_feedback(file, sessions=sessions, source=source)
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
    epochs: int = _ARGUMENTS.epochs,
    batch_size: int = _ARGUMENTS.batch_size,
    learning_rate: float = _ARGUMENTS.learning_rate,
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
        int, typer.Option(help="Base-holdout rows of a language from which it is guarded.")
    ] = _GATE.min_language_rows,
    base_tolerance: Annotated[
        float, typer.Option(help="Largest tolerated loss of --metric on the base holdout.")
    ] = _GATE.base_tolerance,
    start_from: Annotated[
        Literal["champion", "base"],
        typer.Option(help="Continue from the champion's weights, or a new head on the base."),
    ] = "champion",
    schedule: Annotated[
        bool, typer.Option("--schedule", help="Keep running; retrain when due.")
    ] = False,
    min_new_feedback: Annotated[
        int, typer.Option(help="--schedule: feedback rows.")
    ] = _SCHEDULE.min_new_feedback,
    interval_minutes: Annotated[
        float, typer.Option(help="--schedule: max minutes.")
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
        TrainingPipeline,
        TrainingPlan,
        parse_label_map,
        run_schedule,
    )

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
            conflict_policy=conflict_policy,
            max_base_examples=max_base_examples,
            min_examples_per_class=min_examples_per_class,
        ),
        arguments=TrainingArguments(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
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
        ),
        start_from=start_from,
    )
    pipeline = TrainingPipeline(_settings(ctx))
    try:
        if schedule:
            plan_schedule = Schedule(min_new_feedback, interval_minutes * 60, poll_seconds)
            run_schedule(pipeline, plan, plan_schedule, threading.Event())
            return
        outcome = pipeline.run(plan)
    finally:
        pipeline.close()
    typer.echo((outcome.report_dir / "summary.txt").read_text(), nl=False)
    typer.echo(f"report: {outcome.report_dir}")


_JSON = typer.Option("--json", help="Print JSON (one object per row) for scripts.")


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
    """Models in the BentoML store, oldest first, with their current role."""
    from model import model_store
    from storage import model_roles

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        roles = {
            model_roles.current(session=session, role="champion"): "champion",
            model_roles.current(session=session, role="challenger"): "challenger",
        }
    rows = []
    for stored in model_store.list_models(_settings(ctx).model_name):
        holdout = stored.metadata.get("metrics", {}).get("holdout", {})
        score = holdout.get("macro_f1")
        rows.append(
            {
                "tag": stored.tag,
                "role": roles.get(stored.tag),
                "created_at": stored.created_at[:19],
                "holdout_macro_f1": None if score is None else round(score, 4),
                "languages": ",".join(stored.metadata.get("languages", [])) or None,
            }
        )
    _table(rows, as_json, "no stored models yet (`sentiloop train` makes one)")


@models_app.command("promote")
def models_promote(ctx: typer.Context, tag: str) -> None:
    """Make a stored model the champion (the service switches within its poll interval)."""
    from training import promote

    with _database(ctx, migrate=True) as sessions:
        assignment = promote(sessions=sessions, tag=tag, reason="manual promotion")
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
        assignment = rollback(sessions=sessions, tag=tag)
    typer.echo(f"champion: {assignment.model_tag or 'zero-shot'} ({assignment.reason})")


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
    """Training runs, newest first: status, decision, counts, candidate."""
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
            for run in runs.list_runs(session=session, limit=limit)
        ]
    _table(rows, as_json, "no training runs yet")


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
    and why; `experiments revert` undoes it). The service follows within its poll
    interval: a concluded split sends all traffic to the winner's arms."""
    from core.settings import split_fingerprint
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
                    split=split_fingerprint(settings.traffic_split)
                    if settings.traffic_split_configured
                    else None,
                )
            except experiments.ExperimentError as error:
                raise _fail(str(error)) from None
            session.commit()
    typer.echo(
        f"default template: {decision.template_version} (was {decision.previous_version}); "
        f"decision {decision.id} by {decision.actor}: {decision.reason}"
    )


@experiments_app.command("revert")
def experiments_revert(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why (recorded).")],
    actor: Annotated[str | None, typer.Option(help="Who decides (default: user@host).")] = None,
) -> None:
    """Undo the latest template decision: the previous default serves again, and a
    concluded split runs as configured."""
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
    """Template decisions, newest first."""
    from storage import template_decisions

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        decisions = template_decisions.history(session=session, limit=limit)
    typer.echo(f"{'id':>4}  {'when (UTC)':<25} {'default':<10} {'was':<10} {'who':<24} why")
    for d in decisions:
        typer.echo(
            f"{d.id:>4}  {d.created_at.isoformat(timespec='seconds'):<25} "
            f"{d.template_version:<10} {d.previous_version or '-':<10} {d.actor:<24} {d.reason}"
        )


if __name__ == "__main__":  # pragma: no cover
    app()

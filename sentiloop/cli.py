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
from typing import Annotated, Literal

import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.logs import configure_logging
from core.settings import Settings
from sentiloop.input_files import read_texts
from training import AssemblyConfig, GateConfig, Schedule, TrainingArguments

app = typer.Typer(
    help="sentiloop: sentiment serving with a feedback loop.",
    no_args_is_help=True,
    rich_markup_mode=None,
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
app.add_typer(feedback_app, name="feedback")

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
def main(ctx: typer.Context) -> None:
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
        Path | None, typer.Option(help="Base training data: .csv, .tsv or .jsonl.")
    ] = None,
    holdout: Annotated[
        Path | None,
        typer.Option(help="Fixed holdout file (else a stable hash split of the base data)."),
    ] = None,
    text_field: Annotated[str | None, typer.Option(help="Text column (auto-detected).")] = None,
    label_field: Annotated[str, typer.Option(help="Label column.")] = "label",
    label_map: Annotated[
        str | None, typer.Option(help='Raw label mapping, e.g. "0=negative,1=positive".')
    ] = None,
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
    plan = TrainingPlan(
        base_data=DataSource(base_data, text_field, label_field, mapping) if base_data else None,
        holdout_data=DataSource(holdout, text_field, label_field, mapping) if holdout else None,
        template_versions=tuple(template_version or ()),
        assembly=AssemblyConfig(
            holdout_fraction=holdout_fraction,
            feedback_holdout_fraction=feedback_holdout_fraction,
            feedback_weight=feedback_weight,
            conflict_policy=conflict_policy,
            max_base_examples=max_base_examples,
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


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Models in the BentoML store, oldest first, with their current role."""
    from model import model_store
    from storage import model_roles

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        roles = {
            model_roles.current(session=session, role="champion"): "champion",
            model_roles.current(session=session, role="challenger"): "challenger",
        }
    for stored in model_store.list_models(_settings(ctx).model_name):
        holdout = stored.metadata.get("metrics", {}).get("holdout", {})
        score = holdout.get("macro_f1")
        typer.echo(
            f"{stored.tag}\t{roles.get(stored.tag, '-')}\t{stored.created_at}\t"
            f"holdout_macro_f1={score if score is None else round(score, 4)}"
        )


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
def models_history(ctx: typer.Context, limit: int = 20) -> None:
    """Champion/challenger assignments, newest first."""
    from storage import model_roles

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        for a in model_roles.history(session=session, limit=limit):
            typer.echo(f"{a.created_at.isoformat()}\t{a.role}\t{a.model_tag}\t{a.reason}")


@models_app.command("runs")
def models_runs(ctx: typer.Context, limit: int = 20) -> None:
    """Training runs, newest first: status, decision, counts, candidate."""
    from storage import runs

    with _database(ctx, migrate=True) as sessions, sessions() as session:
        for run in runs.list_runs(session=session, limit=limit):
            typer.echo(
                f"{run.id}\t{run.started_at}\t{run.trigger}\t{run.status}\t"
                f"{run.decision}\t{run.candidate_tag}\t{json.dumps(run.counts)}"
            )


if __name__ == "__main__":  # pragma: no cover
    app()

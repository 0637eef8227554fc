"""The ``sentiloop`` command line. Each command is a few lines over the libraries."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer

from sentiloop.input_files import read_texts
from sentiloop.logging_setup import configure_logging
from sentiloop.settings import Settings

app = typer.Typer(help="sentiloop: sentiment serving with a feedback loop.", no_args_is_help=True)
templates_app = typer.Typer(help="Versioned prompt templates.", no_args_is_help=True)
db_app = typer.Typer(help="The prediction and feedback database.", no_args_is_help=True)
feedback_app = typer.Typer(help="Logged feedback.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
app.add_typer(db_app, name="db")
app.add_typer(feedback_app, name="feedback")

DEFAULT_URL = "http://127.0.0.1:3000"


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


@app.callback()
def main(ctx: typer.Context) -> None:
    configure_logging()
    ctx.obj = Settings()


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port of the HTTP API.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
) -> None:
    """Serve the API with BentoML (`bentoml serve service.bento:SentiLoop`)."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    command = [
        sys.executable, "-m", "bentoml", "serve", "service.bento:SentiLoop",
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    os.execvp(command[0], command)


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
    from service.templates import TemplateRegistry

    registry = TemplateRegistry.load(_settings(ctx).resolved_templates_dir)
    for version in registry.versions:
        template = registry.get(version)
        typer.echo(f"{version}\t{template.sha256[:12]}\t{template.description}")


@templates_app.command("show")
def templates_show(ctx: typer.Context, version: str) -> None:
    """Print one template version as JSON."""
    from service.templates import TemplateRegistry

    registry = TemplateRegistry.load(_settings(ctx).resolved_templates_dir)
    typer.echo(json.dumps(registry.get(version).to_dict(), indent=2))


@templates_app.command("diff")
def templates_diff(ctx: typer.Context, old: str, new: str) -> None:
    """Show a unified diff between two template versions."""
    from service.templates import TemplateRegistry, diff

    registry = TemplateRegistry.load(_settings(ctx).resolved_templates_dir)
    typer.echo(diff(registry, old, new), nl=False)


@templates_app.command("release")
def templates_release(ctx: typer.Context, version: str) -> None:
    """Record the hash of <version>.toml: from now on the file is immutable."""
    from service.templates import release

    digest = release(_settings(ctx).resolved_templates_dir, version)
    typer.echo(f"released {version} sha256={digest}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Apply the database migrations (SQLite file or DATABASE_URL)."""
    import feedback

    settings = _settings(ctx)
    feedback.upgrade(settings.resolved_database_url, revision)
    typer.echo(f"database at revision {revision}")


@feedback_app.command("export")
def feedback_export(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option(help="File to write (stdout if unset).")] = None,
    format: Annotated[Literal["jsonl", "csv"], typer.Option()] = "jsonl",
    since: Annotated[datetime | None, typer.Option(help="Feedback at or after (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Feedback before (UTC).")] = None,
) -> None:
    """Export feedback joined with its predictions, for training and audit."""
    import feedback
    from feedback import store
    from feedback.export import serialize

    settings = _settings(ctx)
    engine = feedback.make_engine(settings.resolved_database_url)
    out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        with feedback.make_session_factory(engine)() as session:
            rows = store.iter_feedback_export(
                session=session,
                since=store.as_utc(since) if since else None,
                until=store.as_utc(until) if until else None,
            )
            for chunk in serialize(rows, format):
                out.write(chunk)
    finally:
        if output:
            out.close()
        engine.dispose()


if __name__ == "__main__":  # pragma: no cover
    app()

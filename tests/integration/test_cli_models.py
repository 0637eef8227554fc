"""The models commands on a real SQLite file and the BentoML store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import storage
from core import database
from core.settings import Settings
from model import model_store
from model.shipped import shipped_for_base
from sentiloop.cli import app
from storage import model_roles, runs, store
from storage.models import Feedback
from tests.support import ROOT, S3Server

METADATA = {"base_model": "tiny", "template_versions": ["v1"], "data_sha256": "x", "metrics": {}}


def test_promote_history_list_and_rollback(
    tmp_path: Path, tiny_model_dir: Path, bentoml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    monkeypatch.setenv("SENTILOOP_MODEL_NAME", "cli-models")
    first = model_store.save_model(tiny_model_dir, name="cli-models", metadata=METADATA)
    second = model_store.save_model(tiny_model_dir, name="cli-models", metadata=METADATA)
    runner = CliRunner()
    for tag in (first.tag, second.tag):
        result = runner.invoke(app, ["models", "promote", tag])
        assert result.exit_code == 0 and f"champion: {tag}" in result.output
        # Prepared to serve before it got the role: no model process builds it while
        # its batches wait (a first promotion took 80 s to serve that way).
        exported = Settings().onnx_cache_dir / tag.replace(":", "-")
        assert list(exported.glob("*.onnx")), f"{tag} has no serving file in {exported}"
    listed = runner.invoke(app, ["models", "list"]).output.splitlines()
    assert listed[0].split() == [
        "tag", "role", "created_at", "holdout_macro_f1", "languages",
        "split", "macro_f1", "recall", "language_macro_f1",
    ]  # fmt: skip
    stored_rows = [line.split()[:2] for line in listed[1:] if not line.startswith("shipped:")]
    assert stored_rows == [[first.tag, "-"], [second.tag, "champion"]]
    as_json = runner.invoke(app, ["models", "list", "--json"]).output.splitlines()
    rows = [json.loads(line) for line in as_json]
    assert [row["role"] for row in rows if row["tag"].startswith("cli-models:")] == [
        None,
        "champion",
    ]
    history = runner.invoke(app, ["models", "history"]).output.splitlines()
    assert history[0].split() == ["when", "role", "model", "reason"]
    assert [line.split()[2] for line in history[1:]] == [second.tag, first.tag]
    rolled = runner.invoke(app, ["models", "rollback"])
    assert rolled.exit_code == 0 and f"champion: {first.tag}" in rolled.output
    runs = runner.invoke(app, ["models", "runs"])
    assert runs.exit_code == 0 and runs.output.strip() == "no training runs yet"


def test_experiment_and_import_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    runner = CliRunner()
    report = runner.invoke(app, ["experiments", "report"])
    assert report.exit_code == 0 and "no predictions in the window" in report.output
    concluded = runner.invoke(app, ["experiments", "conclude"])
    assert concluded.exit_code == 2
    assert concluded.output.strip().splitlines() == [
        "error: no arm beats the control significantly (no arms compared); name a template "
        "version with --winner to decide anyway"
    ]
    missing = runner.invoke(app, ["feedback", "import", str(tmp_path / "nope.csv")])
    assert (
        missing.exit_code == 2
        and missing.output.strip() == f"error: {tmp_path / 'nope.csv'}: no such file"
    )
    reverted = runner.invoke(app, ["experiments", "revert", "--reason", "x"])
    assert reverted.exit_code == 2 and "no template decision to revert" in reverted.output


def _sentiloop(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process run from ``checkout``, in a shell that sets neither
    BENTOML_HOME nor SENTILOOP_HOME (a new user's), with its own home directory."""
    clean = {k: v for k, v in os.environ.items() if k not in ("BENTOML_HOME", "SENTILOOP_HOME")}
    clean.update(HOME=str(checkout / "user-home"), PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "sentiloop.cli", *args],
        cwd=checkout,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_shell_of_a_checkout_uses_its_model_store(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    store = tmp_path / "var" / "bentoml"
    saved = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from model import model_store; "
            "print(model_store.save_model(Path(sys.argv[1]), name='checkout', "
            f"metadata={METADATA!r}).tag)",
            str(tiny_model_dir),
        ],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(store)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    tag = saved.stdout.strip().splitlines()[-1]
    env = {"SENTILOOP_MODEL_NAME": "checkout"}
    listed = _sentiloop(tmp_path, "models", "list", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    assert tag in [json.loads(line)["tag"] for line in listed.stdout.splitlines()]
    # A tag the server could not load fails now, naming the store the server reads.
    missing = _sentiloop(tmp_path, "models", "promote", "checkout:nope", **env)
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == (
        f"error: no model 'checkout:nope' in the BentoML model store {store / 'models'}"
    )
    promoted = _sentiloop(tmp_path, "models", "promote", tag, **env)
    assert promoted.returncode == 0 and f"champion: {tag}" in promoted.stdout, promoted.stderr


def test_the_shipped_model_is_promoted_listed_and_rolled_back_to(
    tmp_path: Path, tiny_model_dir: Path, bentoml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    monkeypatch.setenv("SENTILOOP_MODEL_NAME", "cli-shipped")
    # The default preset, whose shipped model is the cold-start champion (nothing loads).
    monkeypatch.setenv("SENTILOOP_BASE_MODEL", "multilingual-e5-small")
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    trained = model_store.save_model(tiny_model_dir, name="cli-shipped", metadata=METADATA)
    runner = CliRunner()

    def roles() -> dict[str, str | None]:
        lines = runner.invoke(app, ["models", "list", "--json"]).output.splitlines()
        return {row["tag"]: row["role"] for row in map(json.loads, lines)}

    assert roles() == {shipped.version: "champion", trained.tag: None}
    assert runner.invoke(app, ["models", "promote", trained.tag]).exit_code == 0
    rolled = runner.invoke(app, ["models", "rollback"])
    assert rolled.exit_code == 0, rolled.output
    assert rolled.output.startswith(f"champion: {shipped.version} ")
    assert roles() == {shipped.version: "champion", trained.tag: None}
    for reference in (trained.tag, "shipped", trained.tag, shipped.version):
        promoted = runner.invoke(app, ["models", "promote", reference])
        assert promoted.exit_code == 0, promoted.output
    assert promoted.output == f"champion: {shipped.version}\n"
    assert runner.invoke(app, ["models", "rollback", "shipped"]).exit_code == 0
    history = runner.invoke(app, ["models", "history", "--json"]).output.splitlines()
    assert [json.loads(line)["model"] for line in history][:3] == [
        shipped.version,
        shipped.version,
        trained.tag,
    ]
    for bad in ("shipped:nope@123456789abc", "not a tag@all", ":"):
        refused = runner.invoke(app, ["models", "promote", bad])
        assert refused.exit_code == 2
        error = [line for line in refused.output.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "Traceback" not in refused.output, refused.output
        assert refused.exception is None or isinstance(refused.exception, SystemExit)


def test_a_model_both_champion_and_challenger_shows_both_roles(
    tmp_path: Path, tiny_model_dir: Path, bentoml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    monkeypatch.setenv("SENTILOOP_MODEL_NAME", "cli-both-roles")
    stored = model_store.save_model(tiny_model_dir, name="cli-both-roles", metadata=METADATA)
    other = model_store.save_model(tiny_model_dir, name="cli-both-roles", metadata=METADATA)
    url = Settings().resolved_database_url
    storage.upgrade(url)
    engine = database.make_engine(url)
    with database.make_session_factory(engine)() as session:
        model_roles.assign(session=session, role="challenger", model_tag=stored.tag, reason="t")
        session.commit()
    engine.dispose()
    runner = CliRunner()
    assert runner.invoke(app, ["models", "promote", stored.tag]).exit_code == 0
    lines = runner.invoke(app, ["models", "list", "--json"]).output.splitlines()
    roles = {row["tag"]: row["role"] for row in map(json.loads, lines)}
    assert roles[stored.tag] == "champion,challenger" and roles[other.tag] is None


def test_feedback_import_follows_text_storage_and_label_map_and_reports_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`feedback import` keeps no comment under SENTILOOP_TEXT_STORAGE=none, reads CSAT
    stars through --label-map, and prints one line per bad row without stopping."""
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    monkeypatch.setenv("SENTILOOP_TEXT_STORAGE", "none")
    url = Settings().resolved_database_url
    storage.upgrade(url)
    engine = database.make_engine(url)
    sessions = database.make_session_factory(engine)
    with sessions() as session:
        store.insert_predictions(
            session=session,
            records=[
                storage.PredictionRecord(
                    id=storage.time_ordered_id(),
                    created_at=datetime.now(UTC) - timedelta(seconds=1),
                    text=None,
                    text_storage="none",
                    text_sha256="0" * 64,
                    label="positive",
                    scores={"negative": 0.1, "neutral": 0.1, "positive": 0.8},
                    model_version="m",
                    template_version="v1",
                    latency_ms=1.0,
                    external_id=ticket,
                    external_source="zendesk",
                )
                for ticket in ("T-1", "T-2", "T-3")
            ],
        )
        session.commit()
    csat = tmp_path / "csat.csv"
    csat.write_text(
        "external_id,label,comment\n"
        "T-1,1,call me on +44 20 7946 0958\n"
        f"T-2,4,{'s' * 2_001}\n"
        "T-3,6,\n"
        "T-2,5,\n"
    )
    result = CliRunner().invoke(
        app, ["feedback", "import", str(csat), "--source", "zendesk", "--label-map", "stars5"]
    )
    assert result.exit_code == 1
    assert (
        result.stdout.strip()
        == f"{csat}: 4 rows: 2 stored, 0 already there, 0 without a label, 2 failed"
    )
    assert result.stderr.splitlines() == [
        "  row 3: comment: String should have at most 2000 characters",
        "  row 4: label: '6' is not in the label map ('1', '2', '3', '4', '5')",
    ]
    with sessions() as session:
        stored = session.execute(select(Feedback.label, Feedback.comment)).all()
    engine.dispose()
    assert sorted(tuple(row) for row in stored) == [("negative", None), ("positive", None)]


def test_models_prune_lists_what_it_keeps_and_why_and_needs_a_shared_store(
    tmp_path: Path,
    tiny_model_dir: Path,
    bentoml_home: Path,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    monkeypatch.setenv("SENTILOOP_MODEL_NAME", "cli-prune")
    refused = runner.invoke(app, ["models", "prune"])
    assert refused.exit_code == 2 and "SENTILOOP_MODEL_STORE_URL" in refused.output
    for name, value in s3_server.env(f"cli-prune-{os.getpid()}").items():
        monkeypatch.setenv(name, value)
    old, new = (
        model_store.save_model(tiny_model_dir, name="cli-prune", metadata=METADATA)
        for _ in range(2)
    )
    for tag in (old.tag, new.tag):
        assert runner.invoke(app, ["models", "promote", tag]).exit_code == 0
    args = ["models", "prune", "--keep-champions", "1", "--keep-hours", "0", "--json"]
    planned = [
        json.loads(line) for line in runner.invoke(app, [*args, "--dry-run"]).stdout.splitlines()
    ]
    assert {(row["model"], row["kept"], row["why"]) for row in planned} == {
        (new.tag, "yes", "champion"), (old.tag, "no", "would delete"),
    }  # fmt: skip
    pruned = [json.loads(line) for line in runner.invoke(app, args).stdout.splitlines()]
    assert (old.tag, "no", "deleted") in {(r["model"], r["kept"], r["why"]) for r in pruned}
    again = [json.loads(line) for line in runner.invoke(app, args).stdout.splitlines()]
    assert [row["model"] for row in again] == [new.tag]
    # While a training run holds its lock (it uploads before it assigns): busy, exit 75.
    engine = database.make_engine(Settings().resolved_database_url)
    runs.acquire_lock(session_factory=database.make_session_factory(engine), name="training",
                      holder="trainer-host:1", ttl=timedelta(minutes=5))  # fmt: skip
    engine.dispose()
    busy = runner.invoke(app, args)
    assert busy.exit_code == 75 and "trainer-host:1" in busy.stderr

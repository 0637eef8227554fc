"""Several replicas, as on several machines (issue 21): two real `bentoml serve`
servers with their own homes, BentoML model stores and caches, one PostgreSQL
database (the replicas start together on an empty one: their migrations must not
race), one S3 API server (moto_server) as the shared model store, and a trainer (this test's
process, with its own store). A model trained and promoted here, one promoted from
the trainer's local store, and a rollback each reach both replicas, which fetch the
models from the shared store; a replica that missed one fails the test. The time
from each assignment to every replica serving it is logged (the README's figure).
A routing key gets the same A/B arm on either replica, a concluded experiment
reaches both, and when one is killed under load the other keeps answering and no
acknowledged feedback is lost."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from core import database
from core.settings import Settings, TrafficArm
from feedback import experiments
from model import model_store
from storage import model_roles, template_decisions
from storage.models import Feedback
from tests.e2e.conftest import TINY_METADATA
from tests.integration.test_training import ALWAYS, write_base_data
from tests.support import S3Server, ServerProcess, build_tiny_model, throwaway_postgres
from training import AssemblyConfig, GateConfig, TrainingArguments
from training.pipeline import DataSource, TrainingPipeline, TrainingPlan
from training.promotion import promote, rollback

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 2.0
# A replica sees a role within the poll interval, then fetches the model, checks it
# and exports it to ONNX before it swaps (a second or two for the tiny model here).
DEADLINE_S = POLL_INTERVAL_S + 20.0


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, s3_server: S3Server
) -> Iterator[tuple[Settings, list[ServerProcess], list[Path]]]:
    tmp = tmp_path_factory.mktemp("replicas")
    with throwaway_postgres() as database_url:
        yield from _cluster(tmp, database_url, tiny_model_dir, s3_server)


def _cluster(
    tmp: Path, database_url: str, tiny_model_dir: Path, s3_server: S3Server
) -> Iterator[tuple[Settings, list[ServerProcess], list[Path]]]:
    shared = {
        "SENTILOOP_DATABASE_URL": database_url,
        "SENTILOOP_AUTH": "disabled",  # on PostgreSQL it is required by default
        "SENTILOOP_BASE_MODEL": str(tiny_model_dir),
        "SENTILOOP_MODEL_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        "SENTILOOP_MODEL_PROCESSES": "1",
        **s3_server.env(f"replicas-{uuid.uuid4().hex[:6]}"),
    }
    trainer = Settings(
        home=tmp / "trainer",
        database_url=shared["SENTILOOP_DATABASE_URL"],
        base_model=str(tiny_model_dir),
        model_name=f"replicas-{uuid.uuid4().hex[:6]}",
        model_store_url=shared["SENTILOOP_MODEL_STORE_URL"],
        model_store_endpoint_url=s3_server.url,
        model_store_region=S3Server.REGION,
        model_store_access_key_id=s3_server.key_id,
        model_store_secret_access_key=SecretStr(s3_server.secret),
    )
    homes = [tmp / f"replica-{n}" for n in (1, 2)]
    replicas: list[ServerProcess] = []
    try:
        for home in homes:  # started together, then waited for
            home.mkdir()
            own = {
                "SENTILOOP_HOME": str(home / "home"),
                "BENTOML_HOME": str(home / "bentoml"),
                "SENTILOOP_BENTOML_HOME": str(home / "bentoml"),
                "SENTILOOP_CACHE_DIR": str(home / "cache"),
            }
            replicas.append(ServerProcess(shared | own, home / "server.log"))
        for replica in replicas:
            replica.wait_ready()
        yield trainer, replicas, [home / "bentoml" / "models" for home in homes]
    finally:
        for replica in replicas:
            replica.stop()


def champion_of(replica: ServerProcess) -> str | None:
    try:
        models = httpx.get(f"{replica.url}/v1/models", timeout=5).json()["models"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return next(m["model_version"] for m in models if m["reference"] == "champion")


def seconds_until_all_serve(replicas: list[ServerProcess], tag: str, since: float) -> float:
    """From ``since`` (the assignment) to every replica answering with ``tag``; fails
    naming the replicas that missed it."""
    waiting = set(range(len(replicas)))
    while waiting and time.time() - since < DEADLINE_S:
        waiting = {n for n in waiting if champion_of(replicas[n]) != tag}
        time.sleep(0.05)
    missed = {n: champion_of(replicas[n]) for n in waiting}
    assert not missed, f"replicas that missed {tag} (serving instead): {missed}\n" + "\n".join(
        replicas[n].log_tail(3000) for n in missed
    )
    return time.time() - since


def assigned_at(trainer: Settings) -> float:
    engine = database.make_engine(trainer.resolved_database_url)
    with database.make_session_factory(engine)() as session:
        newest = model_roles.history(session=session, role="champion", limit=1)[0]
    engine.dispose()
    return newest.created_at.timestamp()


def test_promotions_and_rollback_reach_every_replica_through_the_shared_store(
    cluster: tuple[Settings, list[ServerProcess], list[Path]], tmp_path: Path
) -> None:
    trainer, replicas, stores = cluster
    assert all((champion_of(replica) or "").startswith("zero-shot:") for replica in replicas)
    figures = {}

    # 1. A training run promotes its candidate (uploaded before the assignment).
    pipeline = TrainingPipeline(trainer)
    try:
        outcome = pipeline.run(
            TrainingPlan(
                base_data=DataSource(write_base_data(tmp_path / "base.csv")),
                assembly=AssemblyConfig(holdout_fraction=0.25, validation_fraction=0.1),
                arguments=TrainingArguments(epochs=1, batch_size=16, max_length=32, progress=False),
                gate=GateConfig(**ALWAYS),  # type: ignore[arg-type]
                start_from="base",
            )
        )
        sessions = pipeline.sessions
        assert outcome.decision == "promoted"
        trained = outcome.candidate_tag
        figures["trained"] = seconds_until_all_serve(replicas, trained, assigned_at(trainer))

        # 2. `models promote` of a model only the trainer's store holds.
        local = model_store.save_model(
            build_tiny_model(tmp_path / "other", seed=1),
            name=trainer.model_name,
            metadata=TINY_METADATA,
        )
        promote(settings=trainer, sessions=sessions, tag=local.tag, reason="e2e")
        figures["promoted"] = seconds_until_all_serve(replicas, local.tag, assigned_at(trainer))

        # 3. Rollback: every replica follows back to the trained model.
        rollback(settings=trainer, sessions=sessions)
        figures["rollback"] = seconds_until_all_serve(replicas, trained, assigned_at(trainer))
    finally:
        pipeline.close()

    name = trainer.model_name
    for store in stores:  # each replica fetched both into its own store
        assert sorted(p.name for p in (store / name).iterdir() if p.name != "latest") == sorted(
            tag.split(":")[1] for tag in (trained, local.tag)
        )
    logger.info("promotion to every replica (s): %s", figures)


KEYS = [f"customer-{n}" for n in range(40)]


def arms_of(replica: ServerProcess) -> list[str] | None:
    """The template version each routing key of ``KEYS`` gets on ``replica``."""
    body = {"texts": ["the parcel came late"] * len(KEYS), "routing_keys": KEYS}
    response = httpx.post(f"{replica.url}/v1/predict", json=body, timeout=30)
    if response.status_code != 200:
        return None
    return [prediction["template_version"] for prediction in response.json()["predictions"]]


def seconds_until(condition: Callable[[], bool], since: float, what: str) -> float:
    while time.time() - since < DEADLINE_S:
        if condition():
            return time.time() - since
        time.sleep(0.1)
    raise AssertionError(f"not within {DEADLINE_S} s: {what}")


def test_a_routing_key_gets_one_arm_on_every_replica_and_a_conclusion_reaches_all(
    cluster: tuple[Settings, list[ServerProcess], list[Path]],
) -> None:
    trainer, replicas, _ = cluster
    engine = database.make_engine(trainer.resolved_database_url)
    sessions = database.make_session_factory(engine)
    split = [TrafficArm(template_version=version, weight=1) for version in ("v1", "v2")]
    try:
        with sessions() as session:
            experiments.start(
                session=session, arms=split, actor="e2e", reason="A/B", default_version="v1"
            )
            session.commit()
        started = time.time()
        seconds_until(
            lambda: all(set(arms_of(r) or ()) == {"v1", "v2"} for r in replicas),
            started,
            "every replica runs the experiment",
        )
        first, second = (arms_of(replica) for replica in replicas)
        assert first is not None and len(first) == len(KEYS)  # answered, every key
        assert first == second  # each key, the same arm on either replica

        with sessions() as session:
            default = template_decisions.default_version(session=session, fallback="v1")
            report = experiments.build_report(
                session=session,
                since=datetime.now(UTC) - timedelta(days=1),
                default_template=default,
            )
            experiments.conclude(
                session=session, report=report, actor="e2e", winner_template="v2", reason="v2"
            )
            session.commit()
        concluded = time.time()
        took = seconds_until(
            lambda: all(arms_of(r) == ["v2"] * len(KEYS) for r in replicas),
            concluded,
            "every replica follows the conclusion",
        )
        logger.info("conclusion to every replica: %.1f s", took)
    finally:
        engine.dispose()


def test_a_replica_killed_under_load_leaves_the_other_answering_and_no_feedback_lost(
    cluster: tuple[Settings, list[ServerProcess], list[Path]],
) -> None:
    """Last in this file: it kills the first replica."""
    trainer, replicas, _ = cluster
    answers: list[list[int]] = [[], []]  # status codes, per replica
    after_kill: list[int] = []  # the survivor's, once the other is dead
    acknowledged: list[str] = []
    acknowledged_by: set[int] = set()  # the replicas that acknowledged any
    stop, killed = threading.Event(), threading.Event()

    def traffic(n: int) -> None:
        with httpx.Client(base_url=replicas[n % 2].url, timeout=30) as client:
            while not stop.is_set():
                try:
                    predicted = client.post("/v1/predict", json={"text": f"order {n} was late"})
                    statuses = [predicted.status_code]
                    if predicted.status_code == 200:
                        prediction = predicted.json()["predictions"][0]["prediction_id"]
                        feedback = client.post(
                            "/v1/feedback", json={"prediction_id": prediction, "label": "negative"}
                        )
                        statuses.append(feedback.status_code)
                        if feedback.is_success:
                            acknowledged.append(feedback.json()["feedback_id"])
                            acknowledged_by.add(n % 2)
                except httpx.HTTPError:
                    statuses = [0]  # no answer (the killed replica)
                answers[n % 2].extend(statuses)
                if killed.is_set() and n % 2 == 1:
                    after_kill.extend(statuses)

    threads = [threading.Thread(target=traffic, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        replicas[0].kill_hard()
        killed.set()
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    # Both replicas logged predictions and took feedback on the one database.
    assert answers[0] and acknowledged_by == {0, 1}
    assert after_kill and set(answers[1]) <= {200, 201}, sorted(set(answers[1]))
    engine = database.make_engine(trainer.resolved_database_url)
    with engine.connect() as connection:
        stored = {row[0] for row in connection.execute(select(Feedback.id))}
    engine.dispose()
    assert set(acknowledged) <= stored, set(acknowledged) - stored
    logger.info(
        "kill under load: %d answers from the survivor after the kill, %d feedback acknowledged",
        len(after_kill),
        len(acknowledged),
    )

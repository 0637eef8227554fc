"""One training run: data -> candidate -> evaluation against the champion -> gate.

Every run is recorded in the database (``training_runs``) and holds the
``training`` lock, so two runs never overlap. The candidate is saved in the
BentoML model store with its metadata either way; the gate decides whether it
becomes champion or stays challenger. Reports (JSON, text summary, PNG plots)
go to ``$SENTILOOP_HOME/reports/<run id>/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker

import storage
from core import database, processes
from core.settings import Settings
from model import corrections, deltas, model_store, shared_store
from model.base_models import base_model_dir
from model.classifiers import Classifier, FineTunedClassifier
from model.labels import LABELS
from model.language import UNDETERMINED, LanguageDetector
from model.loader import (
    cold_start_tag,
    fine_tuned,
    load_classifier,
    model_directory,
    prepare_model,
)
from model.shipped import GENERAL_GUARD
from model.templates import PromptTemplate, TemplateRegistry
from model.text_keys import normalize_text
from storage import model_roles, runs, store, template_decisions
from training.config import AssemblyConfig, GateConfig, TrainingArguments
from training.correction import fit_correction
from training.dataset import AssembledDataset, assemble, check_trainable
from training.evaluate import evaluate, plot_evaluation, render_summary
from training.examples import Example, LoadedExamples, load_examples
from training.finetune import FineTuneResult, fine_tune
from training.gate import GateDecision, TrafficComparison, decide, per_language
from training.promotion import prune_shared_store
from training.rehearsal import SoftExample, pick_texts, rehearsal_count, soft_labelled
from training.traffic_guard import compare_on_traffic

logger = logging.getLogger(__name__)

LOCK_NAME = "training"
# Renewed every quarter of it while a run lasts (``storage.runs.Lease``): a run killed
# without releasing the lock (SIGKILL, a lost node) blocks the next one this long at
# most, and not at all on its own host, where its process is seen gone.
LOCK_TTL = timedelta(minutes=2)
# Scratch directories (the candidate's weights and ONNX export: hundreds of MB) are
# named with the run's process id, so that the next run removes those of a process
# that died before it could (``remove_orphaned_scratch``).
SCRATCH_PREFIX = "sentiloop-candidate-"


class TrainingBusy(RuntimeError):
    """Another training run holds the lock."""


def remove_orphaned_scratch() -> list[Path]:
    """Remove the scratch directories of runs whose process is gone; which."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = path.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not processes.is_running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed scratch directories of stopped runs: %s", removed)
    return removed


@dataclass(frozen=True)
class DataSource:
    """A base-data file and how to read it (columns by name or 1-based position)."""

    path: Path
    text_field: str | None = None
    label_field: str = "label"
    label_map: dict[str, str] | None = None
    header: bool = True
    drop_unknown_labels: bool = False

    def load(self, source: str = "base") -> LoadedExamples:
        return load_examples(
            self.path,
            text_field=self.text_field,
            label_field=self.label_field,
            label_map=self.label_map,
            source=source,
            header=self.header,
            drop_unknown_labels=self.drop_unknown_labels,
        )


@dataclass(frozen=True)
class TrainingPlan:
    base_data: DataSource | None = None
    holdout_data: DataSource | None = None
    template_versions: tuple[str, ...] = ()
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    arguments: TrainingArguments = field(default_factory=TrainingArguments)
    gate: GateConfig = field(default_factory=GateConfig)
    # "champion": continue from the champion's weights when it is a fine-tuned
    # model (the shipped default included), so that a team with only feedback
    # does not fall back to a model trained on a few hundred rows; "base": a new
    # head on the base encoder.
    start_from: Literal["champion", "base"] = "champion"


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    decision: str  # "promoted" or "challenger"
    reason: str
    candidate_tag: str
    champion_tag: str | None
    report_dir: Path
    report: dict[str, Any]


_STORED_METRICS = ("n", "accuracy", "macro_f1", "ece")


def stored_figures(evaluation: dict[str, dict[str, Any]], model: str) -> dict[str, Any]:
    """What the model store keeps of one model's evaluation, per split: the headline
    metrics, each class's recall and each language's figures (a class or language
    that collapses shows up in `sentiloop models list`, not only in a report)."""
    figures = {}
    for split, models in evaluation.items():
        metrics = models[model]
        figures[split] = {key: metrics.get(key) for key in _STORED_METRICS} | {
            "recall": {
                label: values["recall"] for label, values in metrics.get("per_class", {}).items()
            },
            "per_language": metrics.get("per_language", {}),
        }
    return figures


def champion_classifier(
    settings: Settings, sessions: sessionmaker[Session]
) -> tuple[str | None, Classifier, dict[str, Any]]:
    """The model that serves as champion now (the cold-start model when none is
    promoted), loaded as it serves (``model.loader``)."""
    tag = settings.model_tag
    if tag is None:
        with sessions() as session:
            tag = model_roles.current(session=session, role="champion")
    if tag is None:
        tag = cold_start_tag(settings)
    classifier, metadata = load_classifier(settings, tag)
    return (None if tag is None else classifier.version), classifier, metadata


# A language makes up at least this share of the training rows to count as trained.
MIN_LANGUAGE_SHARE = 0.01


def trained_languages(
    examples: Sequence[Example], inherited: Sequence[str], detector: LanguageDetector
) -> list[str]:
    """The languages a model trained on ``examples`` covers: those of the model it
    continues from, and each making up ``MIN_LANGUAGE_SHARE`` of the rows."""
    counts = Counter(detector.detect(example.text) for example in examples)
    counts.pop(UNDETERMINED, None)
    total = sum(counts.values())
    frequent = {
        code for code, count in counts.items() if total and count / total >= MIN_LANGUAGE_SHARE
    }
    return sorted(frequent | set(inherited))


def score_examples(
    classifier: Classifier, template: PromptTemplate, examples: Sequence[Example]
) -> dict[str, Any]:
    scores = classifier.predict([template.render(e.text) for e in examples], template)
    return evaluate([e.label for e in examples], scores)


def general_guard_evaluation(
    candidate: Classifier,
    champion: Classifier,
    template: PromptTemplate,
    path: Path = GENERAL_GUARD,
) -> dict[str, Any]:
    """Candidate and champion on the general guard set shipped with the model (the
    gate's guard when there is no base holdout), each row's language from the file."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    examples = [Example(text=row["text"], label=row["label"]) for row in rows]
    evaluation = {
        "candidate": score_examples(candidate, template, examples),
        "champion": score_examples(champion, template, examples),
    }
    for metrics in evaluation.values():
        metrics["languages"] = [row["language"] for row in rows]
    return evaluation


def drift_reference(
    dataset: AssembledDataset, evaluation: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """What serving compares live traffic with: training label mix, holdout confidence
    and accuracy (the bar for the confidence-based accuracy estimate)."""
    counts = Counter(example.label for example in dataset.train)
    total = sum(counts.values()) or 1
    reference: dict[str, Any] = {"label_share": {label: counts[label] / total for label in LABELS}}
    holdout = evaluation["holdout"]["candidate"]
    if holdout.get("n"):
        reference["mean_confidence"] = holdout["mean_confidence"]
        reference["accuracy"] = holdout["accuracy"]
    return reference


def _write_report(report: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (directory / "summary.txt").write_text(render_summary(report) + "\n")
    for split, by_model in report["evaluation"].items():
        for model, metrics in by_model.items():
            if metrics.get("n"):
                plot_evaluation(metrics, f"{split} / {model}", directory / f"{split}-{model}.png")


class TrainingPipeline:
    """Runs training for one settings object (database, model store, templates)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database_url = settings.resolved_database_url
        if settings.auto_migrate:
            storage.upgrade(self.database_url)
        self.engine = database.make_engine(self.database_url)
        self.sessions = database.make_session_factory(self.engine)
        self.templates = TemplateRegistry.load(settings.resolved_templates_dir)
        self._lease: runs.Lease | None = None  # the training lock, while a run holds it

    def close(self) -> None:
        self.engine.dispose()

    def dataset(self, plan: TrainingPlan, cutoff: Any) -> AssembledDataset:
        """The run's data, checked before a run is recorded: an unreadable file
        (``DataFileError``) or too little data (``DatasetTooSmall``) is the caller's
        to fix, not a failed run."""
        base = plan.base_data.load() if plan.base_data is not None else None
        holdout = plan.holdout_data.load("holdout") if plan.holdout_data is not None else None
        with self.sessions() as session:
            rows = list(store.iter_feedback_export(session=session, until=cutoff))
        dataset = assemble(
            base.examples if base else [],
            rows,
            plan.assembly,
            holdout=holdout.examples if holdout else None,
        )
        for prefix, loaded in (("base", base), ("holdout", holdout)):
            for reason, count in (loaded.dropped if loaded else {}).items():
                dataset.report.drop(f"{prefix}_{reason}", count)
        check_trainable(dataset, plan.assembly)
        return dataset

    def run(self, plan: TrainingPlan, *, trigger: str = "manual") -> RunOutcome:
        lease = runs.Lease(session_factory=self.sessions, name=LOCK_NAME, ttl=LOCK_TTL)
        try:
            lease.acquire()
        except runs.LockHeld as exc:
            raise TrainingBusy(str(exc)) from exc
        self._lease = lease
        try:
            with self.sessions() as session:
                runs.fail_abandoned_runs(
                    session=session,
                    error="abandoned: its process stopped without finishing"
                    + (f" (lock taken over from {lease.taken_over_from})"
                       if lease.taken_over_from else ""),
                )  # fmt: skip
            remove_orphaned_scratch()
            cutoff = store.utcnow()
            # What the caller must fix (a template version, a data file, too little
            # data) is refused before a run is recorded.
            versions = plan.template_versions or (self._default_template_version(),)
            templates = [self.templates.get(version) for version in versions]
            dataset = self.dataset(plan, cutoff)
            with self.sessions() as session:
                run_id = runs.start_run(session=session, trigger=trigger, feedback_cutoff=cutoff)
            try:
                outcome = self._run(plan, run_id, templates, dataset, cutoff)
            except BaseException as exc:  # SIGTERM (the CLI raises) and Ctrl-C included
                with self.sessions() as session:
                    runs.finish_run(
                        session=session,
                        run_id=run_id,
                        status="failed",
                        error=f"{type(exc).__name__}: {exc}",
                    )
                raise
            with self.sessions() as session:
                runs.finish_run(
                    session=session,
                    run_id=run_id,
                    status="succeeded",
                    counts=outcome.report["dataset"]["counts"],
                    metrics=outcome.report["evaluation"]
                    | {"traffic_guard": outcome.report["traffic_guard"]},
                    decision=outcome.decision,
                    reason=outcome.reason,
                    candidate_tag=outcome.candidate_tag,
                    champion_tag=outcome.champion_tag,
                )
            self._prune_shared_store()
            return outcome
        finally:
            self._lease = None
            lease.release()

    def _prune_shared_store(self) -> None:
        """With a shared model store, delete what no role or rollback needs (still under
        the lock: no other run assigns meanwhile). A failure is logged, not raised: the
        run itself succeeded."""
        try:
            plan = prune_shared_store(settings=self.settings, sessions=self.sessions)
        except Exception:
            logger.warning("could not prune the shared model store", exc_info=True)
            return
        if plan is not None and plan.deleted:
            logger.info("pruned %s: %s", plan.store, ", ".join(plan.deleted))

    def _default_template_version(self) -> str:
        """The latest template decision's version (an experiment concluded), else the
        settings'."""
        with self.sessions() as session:
            return template_decisions.default_version(
                session=session, fallback=self.settings.default_template_version
            )

    def _run(
        self,
        plan: TrainingPlan,
        run_id: str,
        templates: list[PromptTemplate],
        dataset: AssembledDataset,
        cutoff: Any = None,
    ) -> RunOutcome:
        """The named steps of a run: champion, training, evaluation, gate, saving with
        metadata, role assignment, report."""
        versions = tuple(template.version for template in templates)
        logger.info("run %s: data %s, dropped %s", run_id, dataset.report.counts,
                    dataset.report.dropped)  # fmt: skip
        champion_tag, champion, champion_metadata = champion_classifier(
            self.settings, self.sessions
        )
        from_champion = plan.start_from == "champion" and isinstance(champion, FineTunedClassifier)
        init_model = (
            champion.directory
            if isinstance(champion, FineTunedClassifier) and from_champion
            else base_model_dir(self.settings)
        )
        correcting = from_champion and plan.arguments.recipe == "correction"
        inherited = champion_metadata.get("languages", []) if from_champion else []
        detector = LanguageDetector()  # for the training rows and the guard's rows
        rehearsal = (
            self._rehearsal(plan, dataset, champion, templates[0], cutoff)
            if from_champion and not correcting
            else []
        )
        with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch:
            output = Path(scratch) / "model"
            if correcting:
                assert isinstance(champion, FineTunedClassifier)
                trained = self._correct(plan, dataset, templates, champion, output)
            else:
                trained = self._train(plan, dataset, templates, init_model, output, rehearsal)
            logger.info(
                "run %s: preparing the candidate as it would serve, then evaluating it and "
                "the champion on %d holdout and %d feedback-holdout rows",
                run_id,
                len(dataset.holdout),
                len(dataset.feedback_holdout),
            )
            # Evaluated exactly as it would serve (runtime, quantization, max length).
            candidate = fine_tuned(
                self.settings, output, version="candidate", onnx_cache_dir=Path(scratch) / "onnx"
            )
            evaluation = self._evaluate(candidate, champion, dataset, templates[0])
            # The gate checks each language of both holdouts (training.gate).
            for split, rows in (
                ("holdout", dataset.holdout),
                ("feedback_holdout", dataset.feedback_holdout),
            ):
                languages = [detector.detect(example.text) for example in rows]
                for metrics in evaluation[split].values():
                    metrics["languages"] = languages
            if plan.gate.general_guard and not dataset.holdout:
                evaluation["general_guard"] = general_guard_evaluation(
                    candidate, champion, templates[0]
                )
            traffic = self._traffic_guard(
                plan, candidate, champion, templates[0], dataset, rehearsal, cutoff
            )
            decision = decide(
                {split: models["candidate"] for split, models in evaluation.items()},
                {split: models["champion"] for split, models in evaluation.items()},
                plan.gate,
                traffic,
            )
            for by_model in evaluation.values():
                for metrics in by_model.values():
                    metrics["per_language"] = per_language(metrics)
                    for per_row in ("correct", "languages", "truth", "predicted"):
                        metrics.pop(per_row, None)
            metadata = self._metadata(
                plan,
                versions,
                dataset,
                evaluation,
                trained,
                champion_tag or champion.version,
                run_id,
                trained_languages(dataset.train, inherited, detector),
            )
            metadata["started_from"] = (
                champion.version if from_champion else f"base:{self.settings.base_model}"
            )
            logger.info(
                "run %s: %s; saving the candidate to the model store",
                run_id,
                decision.reason.rstrip("."),
            )
            source = output
            if corrections.is_correction(output):
                source = corrections.stored_form(output, Path(scratch) / "correction")
                metadata["stored_as"] = "correction"
            elif from_champion and (output / "adapter").is_dir():
                source = deltas.write_delta(
                    output / "adapter",
                    Path(scratch) / "delta",
                    parent=champion.version,
                    temperature=trained.temperature,
                )
            if not corrections.is_correction(output):
                metadata["stored_as"] = "delta" if source != output else "full"
            stored = model_store.save_model(
                source, name=self.settings.model_name, metadata=metadata
            )
        decision_name = self._assign(decision, stored.tag, run_id)
        report = {
            "run_id": run_id,
            "decision": decision_name,
            "reason": decision.reason,
            "gate": {"primary": decision.primary, "p_value": decision.p_value} | asdict(plan.gate),
            "candidate_tag": stored.tag,
            "champion": champion_tag or champion.version,
            "template_versions": list(versions),
            "dataset": dataset.report.to_dict() | {"data_sha256": dataset.data_sha256},
            "training": trained.to_dict(),
            "evaluation": evaluation,
            "traffic_guard": traffic.to_dict(plan.gate),
        }
        report_dir = self.settings.reports_dir / run_id
        _write_report(report, report_dir)
        logger.info("run %s: %s %s (report: %s)", run_id, decision_name, stored.tag, report_dir)
        return RunOutcome(
            run_id=run_id,
            decision=decision_name,
            reason=decision.reason,
            candidate_tag=stored.tag,
            champion_tag=champion_tag,
            report_dir=report_dir,
            report=report,
        )

    def _train(
        self,
        plan: TrainingPlan,
        dataset: AssembledDataset,
        templates: list[PromptTemplate],
        init_model: Path,
        output: Path,
        rehearsal: Sequence[SoftExample] = (),
    ) -> FineTuneResult:
        logger.info("training from %s", init_model)
        return fine_tune(
            dataset.train,
            dataset.validation,
            init_model=init_model,
            templates=templates,
            args=plan.arguments,
            output_dir=output,
            rehearsal=rehearsal,
        )

    def _correct(
        self,
        plan: TrainingPlan,
        dataset: AssembledDataset,
        templates: list[PromptTemplate],
        champion: FineTunedClassifier,
        output: Path,
    ) -> FineTuneResult:
        """A correction of the champion (``training.correction``). A champion that is a
        correction is replaced, not stacked on: the new one is fitted on its parent."""
        parent_dir, parent = champion.directory, champion.version
        if corrections.is_correction(parent_dir):
            parent = corrections.parent_of(parent_dir)
            parent_dir = model_directory(self.settings, parent)
        logger.info("fitting a correction of %s", parent)
        return fit_correction(
            dataset.train,
            dataset.validation,
            parent_dir=parent_dir,
            parent=parent,
            templates=templates,
            args=plan.arguments,
            output_dir=output,
        )

    def _rehearsal(
        self,
        plan: TrainingPlan,
        dataset: AssembledDataset,
        champion: Classifier,
        template: PromptTemplate,
        cutoff: Any,
    ) -> list[SoftExample]:
        """Logged texts without feedback, softly labelled by the champion
        (``training.rehearsal``): none when the ratio is 0 or nothing was logged."""
        labelled = sum(1 for example in dataset.train if example.source == "feedback")
        count = rehearsal_count(
            labelled, plan.assembly.rehearsal_ratio, plan.assembly.max_rehearsal_rows
        )
        if count == 0:
            return []
        with self.sessions() as session:
            logged = store.recent_unlabelled_texts(
                session=session, until=cutoff or store.utcnow(), limit=count * 4
            )
        exclude = {
            example.key
            for rows in (dataset.train, dataset.validation, dataset.holdout,
                         dataset.feedback_holdout)
            for example in rows
        }  # fmt: skip
        texts = pick_texts(logged, exclude, count, plan.arguments.seed)
        rows = soft_labelled(texts, champion, template, plan.assembly.rehearsal_weight)
        dataset.report.counts["rehearsal"] = len(rows)
        logger.info("rehearsal: %d logged texts labelled by the champion", len(rows))
        return rows

    def _traffic_guard(
        self,
        plan: TrainingPlan,
        candidate: Classifier,
        champion: Classifier,
        template: PromptTemplate,
        dataset: AssembledDataset,
        rehearsal: Sequence[SoftExample],
        cutoff: Any,
    ) -> TrafficComparison:
        """Both models on recent traffic outside the feedback (``training.traffic_guard``),
        leaving out every text the candidate trained on or a holdout holds."""
        exclude = {
            example.key
            for rows in (dataset.train, dataset.validation, dataset.holdout,
                         dataset.feedback_holdout)
            for example in rows
        } | {normalize_text(row.text) for row in rehearsal}  # fmt: skip
        return compare_on_traffic(
            sessions=self.sessions,
            candidate=candidate,
            champion=champion,
            template=template,
            until=cutoff or store.utcnow(),
            exclude=exclude,
            config=plan.gate,
            text_storage=self.settings.text_storage,
        )

    @staticmethod
    def _evaluate(
        candidate: Classifier,
        champion: Classifier,
        dataset: AssembledDataset,
        template: PromptTemplate,
    ) -> dict[str, dict[str, Any]]:
        """Candidate and champion on the same rows of both holdouts."""
        return {
            split: {
                "candidate": score_examples(candidate, template, rows),
                "champion": score_examples(champion, template, rows),
            }
            for split, rows in (
                ("holdout", dataset.holdout),
                ("feedback_holdout", dataset.feedback_holdout),
            )
        }

    def _metadata(
        self,
        plan: TrainingPlan,
        versions: Sequence[str],
        dataset: AssembledDataset,
        evaluation: dict[str, dict[str, Any]],
        trained: FineTuneResult,
        parent: str,
        run_id: str,
        languages: Sequence[str],
    ) -> dict[str, Any]:
        """What the model store keeps with the candidate (serving reads it back)."""
        return {
            "base_model": self.settings.base_model,
            "languages": list(languages),
            "template_versions": list(versions),
            "data_sha256": dataset.data_sha256,
            "counts": dataset.report.counts,
            "metrics": stored_figures(evaluation, "candidate"),
            # The champion's on the same rows: what `sentiloop models list` compares.
            "parent_metrics": stored_figures(evaluation, "champion"),
            "reference": drift_reference(dataset, evaluation),
            "parent_model": parent,
            "training_run_id": run_id,
            "training": trained.to_dict(),
            "arguments": asdict(plan.arguments),
        }

    def _assign(self, decision: GateDecision, tag: str, run_id: str) -> str:
        """Record the candidate as champion or challenger; the decision's name. Not when
        the lock was lost meanwhile: another run may be deciding. With a shared model
        store the candidate (and a delta's stored parents) is uploaded first, so that a
        replica that sees the role can fetch it."""
        shared_store.publish(self.settings, tag)
        prepare_model(self.settings, tag)
        if self._lease is not None:
            self._lease.check()
        role: model_roles.Role = "champion" if decision.promote else "challenger"
        with self.sessions() as session:
            model_roles.assign(
                session=session,
                role=role,
                model_tag=tag,
                reason=f"training run {run_id}: {decision.reason}",
                training_run_id=run_id,
            )
            session.commit()
        return "promoted" if decision.promote else "challenger"

"""Every shipped alert fires where its condition holds for its ``for:`` and stays
silent just on the other side of its threshold: ``promtool test rules`` on input
series written here, against deploy/prometheus/rules/sentiloop.yml as shipped
(a threshold flipped, raised or lowered, or a ``for:`` dropped, fails a case)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import monitoring
from tests.support import prometheus_binary

SERVICE = 'service_name="sentiloop"'
PREDICT = f'{SERVICE}, endpoint="/v1/predict"'
MODEL = 'model_version="m:1"'
ARMS = 'model_version="m:1", template_version="v1"'


@dataclass(frozen=True)
class Case:
    """Input series (promtool's expanding notation, one sample a minute) and, at
    ``at``, whether the alert fires, with the labels it carries beyond severity."""

    name: str
    series: dict[str, str]
    fires: bool
    at: str = "70m"
    labels: dict[str, str] = field(default_factory=dict)
    silent_before: str | None = None  # a time within its `for:` where it must not fire yet


def rate_of(per_minute: float, minutes: int = 80) -> str:
    return f"0+{per_minute:g}x{minutes}"


def level(value: float, minutes: int = 80) -> str:
    return f"{value:g}x{minutes}"


def failing(share: float) -> dict[str, str]:
    """100 requests a minute, ``share`` of them answered 500."""
    total = 'bentoml_service_request_total{%s, http_response_code="%d"}'
    return {total % (SERVICE, 500): rate_of(100 * share),
            total % (SERVICE, 200): rate_of(100 * (1 - share))}  # fmt: skip


def latencies(under_quarter_second: float) -> dict[str, str]:
    """10 predict requests a minute, the given share under 0.25 s, the rest under 1 s."""
    bucket = 'bentoml_service_request_duration_seconds_bucket{%s, le="%s"}'
    return {
        bucket % (PREDICT, "0.25"): rate_of(10 * under_quarter_second),
        bucket % (PREDICT, "1"): rate_of(10),
        bucket % (PREDICT, "+Inf"): rate_of(10),
    }


def agreement(share: float, rows: int) -> dict[str, str]:
    return {f"sentiloop_feedback_accuracy{{{ARMS}}}": level(share),
            f"sentiloop_feedback_window_rows{{{ARMS}}}": level(rows)}  # fmt: skip


def label_mix(live: dict[str, float]) -> dict[str, str]:
    """Predictions a minute by label, against a training mix of 20/30/50% positive,
    neutral, negative."""
    series = {f'sentiloop_predictions_total{{{MODEL}, label="{label}"}}': rate_of(count)
              for label, count in live.items()}  # fmt: skip
    for label, share in (("positive", 0.2), ("neutral", 0.3), ("negative", 0.5)):
        series[f'sentiloop_reference_label_share{{{MODEL}, label="{label}"}}'] = level(share)
    return series


def confidence(reference: str, value: float, live: float, per_minute: float = 10) -> dict[str, str]:
    """The model's holdout figure ``reference`` at ``value``; ``per_minute`` predictions
    a minute of mean confidence ``live``."""
    return {f"sentiloop_reference_{reference}{{{MODEL}}}": level(value),
            f"sentiloop_prediction_confidence_sum{{{MODEL}}}": rate_of(per_minute * live),
            f"sentiloop_prediction_confidence_count{{{MODEL}}}": rate_of(per_minute)}  # fmt: skip


MODEL_LABEL = {"model_version": "m:1"}

CASES: dict[str, list[Case]] = {
    "SentiloopHighErrorRate": [  # > 2% of requests 5xx for 5m
        Case("3% fail", failing(0.03), fires=True, at="15m", silent_before="4m"),
        Case("1% fail", failing(0.01), fires=False, at="15m"),
    ],
    "SentiloopHighP99Latency": [  # p99 of /v1/predict > 0.5 s for 10m
        Case("requests of 0.25-1 s", latencies(0), fires=True, at="20m", silent_before="8m"),
        Case("requests under 0.25 s", latencies(1), fires=False, at="20m"),
    ],
    "SentiloopFeedbackAccuracyDrop": [  # < 0.6 over 20+ judged rows, for 30m
        Case(
            "agreement 0.5 over 30 rows",
            agreement(0.5, 30),
            fires=True,
            at="40m",
            labels={**MODEL_LABEL, "template_version": "v1"},
            silent_before="20m",
        ),
        Case("agreement 0.7", agreement(0.7, 30), fires=False, at="40m"),
        Case("agreement 0.5 over 10 rows: too few", agreement(0.5, 10), fires=False, at="40m"),
    ],
    "SentiloopLabelMixDrift": [  # label-mix TVD > 0.25 over 1h, for 30m
        Case(
            "all positive",
            label_mix({"positive": 10}),
            fires=True,
            labels=MODEL_LABEL,
            silent_before="25m",
        ),
        Case(
            "the training mix", label_mix({"positive": 2, "neutral": 3, "negative": 5}), fires=False
        ),
    ],
    "SentiloopConfidenceDrop": [  # holdout mean confidence - live > 0.15, for 30m
        Case(
            "live 0.6 against 0.9",
            confidence("mean_confidence", 0.9, 0.6),
            fires=True,
            labels=MODEL_LABEL,
            silent_before="25m",
        ),
        Case("live 0.85 against 0.9", confidence("mean_confidence", 0.9, 0.85), fires=False),
    ],
    "SentiloopEstimatedAccuracyDrop": [  # holdout accuracy - mean confidence > 0.05
        Case(
            "estimated 0.6 against 0.8, 700 predictions",
            confidence("accuracy", 0.8, 0.6),
            fires=True,
            labels=MODEL_LABEL,
            silent_before="25m",
        ),
        Case("estimated 0.78 against 0.8", confidence("accuracy", 0.8, 0.78), fires=False),
        Case(
            "estimated 0.6 against 0.8, 35 predictions: too few",
            confidence("accuracy", 0.8, 0.6, per_minute=0.5),
            fires=False,
        ),
    ],
    "SentiloopPredictionLogDropping": [  # any drop for 1m
        Case(
            "records dropped from minute 11",
            {"sentiloop_prediction_log_dropped_total": "0x9 0+5x30"},
            fires=True,
            at="15m",
            silent_before="11m",
        ),
        Case("none dropped", {"sentiloop_prediction_log_dropped_total": level(7)}, False, "15m"),
    ],
    "SentiloopPredictionLogBacklog": [  # > 5000 queued for 5m
        Case(
            "6000 queued",
            {'sentiloop_prediction_log_queue_depth{worker="1"}': level(6000)},
            fires=True,
            at="10m",
            silent_before="3m",
        ),
        Case(
            "4000 queued",
            {'sentiloop_prediction_log_queue_depth{worker="1"}': level(4000)},
            fires=False,
            at="10m",
        ),
    ],
    "SentiloopPredictionLogDegraded": [  # degraded for 2m
        Case(
            "degraded",
            {"sentiloop_prediction_log_degraded": level(1)},
            fires=True,
            at="10m",
            silent_before="1m",
        ),
        Case("healthy", {"sentiloop_prediction_log_degraded": level(0)}, False, "10m"),
    ],
    "SentiloopPredictionLogQuarantine": [  # any quarantined in the last hour
        Case(
            "one quarantined",
            {"sentiloop_prediction_log_quarantined_total": "0x30 1x50"},
            fires=True,
            at="40m",
        ),
        Case(
            "one quarantined two hours ago",
            {"sentiloop_prediction_log_quarantined_total": "0x5 1x200"},
            fires=False,
            at="190m",
        ),
    ],
    "SentiloopModelProcessRestarts": [  # any restart in 15m
        Case("a restart", {"sentiloop_model_process_restarts_total": "0x10 1x20"}, True, "15m"),
        Case(
            "a restart an hour ago", {"sentiloop_model_process_restarts_total": "0x5 1x80"}, False
        ),
    ],
    "SentiloopDatabaseErrors": [  # errors for 5m
        Case(
            "errors",
            {'sentiloop_db_errors_total{operation="feedback"}': rate_of(2)},
            fires=True,
            at="15m",
            silent_before="4m",
        ),
        Case(
            "no new errors",
            {'sentiloop_db_errors_total{operation="feedback"}': level(3)},
            fires=False,
            at="15m",
        ),
    ],
    "SentiloopModelLoadFailing": [  # a failed load in 15m
        Case("a failed load", {"sentiloop_model_load_errors_total": "0x10 1x20"}, True, "15m"),
        Case("a failure an hour ago", {"sentiloop_model_load_errors_total": "0x5 1x80"}, False),
    ],
    "SentiloopWriteBackDeadLetters": [  # dead write-backs for 15m
        Case(
            "two dead",
            {
                'sentiloop_writeback_outbox{status="dead"}': level(2),
                'sentiloop_writeback_outbox{status="pending"}': level(5),
            },
            fires=True,
            at="30m",
            silent_before="10m",
        ),
        Case(
            "pending only",
            {
                'sentiloop_writeback_outbox{status="dead"}': level(0),
                'sentiloop_writeback_outbox{status="pending"}': level(5),
            },
            fires=False,
            at="30m",
        ),
    ],
}


def shipped_alerts() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for group in monitoring.rules()["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def expanded(text: str, labels: dict[str, str]) -> str:
    """An annotation as Prometheus renders it for these labels."""
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)


def promtool_tests(alerts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    tests = []
    for name, cases in CASES.items():
        rule = alerts[name]
        for case in cases:
            expected = []
            if case.fires:
                labels = {"severity": rule["labels"]["severity"], **case.labels}
                annotations = {k: expanded(v, labels) for k, v in rule["annotations"].items()}
                expected = [{"exp_labels": labels, "exp_annotations": annotations}]
            checks = [{"eval_time": case.at, "alertname": name, "exp_alerts": expected}]
            if case.silent_before is not None:
                checks.insert(
                    0, {"eval_time": case.silent_before, "alertname": name, "exp_alerts": []}
                )
            tests.append(
                {
                    "name": f"{name}: {case.name}",
                    "interval": "1m",
                    "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                    "alert_rule_test": checks,
                }
            )
    return tests


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    alerts = shipped_alerts()
    assert set(CASES) == set(alerts)
    for name, cases in CASES.items():
        assert {case.fires for case in cases} == {True, False}, name
        if "for" in alerts[name]:  # the wait is checked where there is one
            assert any(case.silent_before for case in cases if case.fires), name


def test_the_shipped_alerts_fire_as_their_cases_say(tmp_path: Path) -> None:
    promtool = prometheus_binary("promtool")
    spec = {
        "rule_files": [str(monitoring.RULES)],
        "evaluation_interval": "1m",
        "tests": promtool_tests(shipped_alerts()),
    }
    path = tmp_path / "alerts.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("alert", "before", "after"),
    [
        ("SentiloopFeedbackAccuracyDrop", ") < 0.6", ") > 0.6"),
        ("SentiloopHighErrorRate", ") > 0.02", ") > 2"),
        ("SentiloopWriteBackDeadLetters", "> 0", "< 0"),
        ("SentiloopPredictionLogBacklog", "> 5000", "> 50000"),
    ],
)
def test_a_broken_threshold_fails_its_cases(
    tmp_path: Path, alert: str, before: str, after: str
) -> None:
    """The cases catch what they are for: the rules with one threshold flipped or
    raised fail promtool."""
    promtool = prometheus_binary("promtool")
    rules = monitoring.rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                assert before in rule["expr"], rule["expr"]
                rule["expr"] = rule["expr"].replace(before, after)
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(rules, sort_keys=False))
    spec = {
        "rule_files": [str(broken)],
        "evaluation_interval": "1m",
        "tests": [t for t in promtool_tests(shipped_alerts()) if t["name"].startswith(alert)],
    }
    path = tmp_path / "alerts.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and alert in result.stdout + result.stderr

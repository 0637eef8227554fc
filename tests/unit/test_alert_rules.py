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


def requests(code: int) -> str:
    return f'bentoml_service_request_total{{{SERVICE}, http_response_code="{code}"}}'


def bucket(le: str) -> str:
    return f'bentoml_service_request_duration_seconds_bucket{{{PREDICT}, le="{le}"}}'


def rate_of(per_minute: float, minutes: int = 80) -> str:
    return f"0+{per_minute:g}x{minutes}"


def level(value: float, minutes: int = 80) -> str:
    return f"{value:g}x{minutes}"


CASES: dict[str, list[Case]] = {
    "SentiloopHighErrorRate": [  # > 2% of requests 5xx for 5m
        Case(
            "3% fail",
            {
                requests(500): rate_of(3),
                requests(200): rate_of(97),
            },
            fires=True,
            at="15m",
            silent_before="4m",
        ),
        Case(
            "1% fail",
            {
                requests(500): rate_of(1),
                requests(200): rate_of(99),
            },
            fires=False,
            at="15m",
        ),
    ],
    "SentiloopHighP99Latency": [  # p99 of /v1/predict > 0.5 s for 10m
        Case(
            "requests of 0.25-1 s",
            {
                bucket("0.25"): level(0),
                bucket("1"): rate_of(10),
                bucket("+Inf"): (rate_of(10)),
            },
            fires=True,
            at="20m",
            silent_before="8m",
        ),
        Case(
            "requests under 0.25 s",
            {
                bucket("0.25"): (rate_of(10)),
                bucket("1"): rate_of(10),
                bucket("+Inf"): (rate_of(10)),
            },
            fires=False,
            at="20m",
        ),
    ],
    "SentiloopFeedbackAccuracyDrop": [  # < 0.6 over 20+ judged rows, for 30m
        Case(
            "agreement 0.5 over 30 rows",
            {
                f"sentiloop_feedback_accuracy{{{ARMS}}}": level(0.5),
                f"sentiloop_feedback_window_rows{{{ARMS}}}": level(30),
            },
            fires=True,
            at="40m",
            labels={"model_version": "m:1", "template_version": "v1"},
            silent_before="20m",
        ),
        Case(
            "agreement 0.7",
            {
                f"sentiloop_feedback_accuracy{{{ARMS}}}": level(0.7),
                f"sentiloop_feedback_window_rows{{{ARMS}}}": level(30),
            },
            fires=False,
            at="40m",
        ),
        Case(
            "agreement 0.5 over 10 rows: too few",
            {
                f"sentiloop_feedback_accuracy{{{ARMS}}}": level(0.5),
                f"sentiloop_feedback_window_rows{{{ARMS}}}": level(10),
            },
            fires=False,
            at="40m",
        ),
    ],
    "SentiloopLabelMixDrift": [  # label-mix TVD > 0.25 over 1h, for 30m
        Case(
            "all positive against 20% in training",
            {
                f'sentiloop_predictions_total{{{MODEL}, label="positive"}}': rate_of(10),
                f'sentiloop_reference_label_share{{{MODEL}, label="positive"}}': level(0.2),
                f'sentiloop_reference_label_share{{{MODEL}, label="neutral"}}': level(0.3),
                f'sentiloop_reference_label_share{{{MODEL}, label="negative"}}': level(0.5),
            },
            fires=True,
            labels={"model_version": "m:1"},
            silent_before="25m",
        ),
        Case(
            "the training mix",
            {
                f'sentiloop_predictions_total{{{MODEL}, label="positive"}}': rate_of(2),
                f'sentiloop_predictions_total{{{MODEL}, label="neutral"}}': rate_of(3),
                f'sentiloop_predictions_total{{{MODEL}, label="negative"}}': rate_of(5),
                f'sentiloop_reference_label_share{{{MODEL}, label="positive"}}': level(0.2),
                f'sentiloop_reference_label_share{{{MODEL}, label="neutral"}}': level(0.3),
                f'sentiloop_reference_label_share{{{MODEL}, label="negative"}}': level(0.5),
            },
            fires=False,
        ),
    ],
    "SentiloopConfidenceDrop": [  # holdout mean confidence - live > 0.15, for 30m
        Case(
            "live 0.6 against 0.9",
            {
                f"sentiloop_reference_mean_confidence{{{MODEL}}}": level(0.9),
                f"sentiloop_prediction_confidence_sum{{{MODEL}}}": rate_of(6),
                f"sentiloop_prediction_confidence_count{{{MODEL}}}": rate_of(10),
            },
            fires=True,
            labels={"model_version": "m:1"},
            silent_before="25m",
        ),
        Case(
            "live 0.85 against 0.9",
            {
                f"sentiloop_reference_mean_confidence{{{MODEL}}}": level(0.9),
                f"sentiloop_prediction_confidence_sum{{{MODEL}}}": rate_of(8.5),
                f"sentiloop_prediction_confidence_count{{{MODEL}}}": rate_of(10),
            },
            fires=False,
        ),
    ],
    "SentiloopEstimatedAccuracyDrop": [  # holdout accuracy - mean confidence > 0.05
        Case(
            "estimated 0.6 against 0.8, 700 predictions",
            {
                f"sentiloop_reference_accuracy{{{MODEL}}}": level(0.8),
                f"sentiloop_prediction_confidence_sum{{{MODEL}}}": rate_of(6),
                f"sentiloop_prediction_confidence_count{{{MODEL}}}": rate_of(10),
            },
            fires=True,
            labels={"model_version": "m:1"},
            silent_before="25m",
        ),
        Case(
            "estimated 0.78 against 0.8",
            {
                f"sentiloop_reference_accuracy{{{MODEL}}}": level(0.8),
                f"sentiloop_prediction_confidence_sum{{{MODEL}}}": rate_of(7.8),
                f"sentiloop_prediction_confidence_count{{{MODEL}}}": rate_of(10),
            },
            fires=False,
        ),
        Case(
            "estimated 0.6 against 0.8 but 35 predictions: too few",
            {
                f"sentiloop_reference_accuracy{{{MODEL}}}": level(0.8),
                f"sentiloop_prediction_confidence_sum{{{MODEL}}}": rate_of(0.3),
                f"sentiloop_prediction_confidence_count{{{MODEL}}}": rate_of(0.5),
            },
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

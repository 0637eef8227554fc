"""The shipped dashboard, rules and provisioning are well formed and use real metrics."""

from __future__ import annotations

import subprocess

import yaml

from tests import monitoring
from tests.support import ROOT, prometheus_binary

BENTOML_METRICS = {
    "bentoml_service_request_total",
    "bentoml_service_request_duration_seconds_bucket",
    "bentoml_service_request_in_progress",
    "bentoml_service_adaptive_batch_size_bucket",
}


def test_dashboard_structure() -> None:
    board = monitoring.dashboard()
    assert board["uid"] and board["title"] == "sentiloop" and board["schemaVersion"] >= 36
    datasource = yaml.safe_load(
        (monitoring.DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"])


def test_dashboard_covers_what_operators_watch() -> None:
    titles = " ".join(title.lower() for title, _ in monitoring.dashboard_expressions())
    for topic in ("latency", "error", "label mix", "confidence", "feedback agreement",
                  "a/b", "training", "serving models", "drift"):  # fmt: skip
        assert topic in titles, topic


def test_every_metric_used_by_panels_and_rules_is_exported() -> None:
    exported = monitoring.exported_metric_names(ROOT / "service" / "metrics.py")
    exported |= BENTOML_METRICS | {name for name, _ in monitoring.recording_rules()}
    expressions = (
        monitoring.dashboard_expressions() + monitoring.recording_rules() + monitoring.alert_rules()
    )
    for name, expr in expressions:
        missing = monitoring.metric_names(expr) - exported
        assert not missing, f"{name}: {missing}"


def test_alerts_cover_the_required_conditions_and_have_a_threshold_form() -> None:
    alerts = dict(monitoring.alert_rules())
    for required in ("HighErrorRate", "HighP99Latency", "FeedbackAccuracyDrop",
                     "LabelMixDrift", "PredictionLogDropping"):  # fmt: skip
        assert f"Sentiloop{required}" in alerts
    for expr in alerts.values():
        assert monitoring.alert_signal(expr)


def test_provisioning_and_compose_point_at_the_shipped_files() -> None:
    provider = yaml.safe_load(
        (monitoring.DEPLOY / "grafana/provisioning/dashboards/sentiloop.yml").read_text()
    )["providers"][0]
    compose = yaml.safe_load((monitoring.DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"sentiloop", "trainer", "postgres", "prometheus", "grafana"}
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana_volumes
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (monitoring.DEPLOY / source).exists(), source
    scrape = yaml.safe_load((monitoring.DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["sentiloop:3000"]


def test_promtool_accepts_the_rules() -> None:
    promtool = prometheus_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(monitoring.RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

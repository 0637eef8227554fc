"""Reads the shipped Grafana dashboard and Prometheus rules for the monitoring tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sentiloop.json"
RULES = DEPLOY / "prometheus" / "rules" / "sentiloop.yml"
_ALERT_FORM = re.compile(
    r"^(?P<signal>.*\S)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>[-+0-9.eE]+)\s*$", re.S
)
_METRIC = re.compile(r"\b(sentiloop_[a-z_]+|bentoml_service_[a-z_]+|sentiloop:[a-z0-9_:]+)")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def rules() -> dict[str, Any]:
    return dict(yaml.safe_load(RULES.read_text()))


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every dashboard query."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def recording_rules() -> list[tuple[str, str]]:
    return [
        (rule["record"], rule["expr"])
        for group in rules()["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]


def alert_rules() -> list[tuple[str, str]]:
    return [
        (rule["alert"], rule["expr"])
        for group in rules()["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def alert_signal(expr: str) -> str:
    """The alert expression without its final threshold comparison."""
    match = _ALERT_FORM.match(expr.strip())
    if match is None:
        raise ValueError(f"alert expression is not `<signal> <op> <number>`: {expr}")
    return match.group("signal")


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def exported_metric_names(metrics_source: Path) -> set[str]:
    """Sample names a prometheus-client metric declared in ``metrics_source`` exposes."""
    names = set()
    for kind, name in re.findall(
        r"m\.(Counter|Gauge|Histogram)\(\s*name=\"([a-z_]+)\"", metrics_source.read_text()
    ):
        if kind == "Counter":
            names.add(f"{name}_total")
        elif kind == "Histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names

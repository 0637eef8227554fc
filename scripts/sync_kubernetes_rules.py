"""Write the PrometheusRule of deploy/kubernetes from deploy/prometheus/rules/sentiloop.yml.

Prometheus reads the rules file (docker-compose); the Prometheus Operator reads the
same groups from a PrometheusRule object, which kustomize cannot build from a plain
rules file. So the object is generated, and tests/unit/test_kubernetes_manifests.py
fails when it is not current: edit the rules file, then run
``python scripts/sync_kubernetes_rules.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules" / "sentiloop.yml"
TARGET = (
    ROOT / "deploy" / "kubernetes" / "components" / "prometheus-operator" / "prometheusrule.yaml"
)
HEADER = (
    "# Generated from deploy/prometheus/rules/sentiloop.yml by\n"
    "# `python scripts/sync_kubernetes_rules.py`: edit the rules file, not this one.\n"
)


def prometheus_rule(rules_file: Path = RULES) -> dict[str, Any]:
    groups = yaml.safe_load(rules_file.read_text(encoding="utf-8"))["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "sentiloop"},
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks (``|``), as a person writes them."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(rules_file: Path = RULES) -> str:
    body = yaml.dump(prometheus_rule(rules_file), Dumper=_Dumper, sort_keys=False, width=100)
    return HEADER + body


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")

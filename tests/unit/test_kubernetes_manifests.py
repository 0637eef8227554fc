"""deploy/kubernetes: every overlay renders (`kubectl kustomize`), validates offline
against the Kubernetes schemas (kubernetes-validate), and agrees with the code it
deploys: the port and options of `sentiloop serve`, the probe paths the service
answers, the settings the env names set, the drain and request timeout the grace
period must cover, the training lock the trainer's retries must outlast, and the
rules and dashboard files the monitoring objects are made from, the shared model
store every model-loading pod of a multi-node overlay reads, and the Secret's keys
the README's command creates. A rename on either side fails here instead of in a
cluster."""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr
from typer.main import get_command

from core.settings import Settings
from sentiloop.cli import app
from service.http.paths import ROUTES
from tests import monitoring
from tests.support import ROOT
from tests.unit.test_monitoring_config import BENTOML_METRICS

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(
    path.name
    for path in (KUBERNETES / "overlays").iterdir()
    if (path / "kustomization.yaml").is_file()
)
# The oldest Kubernetes the manifests are for (CronJob.spec.timeZone is GA from
# 1.27; PodDisruptionBudget policy/v1 and HPA autoscaling/v2 are older), and the
# newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Custom resources: no schema in the validator; their key fields are checked below.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
# Kubernetes' Job back-off: 10 s, doubled after each failed pod, at most 6 minutes.
JOB_BACKOFF_S, JOB_BACKOFF_MAX_S = 10, 360
# What the shutdown needs beyond the drain and the longest request: the service's
# own shutdown (the prediction log's last flush, the model processes stopped).
SHUTDOWN_MARGIN_S = 10
# Overlays whose pods all run on one node, where a ReadWriteOnce volume can hold the
# model store; every other overlay shares models through the S3 store.
SINGLE_NODE_OVERLAYS = {"small"}
# The containers that load models: the API server and the trainer (the init
# containers migrate the database and copy the cache).
MODEL_LOADERS = {"api", "trainer"}
SECRET = "sentiloop-secrets"
# A stand-in for each Secret value, valid for the setting it feeds.
SECRET_PLACEHOLDERS = {"DATABASE_URL": "postgresql+psycopg://k8s@db/k8s"}


def kubectl() -> str:
    """`kubectl` (with kustomize), or a skip; scripts/test.sh sets
    SENTILOOP_REQUIRE_KUBECTL=1, so there a missing binary fails instead."""
    path = shutil.which("kubectl")
    if path is None:
        message = "kubectl is not installed (needed to render deploy/kubernetes)"
        if os.environ.get("SENTILOOP_REQUIRE_KUBECTL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(overlay: str) -> tuple[dict[str, Any], ...]:
    return render(overlay)


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [item for item in objects if item["kind"] == kind]
    return found


def pod_specs(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in objects:
        if item["kind"] == "Deployment":
            yield item["metadata"]["name"], item["spec"]["template"]["spec"]
        elif item["kind"] == "CronJob":
            yield item["metadata"]["name"], item["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def settings_env(objects: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """The environment ``container`` gets: its ConfigMaps, then its own values (a
    Secret's as a placeholder: a PostgreSQL address for the database). An optional
    Secret read whole (the CRM connectors') adds nothing: a cluster may have none."""
    config_maps = {
        item["metadata"]["name"]: item.get("data", {})
        for item in objects
        if item["kind"] == "ConfigMap"
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            assert source["secretRef"]["optional"] is True, source
            continue
        env |= config_maps[source["configMapRef"]["name"]]
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            key = variable["valueFrom"]["secretKeyRef"]["key"]
            env[variable["name"]] = SECRET_PLACEHOLDERS.get(key, "from-the-secret")
        else:
            env[variable["name"]] = variable["value"]
    return env


def model_loaders(
    objects: tuple[dict[str, Any], ...],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, container) of each container that loads models."""
    for name, spec in pod_specs(objects):
        for container in spec["containers"]:
            if container["name"] in MODEL_LOADERS:
                yield name, spec, container


def volume_at(spec: dict[str, Any], container: dict[str, Any], path: Path) -> dict[str, Any]:
    """The volume holding ``path`` in ``container``: its deepest mount above it."""
    mounts = {PurePosixPath(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
    target = PurePosixPath(path)
    covering = [mount for mount in mounts if mount == target or mount in target.parents]
    assert covering, f"{container['name']}: {target} is on the read-only root filesystem"
    name = mounts[max(covering, key=lambda mount: len(mount.parts))]
    (volume,) = [volume for volume in spec["volumes"] if volume["name"] == name]
    return volume


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the container builds them from ``env`` (and nothing else)."""
    for name in list(os.environ):
        if name.startswith("SENTILOOP_") or name in ("DATABASE_URL", "BENTOML_HOME"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def setting_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"SENTILOOP_{name.upper()}")
        else:
            choices = alias.choices if hasattr(alias, "choices") else [alias]
            names |= {choice for choice in choices if isinstance(choice, str)}
    return names


def sentiloop_command(argv: list[str]) -> Any:
    """The (click) command ``argv`` runs, each of its options checked to exist."""
    assert argv[0] == "sentiloop", argv
    command: Any = get_command(app)
    words = argv[1:]
    while hasattr(command, "commands"):  # a group
        assert words and words[0] in command.commands, f"no command {argv[: -len(words) or None]}"
        command, words = command.commands[words[0]], words[1:]
    options = {flag for param in command.params for flag in param.opts + param.secondary_opts}
    for word in words:
        if word.startswith("--"):
            assert word in options, f"{' '.join(argv)}: {word} is not an option of {command.name}"
    return command


def option_value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def traffic_timeout_s() -> float:
    """The request timeout of the BentoML service (``traffic={"timeout": ...}`` in
    service/bento.py), read without importing BentoML."""
    tree = ast.parse((ROOT / "service" / "bento.py").read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "service"
        ):
            for keyword in node.keywords:
                if keyword.arg == "traffic":
                    return float(ast.literal_eval(keyword.value)["timeout"])
    raise AssertionError("service/bento.py: no @bentoml.service(traffic={'timeout': ...})")


def image_user_id() -> int:
    match = re.search(r"useradd\b.*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "Dockerfile: no `useradd --uid N`"
    return int(match.group(1))


def test_every_overlay_renders_and_validates_against_the_kubernetes_schemas(
    objects: tuple[dict[str, Any], ...],
) -> None:
    kinds = {item["kind"] for item in objects}
    assert {"Deployment", "Service", "PodDisruptionBudget", "CronJob", "ConfigMap"} <= kinds
    for item in objects:
        if (item["apiVersion"], item["kind"]) in CUSTOM_RESOURCES:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(item, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = "/".join(str(part) for part in error.path)
                pytest.fail(f"{item['kind']} {item['metadata']['name']} ({version}): "
                            f"{where}: {error.message}")  # fmt: skip


def test_the_api_runs_sentiloop_serve_on_the_port_the_service_and_probes_use(
    objects: tuple[dict[str, Any], ...],
) -> None:
    deployment = one(objects, "Deployment")
    (api,) = deployment["spec"]["template"]["spec"]["containers"]
    serve = sentiloop_command(api["command"])
    assert serve.name == "serve"
    (http,) = [port for port in api["ports"] if port["name"] == "http"]
    assert http["containerPort"] == int(option_value(api["command"], "--port"))
    service = one(objects, "Service")
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    probes = {kind: api[kind]["httpGet"] for kind in
              ("startupProbe", "readinessProbe", "livenessProbe")}  # fmt: skip
    # /readyz answers 503 while models load and while draining; /livez while the
    # process runs. Both are routes of the service (service/http/paths.py).
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/livez"
    for probe in probes.values():
        assert probe["path"] in ROUTES and probe["port"] == "http"


def test_every_command_is_a_sentiloop_command_with_real_options(
    objects: tuple[dict[str, Any], ...],
) -> None:
    commands = {
        container["name"]: container["command"]
        for _, spec in pod_specs(objects)
        for container in containers(spec)
        if container["command"][0] == "sentiloop"
    }
    assert sentiloop_command(commands["migrate"]).name == "upgrade"
    assert sentiloop_command(commands["trainer"]).name == "train"
    assert "--if-due" in commands["trainer"]


def test_every_sentiloop_env_name_is_a_setting_and_every_value_valid(
    objects: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = setting_env_names()
    for name, spec in pod_specs(objects):
        for container in containers(spec):
            env = settings_env(objects, container)
            unknown = {key for key in env if key.startswith("SENTILOOP_")} - known
            assert not unknown, f"{name}/{container['name']}: not settings: {unknown}"
            with monkeypatch.context() as patch:
                settings_of(env, patch)  # a value a setting refuses raises here


def test_the_grace_period_covers_the_drain_and_the_longest_request(
    objects: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    settings = settings_of(settings_env(objects, spec["containers"][0]), monkeypatch)
    assert settings.shutdown_drain_s > 0
    needed = settings.shutdown_drain_s + traffic_timeout_s() + SHUTDOWN_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_pods_run_as_the_image_user_on_a_read_only_root_with_volumes_for_what_they_write(
    objects: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, spec in pod_specs(objects):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == image_user_id()
        assert spec["automountServiceAccountToken"] is False
        for container in containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert "memory" in container["resources"]["limits"], container["name"]
        main = spec["containers"][0]
        mounts = {
            PurePosixPath(mount["mountPath"]): mount["name"] for mount in main["volumeMounts"]
        }
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        with monkeypatch.context() as patch:
            settings = settings_of(settings_env(objects, main), patch)
        written = (settings.home, settings.resolved_bentoml_home, settings.cache_dir, Path("/tmp"))
        for path in map(PurePosixPath, written):
            assert any(path == mount or mount in path.parents for mount in mounts), (name, path)
        # The cache is seeded from the image before the main container starts.
        seeds = [c for c in spec.get("initContainers", []) if c["name"] == "seed-cache"]
        assert len(seeds) == 1 and seeds[0]["command"][-2] == f"{settings.cache_dir}/.", name
        assert volumes[mounts[PurePosixPath(settings.cache_dir)]]["emptyDir"] is not None


def test_the_trainer_and_the_replicas_share_one_model_store(
    objects: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model the trainer promotes must reach every replica: either all of them use
    the same S3 store, or all mount the same claim as their BentoML model store."""
    stores = set()
    loaders = list(model_loaders(objects))
    assert {container["name"] for _, _, container in loaders} == MODEL_LOADERS
    for name, spec, container in loaders:
        with monkeypatch.context() as patch:
            settings = settings_of(settings_env(objects, container), patch)
        if settings.model_store_url is not None:
            stores.add(settings.model_store_url)
        else:
            volume = volume_at(spec, container, settings.resolved_bentoml_home / "models")
            assert "persistentVolumeClaim" in volume, f"{name}: models on a volume of its own"
            stores.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(stores) == 1, stores
    # ReadWriteMany (NFS, CephFS, EFS) is what the S3 store spares a cluster.
    for claim in (item for item in objects if item["kind"] == "PersistentVolumeClaim"):
        assert "ReadWriteMany" not in claim["spec"]["accessModes"]


def test_multi_node_overlays_use_the_s3_store_with_a_model_store_per_pod(
    overlay: str, objects: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    if overlay in SINGLE_NODE_OVERLAYS:
        pytest.skip(f"{overlay}: one node, the model store on a shared volume")
    assert not [item for item in objects if item["kind"] == "PersistentVolumeClaim"]
    for name, spec, container in model_loaders(objects):
        env = settings_env(objects, container)
        with monkeypatch.context() as patch:
            settings = settings_of(env, patch)
        assert settings.model_store_url is not None, (
            f"{name}/{container['name']}: no SENTILOOP_MODEL_STORE_URL"
        )
        # Each pod downloads what it serves into its own store, beside it in the
        # BentoML home: a verified download is renamed into place, which needs one
        # filesystem (model/shared_store.py, fetch).
        store = volume_at(spec, container, settings.resolved_bentoml_home / "models")
        assert "emptyDir" in store, name
        assert volume_at(spec, container, settings.resolved_bentoml_home) == store, name
        # The keys come from the Secret, optional: unset, boto3's standard chain
        # (a web identity, an instance role) applies.
        for variable in ("SENTILOOP_MODEL_STORE_ACCESS_KEY_ID",
                         "SENTILOOP_MODEL_STORE_SECRET_ACCESS_KEY"):  # fmt: skip
            (entry,) = [item for item in container["env"] if item["name"] == variable]
            reference = entry["valueFrom"]["secretKeyRef"]
            assert reference["name"] == SECRET and reference["optional"] is True, variable


def test_the_image_installs_the_s3_client_the_store_needs() -> None:
    """SENTILOOP_MODEL_STORE_URL needs boto3, the project's `s3` extra."""
    match = re.search(r"""pip install ["']?\.\[([^\]]*)\]""", (ROOT / "Dockerfile").read_text())
    assert match, "Dockerfile: the project is installed without extras"
    assert "s3" in match.group(1).split(",")


def readme_secret_keys() -> set[str]:
    """The keys the README's `kubectl create secret generic sentiloop-secrets`
    command puts in the Secret (its continuation lines included)."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"create secret generic {SECRET}((?:[^\n]*\\\n)*[^\n]*)", readme)
    assert match, f"README: no `kubectl create secret generic {SECRET}` command"
    return set(re.findall(r"--from-(?:literal|file)=([^=\s]+)=", match.group(1)))


def test_every_key_read_from_the_secret_is_created_by_the_readme_command(
    objects: tuple[dict[str, Any], ...],
) -> None:
    read = set()
    for _, spec in pod_specs(objects):
        for container in containers(spec):
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference is not None and reference["name"] == SECRET:
                    read.add(reference["key"])
        for volume in spec["volumes"]:
            if volume.get("secret", {}).get("secretName") == SECRET:
                read |= {item["key"] for item in volume["secret"]["items"]}
    assert read, f"nothing is read from {SECRET}"
    missing = read - readme_secret_keys()
    assert not missing, f"README's secret command lacks {sorted(missing)}"


def test_the_api_key_file_is_mounted_from_the_secret_so_that_revocations_reach_it(
    objects: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    api = spec["containers"][0]
    settings = settings_of(settings_env(objects, api), monkeypatch)
    assert settings.resolved_auth == "required" and settings.api_keys_file is not None
    key_file = PurePosixPath(settings.api_keys_file)
    (mount,) = [m for m in api["volumeMounts"] if PurePosixPath(m["mountPath"]) == key_file.parent]
    # A subPath mount is never updated when the Secret changes.
    assert "subPath" not in mount and mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert [item["path"] for item in volume["secret"]["items"]] == [key_file.name]


def test_the_trainer_cronjob_checks_once_never_overlaps_and_outlasts_a_stale_lock(
    objects: tuple[dict[str, Any], ...],
) -> None:
    from training.pipeline import LOCK_TTL

    cronjob = one(objects, "CronJob")["spec"]
    job = cronjob["jobTemplate"]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert cronjob["startingDeadlineSeconds"] > 0
    assert job["activeDeadlineSeconds"] > 0 and job["ttlSecondsAfterFinished"] > 0
    # `--if-due` exits 75 while another run holds the lock: the retries' back-off
    # spans the lease, so a lock left by a trainer that died unwinding has expired.
    waits = [min(JOB_BACKOFF_S * 2**n, JOB_BACKOFF_MAX_S) for n in range(job["backoffLimit"])]
    assert sum(waits) > LOCK_TTL.total_seconds()
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (trainer,) = pod["containers"]
    assert trainer["command"][:3] == ["sentiloop", "train", "--if-due"]


def test_the_api_objects_select_the_api_pods_only(objects: tuple[dict[str, Any], ...]) -> None:
    deployment = one(objects, "Deployment")
    api_labels = deployment["spec"]["template"]["metadata"]["labels"]
    trainer_labels = one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"][
        "labels"
    ]
    selectors = [
        one(objects, "Service")["spec"]["selector"],
        one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= api_labels.items()
        assert not selector.items() <= trainer_labels.items()
    autoscalers = [item for item in objects if item["kind"] in
                   ("HorizontalPodAutoscaler", "ScaledObject")]  # fmt: skip
    assert len(autoscalers) == 1, "one autoscaler per Deployment"
    (autoscaler,) = autoscalers
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    if autoscaler["kind"] == "HorizontalPodAutoscaler":
        assert autoscaler["apiVersion"] == "autoscaling/v2"
        (metric,) = autoscaler["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert autoscaler["spec"]["behavior"]["scaleDown"]["policies"]
        low = autoscaler["spec"]["minReplicas"]
    else:
        low = autoscaler["spec"]["minReplicaCount"]
    assert deployment["spec"]["replicas"] == low


def test_the_service_monitor_scrapes_the_metrics_route_of_the_api_service(
    objects: tuple[dict[str, Any], ...],
) -> None:
    monitors = [item for item in objects if item["kind"] == "ServiceMonitor"]
    if not monitors:
        pytest.skip("this overlay has no Prometheus Operator component")
    (monitor,) = monitors
    service = one(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and "/metrics" in ROUTES


def load_sync_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "sync_kubernetes_rules", ROOT / "scripts" / "sync_kubernetes_rules.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheus_rule_is_the_rules_file_and_the_dashboard_the_dashboard_file(
    objects: tuple[dict[str, Any], ...],
) -> None:
    rules = [item for item in objects if item["kind"] == "PrometheusRule"]
    if not rules:
        pytest.skip("this overlay has no Prometheus Operator component")
    sync = load_sync_script()
    assert sync.TARGET.read_text() == sync.render(), (
        "the PrometheusRule is not current: run python scripts/sync_kubernetes_rules.py"
    )
    assert rules[0]["spec"]["groups"] == monitoring.rules()["groups"]
    labelled = [
        item for item in objects if item["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    (dashboard,) = labelled
    assert (
        dashboard["kind"] == "ConfigMap"
        and dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    )
    assert dashboard["data"] == {"sentiloop.json": monitoring.DASHBOARD.read_text()}


def test_the_keda_scaled_object_queries_an_exported_metric_of_the_service(
    objects: tuple[dict[str, Any], ...],
) -> None:
    scaled = [item for item in objects if item["kind"] == "ScaledObject"]
    if not scaled:
        pytest.skip("this overlay does not scale with KEDA")
    service_name = one(objects, "Service")["metadata"]["name"]
    triggers = {trigger["type"]: trigger for trigger in scaled[0]["spec"]["triggers"]}
    assert set(triggers) == {"prometheus", "cpu"}
    query = triggers["prometheus"]["metadata"]["query"]
    assert monitoring.metric_names(query) == {"bentoml_service_request_in_progress"}
    assert monitoring.metric_names(query) <= BENTOML_METRICS
    assert f'service="{service_name}"' in query
    assert float(triggers["prometheus"]["metadata"]["threshold"]) > 0


def test_the_api_reads_the_crm_secrets_from_an_optional_secret_the_readme_documents(
    objects: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connector's secret and credential is a setting (a SecretStr); those the
    README's `kubectl create secret` names reach the API from the Secret
    `sentiloop-crm`, whose keys are the settings' variables, and are read as secrets
    with their values; optional, so a deployment without CRM connectors needs none."""
    api = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    (reference,) = [e["secretRef"] for e in api["envFrom"] if "secretRef" in e]
    assert reference == {"name": "sentiloop-crm", "optional": True}
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"create secret generic sentiloop-crm((?:[^\n]*\\\n)*[^\n]*)", readme)
    assert match, "README: no `kubectl create secret generic sentiloop-crm` command"
    documented = re.findall(r"--from-literal=(SENTILOOP_[A-Z0-9_]+)=", match.group(1))
    assert documented
    values = {variable: f"{variable.lower()}-{'x' * 32}" for variable in documented}
    read = settings_of(values, monkeypatch)  # each one is a secret setting the server reads
    for variable, value in values.items():
        secret = getattr(read, variable.removeprefix("SENTILOOP_").lower())
        assert isinstance(secret, SecretStr) and secret.get_secret_value() == value, variable
    connectors = [
        name
        for name in Settings.model_fields
        if name.startswith("webhook_secret_")
        or (name.startswith("writeback_") and name.endswith(("_secret", "_token")))
    ]
    assert len(connectors) == 8, connectors  # 5 webhook sources, 3 write-back targets
    for name in connectors:
        assert "SecretStr" in str(Settings.model_fields[name].annotation), name

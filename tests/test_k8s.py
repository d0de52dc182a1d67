"""deploy/k8s/: every manifest is valid against the Kubernetes schema (kubernetes-validate's bundled
schemas, offline) and agrees with the image (docker/Dockerfile) and the settings (service/settings.py)."""

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
KUBERNETES_VERSION = "1.33.0"  # pinned: the oldest release the manifests target (preStop `sleep` needs 1.30+)
MANIFESTS = sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml"))


def documents() -> dict[str, dict]:
    """kind -> the manifest (one of each kind)."""
    found = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, f"two {document['kind']} manifests"
            found[document["kind"]] = document
    return found


def container(deployment: dict) -> dict:
    (api,) = deployment["spec"]["template"]["spec"]["containers"]
    return api


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_is_valid_for_the_pinned_kubernetes(path):
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_what_kubernetes_would():
    deployment = documents()["Deployment"]
    misspelled = copy.deepcopy(deployment)
    container(misspelled)["readinesProbe"] = container(misspelled).pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    container(wrong_type)["ports"][0]["containerPort"] = "eight thousand"
    for broken in (misspelled, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_all_four_objects_and_their_selectors_agree():
    found = documents()
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= set(found)
    deployment = found["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert found["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = found["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa, pdb = found["HorizontalPodAutoscaler"]["spec"], found["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] < hpa["minReplicas"]  # a drain never waits forever
    claims = [v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == [found["PersistentVolumeClaim"]["metadata"]["name"]]


def test_deployment_matches_the_image_and_the_settings():
    deployment = documents()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    api = container(deployment)
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"] is True
    assert api["securityContext"]["readOnlyRootFilesystem"] is True
    assert api["securityContext"]["allowPrivilegeEscalation"] is False

    env = {item["name"]: item.get("value") for item in api["env"]}
    settings = set(Settings.model_fields)
    unknown = {name for name in env if name.lower() not in settings} - {"TMPDIR", "PYTHONDONTWRITEBYTECODE"}
    assert not unknown, f"not settings of service/settings.py: {unknown}"
    port = int(env["PORT"])
    assert f"EXPOSE {port}" in dockerfile and api["ports"][0]["containerPort"] == port
    Settings(**{name.lower(): value for name, value in env.items() if name.lower() in settings and value})

    mounts = {mount["mountPath"]: mount for mount in api["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    models = mounts["/models"]
    assert models["readOnly"] is True and "/models" in dockerfile
    for name in ("DETECTOR_CHECKPOINT", "CLASSIFIER_CHECKPOINT"):
        assert env[name].startswith("/models/")

    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert api[probe]["httpGet"]["port"] == api["ports"][0]["name"]
    assert {"cpu", "memory"} <= set(api["resources"]["requests"]) and "memory" in api["resources"]["limits"]
    assert int(env["TORCH_THREADS"]) == int(api["resources"]["requests"]["cpu"])


def test_the_probed_routes_exist():
    from service.app import app

    assert {"/readyz", "/healthz"} <= set(app.openapi()["paths"])


def test_the_export_cache_is_writable_and_starts_with_the_images_exports():
    """Under the read-only root a RUNTIME=auto pod could export no checkpoint but the demo models (whose exports
    the image carries): an emptyDir at the image's RESDET_CACHE, filled first with the image's exports."""
    deployment = documents()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    cache = re.search(r"RESDET_CACHE=(\S+)", dockerfile).group(1)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (mounted,) = [mount for mount in container(deployment)["volumeMounts"] if mount["mountPath"] == cache]
    assert "emptyDir" in volumes[mounted["name"]] and not mounted.get("readOnly")
    (seed,) = pod["initContainers"]
    assert seed["image"] == container(deployment)["image"]
    (target,) = [mount["mountPath"] for mount in seed["volumeMounts"] if mount["name"] == mounted["name"]]
    assert seed["command"][-1] == f'cp -a "$RESDET_CACHE"/. {target}/'
    assert seed["securityContext"]["readOnlyRootFilesystem"] is True

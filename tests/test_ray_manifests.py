"""deploy/kuberay/rayservice.yaml: a RayService of KubeRay v1.4 whose fields are all documented ones, whose
pod templates are valid Kubernetes, and whose Serve applications are deploy/ray/serve.yaml's.

No Python package ships KubeRay's CRD schema (kubernetes-validate knows only Kubernetes' own kinds), so the
RayService's fields are checked against those KubeRay v1.4 documents for ray.io/v1 (listed below), and the
pod templates against the Kubernetes schema, as tests/test_k8s.py does for deploy/k8s/."""

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "deploy" / "kuberay" / "rayservice.yaml"
SERVE_CONFIG = REPO_ROOT / "deploy" / "ray" / "serve.yaml"
KUBERNETES_VERSION = "1.33.0"  # as tests/test_k8s.py
# KubeRay v1.4 API reference (ray.io/v1): the fields of each object the manifest uses; required ones first.
DOCUMENTED = {
    "RayService": ({"apiVersion", "kind", "metadata", "spec"}, set()),
    "RayServiceSpec": ({"serveConfigV2", "rayClusterConfig"}, {"upgradeStrategy", "serveService",
                       "excludeHeadPodFromServeSvc", "rayClusterDeletionDelaySeconds",
                       "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}),
    "RayClusterSpec": ({"headGroupSpec"}, {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
                       "workerGroupSpecs", "headServiceAnnotations", "suspend", "managedBy",
                       "gcsFaultToleranceOptions"}),
    "HeadGroupSpec": ({"rayStartParams", "template"}, {"serviceType", "headService", "enableIngress"}),
    "WorkerGroupSpec": ({"groupName", "rayStartParams", "template"}, {"replicas", "minReplicas", "maxReplicas",
                        "idleTimeoutSeconds", "scaleStrategy", "numOfHosts", "suspend"}),
}  # fmt: skip


def check_fields(obj: dict, kind: str) -> list[str]:
    required, optional = DOCUMENTED[kind]
    problems = [f"{kind}: unknown field {name!r}" for name in set(obj) - required - optional]
    return problems + [f"{kind}: missing {name!r}" for name in required - set(obj)]


def problems_of(document: dict) -> list[str]:
    """What KubeRay v1.4 would refuse or ignore in the RayService, by its documented fields and types."""
    problems = check_fields(document, "RayService")
    if (document.get("apiVersion"), document.get("kind")) != ("ray.io/v1", "RayService"):
        problems.append(f"not a ray.io/v1 RayService: {document.get('apiVersion')} {document.get('kind')}")
    spec = document.get("spec", {})
    problems += check_fields(spec, "RayServiceSpec")
    if not isinstance(spec.get("serveConfigV2"), str):
        problems.append("serveConfigV2 must be a string holding the Serve config's YAML")
    cluster = spec.get("rayClusterConfig", {})
    problems += check_fields(cluster, "RayClusterSpec")
    groups = [("HeadGroupSpec", cluster.get("headGroupSpec", {}))]
    groups += [("WorkerGroupSpec", group) for group in cluster.get("workerGroupSpecs", [])]
    for kind, group in groups:
        problems += check_fields(group, kind)
        params = group.get("rayStartParams", {})
        problems += [f"{kind}.rayStartParams.{k} must be a string" for k, v in params.items() if not isinstance(v, str)]
        if kind == "WorkerGroupSpec" and not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get(
            "maxReplicas", 2**31
        ):
            problems.append(f"worker group {group.get('groupName')}: replicas outside minReplicas..maxReplicas")
    return problems


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def pod_templates(document: dict) -> list[dict]:
    cluster = document["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]


def test_every_field_is_one_kuberay_documents():
    assert problems_of(manifest()) == []


def test_the_field_check_refuses_what_kuberay_would_not_take():
    misspelled = manifest()
    misspelled["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 8
    unquoted = manifest()
    unquoted["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    structured = manifest()
    structured["spec"]["serveConfigV2"] = yaml.safe_load(structured["spec"]["serveConfigV2"])
    for broken in (misspelled, unquoted, structured):
        assert problems_of(broken), broken


def test_pod_templates_are_valid_kubernetes():
    for template in pod_templates(manifest()):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, **copy.deepcopy(template)}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_the_rayservice_runs_the_serve_config_files_applications():
    served = yaml.safe_load(manifest()["spec"]["serveConfigV2"])
    assert served["applications"] == yaml.safe_load(SERVE_CONFIG.read_text())["applications"]


def test_the_serve_config_names_settings_that_exist_and_fractional_cpus():
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    for application in config["applications"]:
        settings = application["args"]["settings"]
        Settings(**settings)  # valid values
        assert set(settings) <= set(Settings.model_fields)
        for deployment in application["deployments"]:
            # the redeploy trap: whole-CPU replicas reconfigured in place can wait forever for the old ones' CPUs
            assert deployment["ray_actor_options"]["num_cpus"] < 1
    assert config["http_options"]["host"] == "127.0.0.1"  # the one-machine file stays on loopback


def test_the_rayservice_runs_the_ray_the_tests_ran():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'resdet[ray]'")
    assert manifest()["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__

"""Cloud and Kubernetes cluster definitions: Ray's own schema for the launcher YAML, the RayCluster CRD's structure
for the KubeRay manifest, and consistency with the pinned stack (ray version, GPU counts, shared storage).
Offline: nothing here talks to a cloud or a Kubernetes API."""

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AWS = REPO / "cluster" / "ray_cluster_aws_a100.yaml"
KUBERAY = REPO / "cluster" / "kuberay_raycluster.yaml"
DOCKERFILE = REPO / "cluster" / "Dockerfile"


def pinned(package: str) -> str:
    text = (REPO / "requirements" / "constraints.txt").read_text()
    return re.search(rf"^{re.escape(package)}==(\S+)$", text, re.MULTILINE).group(1)


def start_flag(command: str, flag: str) -> str:
    return re.search(rf"--{flag}[= ](\S+)", command).group(1)


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load(AWS.read_text())


@pytest.fixture(scope="module")
def kuberay() -> dict:
    docs = [doc for doc in yaml.safe_load_all(KUBERAY.read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


# --- Ray cluster launcher (AWS) ---------------------------------------------------------------------------------

def test_aws_config_passes_rays_schema_before_and_after_defaults(aws):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(aws))
    prepared = prepare_config(copy.deepcopy(aws))  # what `ray up` does before any cloud call
    validate_config(prepared)
    assert prepared["available_node_types"]["ray.head.cpu"]["max_workers"] == 0
    broken = copy.deepcopy(aws)
    broken["available_node_types"]["ray.worker.a100x8"]["resources"]["GPU"] = "eight"
    with pytest.raises(jsonschema.ValidationError):  # the validator is real: a wrong type is refused
        validate_config(broken)


def test_aws_workers_are_8xA100_and_ray_start_agrees(aws):
    worker = aws["available_node_types"]["ray.worker.a100x8"]
    assert worker["node_config"]["InstanceType"] == "p4de.24xlarge"
    assert worker["resources"]["GPU"] == 8
    assert 0 < worker["min_workers"] <= worker["max_workers"] <= aws["max_workers"]
    start = aws["worker_start_ray_commands"][-1]
    assert int(start_flag(start, "num-gpus")) == worker["resources"]["GPU"]
    assert int(start_flag(start, "num-cpus")) == worker["resources"]["CPU"]
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and int(start_flag(aws["head_start_ray_commands"][-1], "num-gpus")) == 0


def test_aws_image_and_setup_use_the_pins(aws):
    ray_version = pinned("ray")
    assert aws["docker"]["image"].split(":")[1].startswith(ray_version + "-")
    setup = " ".join(aws["setup_commands"])
    assert f"torch=={pinned('torch')}" in setup
    assert f"ray.__version__ == '{ray_version}'" in setup
    pip_lines = [c for c in aws["setup_commands"] if "pip install" in c and "torch==" not in c]
    assert pip_lines and all("constraints.txt" in c for c in pip_lines)  # nothing installed unconstrained
    (remote, local), = aws["file_mounts"].items()
    assert (REPO / local / "constraints.txt").is_file() and (REPO / local / "base.txt").is_file()
    assert all(remote in c for c in pip_lines)


def test_aws_dashboard_is_local_and_storage_is_shared(aws):
    head_start = aws["head_start_ray_commands"][-1]
    assert start_flag(head_start, "dashboard-host") == "127.0.0.1"
    assert "0.0.0.0" not in AWS.read_text()
    assert "--volume=/fsx:/fsx" in aws["docker"]["run_options"]
    assert any("mount -t lustre" in c for c in aws["initialization_commands"])
    assert any("mountpoint -q /fsx" in c and "exit 1" in c for c in aws["setup_commands"])


# --- KubeRay RayCluster -----------------------------------------------------------------------------------------

def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers


def test_kuberay_crd_structure(kuberay):
    cluster = kuberay["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cluster["metadata"]["name"])
    spec = cluster["spec"]
    assert set(spec) >= {"rayVersion", "headGroupSpec", "workerGroupSpecs"}
    head = spec["headGroupSpec"]
    _containers(head["template"])
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        _containers(group["template"])
    # the CRD types rayStartParams as map[string]string: a bare YAML number there is rejected by the API server
    for params in [head["rayStartParams"], *(g["rayStartParams"] for g in groups)]:
        assert all(isinstance(v, str) for v in params.values()), params


def test_kuberay_version_and_images_match_the_pin(kuberay):
    spec = kuberay["RayCluster"]["spec"]
    ray_version = pinned("ray")
    assert spec["rayVersion"] == ray_version
    templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for container in (c for t in templates for c in _containers(t)):
        assert f"ray-{ray_version}-" in container["image"].rsplit(":", 1)[1]
    base_image = re.search(r"^FROM (\S+)", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    assert base_image == f"rayproject/ray:{ray_version}-py311-gpu"


def test_kuberay_gpu_counts_agree_with_ray_start(kuberay):
    spec = kuberay["RayCluster"]["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for group in spec["workerGroupSpecs"]:
        container, = _containers(group["template"])
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits["nvidia.com/gpu"] == 8 == int(group["rayStartParams"]["num-gpus"])
        assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]  # Kubernetes: extended resources need equal
        assert int(group["rayStartParams"]["num-cpus"]) <= int(limits["cpu"])


def test_kuberay_shared_volume_is_one_rwx_claim_mounted_everywhere(kuberay):
    claim = kuberay["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = kuberay["RayCluster"]["spec"]
    for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        claimed = [n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName")
                   == claim["metadata"]["name"]]
        assert len(claimed) == 1
        mounts = {m["name"]: m["mountPath"] for c in _containers(template) for m in c["volumeMounts"]}
        assert mounts[claimed[0]] == "/shared"

"""The launch files in cluster/: every YAML parses, the `ray up` file passes Ray's own config
validation (ray-schema.json, as `ray up` does it), the KubeRay RayJob has GPU workers and a
shared auth token, the SLURM script is valid bash, and every `--set key=` they use is a real
config key."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from ensemble_da.config import apply_overrides, config_from_tree, load_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def documents(name):
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


def set_keys(text: str) -> list[str]:
    return re.findall(r"--set\s+([A-Za-z_][\w.]*)=", text)


def assert_real_keys(keys):
    """Each `--set` key names a config field (values in scripts are shell variables)."""
    assert keys
    tree = load_config(None).model_dump(mode="json")
    for key in keys:
        node = tree
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"--set {key}: no such config key"
            node = node[part]


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTER.glob("*.yaml")))
def test_every_yaml_parses(name):
    assert documents(name)


def test_ray_up_file_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = documents("ray-up.yaml")[0]
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["provider"]["type"] == "local"
    # The head keeps its dashboard on loopback; every ray start runs in token-auth mode.
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    # The checker is not a rubber stamp: an unknown key is refused.
    with pytest.raises(Exception, match="bogus"):
        validate_config(prepare_config({**copy.deepcopy(config), "bogus": 1}))


def test_kuberay_rayjob():
    docs = {d["kind"]: d for d in documents("kuberay-rayjob.yaml")}
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("ensemble-da run ")
    assert "--set cluster.address=auto" in spec["entrypoint"]
    assert_real_keys(set_keys(spec["entrypoint"]))
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    containers = [c for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in groups:
        for c in group["template"]["spec"]["containers"]:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            containers.append(c)
    containers += spec["submitterPodTemplate"]["spec"]["containers"]
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ray-auth-token"
    # The mounted run config is a valid config in its own right.
    run_yaml = yaml.safe_load(docs["ConfigMap"]["data"]["run.yaml"])
    assert config_from_tree(apply_overrides(run_yaml, [])).cluster.gpus_per_replica == 1


def test_slurm_script():
    script = CLUSTER / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=" in text
    assert "ray symmetric-run" in text and "-- ensemble-da" in text
    assert "unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in text and "RAY_AUTH_MODE=token" in text
    assert_real_keys(set_keys(text))


def test_readme_covers_each_file():
    readme = (CLUSTER / "README.md").read_text()
    for name in ("slurm.sbatch", "kuberay-rayjob.yaml", "ray-up.yaml", "RAY_AUTH_TOKEN", "6379"):
        assert name in readme

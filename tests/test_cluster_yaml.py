"""cluster.yaml is a valid Ray cluster launcher config (Ray's own JSON schema) that matches the configs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from vpace.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))  # what `ray up` runs before launching anything
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["worker.gpu"]["min_wokers"] = 1  # a typo must not pass
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cluster_matches_the_elastic_range_and_installs_vpace(cluster):
    assert cluster["provider"]["type"] == "aws"
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = cluster["available_node_types"]["worker.gpu"]
    assert gpu["resources"]["GPU"] == 1
    for name in ("paper-r21d", "paper-c3d", "paper-r3d", "paper-s3dg", "rspnet-r21d"):
        s = load_config(name).scale
        assert (gpu["min_workers"], gpu["max_workers"]) == (s.min_workers, s.max_workers), name
        assert s.use_gpu and gpu["resources"]["CPU"] >= s.cpus_per_worker, name
    assert cluster["max_workers"] >= gpu["max_workers"]
    remote = next(r for r, local in cluster["file_mounts"].items() if local == ".")
    assert any(re.search(rf"pip install .*-e {re.escape(remote)}\b", c) for c in cluster["setup_commands"])


def test_cluster_docs_show_ray_up_job_submit_and_a_valid_rayjob():
    doc = (ROOT / "docs" / "cluster.md").read_text()
    assert "ray up cluster.yaml" in doc and "ray job submit" in doc and "vpace pretrain" in doc
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    jobs = [y for y in map(yaml.safe_load, blocks) if isinstance(y, dict) and y.get("kind") == "RayJob"]
    assert len(jobs) == 1
    spec = jobs[0]["spec"]
    assert spec["entrypoint"].startswith("vpace pretrain")
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    s = load_config("paper-r21d").scale
    assert (group["minReplicas"], group["maxReplicas"]) == (s.min_workers, s.max_workers)

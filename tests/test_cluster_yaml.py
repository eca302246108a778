"""cluster.yaml is a valid Ray cluster launcher config (Ray's own JSON schema) that matches the configs, and
docs/cluster.md's commands are valid configs that place work where cluster.yaml expects it."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from vpace.config import load_config
from vpace.train.launch import worker_resources
from vpace.train.ray_data import task_resources

ROOT = Path(__file__).resolve().parents[1]
PAPER = ("paper-r21d", "paper-c3d", "paper-r3d", "paper-s3dg", "rspnet-r21d")  # what cluster.yaml serves


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
    for name in PAPER:
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


def _fits(need: dict, node: dict) -> bool:
    return all(node.get(k, 0) >= v for k, v in need.items())


def test_decode_nodes_take_the_documented_decode_tasks_and_never_a_train_worker(cluster):
    """The ray_data command of docs/cluster.md, applied to every paper config: each decode task fits a decode
    node and only a decode node; each Train worker fits a GPU node and never a decode node (a worker there
    would hold the CPUs its decode tasks wait for)."""
    types = cluster["available_node_types"]
    decode = types["worker.decode"]["resources"]
    assert decode.get("GPU", 0) == 0 and decode["decode"] == decode["CPU"] >= 1  # a {decode: 1} task per CPU
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert cluster["max_workers"] >= sum(t["max_workers"] for t in workers)
    doc = (ROOT / "docs" / "cluster.md").read_text()
    (cmd,) = [b for b in re.findall(r"```bash\n(.*?)```", doc, flags=re.S) if "data.loader=ray_data" in b]
    words = shlex.split(cmd.replace("\\\n", " "))
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert words[words.index("--config") + 1] == "paper-r21d"
    for name in PAPER:
        cfg = load_config(name, overrides=sets)  # the documented settings are valid for every paper config
        assert cfg.data.loader == "ray_data", name
        task = task_resources(cfg.data)
        s = cfg.scale
        worker = worker_resources(s)
        assert [n for n, t in types.items() if _fits(task, t["resources"])] == ["worker.decode"], name
        assert _fits(worker, types["worker.gpu"]["resources"]) and not _fits(worker, decode), name

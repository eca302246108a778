"""Elastic pre-training on a real multi-raylet Ray cluster (`ray.cluster_utils.Cluster`): shrink, then grow.

Two single-CPU nodes; one is removed mid-run (its worker dies) -> the run continues on 1 worker from the last
checkpoint; a node is added -> Ray Train resizes back to 2 workers; the run finishes its planned steps. Every
epoch still covers every video exactly once, and the lr follows the actual global batch of each world size.
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="vpray"))

import json  # noqa: E402
import math  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from vpace.config import load_config  # noqa: E402
from vpace.train import run_task  # noqa: E402
from vpace.train.pretrain_task import PretrainTask  # noqa: E402


class PacedPretrainTask(PretrainTask):
    """Real pre-training, but slowed down (>= 2 s per step) while shrunk to one worker, so the run cannot
    finish before the grown-back group starts (the autoscaling coordinator sees a new node every 20 s)."""

    shrunk_step_s = 2.0

    def step(self, batch, generator):
        import torch.distributed as dist

        t0 = time.perf_counter()
        out = super().step(batch, generator)
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            time.sleep(max(0.0, self.shrunk_step_s - (time.perf_counter() - t0)))
        return out


def _checkpoints(run_dir: Path) -> list[tuple[int, int]]:
    """(step, world_size) of the checkpoints Ray Train has registered (what a restart would resume from)."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being rewritten
        return []
    return sorted((r["metrics"]["step"], r["metrics"]["world_size"]) for r in snap["checkpoint_results"])


@pytest.mark.slow
def test_elastic_shrink_then_grow_back(tmp_path, tmp_path_factory, monkeypatch):
    import ray
    from conftest import synthetic_set
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    # A restart first asks for the old group size (the autoscaling coordinator refreshes every 20 s); a short
    # wait for its placement group makes that attempt give up after 10 s instead of 60 s. Read (and passed to
    # the Train controller) when the trainer starts; only this test's runs get it.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
    data = synthetic_set(tmp_path_factory)
    total, base_lr = 60, 0.01
    cfg = load_config("smoke", overrides=[
        f"data.index={data}", f"run.storage={tmp_path / 'runs'}", "run.name=elastic", "data.epoch_size=null",
        "data.clip_len=8", "data.height=48", "data.width=64", "augment.crop=32", "data.num_workers=0",
        f"optim.lr={base_lr}", "optim.batch_size=5", "optim.base_batch_size=5", "optim.epochs=1000",
        "optim.lr_step_epochs=1000", f"optim.max_steps={total}", "scale.min_workers=1", "scale.max_workers=2",
        "scale.checkpoint_every=2", "scale.num_to_keep=1000",
        "scale.max_failures=1"])  # exactly one failure: the worker on the removed node
    run_dir = tmp_path / "runs" / "elastic"

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    out: dict = {}

    def fit() -> None:
        try:
            out["result"] = run_task(PacedPretrainTask(), cfg, resize_interval_s=2.0)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            out["error"] = e

    def wait_for(pred, what: str, timeout: float = 240.0) -> list[tuple[int, int]]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            got = [c for c in _checkpoints(run_dir) if pred(c)]
            if got:
                return got
            assert runner.is_alive(), f"run ended before {what}: {out}"
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; checkpoints {_checkpoints(run_dir)}")

    try:
        # Cluster.add_node/remove_node must run in the main thread: the training runs in a thread instead.
        runner = threading.Thread(target=fit, daemon=True)
        runner.start()
        wait_for(lambda c: c[1] == 2, "a checkpoint of the 2-worker group")
        cluster.remove_node(second)
        shrunk = wait_for(lambda c: c[1] == 1, "a checkpoint of the shrunk 1-worker group")
        cluster.add_node(num_cpus=1)
        wait_for(lambda c: c[1] == 2 and c[0] > max(s for s, _ in shrunk), "a checkpoint after growing back")
        runner.join(timeout=300)
        assert not runner.is_alive(), "run did not finish"
        if "error" in out:
            raise out["error"]
    finally:
        ray.shutdown()
        cluster.shutdown()

    res = out["result"]
    assert res.metrics["step"] == total and res.metrics["world_size"] == 2
    sizes = [a["world_size"] for a in res.history["attempts"]]
    assert sizes[0] == 2 and 1 in sizes and sizes[sizes.index(1):].count(2) >= 1, sizes
    # every finished epoch saw each training video exactly once, across the resizes
    n_train = len((data / "trainlist01.txt").read_text().splitlines())
    epochs = res.history["epochs"]
    assert epochs and all(e["videos"] + e["skipped"] == n_train for e in epochs), epochs
    # global batch 5 = 2 + 2 on two workers (lr x 4/5), 5 on one worker (lr x 5/5)
    for row in res.history["steps"]:
        expect = base_lr * (4 if row["world_size"] == 2 else 5) / 5
        assert math.isclose(row["lr"], expect), row

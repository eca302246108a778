"""Elastic pre-training on a real multi-raylet Ray cluster (`ray.cluster_utils.Cluster`): shrink, then grow.

Two single-CPU nodes; one is removed mid-run (its worker dies) -> the run continues on 1 worker from the last
checkpoint; a node is added -> Ray Train resizes back to 2 workers; the run finishes its planned steps. Every
epoch still covers every video exactly once, and the lr follows the actual global batch of each world size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import n_train, ray_env, tiny

from vpace.train import run_task
from vpace.train.pretraining import PRETRAIN

CKPT_EVERY = 2


class GatedForwardLoss:
    """Real pre-training whose step holds a worker group once it has checkpointed, while the test still has
    to change the cluster under that group (file `hold_world<N>` in `gates` exists): the run cannot end
    before the shrink and the grow-back, however slow the machine. A held worker just sleeps until Ray Train
    ends its group (node removed, or a resize)."""

    def __init__(self, gates: Path) -> None:
        self.gates, self.steps_this_attempt = str(gates), 0

    def __call__(self, model, batch, generator, cfg):
        import torch.distributed as dist

        self.steps_this_attempt += 1
        if self.steps_this_attempt > CKPT_EVERY:  # this group's first checkpoint is reported
            gate = Path(self.gates) / f"hold_world{dist.get_world_size() if dist.is_initialized() else 1}"
            while gate.exists():
                time.sleep(0.2)
        return PRETRAIN.forward_loss(model, batch, generator, cfg)


def _checkpoints(run_dir: Path) -> list[tuple[int, int]]:
    """(step, world_size) of the checkpoints Ray Train has registered (what a restart would resume from)."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being rewritten
        return []
    return sorted((r["metrics"]["step"], r["metrics"]["world_size"]) for r in snap["checkpoint_results"])


@pytest.mark.slow
def test_elastic_shrink_then_grow_back(no_ray, synth, tmp_path, ray_tmpdir, monkeypatch):
    import ray
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    for k, v in ray_env(ray_tmpdir).items():  # the cluster's processes start with this environment
        monkeypatch.setenv(k, v)
    # A restart first asks for the old group size (the autoscaling coordinator refreshes every 20 s); a short
    # wait for its placement group makes that attempt give up after 10 s instead of 60 s. Read (and passed to
    # the Train controller) when the trainer starts; only this test's runs get it.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
    # 21 train items (one broken): epoch 0 = 2 steps of 4 on 2 workers, 2 of 5 on 1, the last 3 on 2 again;
    # epoch 1 = 5 more steps on 2 workers. Epoch 0 spans both resizes and still has to cover every video.
    total, base_lr = 10, 0.01
    cfg = tiny(synth, tmp_path / "runs", "elastic", "data.num_workers=0", f"optim.lr={base_lr}",
               "optim.batch_size=5", "optim.base_batch_size=5", "optim.epochs=1000",
               "optim.lr_step_epochs=1000",
               f"optim.max_steps={total}", "scale.min_workers=1", "scale.max_workers=2",
               f"scale.checkpoint_every={CKPT_EVERY}", "scale.num_to_keep=1000",
               "scale.max_failures=1")  # exactly one failure: the worker on the removed node
    run_dir = tmp_path / "runs" / "elastic"
    gates = tmp_path / "gates"
    gates.mkdir()
    for world in (1, 2):
        (gates / f"hold_world{world}").touch()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    out: dict = {}

    def fit() -> None:
        try:
            out["result"] = run_task(dataclasses.replace(PRETRAIN, forward_loss=GatedForwardLoss(gates)), cfg,
                                     resize_interval_s=2.0)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            out["error"] = e

    def wait_for(pred, what: str) -> list[tuple[int, int]]:
        """Poll Ray Train's checkpoint registry (pytest-timeout bounds the whole test)."""
        while not (got := [c for c in _checkpoints(run_dir) if pred(c)]):
            assert runner.is_alive(), f"run ended before {what}: {out}"
            time.sleep(0.3)
        return got

    try:
        # Cluster.add_node/remove_node must run in the main thread: the training runs in a thread instead.
        runner = threading.Thread(target=fit, daemon=True)
        runner.start()
        wait_for(lambda c: c[1] == 2, "a checkpoint of the 2-worker group")
        cluster.remove_node(second)
        shrunk = wait_for(lambda c: c[1] == 1, "a checkpoint of the shrunk 1-worker group")
        (gates / "hold_world2").unlink()  # the grown-back group runs to the end
        cluster.add_node(num_cpus=1)
        wait_for(lambda c: c[1] == 2 and c[0] > max(s for s, _ in shrunk), "a checkpoint after growing back")
        runner.join()
        if "error" in out:
            raise out["error"]
    finally:
        for gate in gates.iterdir():  # never leave a worker held
            gate.unlink()
        ray.shutdown()
        cluster.shutdown()

    res = out["result"]
    assert res.metrics["step"] == total and res.metrics["world_size"] == 2
    sizes = [a["world_size"] for a in res.history["attempts"]]
    assert sizes[0] == 2 and 1 in sizes and sizes[sizes.index(1):].count(2) >= 1, sizes
    # every finished epoch saw each training video exactly once, across the resizes
    epochs = res.history["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1], epochs
    assert all(e["videos"] + e["skipped"] == n_train(synth) for e in epochs), epochs
    # global batch 5 = 2 + 2 on two workers (lr x 4/5), 5 on one worker (lr x 5/5)
    for row in res.history["steps"]:
        expect = base_lr * (4 if row["world_size"] == 2 else 5) / 5
        assert math.isclose(row["lr"], expect), row

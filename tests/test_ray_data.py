"""`data.loader: ray_data` on a real 2-node Ray cluster (`ray.cluster_utils.Cluster`): a trainer node without
the decode resource (it has `{trainer: 2}`, which `scale.worker_resources` asks for) and a decode node with
`{decode: 2}`.

The DataLoader path (`TorchSource`) is the reference: the Ray Data batches must be its batches bit for bit,
broken videos included (the `synth` train list holds one), decoded on the decode node only. Decode tasks that
no node can take (here: a placement group holds the decode node's CPUs, as Train workers placed there would)
make the waiting rank say so. A real run with `ray_data` whose worker is SIGKILLed mid-epoch resumes from its
latest checkpoint with every epoch's items counted exactly once. Every wait is bounded (`within`, `WAIT_S`):
a hang fails with the cluster's free resources instead of sitting until pytest-timeout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import n_train, ray_env, tiny

from vpace.data import collate_clips
from vpace.train import ray_data
from vpace.train.data_source import TorchSource
from vpace.train.pretraining import PRETRAIN, pretrain_dataset
from vpace.train.ray_data import RayDataSource, batch_to_row, decode_blocker, node_resources, row_to_batch

# decode on the decode node; train on the trainer node (else the Train workers' placement group may take the
# decode node's CPUs and no decode task could ever start)
DECODE = ("data.loader=ray_data", "data.decode_resources={decode: 1}", "scale.worker_resources={trainer: 1}")
CKPT_EVERY = 2
WAIT_S = 900  # a hang guard for one wait in this module: > 5x the slowest seen on a busy 2-core box


def within(what: str, fn):
    """`fn()`, failing with the cluster's free resources if it has not returned after `WAIT_S`."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    if thread.is_alive():
        pytest.fail(f"{what}: not done after {WAIT_S} s; (total, free) resources per node: "
                    f"{node_resources()}")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_row_round_trip_keeps_every_tensor_bit_for_bit_and_scalars_as_scalars():
    batch = {"frames": torch.randint(0, 256, (2, 2, 3, 4, 5, 3), dtype=torch.uint8),
             "index_map": torch.tensor([[[0, 0, 1], [0, 1, 2]]] * 2),
             "wrapped": torch.tensor([[True, False]] * 2),
             "video_id": torch.tensor([3, 9]), "skipped": 1}
    row = batch_to_row(batch)
    assert all(a.shape[0] == 1 for a in row.values())  # one row: one step
    back = row_to_batch({k: np.array(v) for k, v in row.items()})
    assert back.keys() == batch.keys() and back["skipped"] == 1 and type(back["skipped"]) is int
    for k in batch.keys() - {"skipped"}:
        assert back[k].dtype == batch[k].dtype and torch.equal(back[k], batch[k]), k
    assert row_to_batch(batch_to_row({"skipped": 2})) == {"skipped": 2}  # every video of the step broken
    with pytest.raises(ValueError, match="0-d tensor for 'loss'"):
        batch_to_row({"loss": torch.tensor(1.0)})


def test_decode_blocker_names_the_nodes_that_could_decode_and_the_settings_that_free_them():
    need = {"CPU": 1.0, "decode": 1.0}
    total = {"trainer0": {"CPU": 8.0, "GPU": 1.0}, "decoder0": {"CPU": 4.0, "decode": 4.0}}
    free_cpu = {"trainer0": {"CPU": 8.0, "GPU": 1.0}, "decoder0": {"CPU": 1.0, "decode": 3.0}}
    assert decode_blocker(need, total, free_cpu) is None  # one CPU and one decode left on the decode node
    held = {"trainer0": {"CPU": 8.0, "GPU": 1.0}, "decoder0": {"CPU": 0.0, "decode": 4.0}}
    why = decode_blocker(need, total, held)  # free CPUs elsewhere do not help: they lack `decode`
    assert "decoder0 0 of 4 CPUs free" in why and "trainer0" not in why
    assert "data.decode_resources" in why and "scale.worker_resources" in why
    assert decode_blocker({"CPU": 2.0, "decode": 1.0}, total, free_cpu) is not None  # 1 CPU is not 2
    none = decode_blocker({"CPU": 1.0, "decoder": 1.0}, total, total)  # a resource no node has (a typo)
    assert "no node of this Ray cluster has {CPU: 1, decoder: 1}" in none and "worker.decode" in none


def test_ray_datas_console_shows_warnings_only():
    """Ray Data's own console handler (whatever stream it was given when `ray.data` was first imported)
    passes warnings and drops INFO; its file handler keeps everything."""
    import io

    import ray.data

    ray_data._quiet_ray_data()
    root = logging.getLogger(ray.data.__name__)
    consoles = [h for h in root.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    assert consoles, "Ray Data no longer configures a console handler: revisit _quiet_ray_data"
    logger = logging.getLogger("ray.data._internal.execution.sketch")  # any logger under ray.data
    for handler in consoles:
        seen = io.StringIO()
        old = handler.setStream(seen)
        try:
            logger.info("an execution plan")
            logger.warning("a real problem")
        finally:
            handler.setStream(old)
        assert "a real problem" in seen.getvalue() and "an execution plan" not in seen.getvalue()


def test_report_says_how_long_the_workers_waited_for_data_and_whether_they_starved():
    from vpace.eval.report import data_wait_lines
    from vpace.train.metrics import STARVED_HINT

    cfg = {"data": {"loader": "ray_data"}}
    epochs = [{"epoch": 0, "data_wait_frac": 0.05}, {"epoch": 1, "data_wait_frac": 0.35}]
    text = "\n".join(data_wait_lines(cfg, {"epochs": epochs, "steps": [{"data_wait_frac": 0.9}]}))
    assert "(`data.loader: ray_data`)" in text
    assert "35.0% of the last epoch's time; 5.0-35.0% over 2 epochs" in text  # epochs win over windows
    assert "**starved**: more than 20.0% of the time in 1 of 2 epochs" in text and STARVED_HINT in text
    windows = [{"data_wait_frac": 0.9}, {"data_wait_frac": 0.1}, {"data_wait_frac": 0.15}]
    text = "\n".join(data_wait_lines({}, {"steps": windows}))  # no epoch yet; the first window starts up
    assert "(`data.loader: torch`)" in text
    assert "15.0% of the last log window's time; 10.0-15.0% over 2 log windows" in text
    assert "not starved" in text and "starved**" not in text
    assert "not recorded" in "\n".join(data_wait_lines({}, {"steps": windows[:1]}))


@pytest.fixture(scope="module")
def decode_cluster(synth):
    """(decode node id) of a 2-node cluster this process is connected to: the head (where this process and
    the Train workers run) has 2 CPUs, `{trainer: 2}` and no decode resource, the decode node 2 CPUs and
    `{decode: 2}`."""
    import ray
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this module
    if ray.is_initialized():  # the session's shared Ray (`no_ray`, at module scope)
        ray.shutdown()
    home = tempfile.mkdtemp(prefix="vpray")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ray_env(home).items():  # the cluster's processes start with this environment
            mp.setenv(k, v)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"trainer": 2},
                                                                "include_dashboard": False})
        decode = cluster.add_node(num_cpus=2, resources={"decode": 2})
        try:
            ray.init(address=cluster.address)
            cluster.wait_for_nodes()
            yield decode.node_id
        finally:
            ray.shutdown()
            cluster.shutdown()
    shutil.rmtree(home, ignore_errors=True)


class NodeRecorder(torch.utils.data.Dataset):
    """The pre-training set, writing into `record/` the Ray node id of each item it decodes (`items-<pid>`)
    and the pid of each process that unpickles it (`loads-<pid>`)."""

    def __init__(self, inner, record: str) -> None:
        self.inner, self.record = inner, record

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        with open(Path(self.record) / f"loads-{os.getpid()}", "a") as f:
            f.write("loaded\n")

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __getitem__(self, i: int):
        import ray

        with open(Path(self.record) / f"items-{os.getpid()}", "a") as f:
            f.write(ray.get_runtime_context().get_node_id() + "\n")
        return self.inner[i]


def recorded(record: Path, kind: str) -> Counter:
    """The lines NodeRecorder wrote into `record/<kind>-*`, counted."""
    return Counter(line for f in record.glob(f"{kind}-*") for line in f.read_text().split())


@pytest.mark.slow
def test_ray_data_batches_and_broken_video_counts_are_the_dataloaders_decoded_on_the_decode_node(
        decode_cluster, synth, tmp_path):
    cfg = tiny(synth, tmp_path, "cmp", *DECODE, "data.num_workers=0")
    dataset = pretrain_dataset(cfg)
    record = tmp_path / "record"
    record.mkdir()
    recorder = NodeRecorder(dataset, str(record))  # the same items, decoded by Ray Data tasks
    skipped: dict[str, int] = Counter()

    def compare(loaders) -> int:
        steps = 0
        for epoch, consumed in ((0, 0), (1, 8)):  # a fresh epoch, then one resumed after 8 items
            reference, got = (loader.epoch(epoch, consumed) for loader in loaders)
            assert got.step_sizes == reference.step_sizes
            for a, b in zip(reference.batches, got.batches, strict=True):
                assert a.keys() == b.keys() and a["frames"].dtype == torch.uint8
                for k, v in a.items():  # `skipped` (broken videos of the step) included
                    same = torch.equal(v, b[k]) and v.dtype == b[k].dtype if torch.is_tensor(v) else v == b[k]
                    assert same, (epoch, k)
                if epoch == 0:
                    skipped["torch"] += a["skipped"]
                    skipped["ray_data"] += b["skipped"]
                steps += 1
        return steps

    tasks, keys = 0, set()  # decode tasks (one per step) of both ranks, their data sets' keys
    for rank in (0, 1):
        kw = dict(rank=rank, world=2, batch_per_worker=4, seed=cfg.run.seed, pin_memory=False)
        loaders = TorchSource(dataset, collate_clips, cfg.data, **kw), RayDataSource(
            recorder, collate_clips, cfg.data, **kw)
        try:
            steps = within(f"rank {rank}'s batches", partial(compare, loaders))
        finally:
            loaders[1].close()
        assert loaders[1].decode_nodes == [decode_cluster] * steps  # every step, on the decode node only
        tasks += steps
        keys.add(loaders[1].shared.key)
    assert skipped == {"torch": 1, "ray_data": 1}  # the broken file, once per epoch over the ranks
    assert set(recorded(record, "items")) == {decode_cluster}
    # the data set reaches a decode process once per content (the DataLoader's set_epoch changed it between
    # the ranks' sources), not once per task
    loads = Counter(f.name for f in record.glob("loads-*") for _ in f.read_text().split())
    assert max(loads.values()) <= len(keys) and sum(loads.values()) < tasks, (loads, keys, tasks)


@pytest.mark.slow
def test_decode_tasks_no_node_can_take_make_the_waiting_rank_say_so(decode_cluster, synth, tmp_path, caplog,
                                                                    monkeypatch):
    """A placement group holds the decode node's CPUs (as a Train worker group placed there would): the rank
    waits, says why after `STALL_WARN_S`, and gets the right batch once the CPUs are free."""
    from ray.util import placement_group, remove_placement_group

    monkeypatch.setattr(ray_data, "STALL_WARN_S", 1.0)
    pg = placement_group([{"CPU": 2, "decode": 1}])  # only the decode node has `decode`
    assert within("the placement group", partial(pg.wait, WAIT_S)), "the placement group never got placed"
    cfg = tiny(synth, tmp_path, "stall", *DECODE, "data.num_workers=0")
    kw = dict(rank=0, world=2, batch_per_worker=4, seed=cfg.run.seed, pin_memory=False)
    dataset = pretrain_dataset(cfg)
    source = RayDataSource(dataset, collate_clips, cfg.data, **kw)

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "no batch for" in r.getMessage()]

    def free_when_said() -> None:  # while the test's thread waits for the batch
        deadline = time.monotonic() + WAIT_S
        while not said() and time.monotonic() < deadline:
            time.sleep(0.2)
        remove_placement_group(pg)

    caplog.set_level(logging.WARNING, logger=ray_data.__name__)
    threading.Thread(target=free_when_said, daemon=True).start()
    try:
        got = within("the first batch", lambda: next(source.epoch(0, 0).batches))
    finally:
        source.close()
    msgs = said()
    assert len(msgs) == 1, msgs  # said once, while it waited
    msg = msgs[0]
    assert f"{decode_cluster[:8]} 0 of 2 CPUs free" in msg, msg
    assert "data.decode_resources" in msg and "scale.worker_resources" in msg, msg
    want = next(TorchSource(dataset, collate_clips, cfg.data, **kw).epoch(0, 0).batches)
    assert all(torch.equal(v, got[k]) if torch.is_tensor(v) else v == got[k] for k, v in want.items())


def recording_dataset(cfg, record: str):
    return NodeRecorder(pretrain_dataset(cfg), record)


_steps = Counter()  # forward passes of this worker process (= this attempt)


def held_loss(model, batch, generator, cfg, gates: str):
    """The pre-training loss; once this attempt has checkpointed, a worker says its pid and waits while
    `gates/hold` exists, so the test kills it mid-epoch with a checkpoint registered, however slow the box."""
    import ray.train

    _steps["n"] += 1
    if _steps["n"] > CKPT_EVERY and (hold := Path(gates) / "hold").exists():
        (Path(gates) / f"pid{ray.train.get_context().get_world_rank()}").write_text(str(os.getpid()))
        while hold.exists():
            time.sleep(0.2)
    return PRETRAIN.forward_loss(model, batch, generator, cfg)


def _registered_steps(run_dir: Path) -> list[int]:
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being rewritten
        return []
    return [r["metrics"]["step"] for r in snap["checkpoint_results"]]


@pytest.mark.slow
def test_sigkilled_worker_resumes_mid_epoch_with_exact_item_accounting(decode_cluster, synth, tmp_path):
    from vpace.train import run_task

    record, gates = tmp_path / "record", tmp_path / "gates"
    record.mkdir()
    gates.mkdir()
    (gates / "hold").touch()
    # 21 train items (one broken), global batch 4: 5 steps per epoch (the last takes 5); 2 epochs = 10 steps
    total = 10
    cfg = tiny(synth, tmp_path / "runs", "killed", *DECODE, "optim.batch_size=4", "optim.base_batch_size=4",
               "optim.epochs=2", f"scale.checkpoint_every={CKPT_EVERY}", "scale.max_failures=1")
    spec = dataclasses.replace(PRETRAIN, dataset=partial(recording_dataset, record=str(record)),
                               forward_loss=partial(held_loss, gates=str(gates)))
    out: dict = {}

    def fit() -> None:
        try:
            out["result"] = run_task(spec, cfg)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            out["error"] = e

    runner = threading.Thread(target=fit, daemon=True)
    runner.start()
    deadline = time.monotonic() + WAIT_S
    try:
        pid_file = gates / "pid0"
        while not (pid_file.exists() and CKPT_EVERY in _registered_steps(tmp_path / "runs" / "killed")):
            assert runner.is_alive(), f"run ended before the kill: {out}"
            assert time.monotonic() < deadline, f"no checkpoint at step {CKPT_EVERY} after {WAIT_S} s; " \
                f"(total, free) resources per node: {node_resources()}"
            time.sleep(0.3)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # rank 0's Train worker, mid-epoch 0
    finally:
        (gates / "hold").unlink()  # the restarted group runs to the end
    runner.join(WAIT_S)
    assert not runner.is_alive(), f"run not done {WAIT_S} s after the kill; (total, free) resources per " \
        f"node: {node_resources()}"
    if "error" in out:
        raise out["error"]

    h = out["result"].history
    assert h["attempts"] == [{"start_step": 0, "world_size": 2}, {"start_step": CKPT_EVERY, "world_size": 2}]
    assert [r["step"] for r in h["steps"]] == list(range(1, total + 1))  # none lost, none logged twice
    assert [e["epoch"] for e in h["epochs"]] == [0, 1]
    assert all(e["videos"] + e["skipped"] == n_train(synth) and e["skipped"] == 1 for e in h["epochs"]), h
    nodes = recorded(record, "items")
    assert set(nodes) == {decode_cluster}  # every item of the run was decoded on the decode node
    assert sum(nodes.values()) >= 2 * n_train(synth)  # (plus the items the killed attempt decoded again)

    from vpace.eval.report import write_report
    from vpace.eval.results import pct
    from vpace.train.metrics import STARVED_FRAC

    md = write_report(str(tmp_path / "runs" / "killed"), bench_dir=str(tmp_path / "no-bench")).read_text()
    waits = [e["data_wait_frac"] for e in h["epochs"]]  # the run's own record, both epochs
    assert "### Data wait (`data.loader: ray_data`)" in md
    assert f"- waiting for data: {pct(waits[-1])}% of the last epoch's time; {pct(min(waits))}-" in md
    assert ("**starved**" in md) == any(w > STARVED_FRAC for w in waits)

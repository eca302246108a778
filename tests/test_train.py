"""Pre-training on Ray Train: sampler / checkpoint / schedule units, then real 2-worker runs on real videos.

The Ray runs use the real pipeline end to end (synthetic mp4 files -> decord -> DataLoader worker processes ->
fused augmentation -> objective -> DDP over gloo) on a local 2-CPU Ray; nothing is mocked.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import n_train, tiny

from vpace.config import Config, ConfigError, OptimConfig
from vpace.data.reader import BrokenVideoError
from vpace.train import export_backbone, pretrain
from vpace.train.checkpoint import load_state, read_meta, save_checkpoint
from vpace.train.sampler import ElasticBatchSampler, epoch_permutation, step_bounds
from vpace.train.step import StepSchedule

# ------------------------------------------------------------------------------------------------ units


def _drain(n: int, b: int, world: int, seed: int, epoch: int, consumed: int,
           steps: int | None) -> tuple[list, int]:
    """Run `steps` global steps (None = to the end) of every rank; returns (items seen, consumed after)."""
    samplers = [ElasticBatchSampler(n, b, r, world, seed, epoch, consumed) for r in range(world)]
    lengths = {len(s) for s in samplers}
    assert len(lengths) == 1, "every rank must run the same number of steps (DDP)"
    sizes = samplers[0].step_sizes()
    iters = [iter(s) for s in samplers]
    seen = []
    for k in range(len(sizes) if steps is None else steps):
        parts = [next(it) for it in iters]
        assert all(len(p) >= 1 for p in parts), "a rank got an empty batch"
        assert sum(len(p) for p in parts) == sizes[k]
        seen += [i for p in parts for i in p]
        consumed += sizes[k]
    return seen, consumed


@pytest.mark.parametrize("worlds", [(2, 1), (1, 3), (3, 2, 4)])
def test_sampler_resharding_sees_every_item_once_per_epoch(worlds):
    n, per_worker_global, seed, epoch = 53, 12, 7, 3
    seen, consumed = [], 0
    for k, w in enumerate(worlds):  # each resize = a restart from `consumed`, with a new world size
        b = max(1, per_worker_global // w)
        got, consumed = _drain(n, b, w, seed, epoch, consumed, None if k == len(worlds) - 1 else 2)
        seen += got
    assert sorted(seen) == list(range(n))  # nothing skipped, nothing doubled
    assert seen == epoch_permutation(n, seed, epoch).tolist()  # and in the epoch's one order
    assert epoch_permutation(n, seed, 4).tolist() != seen  # a new epoch reshuffles


def test_step_bounds_never_drop_or_starve():
    assert step_bounds(20, 8, 2) == [(0, 8), (8, 16), (16, 20)]
    assert step_bounds(17, 8, 2) == [(0, 8), (8, 17)]  # a 1-item tail cannot feed 2 ranks: merged
    assert step_bounds(0, 8, 2) == []


def test_lr_follows_actual_global_batch_and_steps_every_n_epochs():
    o = OptimConfig(lr=1e-3, base_batch_size=30, lr_step_epochs=6, lr_gamma=0.1)
    s = StepSchedule(o, global_batch=28)  # batch 30 split over 4 workers = 7 each
    assert math.isclose(s.lr(0), 1e-3 * 28 / 30)
    assert math.isclose(s.lr(5), 1e-3 * 28 / 30)
    assert math.isclose(s.lr(6), 1e-4 * 28 / 30)
    assert math.isclose(s.lr(17), 1e-5 * 28 / 30)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 5}, {"step": 5})
    with pytest.raises(Exception):  # noqa: B017 - a failing save (unpicklable state) must not touch `path`
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "bad": lambda: 0}, {"step": 6})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dir left behind
    state = load_state(path)  # torch.load(weights_only=True)
    assert state["step"] == 5 and torch.equal(state["model"]["w"], torch.ones(3))
    assert read_meta(path)["step"] == 5


# ---------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "field, value",
    [("pace.paces", ""), ("model.backbone", "resnet9000"), ("pace.lambda_ctr", -0.5), ("augment.crop", 500),
     ("data.index", "/nonexistent/videos")],
)
def test_bad_config_fails_before_ray_starts(field, value, tmp_path):
    import ray

    was_running = ray.is_initialized()
    cfg = Config()
    cfg.run.storage = str(tmp_path / "runs")
    section, name = field.split(".")
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ConfigError) as err:
        pretrain(cfg)
    assert err.value.field_name == field and field in str(err.value)
    assert ray.is_initialized() == was_running
    assert not (tmp_path / "runs").exists()  # no trainer was built, no run dir written


# ------------------------------------------------------------------------------------------- Ray runs


@pytest.mark.slow
def test_two_worker_run_learns_and_leaves_loadable_checkpoint(local_ray, synth, tmp_path):
    from safetensors.torch import load_file

    from vpace.models import build_backbone
    from vpace.objectives import build_objective

    epochs, epoch_size = 6, 32  # epoch_size > videos: item i reads video i % n (the broken one is the last)
    cfg = tiny(synth, tmp_path, "two", f"optim.epochs={epochs}", "optim.lr_step_epochs=10", "optim.lr=0.01",
               "pace.lambda_ctr=1.0", f"data.epoch_size={epoch_size}", "scale.checkpoint_every=5",
               "scale.max_failures=0")  # nothing may fail (and be retried away) here
    n = n_train(synth)
    res = pretrain(cfg)

    steps_per_epoch = len(step_bounds(epoch_size, 8, 2))  # global batch 8 = 4 + 4
    assert res.metrics["step"] == epochs * steps_per_epoch and res.metrics["world_size"] == 2
    assert res.history["attempts"] == [{"start_step": 0, "world_size": 2}]
    rows = res.history["epochs"]
    assert [r["epoch"] for r in rows] == list(range(epochs))
    broken_per_epoch = len(range(n - 1, epoch_size, n))
    assert all((r["skipped"], r["videos"]) == (broken_per_epoch, epoch_size - broken_per_epoch) for r in rows)
    assert res.metrics["skipped_total"] == epochs * broken_per_epoch

    losses = [r["loss"] for r in res.history["steps"]]
    third = len(losses) // 3
    assert statistics.mean(losses[-third:]) < statistics.mean(losses[:third]) - 0.2, losses

    _assert_per_pace_metrics(cfg, rows, Path(res.run_dir))

    ckpt = Path(res.checkpoint)
    state = torch.load(ckpt / "state.pt", weights_only=True)  # plain tensors + containers only
    model, _ = build_objective(cfg, build_backbone(cfg.model.backbone))
    model.load_state_dict(state["model"])  # strict: every key of the objective is in the checkpoint
    assert state["loop"]["step"] == res.metrics["step"] and len(state["optimizer"]["state"]) > 0

    out = export_backbone(res.run_dir, tmp_path / "bb.safetensors")
    backbone = build_backbone(cfg.model.backbone)
    backbone.load_state_dict(load_file(out))  # strict
    prefix = json.loads((ckpt / "meta.json").read_text())["backbone_prefix"]
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, state["model"][prefix + k])

    run = Path(res.run_dir)
    assert (run / "curves.png").stat().st_size > 0 and list((run / "tensorboard").glob("events.*"))
    csv_rows = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == epochs + 1 and csv_rows[0].startswith("epoch,step,")


def _assert_per_pace_metrics(cfg: Config, rows: list[dict], run: Path) -> None:
    """Per-pace / wrap metrics of every epoch against the data set's own draws (`data.start` = fit), and the
    report's per-pace tables (training and held out) from them."""
    from vpace.data import VideoReader, load_index
    from vpace.data.pace import pace_metric_name
    from vpace.eval.report import write_report
    from vpace.eval.results import pct
    from vpace.eval.speed_segments import pace_accuracy
    from vpace.train.pretraining import PRETRAIN

    ds = PRETRAIN.dataset(cfg)
    lengths = {}
    for e in load_index(cfg.data.index).split("train").entries:
        try:
            lengths[e.path] = VideoReader(e.path).num_frames
        except BrokenVideoError:
            pass
    names = [pace_metric_name(p) for p in ds.pace_set]
    for r in rows:
        ds.set_epoch(r["epoch"])
        clips, wrapped = Counter(), Counter()
        for i in range(len(ds)):
            if (n := lengths.get(ds.index[i % len(ds.index)].path)) is not None:
                draw = ds.sample(i, n)
                clips.update(draw.labels.tolist())
                wrapped.update(draw.labels[draw.wrapped].tolist())
        correct = 0.0
        for k, name in enumerate(names):
            assert r[f"wrap_frac/{name}"] == wrapped[k] / clips[k] == 0.0  # fit: these videos fit every clip
            assert f"pace_acc_wrap/{name}" not in r  # no wrapped clip, no accuracy to report
            assert r[f"pace_acc_nowrap/{name}"] == r[f"pace_acc/{name}"]
            hits = r[f"pace_acc/{name}"] * clips[k]  # a count of clips summed over both workers
            assert hits == pytest.approx(round(hits), abs=1e-6)
            correct += round(hits)
        exact = correct / sum(clips.values())
        assert r["pace_acc_nowrap"] == r["pace_acc"] == pytest.approx(exact, abs=1e-12)
        assert r["wrap_frac"] == 0.0

    heldout = pace_accuracy(str(run), num_clips=2)  # the run's test split, written into <run>/eval
    report = write_report(str(run), bench_dir=str(run / "no-benchmarks")).read_text()
    assert "### Training clips, last epoch (`data.start: fit`)" in report
    last = rows[-1]
    for p, name in zip(ds.pace_set, names, strict=True):
        cells = [pct(last[f"wrap_frac/{name}"]), pct(last[f"pace_acc/{name}"]),
                 pct(last[f"pace_acc_nowrap/{name}"]), "-"]
        assert f"| {p} | {' | '.join(cells)} |" in report
    for h in heldout["rows"]:
        assert f"| {h['pace']} | {h['clips']} | {pct(h['acc'])} | {h['videos_too_short']} |" in report
    assert sum(h["clips"] for h in heldout["rows"]) > 0


@pytest.mark.slow
def test_killed_worker_redoes_at_most_one_interval_and_rerun_resumes(local_ray, synth, tmp_path):
    """Rank 0's worker process is SIGKILLed inside step 7 (held there by a test-only `forward_loss`): the run
    resumes from the checkpoint of step 6 and finishes; the same command then continues it."""
    import dataclasses
    import threading

    import fault_gates
    from ray import cloudpickle

    from vpace.train import run_task
    from vpace.train.pretraining import PRETRAIN

    cloudpickle.register_pickle_by_value(fault_gates)  # workers cannot import the tests' modules
    every, fail_at, total = 3, 7, 10
    base = ("scale.max_failures=1", f"scale.checkpoint_every={every}", "optim.epochs=20")  # exactly 1 failure
    cfg = tiny(synth, tmp_path, "fault", *base, f"optim.max_steps={total}")
    gate = tmp_path / "gate"
    gate.mkdir()
    held = fault_gates.HoldAtStep(PRETRAIN.forward_loss, fail_at, gate)
    spec = dataclasses.replace(PRETRAIN, forward_loss=held)
    killer = threading.Thread(target=fault_gates.kill_held, args=(gate, lambda: True), daemon=True)
    killer.start()
    res = run_task(spec, cfg)
    assert (gate / "held").exists() and not killer.is_alive()  # the fault did fire
    assert res.metrics["step"] == total
    attempts = res.history["attempts"]
    assert attempts[0] == {"start_step": 0, "world_size": 2} and len(attempts) == 2
    redone = fail_at - attempts[1]["start_step"]
    assert 0 < redone <= every

    # the user-facing resume: the same command (same run name and storage) continues from the last checkpoint
    more = tiny(synth, tmp_path, "fault", *base, f"optim.max_steps={total + 2}")
    res2 = pretrain(more)
    assert res2.metrics["step"] == total + 2
    assert res2.history["attempts"][-1]["start_step"] == total
    assert Counter(r["step"] for r in res2.history["steps"]).most_common(1)[0][1] == 1  # no step logged twice
    np.testing.assert_equal([r["step"] for r in res2.history["steps"]], list(range(1, total + 3)))

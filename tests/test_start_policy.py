"""Start policy (`data.start`: fit | wrap) of the pace and RSPNet samplers, and the wrap statistics the train
loop reports per pace. References are the paper's formula written out with Fraction + math.floor.

hypothesis is not installed here, so the property tests are seeded sweeps over many lengths and paces."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import decode_indices, write_coded_video

from vpace.data import PaceClipDataset, VideoEntry, VideoIndex
from vpace.data.pace import draw_start, pace_metric_name
from vpace.data.rsp import RSPClipDataset, sample_rsp_clips
from vpace.objectives import pace_tallies, per_step
from vpace.train.metrics import Window, epoch_row
from vpace.train.state import LoopState

PACES = ("1/3", "1/2", "1", "2", "3", "4", "6")
LENGTHS = (1, 2, 5, 10, 15, 16, 17, 30, 31, 46, 50, 61, 62, 91, 100, 150, 250)


def span_of(clip_len: int, pace: Fraction) -> int:
    """Frames a clip covers, straight from the formula: last offset floor((T - 1) * p), plus one."""
    return math.floor((clip_len - 1) * pace) + 1


def formula(num_frames: int, clip_len: int, pace: Fraction, start: int) -> list[int]:
    return [(start + math.floor(i * pace)) % num_frames for i in range(clip_len)]


def runs_past_the_end(clip: list[int], num_frames: int, clip_len: int, pace: Fraction) -> bool:
    """The clip's own start plus the unwrapped offsets reaches past the last frame (it loops)."""
    return clip[0] + math.floor((clip_len - 1) * pace) >= num_frames


def dataset(pace_set: str, clip_len: int, start: str, n: int = 1, cls=PaceClipDataset, **kw):
    """A data set over one (never opened) entry: `sample(i, num_frames)` draws without decoding."""
    index = VideoIndex([VideoEntry("/nonexistent/v.mp4")], [], "/nonexistent")
    if cls is RSPClipDataset:
        return cls(index, speeds=pace_set, clip_len=clip_len, start=start, **kw)
    return cls(index, pace_set=pace_set, clip_len=clip_len, clips_per_video=n, start=start, **kw)


# ------------------------------------------------------------------------------------------ the samplers


@pytest.mark.parametrize("clip_len", [8, 16])
def test_fit_never_wraps_a_video_at_least_as_long_as_the_span(clip_len):
    ds = dataset(",".join(PACES), clip_len, "fit", n=3)
    for num_frames in LENGTHS:
        for i in range(40):
            draw = ds.sample(i, num_frames)
            for lab, clip, wrapped in zip(draw.labels, draw.indices.tolist(), draw.wrapped, strict=True):
                p = Fraction(PACES[lab])
                assert clip == formula(num_frames, clip_len, p, clip[0])
                must_loop = num_frames < span_of(clip_len, p)
                assert runs_past_the_end(clip, num_frames, clip_len, p) == must_loop, (num_frames, p, clip)
                assert bool(wrapped) == must_loop


@pytest.mark.parametrize("pace", PACES)
def test_fit_draws_uniformly_among_the_starts_that_fit(pace):
    p, clip_len, draws = Fraction(pace), 16, 3000
    for num_frames in (40, 100):
        span = span_of(clip_len, p)
        rng = np.random.default_rng(0)
        starts = np.array([draw_start(num_frames, clip_len, p, "fit", rng) for _ in range(draws)])
        if num_frames < span:  # no start fits: any frame (the clip loops)
            assert set(starts.tolist()) == set(range(num_frames))
            continue
        candidates = num_frames - span + 1
        assert set(starts.tolist()) == set(range(candidates))
        freq = np.bincount(starts, minlength=candidates) / draws
        assert np.abs(freq - 1 / candidates).max() < 4 * math.sqrt(1 / candidates / draws) + 1e-9


@pytest.mark.parametrize("pace", PACES)
def test_wrap_starts_cover_the_whole_video(pace):
    p, clip_len, num_frames, draws = Fraction(pace), 16, 50, 4000
    ds = dataset(pace, clip_len, "wrap")
    starts = np.array([ds.sample(i, num_frames).indices[0, 0] for i in range(draws)])
    freq = np.bincount(starts, minlength=num_frames) / draws
    assert len(freq) == num_frames and freq.min() > 0  # every frame of the video is a start
    assert np.abs(freq - 1 / num_frames).max() < 0.015
    # so a clip wraps with probability (span - 1) / num_frames: the shortcut the default `fit` removes
    wrapped = np.mean([ds.sample(i, num_frames).wrapped[0] for i in range(draws)])
    expected = min(span_of(clip_len, p) - 1, num_frames) / num_frames
    assert abs(wrapped - expected) < 4 * math.sqrt(expected * (1 - expected) / draws) + 1e-9


def test_wrap_is_the_previous_sampler_draw_for_draw():
    """`wrap` keeps today's clips: start = rng.integers(0, num_frames) after the pace draw, per clip."""
    ds = dataset("1,2,3,4", 16, "wrap", n=2, seed=5)
    for i in range(50):
        rng = ds.rng(i)
        labels = rng.choice(4, size=2, replace=False)
        starts = [int(rng.integers(0, 70)) for _ in labels]
        draw = ds.sample(i, 70)
        assert draw.labels.tolist() == labels.tolist()
        assert draw.indices[:, 0].tolist() == starts


@pytest.mark.parametrize("start", ["fit", "wrap"])
def test_rspnet_sampler_follows_the_same_rule_with_distinct_starts(start):
    speeds, clip_len = "1/2,1,2,4", 16
    speed_set = tuple(Fraction(s) for s in speeds.split(","))
    for num_frames in (3, 5, 17, 20, 47, 48, 49, 60, 200):
        for seed in range(60):
            s = sample_rsp_clips(num_frames, clip_len, speeds, np.random.default_rng(seed), start)
            starts = s["start"].tolist()
            assert len(set(starts)) == 3  # q and k_pos are different moments of the video
            for k in range(3):
                p = speed_set[s["speed_label"][k]]
                clip = s["indices"][k].tolist()
                assert clip == formula(num_frames, clip_len, p, starts[k])
                assert bool(s["wrapped"][k]) == runs_past_the_end(clip, num_frames, clip_len, p)
                if start == "fit" and num_frames - span_of(clip_len, p) + 1 >= 3:
                    assert not s["wrapped"][k], (num_frames, p, starts)  # a free fitting start was left
    # the query's start: anywhere with `wrap`, only where its clip fits with `fit` (speed 1: 0..4 of 20)
    q_starts = {int(sample_rsp_clips(20, clip_len, "1,2", np.random.default_rng(seed), start)["start"][0])
                for seed in range(800) if np.random.default_rng(seed).integers(2) == 0}
    assert q_starts == set(range(20) if start == "wrap" else range(5))


def test_rspnet_fit_loops_only_the_clip_that_cannot_fit_a_free_start():
    # 16-frame clips at speed 1: a 17-frame video has 2 fitting starts, enough for q and k_pos; a 16-frame
    # video has 1, so exactly one of them must loop. Speed 2 (31 frames) always loops in these videos.
    for num_frames, pair_wraps in ((17, 0), (16, 1)):
        for seed in range(40):
            s = sample_rsp_clips(num_frames, 16, "1,2", np.random.default_rng(seed), "fit")
            w, lab = s["wrapped"].tolist(), s["speed_label"].tolist()
            assert all(w[k] for k in range(3) if lab[k] == 1)
            if lab[0] == 0:
                assert w[0] + w[1] == pair_wraps


@pytest.mark.parametrize("start", ["fit", "wrap"])
def test_one_and_ten_frame_videos_still_give_valid_clips(start, tmp_path):
    paces = "1/3,1/2,1,2,3,4,6"
    for num_frames in (1, 10):
        path = write_coded_video(tmp_path / f"v{num_frames}.mp4", num_frames, height=48, width=64)
        index = VideoIndex([VideoEntry(str(path))], [], str(tmp_path))
        ds = PaceClipDataset(index, paces, clip_len=16, clips_per_video=3, height=48, width=64, seed=1,
                             epoch_size=8, start=start)
        for i in range(len(ds)):
            item = ds[i]
            assert item["wrapped"].dtype == torch.bool and item["wrapped"].shape == (3,)
            for k in range(3):
                p = ds.pace_set[int(item["pace_label"][k])]
                clip = decode_indices(item["frames"][k].numpy()[item["index_map"][k].numpy()])
                assert clip == formula(num_frames, 16, p, clip[0])
                assert bool(item["wrapped"][k]) == runs_past_the_end(clip, num_frames, 16, p)
                if start == "fit":
                    assert bool(item["wrapped"][k]) == (num_frames < span_of(16, p))
        rsp = RSPClipDataset(index, speeds="1,2", clip_len=16, height=48, width=64, start=start)
        item = rsp[0]
        if num_frames == 1:  # no 3 distinct starts: skipped and counted like a broken video
            assert item is None and rsp.skipped == 1
        else:
            assert item["wrapped"].tolist() == [True] * 3  # shorter than any clip: all loop
            for k in range(3):
                clip = decode_indices(item["frames"][k].numpy()[item["index_map"][k].numpy()])
                assert clip == formula(10, 16, rsp.pace_set[int(item["pace_label"][k])], clip[0])


def test_config_field_and_bad_values():
    from vpace.config import ConfigError, load_config

    assert load_config("smoke").data.start == "fit"
    assert load_config("smoke", overrides=["data.start=wrap"]).data.start == "wrap"
    with pytest.raises(ConfigError, match=r"data\.start.*\('fit', 'wrap'\).*'loop'"):
        load_config("smoke", overrides=["data.start=loop"])
    with pytest.raises(ValueError, match="start policy must be one of"):
        dataset("1,2", 8, "anywhere")


# -------------------------------------------------------------------------------- wrap statistics


def reference_tallies(labels: list[int], wrapped: list[bool], correct: list[bool], paces: list[str]
                      ) -> dict[str, float]:
    """The per-pace ratios counted clip by clip in plain python."""
    out: dict[str, float] = {}
    groups = [(f"/{pace_metric_name(Fraction(p))}", [i for i, lab in enumerate(labels) if lab == k])
              for k, p in enumerate(paces)] + [("", list(range(len(labels))))]
    for suffix, rows in groups:
        w = [i for i in rows if wrapped[i]]
        nw = [i for i in rows if not wrapped[i]]
        acc = (lambda ids: sum(correct[i] for i in ids) / len(ids))  # noqa: E731
        if rows:
            out[f"wrap_frac{suffix}"] = len(w) / len(rows)
            out[f"pace_acc{suffix}"] = acc(rows)
        if w:
            out[f"pace_acc_wrap{suffix}"] = acc(w)
        if nw:
            out[f"pace_acc_nowrap{suffix}"] = acc(nw)
    return out


def _batch(rank: int, step: int, paces: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)
    labels = torch.randint(0, paces, (12,), generator=g)
    labels[0] = paces - 1  # the last pace always present
    wrapped = torch.rand(12, generator=g) < 0.3 + 0.1 * labels  # faster paces wrap more often
    logits = torch.randn(12, paces, generator=g)
    return labels, wrapped, logits


def _flush_worker(rank: int, world: int, init_file: str, out_dir: str, paces: list[str]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    fl, st = Window(torch.device("cpu")), LoopState()
    pace_set = [Fraction(p) for p in paces]
    windows = []
    for step in range(4):
        labels, wrapped, logits = _batch(rank, step, len(paces))
        loss = torch.tensor(float(step + rank))
        metrics = {**per_step({"loss": loss}), **pace_tallies(labels, wrapped, pace_set, logits)}
        weight = 0.0 if step == 2 and rank == 1 else 1.0  # step 2 of rank 1: an all-broken batch, replayed
        fl.add(step + 1, loss, metrics, weight, videos=weight * 6, clips=weight * 12)
        if step % 2 == 1:
            windows.append(fl.flush(st, rank, world))
    torch.save({"windows": windows, "epoch": epoch_row(st, 0.1, world)}, f"{out_dir}/flush{rank}.pt")
    dist.destroy_process_group()


def test_per_pace_tallies_are_exact_ratios_summed_over_steps_and_workers(tmp_path):
    paces = ["1/3", "1", "2", "6"]
    mp.spawn(_flush_worker, args=(2, str(tmp_path / "init"), str(tmp_path), paces), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"flush{r}.pt") for r in range(2)]
    timing = ("clips_per_s",)  # each worker's own clock
    rows = [[{k: v for k, v in row.items() if k not in timing} for row in (*r["windows"], r["epoch"])]
            for r in results]
    assert rows[0] == rows[1]  # every worker holds the same global values
    steps = {(r, s) for r in range(2) for s in range(4)} - {(1, 2)}

    def ref(keep: set) -> dict[str, float]:
        rows = [_batch(r, s, len(paces)) for r, s in sorted(keep)]
        labels = torch.cat([b[0] for b in rows]).tolist()
        wrapped = torch.cat([b[1] for b in rows]).tolist()
        correct = torch.cat([(b[2].argmax(1) == b[0]) for b in rows]).tolist()
        return reference_tallies(labels, wrapped, correct, paces)

    windows, epoch = results[0]["windows"], results[0]["epoch"]
    for w, (lo, hi) in zip(windows, ((0, 1), (2, 3)), strict=True):
        expected = ref({(r, s) for r, s in steps if lo <= s <= hi})
        got = {k: v for k, v in w.items() if "/" in k or k.startswith(("wrap_frac", "pace_acc"))}
        assert got.keys() == expected.keys()
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-12), k
    expected = ref(steps)
    assert {k: epoch[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert set(expected) == {k for k in epoch if k.startswith(("wrap_frac", "pace_acc")) or "/" in k}
    assert epoch["loss"] == pytest.approx(np.mean([s + r for r, s in steps]))  # means: still per step


def test_tallies_without_a_classifier_count_wraps_only():
    labels, wrapped = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([False, True, False, False, True])
    t = pace_tallies(labels, wrapped, [Fraction(1), Fraction(2)])
    assert set(t) == {"wrap_frac", "wrap_frac/p1", "wrap_frac/p2"}
    assert [float(x) for x in t["wrap_frac/p2"]] == [2.0, 3.0]  # (hits, clips)
    assert [float(x) for x in t["wrap_frac"]] == [2.0, 5.0]
    assert pace_metric_name(Fraction(1, 3)) == "p1_3" and pace_metric_name(Fraction(6)) == "p6"


# ------------------------------------------------------------------- held-out pace on clips that fit


def test_heldout_clips_never_wrap_and_cover_the_fitting_starts():
    from vpace.eval.speed_segments import heldout_clips

    paces = [Fraction(p) for p in PACES]
    for num_frames in LENGTHS:
        clips, labels = heldout_clips(num_frames, 16, paces, 5)
        expected = [k for k, p in enumerate(paces) if span_of(16, p) <= num_frames]
        assert sorted(set(labels.tolist())) == expected and len(labels) == 5 * len(expected)
        for clip, lab in zip(clips.tolist(), labels.tolist(), strict=True):
            p = paces[lab]
            assert clip == formula(num_frames, 16, p, clip[0])
            assert not runs_past_the_end(clip, num_frames, 16, p)
        for k in expected:  # first clip at frame 0, last one ends on the last frame
            starts = [c[0] for c, lab in zip(clips.tolist(), labels.tolist(), strict=True) if lab == k]
            assert starts[0] == 0 and starts[-1] == num_frames - span_of(16, paces[k])


def test_pace_accuracy_counts_per_pace_and_leaves_out_videos_too_short(coded_tree, tmp_path):
    """A head that always answers pace 2: accuracy 1 at pace 2, 0 elsewhere, on exactly the clips that fit."""
    from vpace.config import load_config
    from vpace.eval.speed_segments import pace_accuracy
    from vpace.models import build_backbone
    from vpace.objectives import PaceModel

    paces = "1/2,1,2,4"
    cfg = load_config(data={"model": {"backbone": "r21d_tiny"}, "pace": {"paces": paces},
                            "augment": {"crop": 32},
                            "data": {"index": str(coded_tree), "clip_len": 8, "height": 48, "width": 64}})
    model = PaceModel(build_backbone("r21d_tiny"), 4, None)
    with torch.no_grad():
        model.pace_head.weight.zero_()
        model.pace_head.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0]))
    ckpt = tmp_path / "model.pt"
    torch.save({"config": cfg.to_dict(), "model": model.state_dict()}, ckpt)
    res = pace_accuracy(str(ckpt), split="all", num_clips=3, out_dir=str(tmp_path / "eval"))

    lengths = (40, 9, 60)  # a1, a2, b1
    for row, p in zip(res["rows"], paces.split(","), strict=True):
        fits = sum(span_of(8, Fraction(p)) <= n for n in lengths)
        assert row["pace"] == p and row["clips"] == 3 * fits
        assert row["videos_too_short"] == len(lengths) - fits
        assert row["acc"] == (1.0 if p == "2" else 0.0)
    assert res["num_videos"] == 3 and res["chance"] == 0.25 and res["mean_acc"] == 0.25
    assert res["acc"] == pytest.approx(res["rows"][2]["clips"] / sum(r["clips"] for r in res["rows"]))
    assert (tmp_path / "eval" / "pace_heldout.json").is_file()
    assert "| 2 | 6 | 100.0 | 1 |" in (tmp_path / "eval" / "pace_heldout.md").read_text()

"""The synthetic action set: real decodable mp4s in a UCF101 layout, classes told apart by motion only.

Motion facts are measured from pixels (foreground shift search, frame periodicity, difference centroids),
independently of the renderer's own trajectory code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest

from vpace.data.synthetic import CLASSES, SPEED_JITTER, make_synthetic
from vpace.data.synthetic_motions import MOTIONS, RenderSpec, render_video

SMALL = dict(height=48, width=64, min_seconds=1.2, max_seconds=2.0, progress=False)
N_SMALL = 24


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _meta(out: Path) -> dict:
    return json.loads((out / "synthetic.json").read_text())


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "set"
    make_synthetic(out, N_SMALL, seed=3, workers=2, **SMALL)
    return out


def test_layout_and_group_split(small_set):
    classes = [line.split() for line in (small_set / "classInd.txt").read_text().splitlines()]
    assert classes == [[str(i + 1), c] for i, c in enumerate(CLASSES)]
    train = [line.split() for line in (small_set / "trainlist01.txt").read_text().splitlines()]
    test = [line.split() for line in (small_set / "testlist01.txt").read_text().splitlines()]
    assert len(train) + len(test) == N_SMALL and all(len(t) == 1 for t in test)
    for rel, label in train:  # label is 1-based and matches the class folder
        assert CLASSES[int(label) - 1] == rel.split("/")[0]
    rels = [t[0] for t in train] + [t[0] for t in test]
    assert all((small_set / "videos" / r).is_file() for r in rels)
    assert sorted(rels) == sorted(str(p.relative_to(small_set / "videos")) for p in small_set.rglob("*.mp4"))
    assert {r.split("/")[0] for r, _ in train} == set(CLASSES) == {t[0].split("/")[0] for t in test}
    group = lambda rel: rel.rsplit("_c", 1)[0]  # "Cls/v_Cls_g03"
    assert not {group(r) for r, _ in train} & {group(t[0]) for t in test}


def test_every_video_decodes_with_its_recorded_length(small_set):
    meta = _meta(small_set)
    assert meta["counts"]["videos"] == N_SMALL and meta["frame_size"] == [48, 64]
    for rec in meta["videos"]:
        frames = _decode(small_set / "videos" / rec["path"])
        assert frames.shape == (rec["frames"], 48, 64, 3)
        assert 1.2 * 25 <= rec["frames"] <= 2.0 * 25
        assert frames.std() > 5  # not blank


def test_same_seed_same_videos_different_seed_different(small_set, tmp_path):
    again = make_synthetic(tmp_path / "again", N_SMALL, seed=3, workers=1, **SMALL)  # other worker count
    assert not again.reused
    for rec in _meta(small_set)["videos"]:
        a, b = small_set / "videos" / rec["path"], tmp_path / "again" / "videos" / rec["path"]
        assert a.read_bytes() == b.read_bytes(), rec["path"]
    rel = _meta(small_set)["videos"][0]["path"]
    first = _decode(small_set / "videos" / rel)
    np.testing.assert_array_equal(first, _decode(tmp_path / "again" / "videos" / rel))
    make_synthetic(tmp_path / "other", N_SMALL, seed=4, workers=1, **SMALL)
    assert not np.array_equal(first[:20], _decode(tmp_path / "other" / "videos" / rel)[:20])


def test_second_call_reuses_and_interrupted_run_resumes(small_set, tmp_path):
    mtimes = {p: p.stat().st_mtime_ns for p in small_set.rglob("*.mp4")}
    info = make_synthetic(small_set, N_SMALL, seed=3, **SMALL)
    assert info.reused and info.num_train + info.num_test == N_SMALL
    assert {p: p.stat().st_mtime_ns for p in small_set.rglob("*.mp4")} == mtimes

    out = tmp_path / "resume"
    make_synthetic(out, N_SMALL, seed=3, workers=1, **SMALL)
    meta = _meta(out)
    (out / "synthetic.json").unlink()  # as if killed before finishing: marker left, one video missing
    marker = {"version": meta["version"], "args": meta["args"]}
    (out / "synthetic.json.partial").write_text(json.dumps(marker))
    lost = out / "videos" / meta["videos"][5]["path"]
    kept = out / "videos" / meta["videos"][0]["path"]
    before, kept_mtime = lost.read_bytes(), kept.stat().st_mtime_ns
    lost.unlink()
    assert not make_synthetic(out, N_SMALL, seed=3, workers=1, **SMALL).reused
    assert lost.read_bytes() == before and kept.stat().st_mtime_ns == kept_mtime
    make_synthetic(out, N_SMALL + 1, seed=3, workers=1, **SMALL)  # other arguments: rebuilt, not reused
    assert _meta(out)["counts"]["videos"] == N_SMALL + 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_videos=2 * len(CLASSES) - 1), "num_videos"),
    (dict(test_fraction=0.0), "test_fraction"),
    (dict(test_fraction=1.0), "test_fraction"),
    (dict(min_seconds=3.0, max_seconds=2.0), "min_seconds"),
    (dict(seed=-1), "seed"),
    (dict(height=8), "frame size"),
])
def test_bad_arguments_name_the_field(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(tmp_path / "x", **{"num_videos": 40, **kwargs})
    assert not (tmp_path / "x").exists()


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic(tmp_path, 20, **SMALL)
    assert os.listdir(tmp_path) == ["precious.txt"]


def _render(label: int, i: int, frames: int, h: int, w: int, factor: float = 1.0) -> np.ndarray:
    return render_video(RenderSpec(label, frames, h, w, factor, (11, label, i), (12, label, i)))


def _vertical_speed(v: np.ndarray, lag: int = 6, smax: int = 16) -> float:
    """Median over frames of the vertical shift (px/frame) that best maps frame t onto frame t+lag."""
    v = v.astype(np.float32)
    inner = np.zeros(v.shape[1:3], bool)
    inner[smax:-smax] = True
    ys, xs = np.nonzero(inner)
    est = []
    for t in range(0, len(v) - lag, 3):
        err = np.array([np.abs(v[t + lag][ys + s, xs] - v[t][ys, xs]).mean() for s in range(-smax, smax + 1)])
        i = int(np.argmin(err))
        off = 0.0
        if 0 < i < 2 * smax:  # parabola through the minimum for sub-pixel precision
            off = 0.5 * (err[i - 1] - err[i + 1]) / (err[i - 1] - 2 * err[i] + err[i + 1] + 1e-9)
        est.append((i - smax + off) / lag)
    return float(np.median(est))


def test_rising_and_falling_move_at_their_one_natural_speed():
    h, w = 64, 86
    for name, sign in (("Rising", -1), ("Falling", 1)):
        label, natural = CLASSES.index(name), MOTIONS[CLASSES.index(name)].speed
        for i, factor in enumerate((1 - SPEED_JITTER, 1.0, 1 + SPEED_JITTER)):
            measured = _vertical_speed(_render(label, i, 60, h, w, factor)) / h
            assert measured == pytest.approx(sign * natural * factor, rel=0.05), (name, factor)


def test_periodic_classes_repeat_at_their_declared_period():
    """Frames repeat after period/factor frames and clearly not 15% earlier or later."""
    for m in MOTIONS:
        if m.unit != "frames per period":
            continue
        for i, factor in enumerate((1 - SPEED_JITTER, 1 + SPEED_JITTER)):
            lag = m.speed / factor
            v = _render(CLASSES.index(m.name), i, int(1.2 * lag) + 2, 32, 44, factor).astype(np.int16)
            lags = [round(x) for x in (lag, lag * 0.85, lag * 1.15)]
            diff = [np.abs(v[k:] - v[: len(v) - k]).mean() for k in lags]
            assert diff[0] < 0.35 * min(diff[1:]), (m.name, factor, diff)


def test_recorded_natural_speed_varies_at_most_15_percent(small_set):
    meta = _meta(small_set)
    assert set(meta["natural_speeds"]) == set(CLASSES)
    for c in CLASSES:
        factors = [v["speed_factor"] for v in meta["videos"] if v["class"] == c]
        assert factors and all(0.85 <= f <= 1.15 for f in factors), c


def test_no_class_is_defined_by_horizontal_direction():
    """Flip-invariance: a class's mean horizontal motion is ~0 (a left/right class would drift one way)."""
    h, w, n = 32, 44, 12
    xs = np.arange(w)
    for label, name in enumerate(CLASSES):
        drift = []
        for i in range(n):
            v = _render(label, i, 50, h, w).astype(np.int16)
            d = np.abs(np.diff(v, axis=0)).sum(-1).astype(np.float64)
            mass = d.sum((1, 2)) + 1e-9
            drift.append(np.diff((d.sum(1) * xs).sum(1) / mass).mean())
        drift = np.array(drift)
        assert abs(drift.mean()) < 4 * drift.std() / np.sqrt(n) + 0.02, (name, drift.mean())
        assert abs(drift.mean()) < 0.3, name  # px/frame; Rising/Falling move ~0.6 px/frame vertically here


def test_first_frame_appearance_does_not_reveal_the_class():
    """Leave-one-out 1-NN on a single frame's colour statistics stays near chance (10 classes)."""
    feats, labels = [], []
    for label in range(len(CLASSES)):
        for i in range(12):
            f = _render(label, i, 1, 32, 44)[0].astype(np.float32)
            feats.append(np.concatenate([f.mean((0, 1)), f.std((0, 1))]))
            labels.append(label)
    x, y = np.array(feats), np.array(labels)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    assert (y[dist.argmin(1)] == y).mean() < 0.25

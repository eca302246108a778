"""Retrieval / kNN / accuracy maths on hand-made features whose neighbours are known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vpace.eval.features import FeatureSet
from vpace.eval.metrics import (
    KS,
    bootstrap_interval,
    clip_and_video_accuracy,
    cosine_topk,
    knn_predict,
    retrieval_hits,
    topk_retrieval,
)
from vpace.eval.results import write_result
from vpace.eval.retrieval import format_table, retrieval_rows


def _unit(deg: np.ndarray) -> np.ndarray:
    r = np.deg2rad(deg)
    return np.stack([np.cos(r), np.sin(r)], 1)


def _fan(n: int = 60) -> np.ndarray:
    """Gallery item i at angle i degrees: seen from a query at 0 degrees, item i is the (i+1)-th nearest."""
    return _unit(np.arange(n, dtype=np.float64))


def test_topk_exact_values_with_known_neighbours() -> None:
    gallery = _fan()
    # Give each gallery item its own class, so a query of class c finds exactly one match: rank c + 1.
    g_labels = np.arange(60)
    queries = _unit(np.zeros(5))
    # first same-class neighbour at rank 1, 4, 16, 46 and never
    q_labels = np.array([0, 3, 15, 45, 999])
    acc = topk_retrieval(queries, q_labels, gallery, g_labels, KS)
    assert acc == {1: 1 / 5, 5: 2 / 5, 10: 2 / 5, 20: 3 / 5, 50: 4 / 5}


def test_topk_is_cosine_not_euclidean() -> None:
    """Scaling gallery vectors changes Euclidean neighbours but must not change cosine ones."""
    gallery = _fan() * np.linspace(5.0, 0.1, 60)[:, None]  # far items are short: Euclid would prefer them
    acc = topk_retrieval(_unit(np.zeros(5)), [0, 3, 15, 45, 999], gallery, np.arange(60), KS)
    assert acc == {1: 1 / 5, 5: 2 / 5, 10: 2 / 5, 20: 3 / 5, 50: 4 / 5}
    eu = np.linalg.norm(gallery - _unit(np.zeros(1)), axis=1).argsort()
    assert eu[0] != 0  # the check above would fail for a Euclidean implementation


def test_topk_rotated_queries_and_shared_classes() -> None:
    """Queries at different angles, classes shared by several gallery items; expected by brute force."""
    rng = np.random.default_rng(0)
    angles = rng.permutation(360)[:80].astype(np.float64)
    gallery, g_labels = _unit(angles), rng.integers(0, 6, 80)
    q_angles = np.array([10.5, 100.25, 200.75, 300.125])
    q_labels = np.array([1, 2, 3, 4])
    ks = (1, 3, 7)
    expected = {}
    for k in ks:
        hits = 0
        for qa, ql in zip(q_angles, q_labels, strict=True):
            d = np.abs((angles - qa + 180) % 360 - 180)  # angular distance = cosine order
            hits += ql in g_labels[np.argsort(d)[:k]]
        expected[k] = hits / len(q_angles)
    assert topk_retrieval(_unit(q_angles), q_labels, gallery, g_labels, ks) == expected


def test_hits_per_query_are_the_brute_force_ones_and_average_to_topk() -> None:
    rng = np.random.default_rng(1)
    angles = rng.permutation(360)[:50].astype(np.float64)
    g_labels, q_angles, q_labels = rng.integers(0, 5, 50), rng.uniform(0, 360, 12), rng.integers(0, 5, 12)
    hits = retrieval_hits(_unit(q_angles), q_labels, _unit(angles), g_labels, ks=(1, 4))
    for k in (1, 4):
        expected = [ql in g_labels[np.argsort(np.abs((angles - qa + 180) % 360 - 180))[:k]]
                    for qa, ql in zip(q_angles, q_labels, strict=True)]
        assert hits[k].tolist() == expected
    acc = topk_retrieval(_unit(q_angles), q_labels, _unit(angles), g_labels, ks=(1, 4))
    assert acc == {k: sum(h.tolist()) / 12 for k, h in hits.items()}


def _plain_bootstrap(values: np.ndarray, level: float, resamples: int, rng: np.random.RandomState):
    """The textbook percentile bootstrap, one resample at a time."""
    means = [values[rng.randint(0, len(values), len(values))].mean() for _ in range(resamples)]
    return tuple(np.percentile(means, [50 * (1 - level), 50 * (1 + level)]))


def test_bootstrap_interval_agrees_with_a_plain_bootstrap_and_the_normal_interval() -> None:
    values = np.random.default_rng(0).normal(0.3, 1.0, 200)
    lo, hi = bootstrap_interval(values, level=0.95, resamples=20000, seed=1)
    ref = _plain_bootstrap(values, 0.95, 20000, np.random.RandomState(7))  # another generator, another draw
    assert (lo, hi) == pytest.approx(ref, abs=0.01)  # Monte Carlo error of either: ~0.0015
    half = 1.96 * values.std() / math.sqrt(len(values))  # the mean of 200 values is near normal
    assert (lo, hi) == pytest.approx((values.mean() - half, values.mean() + half), abs=0.01)
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)  # seeded
    lo50, hi50 = bootstrap_interval(values, level=0.5)
    assert lo < lo50 < values.mean() < hi50 < hi
    assert bootstrap_interval(np.full(9, 0.25)) == (0.25, 0.25)  # no spread, no interval
    assert bootstrap_interval(torch.tensor([True, False, True, True])) == pytest.approx(
        bootstrap_interval([1.0, 0.0, 1.0, 1.0]))  # per-query hits as a bool tensor
    for bad in ({"values": []}, {"values": [1.0], "level": 1.0}, {"values": [1.0], "resamples": 0}):
        with pytest.raises(ValueError):
            bootstrap_interval(**bad)


def test_bootstrap_interval_covers_the_true_rate_of_few_queries() -> None:
    """What the tune report relies on: over 40 queries that each hit with probability 0.3, the 95% interval
    holds 0.3 about 95% of the time (the percentile bootstrap runs a little short at this size)."""
    rng = np.random.default_rng(5)
    covered = [lo <= 0.3 <= hi for lo, hi in
               (bootstrap_interval(rng.random(40) < 0.3, resamples=500, seed=i) for i in range(400))]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_ties_are_ordered_by_gallery_index_and_k_is_clamped() -> None:
    gallery = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # items 0 and 1 tie exactly
    sims, idx = cosine_topk(np.array([[1.0, 0.0]]), gallery, k=10, chunk=1)
    assert idx.tolist() == [[0, 1, 2]]
    assert torch.allclose(sims, torch.tensor([[1.0, 1.0, 0.0]]))
    assert topk_retrieval([[1.0, 0.0]], [7], gallery, [1, 2, 7], (1, 2, 50)) == {1: 0.0, 2: 0.0, 50: 1.0}


def test_video_vs_clip_mode() -> None:
    """Video mode averages the 10 clips; clip mode lets every clip query on its own."""
    d = 3
    # train: video 0 (class 0) along x, video 1 (class 1) along y; each has 2 clips
    tr = FeatureSet(np.array([[[1, 0, 0], [1, 0, 0]], [[0, 1, 0], [0, 1, 0]]], np.float32),
                    np.array([0, 1]), np.array([0, 1]), "p5")
    # test: one class-0 video whose clips point along x+z and y+z... mean is closer to x (x weight 3)
    te = FeatureSet(np.array([[[3, 0, 1], [0, 1, 1]]], np.float32), np.array([0]), np.array([0]), "p5")
    rows = retrieval_rows({"p5": tr}, {"p5": te}, model="pretrained", ks=(1,))
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["video"]["top1"] == 1.0 and by_mode["video"]["queries"] == 1
    assert by_mode["clip"]["top1"] == 0.5 and by_mode["clip"]["queries"] == 2
    assert tr.clip_level()[0].shape == (4, d)


def test_knn_weighted_votes() -> None:
    train = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [0.05, 1.0]])
    labels = np.array([0, 0, 1, 1, 1])
    test = np.array([[1.0, 0.02], [0.0, 1.0]])
    scores = knn_predict(train, labels, test, num_classes=2, k=3, temperature=0.1)
    assert scores.argmax(1).tolist() == [0, 1]
    # query 0: neighbours 0 and 1 (class 0) and the nearest class-1 item 3; check the weights by hand
    t = torch.tensor([[1.0, 0.02]]) / math.hypot(1.0, 0.02)
    g = torch.nn.functional.normalize(torch.tensor(train[[0, 1, 3]], dtype=torch.float32), dim=1)
    sims = (t @ g.T)[0]
    expected = [float(torch.exp(sims[0] / 0.1) + torch.exp(sims[1] / 0.1)), float(torch.exp(sims[2] / 0.1))]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_clip_and_video_accuracy() -> None:
    # video 0: clips say [0, 1, 1] by argmax but the confident clip 0 wins the average -> video right
    p0 = [[0.98, 0.02], [0.45, 0.55], [0.45, 0.55]]
    p1 = [[0.2, 0.8], [0.3, 0.7], [0.6, 0.4]]  # label 1: clips right 2/3, video right
    out = clip_and_video_accuracy(np.array([p0, p1]), [0, 1])
    assert out["video_acc"] == 1.0
    assert out["clip_acc"] == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="clip_probs"):
        clip_and_video_accuracy(np.zeros((2, 3)), [0, 1])


def test_table_and_result_files(tmp_path, capsys) -> None:
    rows = [{"model": "random", "layer": "p5", "mode": "video", **{f"top{k}": 0.1 for k in KS}},
            {"model": "pretrained", "layer": "p5", "mode": "video", **{f"top{k}": 0.5 for k in KS}}]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| model | layer | mode | top1 | top5 | top10 | top20 | top50 |"
    assert lines[2].startswith("| pretrained | p5 | video | 50.0")  # pretrained first, random beside it
    assert lines[3].startswith("| random | p5 | video | 10.0")
    skipped = [{"path": "x.mp4", "reason": "empty"}]
    write_result(tmp_path, "retrieval", "Retrieval", {"rows": rows}, table, skipped)
    assert json.loads((tmp_path / "retrieval.json").read_text())["rows"] == rows
    md = (tmp_path / "retrieval.md").read_text()
    assert table in md and "1 unreadable video(s) skipped: x.mp4 (empty)" in md
    assert "| pretrained | p5 | video | 50.0" in capsys.readouterr().out

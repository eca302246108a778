"""Retrieval / kNN / accuracy maths on hand-made features whose neighbours are known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vpace.eval.features import FeatureSet
from vpace.eval.metrics import KS, clip_and_video_accuracy, cosine_topk, knn_predict, topk_retrieval
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

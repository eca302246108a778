"""The one ranking rule of a search and the proxy's noise, on hand-made trials (no Ray): every output of
`vpace.tune.report` shows the same order, early-stopped trials are ranked at their rung and labelled, seeds
are ranked by their mean, and the proxy's per-query scores and intervals match plain references."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from test_tune import md_rows, write_search

from vpace.config import load_config
from vpace.tune import load_spec

# ------------------------------------------------------------------------------------------ ranking

def _row(trial: str, history: list[tuple[int, float]], status: str = "stopped early", *, params=None,
         seed_index: int = 0, half: float = 0.05) -> dict:
    """A trial as `collect_rows` gives it: measurements (epoch, value), each with an interval +-half."""
    return {"trial": trial, "status": status, "epochs": max((e for e, _ in history), default=0),
            "history": [{"epoch": e, "value": v, "lo": v - half, "hi": v + half} for e, v in history],
            "queries": 60.0, "seed_index": seed_index, "seed": 7 + seed_index, "run_dir": f"/runs/{trial}",
            "params": params if params is not None else {"optim.lr": 0.001 * (1 + ord(trial[-1]) % 7)},
            "error": None}


LR_SPACE = {"optim.lr": {"loguniform": [0.001, 0.01]}}
ASHA_4 = {"set": {"optim.epochs": 4}, "tune": {"grace_period": 1, "reduction_factor": 2}}  # rungs 1, 2, 4


def test_ranking_puts_full_budget_first_then_each_rung_and_every_output_agrees(tmp_path):
    from vpace.tune.ranking import rank
    from vpace.tune.report import plot_points, write_outputs

    spec = load_spec(write_search(tmp_path, LR_SPACE, **ASHA_4))
    assert spec.rungs() == [1, 2, 4] and spec.budget == 4
    rows = [
        _row("a", [(1, 0.2), (2, 0.5), (3, 0.4), (4, 0.30)], "completed"),
        _row("b", [(1, 0.9)]),  # best value of all, but after one epoch
        _row("c", [(1, 0.3), (2, 0.6), (3, 0.95)]),  # epoch 3 is no rung: ranked at 2, by 0.6
        _row("d", [(1, 0.4), (2, 0.7)]),
        _row("e", [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.35)], "completed"),
        _row("f", [], "error"),
        _row("g", [(2, 0.8)], "stopped early"),  # first measured after 2 epochs: rung 1 sees that value
    ]
    entries = rank(rows, spec)
    assert [e.name for e in entries] == ["e", "a", "g", "d", "c", "b", "f"]
    assert [(e.rung, e.value) for e in entries] == [(4, 0.35), (4, 0.30), (2, 0.8), (2, 0.7), (2, 0.6),
                                                   (1, 0.9), (None, None)]
    lower = rank(rows, load_spec(write_search(tmp_path, LR_SPACE, set=ASHA_4["set"],
                                              tune={**ASHA_4["tune"], "mode": "min"})))
    assert [e.name for e in lower] == ["a", "e", "c", "d", "g", "b", "f"]  # tiers stay, values flip

    out = write_outputs(rows, spec, tmp_path)
    table = md_rows(Path(out.results_md))
    assert [r["trial"] for r in table] == ["e", "a", "g", "d", "c", "b", "f"] and table[0]["rank"] == "1"
    assert table[0]["status"] == "completed" and table[0]["proxy_top1"] == "0.35"
    assert table[2]["status"] == "stopped early: ranked at rung 2 of 3 (epoch 2)"
    assert table[5]["status"] == "stopped early: ranked at rung 1 of 3 (epoch 1)"
    assert table[4]["proxy_top1"] == "0.6" and table[4]["95% interval"] == "0.55 - 0.65"
    assert table[6]["status"] == "error" and table[6]["proxy_top1"] == "-"
    with open(out.results_csv) as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["rank"], r["trial"], r["ranked_at_epoch"]) for r in csv_rows] == [
        ("1", "e", "4"), ("2", "a", "4"), ("3", "g", "2"), ("4", "d", "2"), ("5", "c", "2"), ("6", "b", "1"),
        ("7", "f", "")]
    best = load_config(out.best_config)  # the table's first row, as a ready config
    assert out.best is out.ranking[0] and out.best.name == "e"
    assert math.isclose(best.optim.lr, rows[4]["params"]["optim.lr"])
    assert best.run.seed == spec.base_config().run.seed and best.optim.epochs == 4
    assert "Rank 1" in Path(out.best_config).read_text().splitlines()[0]

    panels = plot_points(out.ranking, spec)  # one panel row per rung: every trial that reached it, at it
    assert sorted(panels) == [1, 2, 4]
    for rung, points in panels.items():
        expected = {t["trial"]: next(v for e, v in
                                     ((p["epoch"], p["value"]) for p in t["history"]) if e >= rung)
                    for t in rows if t["history"] and max(p["epoch"] for p in t["history"]) >= rung}
        assert {t["trial"]: p["value"] for _, t, p, _ in points} == expected, rung
    assert {t["trial"] for _, t, _, stopped in panels[1] if stopped} == {"b"}
    assert {t["trial"] for _, t, _, stopped in panels[2] if stopped} == {"c", "d", "g"}
    assert Path(out.plot).stat().st_size > 0


def test_results_say_whether_the_proxy_separates_the_first_two(tmp_path):
    from vpace.tune.report import write_outputs

    spec = load_spec(write_search(tmp_path, LR_SPACE, **ASHA_4))
    close = [_row("a", [(1, 0.5), (2, 0.5), (4, 0.52)], "completed"),
             _row("b", [(1, 0.5), (2, 0.5), (4, 0.50)], "completed"),
             _row("c", [(1, 0.45), (2, 0.48)]),  # stopped at 2 though its interval overlaps a and b's
             _row("d", [(1, 0.1)])]  # stopped at 1, far below every trial that went on
    md = Path(write_outputs(close, spec, tmp_path).results_md).read_text()
    assert "**The intervals overlap**: on 60 query videos" in md
    assert "ASHA stopped 2 trial(s); 1 of them had an interval at that rung overlapping" in md
    far = [_row("a", [(1, 0.5), (2, 0.5), (4, 0.9)], "completed"), *close[1:]]
    md = Path(write_outputs(far, spec, tmp_path).results_md).read_text()
    assert "The intervals do not overlap" in md and "**The intervals overlap**" not in md
    assert "bootstrap over the 60 query videos" in md


def test_repeated_seeds_are_one_configuration_ranked_by_their_mean(tmp_path):
    from vpace.tune.report import write_outputs

    spec = load_spec(write_search(tmp_path, {"pace.paces": {"choice": ["1,2,3", "1,2,3,4"]}},
                                  tune={"repeats": 2, "scheduler": "fifo", "num_samples": 3},
                                  set={"run.seed": 7}))
    three, four = {"pace.paces": "1,2,3"}, {"pace.paces": "1,2,3,4"}
    rows = [_row("t0", [(3, 0.60)], "completed", params=three, seed_index=0),
            _row("t1", [(3, 0.20)], "completed", params=three, seed_index=1),  # mean 0.40, best single seed
            _row("t2", [(3, 0.45)], "completed", params=four, seed_index=0),
            _row("t3", [(3, 0.47)], "completed", params=four, seed_index=1),  # mean 0.46
            # the same values drawn again: a configuration of its own, one of its seeds measured
            _row("t4", [(3, 0.50)], "completed", params=four, seed_index=0),
            _row("t5", [], "error", params=four, seed_index=1)]
    out = write_outputs(rows, spec, tmp_path)
    # by the mean, and a mean of fewer seeds (one failed) after the complete ones
    assert [e.name for e in out.ranking] == ["t2, t3", "t0, t1", "t4, t5"]
    assert [e.value for e in out.ranking] == pytest.approx([0.46, 0.40, 0.50])
    assert out.ranking[1].spread == (0.2, 0.6) and out.ranking[1].sd == pytest.approx(0.2828, abs=1e-4)
    table = md_rows(Path(out.results_md))
    assert [r["trials"] for r in table] == ["t2, t3", "t0, t1", "t4, t5"]
    assert table[2]["status"] == "completed, 1 of 2 seeds measured"
    assert table[0]["proxy_top1 (mean)"] == "0.46" and table[0]["per seed"] == "0.45, 0.47"
    md = Path(out.results_md).read_text()
    assert "run.seed + 0 .. 1, ranked by the mean over its seeds" in md and "Across seeds:" in md
    best = load_config(out.best_config)  # the first configuration, at the base seed
    assert best.run.seed == 7 and best.pace.paces == "1,2,3,4"


# ------------------------------------------------------------------------------------------ the proxy's noise

def test_proxy_scores_per_query_match_a_plain_reference_and_their_intervals_cover_them():
    from vpace.tune.proxy import query_scores, with_intervals

    rng = np.random.default_rng(3)
    gallery, g_labels = rng.normal(size=(40, 8)), rng.integers(0, 4, 40)
    queries, q_labels = rng.normal(size=(25, 8)), rng.integers(0, 5, 25)  # class 4: none in the gallery
    per_query = query_scores(queries, q_labels, gallery, g_labels, num_classes=5)
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ \
        (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    top1, top5, aps = [], [], []
    for i in range(len(queries)):  # the textbook definitions, one query at a time
        order = np.argsort(-cos[i], kind="stable")
        rel = g_labels[order] == q_labels[i]
        top1.append(float(rel[0]))
        top5.append(float(rel[:5].any()))
        if rel.any():
            ranks = np.flatnonzero(rel) + 1
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    np.testing.assert_array_equal(per_query["proxy_top1"], top1)
    np.testing.assert_array_equal(per_query["proxy_top5"], top5)
    np.testing.assert_allclose(per_query["proxy_map"], aps, rtol=1e-6)
    assert len(per_query["proxy_knn"]) == 25 and not per_query["proxy_knn"][q_labels == 4].any()
    out = with_intervals(per_query)
    for name, values in per_query.items():
        assert out[name] == pytest.approx(values.mean())
        assert out[f"{name}_lo"] <= out[name] <= out[f"{name}_hi"]
    assert out["proxy_map_lo"] < out["proxy_map_hi"]

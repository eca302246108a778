"""Pace sampling against the paper's formula (§3.1), computed independently with Fraction + math.floor."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from vpace.data.pace import (
    draw_distinct_paces,
    format_pace,
    pace_label,
    parse_pace,
    parse_pace_set,
    sample_indices,
    start_candidates,
    unique_with_map,
)

PACES = ["1/3", "1/2", "1", "2", "3", "4"]


def reference(num_frames: int, clip_len: int, pace: Fraction, start: int) -> list[int]:
    return [(start + math.floor(i * pace)) % num_frames for i in range(clip_len)]


def test_paper_examples():
    # Fig. 2 / §3.1: super fast p=3 from frame 11 of a 25-frame video -> 11, 14, 17, 20, 23.
    assert sample_indices(25, 5, 3, 11).tolist() == [11, 14, 17, 20, 23]
    # slow p=1/2 repeats the preceding frame: s, s, s+1, s+1, ...
    assert sample_indices(25, 6, "1/2", 4).tolist() == [4, 4, 5, 5, 6, 6]
    assert sample_indices(25, 7, "1/3", 0).tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert sample_indices(25, 4, 1, 20).tolist() == [20, 21, 22, 23]


@pytest.mark.parametrize("pace", PACES)
def test_matches_formula_with_loop_over(pace):
    p = Fraction(pace)
    rng = np.random.default_rng(0)
    for num_frames in (1, 2, 5, 16, 25, 97):
        for clip_len in (1, 16, 40):
            for start in {0, num_frames - 1, int(rng.integers(0, num_frames))}:
                got = sample_indices(num_frames, clip_len, pace, start)
                assert got.dtype == np.int64
                assert got.tolist() == reference(num_frames, clip_len, p, start)
    # a clip longer than the video wraps around to its beginning
    assert sample_indices(5, 8, 1, 3).tolist() == [3, 4, 0, 1, 2, 3, 4, 0]


def test_exact_fraction_math_for_long_clips():
    p = Fraction(1, 3)
    n = 10**9  # no wrap: any float drift in floor(i * p) would show
    assert sample_indices(n, 3000, p, 0).tolist() == [i // 3 for i in range(3000)]
    q = Fraction(7, 10)
    assert sample_indices(n, 1000, q, 5).tolist() == reference(n, 1000, q, 5)


def test_parse_pace():
    assert parse_pace("1/3") == Fraction(1, 3)
    assert parse_pace(" 1 / 2 ") == Fraction(1, 2)
    assert parse_pace("0.5") == Fraction(1, 2)
    assert parse_pace(4) == Fraction(4)
    assert parse_pace(Fraction(2, 4)) == Fraction(1, 2)
    assert parse_pace(0.25) == Fraction(1, 4)
    assert format_pace(parse_pace("2/6")) == "1/3"
    for bad in ["abc", "1/0", "0", "-1", "", "1//3"]:
        with pytest.raises(ValueError, match="invalid pace"):
            parse_pace(bad)
    with pytest.raises(ValueError, match="'abc'"):  # names the bad string
        parse_pace("abc")
    with pytest.raises(ValueError, match="exact fraction"):
        parse_pace(1 / 3)
    with pytest.raises(ValueError):
        parse_pace(True)


def test_parse_pace_set_orders_and_labels():
    assert parse_pace_set("1,2,3,4") == tuple(Fraction(x) for x in (1, 2, 3, 4))
    ps = parse_pace_set(["3", "1/3", 1, "1/2", Fraction(2)])
    assert ps == (Fraction(1, 3), Fraction(1, 2), Fraction(1), Fraction(2), Fraction(3))
    assert parse_pace_set("[1/3, 1/2, 1, 2, 3]") == ps
    assert [pace_label(ps, p) for p in ("1/3", "1/2", 1, 2, 3)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="not in the pace set"):
        pace_label(ps, 4)
    with pytest.raises(ValueError, match="duplicate"):
        parse_pace_set("1/2, 2/4, 1")
    with pytest.raises(ValueError, match="empty"):
        parse_pace_set("")
    with pytest.raises(ValueError, match="'x'"):
        parse_pace_set("1,x")


def test_validation_messages():
    with pytest.raises(ValueError, match="num_frames"):
        sample_indices(0, 16, 1, 0)
    with pytest.raises(ValueError, match="clip_len"):
        sample_indices(10, 0, 1, 0)
    with pytest.raises(ValueError, match="> 0"):
        sample_indices(10, 4, 0, 0)
    with pytest.raises(ValueError, match="num_frames"):
        start_candidates(0, 16, "fit")
    with pytest.raises(ValueError, match=r"start policy must be one of \('fit', 'wrap'\), got 'loop'"):
        start_candidates(50, 16, "loop")


def test_unique_with_map_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        idx = rng.integers(0, 30, size=int(rng.integers(1, 40)))
        uniq, imap = unique_with_map(idx)
        assert (np.diff(uniq) > 0).all()
        assert (uniq[imap] == idx).all()
        assert set(uniq.tolist()) == set(idx.tolist())


def test_draw_distinct_paces():
    rng = np.random.default_rng(0)
    draws = [draw_distinct_paces(4, 2, rng) for _ in range(500)]
    assert all(len(set(d.tolist())) == 2 for d in draws)
    assert {x for d in draws for x in d.tolist()} == {0, 1, 2, 3}
    assert sorted(draw_distinct_paces(4, 4, rng).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot draw 5 distinct paces"):
        draw_distinct_paces(4, 5, rng)
    with pytest.raises(ValueError):
        draw_distinct_paces(4, 0, rng)

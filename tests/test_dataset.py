"""Pace / eval clip datasets on real coded videos: layout, frames = formula, paces, seeds, broken skips."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import decode_indices, write_broken_videos
from torch.utils.data import DataLoader

from vpace.data import EvalClipDataset, PaceClipDataset, VideoEntry, VideoIndex, collate_clips, from_folder
from vpace.data.dataset import eval_starts, pack_clips


def clip_of(item: dict, k: int) -> list[int]:
    """Source indices carried by clip ``k`` of an item, reassembled through its index map."""
    return decode_indices(item["frames"][k].numpy()[item["index_map"][k].numpy()])


def assert_formula(clip: list[int], num_frames: int, pace: Fraction) -> None:
    """The clip must be (s + floor(i * p)) mod N for its own start s = clip[0]."""
    assert clip == [(clip[0] + math.floor(i * pace)) % num_frames for i in range(len(clip))]


def test_pace_items_layout_and_frames(coded_tree):
    index = from_folder(coded_tree)  # a1: 40 frames, a2: 9 (loops), b1: 60
    ds = PaceClipDataset(index, "1/3,1/2,1,2,3,4", clip_len=16, clips_per_video=2, seed=3, epoch_size=12)
    assert len(ds) == 12
    seen_labels = set()
    for i in range(len(ds)):
        item = ds[i]
        vid = i % len(index)
        assert item["frames"].shape == (2, 16, 128, 171, 3) and item["frames"].dtype == torch.uint8
        assert item["index_map"].shape == (2, 16) and item["index_map"].dtype == torch.int64
        assert item["pace_label"].shape == (2,) and item["pace_label"].dtype == torch.int64
        assert int(item["video_id"]) == vid and int(item["label"]) == index[vid].label
        labels = item["pace_label"].tolist()
        assert labels[0] != labels[1]  # same context, distinct paces
        seen_labels.update(labels)
        n = {"a1.mp4": 40, "a2.mp4": 9, "b1.mp4": 60}[index[vid].path.rsplit("/", 1)[1]]
        for k in range(2):
            clip = clip_of(item, k)
            assert_formula(clip, n, ds.pace_set[labels[k]])
            uniq = len(set(clip))
            assert int(item["index_map"][k].max()) == uniq - 1
            assert not item["frames"][k, uniq:].any()  # zero padding after the unique frames
        draw = ds.sample(i, n)
        assert [clip_of(item, k) for k in range(2)] == draw.indices.tolist()
        assert item["wrapped"].tolist() == draw.wrapped.tolist()
    assert seen_labels == set(range(6))


def test_reproducible_per_seed_epoch_item(coded_tree):
    index = from_folder(coded_tree)
    a = PaceClipDataset(index, "1,2,3,4", clip_len=8, seed=11)
    b = PaceClipDataset(index, "1,2,3,4", clip_len=8, seed=11)
    for i in reversed(range(len(a))):  # order does not matter
        x, y = a[i], b[i]
        assert all(torch.equal(x[k], y[k]) for k in x)
    draws = lambda ds: [ds.sample(i, 1000) for i in range(3)]  # noqa: E731
    base = draws(a)
    a.set_epoch(1)
    other_epoch = draws(a)
    c = PaceClipDataset(index, "1,2,3,4", clip_len=8, seed=12)
    for other in (other_epoch, draws(c)):
        assert any(not np.array_equal(p[1], q[1]) for p, q in zip(base, other, strict=True))
    a.set_epoch(0)
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(base, draws(a), strict=True))


def test_argument_validation(coded_tree):
    index = from_folder(coded_tree)
    with pytest.raises(ValueError, match="clips_per_video=3"):
        PaceClipDataset(index, "1,2", clips_per_video=3)
    with pytest.raises(ValueError, match="clip_len"):
        PaceClipDataset(index, "1,2", clip_len=0)
    with pytest.raises(ValueError, match="invalid pace"):
        PaceClipDataset(index, "1,fast")
    with pytest.raises(ValueError, match="empty"):
        PaceClipDataset(VideoIndex([], [], "x"), "1,2")


def test_broken_videos_are_skipped_and_counted_through_a_dataloader(coded_tree, tmp_path):
    good = from_folder(coded_tree)
    broken = write_broken_videos(tmp_path)
    entries = list(good.entries) + [VideoEntry(str(p), 0, "all") for p in broken.values()]
    index = VideoIndex(entries, good.classes, str(tmp_path))  # 3 good + 5 broken
    ds = PaceClipDataset(index, "1,2,3,4", clip_len=8, height=64, width=80, epoch_size=16)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_clips)
    skipped = seen = 0
    for batch in loader:
        skipped += batch["skipped"]
        if "frames" in batch:
            seen += len(batch["frames"])
            assert batch["frames"].shape[1:] == (2, 8, 64, 80, 3)
            assert batch["pace_label"].shape[1:] == (2,)
    assert (skipped, seen) == (10, 6)  # items 3..7 and 11..15 are broken videos
    assert ds[3] is None and ds.skipped == 1 and set(ds.broken) == {str(broken["truncated"])}


def test_collate_all_broken_and_mixed():
    assert collate_clips([None, None]) == {"skipped": 2}
    item = {"frames": torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8), "video_id": torch.tensor(5)}
    batch = collate_clips([item, None, item])
    assert batch["skipped"] == 1 and batch["frames"].shape == (2, 2, 4, 8, 8, 3)
    assert batch["video_id"].tolist() == [5, 5]


def test_pack_clips_round_trip():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (20, 4, 4, 3), dtype=np.uint8)
    union_map = rng.integers(0, 20, size=(3, 10))
    clip_frames, index_map = pack_clips(frames, union_map)
    for k in range(3):
        np.testing.assert_array_equal(clip_frames[k][index_map[k]], frames[union_map[k]])


def test_eval_starts():
    assert eval_starts(100, 10, 16).tolist() == [k * 84 // 9 for k in range(10)]
    assert eval_starts(100, 10, 16)[[0, -1]].tolist() == [0, 84]
    assert eval_starts(9, 10, 16).tolist() == [0] * 10  # shorter than a clip: all at 0, the clip loops
    assert eval_starts(16, 3, 16).tolist() == [0, 0, 0]
    assert eval_starts(50, 1, 16).tolist() == [0]


def test_eval_clip_dataset(coded_tree, tmp_path):
    index = from_folder(coded_tree)
    for cache in (None, tmp_path / "cache"):
        ds = EvalClipDataset(index, num_clips=4, clip_len=16, cache_dir=cache)
        assert len(ds) == 3
        for vid in range(3):
            item = ds[vid]
            assert item["frames"].shape == (4, 16, 128, 171, 3) and item["index_map"].shape == (4, 16)
            assert int(item["video_id"]) == vid and int(item["label"]) == index[vid].label
            n = {"a1.mp4": 40, "a2.mp4": 9, "b1.mp4": 60}[index[vid].path.rsplit("/", 1)[1]]
            clips = [clip_of(item, k) for k in range(4)]
            starts = eval_starts(n, 4, 16)
            assert clips == [[(s + i) % n for i in range(16)] for s in starts.tolist()]


def test_cache_dir_gives_identical_items(coded_tree, tmp_path):
    index = from_folder(coded_tree)
    plain = PaceClipDataset(index, "1/2,1,2", clip_len=12, seed=5)
    cached = PaceClipDataset(index, "1/2,1,2", clip_len=12, seed=5, cache_dir=tmp_path)
    for i in range(len(index)):
        x, y = plain[i], cached[i]
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert len(list(tmp_path.glob("*.npy"))) == len(index)

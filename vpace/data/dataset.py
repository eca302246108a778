"""Torch datasets of pace clips (pre-training) and uniformly spaced clips (retrieval / fine-tune evaluation).

An item keeps each clip as its *unique* decoded frames (zero padded to ``T``) plus an index map, so a slow
clip that repeats frames is decoded and augmented once per distinct frame; ``frames[k][index_map[k]]`` is the
clip. All clips of one item are decoded in a single ``get_batch`` over their union. A pre-training item also
says which of its clips wrap (loop past the last frame; see the start policy in `vpace.data.pace`).

Randomness is a pure function of ``(seed, epoch, item)``: the same item gives the same clips in any worker
process and any order, and ``set_epoch`` moves to new clips. A broken video gives ``None`` (logged once per
path, counted in ``dataset.skipped`` of the process that read it); ``collate_clips`` drops the ``None`` s and
reports how many in ``batch["skipped"]``, which is the count that survives DataLoader worker processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from vpace.errors import UserError

from .index import VideoIndex
from .pace import (
    PaceLike,
    check_start_policy,
    draw_distinct_paces,
    draw_start,
    parse_pace_set,
    sample_indices,
    wraps,
)
from .reader import BrokenVideoError, FrameSource, open_video

__all__ = ["ClipDraw", "EvalClipDataset", "PaceClipDataset", "collate_clips", "draw_clips", "eval_starts",
           "pack_clips"]

log = logging.getLogger(__name__)


def pack_clips(frames: np.ndarray, union_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split frames decoded for the union of ``n`` clips into per-clip unique frames + index maps.

    ``frames`` [F, H, W, 3] holds the sorted unique frames of all clips, ``union_map`` [n, T] indexes it.
    Returns ``(clip_frames [n, T, H, W, 3] zero padded, index_map [n, T])`` with
    ``clip_frames[k][index_map[k]] == frames[union_map[k]]``, each clip's unique frames in source order.
    """
    n, t = union_map.shape
    out = np.zeros((n, t, *frames.shape[1:]), dtype=frames.dtype)
    index_map = np.empty((n, t), dtype=np.int64)
    for k in range(n):
        uniq, index_map[k] = np.unique(union_map[k], return_inverse=True)
        out[k, : len(uniq)] = frames[uniq]
    return out, index_map


def collate_clips(items: Sequence[dict | None]) -> dict:
    """Stack items, dropping ``None`` (broken videos); ``batch["skipped"]`` = how many were dropped.

    A batch in which every video was broken holds only ``"skipped"``.
    """
    kept = [x for x in items if x is not None]
    batch: dict = {k: torch.stack([x[k] for x in kept]) for k in kept[0]} if kept else {}
    batch["skipped"] = len(items) - len(kept)
    return batch


class ClipDraw(NamedTuple):
    """The clips of one item: what a sampler decided before any frame is decoded."""

    labels: np.ndarray  # int64 [n]: pace (or speed) label of each clip
    indices: np.ndarray  # int64 [n, T]: source frame indices
    wrapped: np.ndarray  # bool [n]: the clip runs past the last frame and loops (counted by the train loop)


def draw_clips(num_frames: int, clip_len: int, pace_set: Sequence[Fraction], labels: np.ndarray,
               starts: Sequence[int]) -> ClipDraw:
    """Indices and wrap flags of clips at ``pace_set[labels[k]]`` from ``starts[k]``."""
    paces = [pace_set[int(lab)] for lab in labels]
    pairs = list(zip(paces, starts, strict=True))
    indices = np.stack([sample_indices(num_frames, clip_len, p, s) for p, s in pairs])
    wrapped = np.array([wraps(num_frames, clip_len, p, s) for p, s in pairs], dtype=bool)
    return ClipDraw(np.asarray(labels, dtype=np.int64), indices, wrapped)


def eval_starts(num_frames: int, num_clips: int, clip_len: int) -> np.ndarray:
    """``num_clips`` starts evenly spaced over ``[0, num_frames - clip_len]`` (floor; all 0 if too short)."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    span = max(int(num_frames) - int(clip_len), 0)
    return np.array([k * span // max(num_clips - 1, 1) for k in range(num_clips)], dtype=np.int64)


class _ClipDataset(Dataset):
    """Shared reader options, skip-and-count of broken videos and item assembly."""

    def __init__(
        self,
        index: VideoIndex,
        clip_len: int,
        height: int | None,
        width: int | None,
        decode_threads: int,
        cache_dir: str | os.PathLike | None,
        short_side: int | None,
    ):
        if len(index) == 0:
            raise UserError(f"index of {index.root} is empty")
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        self.index, self.clip_len = index, int(clip_len)
        self.reader_kw = dict(
            height=height, width=width, short_side=short_side, threads=decode_threads, cache_dir=cache_dir
        )
        self.skipped = 0
        self.broken: dict[str, str] = {}

    def open_source(self, video_id: int) -> FrameSource | None:
        """The frames of video ``video_id`` (decord, or the frame cache); None if it is broken (skipped and
        counted). The hook to override for another source, e.g. frames already in memory."""
        try:
            return open_video(self.index[video_id].path, **self.reader_kw)
        except BrokenVideoError as e:
            return self._skip(e)

    def _skip(self, e: BrokenVideoError) -> None:
        self.skipped += 1
        if e.path not in self.broken:
            self.broken[e.path] = e.reason
            log.warning("skipping broken video %s: %s", e.path, e.reason)
        return None

    def _item(self, video_id: int, reader: FrameSource, clips: np.ndarray) -> dict | None:
        try:
            frames, union_map = reader.get_frames(clips.reshape(-1))
        except BrokenVideoError as e:
            return self._skip(e)
        finally:
            reader.close()
        clip_frames, index_map = pack_clips(frames, union_map.reshape(clips.shape))
        return {
            "frames": torch.from_numpy(clip_frames),
            "index_map": torch.from_numpy(index_map),
            "video_id": torch.tensor(video_id, dtype=torch.int64),
            "label": torch.tensor(self.index[video_id].label, dtype=torch.int64),
        }


class PaceClipDataset(_ClipDataset):
    """``clips_per_video`` clips of distinct random paces from one video, each from a random start drawn by
    the start policy ``start`` (`vpace.data.pace.start_candidates`: ``fit`` or ``wrap``).

    Item ``i`` reads video ``i % len(index)``; ``epoch_size > len(index)`` draws several clip sets per video
    and epoch (temporal jittering, paper §4.1). Labels are positions in the ascending pace set; ``wrapped``
    flags the clips that loop over the end of the video.
    """

    def __init__(
        self,
        index: VideoIndex,
        pace_set: str | Sequence[PaceLike] = (1, 2, 3, 4),
        clip_len: int = 16,
        clips_per_video: int = 2,
        height: int | None = 128,
        width: int | None = 171,
        seed: int = 0,
        epoch_size: int | None = None,
        decode_threads: int = 1,
        cache_dir: str | os.PathLike | None = None,
        short_side: int | None = None,
        start: str = "fit",
    ):
        super().__init__(index, clip_len, height, width, decode_threads, cache_dir, short_side)
        self.pace_set = parse_pace_set(pace_set)
        self.start = check_start_policy(start)
        if not 1 <= clips_per_video <= len(self.pace_set):
            raise ValueError(
                f"clips_per_video={clips_per_video} needs 1..{len(self.pace_set)} distinct paces "
                f"(pace set has {len(self.pace_set)})"
            )
        if epoch_size is not None and epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {epoch_size}")
        self.clips_per_video, self.seed, self.epoch = int(clips_per_video), int(seed), 0
        self.epoch_size = epoch_size

    def set_epoch(self, epoch: int) -> None:
        """New clips each epoch; call before iterating (DataLoader workers copy the dataset per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.epoch_size or len(self.index)

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(i)])

    def sample(self, i: int, num_frames: int) -> ClipDraw:
        """The clips of item ``i`` for a video of ``num_frames`` (override to plug in another sampler)."""
        rng = self.rng(i)
        labels = draw_distinct_paces(len(self.pace_set), self.clips_per_video, rng)
        starts = [draw_start(num_frames, self.clip_len, self.pace_set[k], self.start, rng) for k in labels]
        return draw_clips(num_frames, self.clip_len, self.pace_set, labels, starts)

    def __getitem__(self, i: int) -> dict | None:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        video_id = i % len(self.index)
        reader = self.open_source(video_id)
        if reader is None:
            return None
        draw = self.sample(i, reader.num_frames)
        item = self._item(video_id, reader, draw.indices)
        if item is not None:
            item["pace_label"] = torch.from_numpy(draw.labels)
            item["wrapped"] = torch.from_numpy(draw.wrapped)
        return item


class EvalClipDataset(_ClipDataset):
    """``num_clips`` pace-1 clips per video with starts evenly spaced over the video (retrieval protocol)."""

    def __init__(
        self,
        index: VideoIndex,
        num_clips: int = 10,
        clip_len: int = 16,
        height: int | None = 128,
        width: int | None = 171,
        decode_threads: int = 1,
        cache_dir: str | os.PathLike | None = None,
        short_side: int | None = None,
    ):
        super().__init__(index, clip_len, height, width, decode_threads, cache_dir, short_side)
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        self.num_clips = int(num_clips)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict | None:
        if not 0 <= i < len(self):
            raise IndexError(f"video {i} out of range for {len(self)} videos")
        reader = self.open_source(i)
        if reader is None:
            return None
        starts = eval_starts(reader.num_frames, self.num_clips, self.clip_len)
        clips = np.stack([sample_indices(reader.num_frames, self.clip_len, 1, s) for s in starts])
        return self._item(i, reader, clips)

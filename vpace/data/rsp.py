"""RSPNet clip sampling: per video a query q and a positive k_pos at one speed, k_neg at another speed.

Clips are pace-sampled (`sample_indices`: speed s keeps every s-th frame, like the official `diff_speed`) with
the same clip length, so only the playback speed separates q/k_pos from k_neg. The three starts are distinct
(q and k_pos are different moments of the video, not the same clip twice) and follow the same start policy as
the pace sampler (`vpace.data.pace.draw_start`: with `fit` a clip loops only when no free start fits). The
query speed is uniform over the speed set and k_neg's uniform over the others (official: 1x or 2x with
probability 1/2 each).

`RSPClipDataset` yields the same item layout as `PaceClipDataset` with n = 3 clips in the order
(q, k_pos, k_neg) and `pace_label` = speed labels (positions in the ascending speed set), so the collate,
augmentation and the `[B*3, ...]` flattening of the pace pipeline serve RSPNet unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .dataset import ClipDraw, PaceClipDataset, draw_clips
from .pace import PaceLike, draw_start, parse_pace_set
from .reader import BrokenVideoError

__all__ = ["RSPClipDataset", "sample_rsp_clips"]


def sample_rsp_clips(num_frames: int, clip_len: int, speeds: str | Sequence[PaceLike],
                     rng: np.random.Generator, start: str = "fit") -> dict[str, np.ndarray | tuple]:
    """Indices of (q, k_pos, k_neg) for one video, starts drawn by the start policy ``start``.

    Returns {"indices": int64 [3, clip_len], "speed_label": int64 [3], "speeds": (Fraction,) * 3,
    "start": int64 [3], "wrapped": bool [3]}; speed_label[0] == speed_label[1] != speed_label[2], starts
    pairwise distinct.
    """
    speed_set = parse_pace_set(speeds)
    if len(speed_set) < 2:
        raise ValueError(f"RSPNet needs at least 2 speeds, got {[str(s) for s in speed_set]}")
    if num_frames < 3:
        raise ValueError(f"RSPNet needs 3 distinct clip starts, but the video has only {num_frames} frame(s)")
    lab_q = int(rng.integers(len(speed_set)))
    lab_neg = int(rng.choice([i for i in range(len(speed_set)) if i != lab_q]))
    labels = np.array([lab_q, lab_q, lab_neg], dtype=np.int64)
    starts: list[int] = []
    for lab in labels:
        starts.append(draw_start(num_frames, clip_len, speed_set[lab], start, rng, taken=starts))
    draw = draw_clips(num_frames, clip_len, speed_set, labels, starts)
    return {"indices": draw.indices, "speed_label": labels, "speeds": tuple(speed_set[lab] for lab in labels),
            "start": np.array(starts, dtype=np.int64), "wrapped": draw.wrapped}


class RSPClipDataset(PaceClipDataset):
    """`PaceClipDataset` whose items hold the 3 RSPNet clips (q, k_pos, k_neg) of one video.

    Same constructor as `PaceClipDataset` with `speeds` in place of `pace_set` (no clips_per_video: always 3);
    same item dict (`frames` [3, T, H, W, 3], `index_map` [3, T], `pace_label` = speed labels [3], `wrapped`
    [3], `video_id`, `label`), same start policy, per-(seed, epoch, item) randomness and broken-video
    skipping.
    """

    def __init__(self, index, speeds: str | Sequence[PaceLike] = (1, 2), **kw) -> None:
        if "clips_per_video" in kw or "pace_set" in kw:
            raise ValueError("RSPClipDataset: pass `speeds`; clips_per_video is always 3 (q, k_pos, k_neg)")
        super().__init__(index, pace_set=speeds, clips_per_video=1, **kw)
        if len(self.pace_set) < 2:
            raise ValueError(f"RSPClipDataset: needs at least 2 speeds, got {speeds!r}")
        self.clips_per_video = 3

    def sample(self, i: int, num_frames: int) -> ClipDraw:
        """The 3 clips of item `i` (order q, k_pos, k_neg; labels = speed labels)."""
        if num_frames < 3:  # no 3 distinct starts: skip and count like a broken video
            raise BrokenVideoError(self.index[i % len(self.index)].path,
                                   f"only {num_frames} frame(s); RSPNet needs >= 3 for distinct clip starts")
        s = sample_rsp_clips(num_frames, self.clip_len, self.pace_set, self.rng(i), self.start)
        return ClipDraw(s["speed_label"], s["indices"], s["wrapped"])

    def __getitem__(self, i: int) -> dict | None:
        try:
            return super().__getitem__(i)
        except BrokenVideoError as e:
            return self._skip(e)

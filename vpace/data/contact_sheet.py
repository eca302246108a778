"""``vpace inspect-clip``: a PNG grid of the frames a pace samples, each titled with its source frame index.

Seeing ``#11 #14 #17`` under a fast clip (or ``#8 #8 #9 #9`` under a slow one) is the quickest check that the
sampler, the reader and the video agree. Uses matplotlib's object API (no pyplot) so it never needs a display.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .pace import PaceLike, format_pace, parse_pace, sample_indices
from .reader import VideoReader

__all__ = ["write_contact_sheet"]


def write_contact_sheet(
    video_path: str | os.PathLike,
    pace: PaceLike,
    out_png: str | os.PathLike,
    clip_len: int = 16,
    start: int = 0,
    *,
    height: int | None = 128,
    width: int | None = 171,
    cols: int = 8,
) -> Path:
    """Decode the clip ``sample_indices(N, clip_len, pace, start)`` and save it as a labelled grid."""
    p = parse_pace(pace)
    with VideoReader(video_path, height=height, width=width) as vr:
        indices = sample_indices(vr.num_frames, clip_len, p, start)
        frames, index_map = vr.get_frames(indices)
        num_frames, fps = vr.num_frames, vr.fps
    cols = max(1, min(cols, clip_len))
    rows = math.ceil(clip_len / cols)
    h, w = frames.shape[1:3]
    fig = Figure(figsize=(cols * 1.6 * w / max(h, w) + 0.2, rows * 1.6 * h / max(h, w) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    title = f"{Path(video_path).name}  pace {format_pace(p)}  start {start}  ({num_frames} fr, {fps:.3g} fps)"
    fig.suptitle(title, fontsize=8)
    for i, (src, k) in enumerate(zip(indices, index_map, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(frames[k])
        ax.set_title(f"{i}: #{src}", fontsize=7)
        ax.axis("off")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    return out

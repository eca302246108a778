"""``vpace speed VIDEO --checkpoint CKPT``: the pretext model's own application, finding sped-up parts.

Slide a window of ``clip_len`` consecutive frames (pace 1 as stored in the file) over the video and let the
pace head classify each segment. A segment predicted at pace > 1 plays faster than the motion the model
learned as natural (a time-lapse / fast-forward part); with slow paces in the pace set, < 1 flags slow motion.
Writes a CSV (one row per segment, class probabilities included) and a PNG plot over time.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from vpace.data import VideoReader
from vpace.data.pace import format_pace
from vpace.eval.attention import load_pace_clips
from vpace.eval.features import ClipSpec, center_clips
from vpace.eval.loading import eval_dir, load_model
from vpace.eval.plots import line_plot


def segment_starts(num_frames: int, clip_len: int, stride: int) -> np.ndarray:
    """Window starts 0, stride, ... up to the last full window; a video shorter than one gives [0] (loops)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    last = max(num_frames - clip_len, 0)
    starts = np.arange(0, last + 1, stride, dtype=np.int64)
    if starts[-1] != last:  # make the tail of the video count too
        starts = np.append(starts, last)
    return starts


@torch.no_grad()
def speed(
    video: str,
    checkpoint: str,
    *,
    out_dir: str | None = None,
    stride: int = 8,
    clip_len: int | None = None,
    batch_size: int = 8,
) -> dict:
    """Predict the pace of every segment; returns {"csv", "png", "segments", "paces", "rows"}."""
    model = load_model(checkpoint, with_head=True)
    spec = ClipSpec.from_config(model.config, clip_len=clip_len)
    paces = model.paces
    assert paces is not None and model.pace_head is not None
    reader = VideoReader(video, height=spec.height, width=spec.width)
    fps = reader.fps or 25.0
    starts = segment_starts(reader.num_frames, spec.clip_len, stride)
    values = torch.tensor([float(p) for p in paces])
    probs = []
    for lo in range(0, len(starts), batch_size):
        chunk = starts[lo:lo + batch_size]
        clips = [load_pace_clips(reader, [1], spec.clip_len, int(s)) for s in chunk]
        frames = torch.cat([c[0] for c in clips])
        imap = torch.cat([c[1] for c in clips])
        x = center_clips(frames, imap, spec)
        probs.append(torch.softmax(model.pace_head(model.backbone(x)).float(), dim=1))
    p = torch.cat(probs)
    pred = values[p.argmax(1)]
    expected = (p * values).sum(1)

    rows = []
    for i, s in enumerate(starts.tolist()):
        end = min(s + spec.clip_len, reader.num_frames)
        rows.append({"segment": i, "start_frame": s, "end_frame": end - 1,
                     "start_s": round(s / fps, 3), "end_s": round(end / fps, 3),
                     "pred_pace": format_pace(paces[int(p[i].argmax())]),
                     "expected_pace": round(float(expected[i]), 4),
                     **{f"p_{format_pace(q)}": round(float(p[i, j]), 4) for j, q in enumerate(paces)}})
    out = eval_dir(checkpoint, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(video).stem
    csv_path = out / f"speed_{stem}.csv"
    with csv_path.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    centers = (starts + spec.clip_len / 2) / fps
    png = line_plot(centers, {"predicted pace": pred.numpy(), "expected pace": expected.numpy()},
                    out / f"speed_{stem}.png", xlabel="time (s)", ylabel="pace",
                    ylim=(float(values.min()) - 0.25, float(values.max()) + 0.25),
                    title=f"{Path(video).name}: predicted playback pace per {spec.clip_len}-frame segment")
    print(f"wrote {csv_path} and {png} ({len(rows)} segments)")
    return {"csv": str(csv_path), "png": str(png), "segments": len(rows),
            "paces": [format_pace(q) for q in paces], "rows": rows}

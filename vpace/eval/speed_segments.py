"""``vpace speed``: the pretext model's own application, and its held-out accuracy.

``vpace speed VIDEO --checkpoint CKPT`` finds sped-up parts: slide a window of ``clip_len`` consecutive
frames (pace 1 as stored in the file) over the video and let the pace head classify each segment. A segment
predicted at pace > 1 plays faster than the motion the model learned as natural (a time-lapse / fast-forward
part); with slow paces in the pace set, < 1 flags slow motion. Writes a CSV (one row per segment, class
probabilities included) and a PNG plot over time.

``vpace speed --checkpoint CKPT [--split test]`` measures pace prediction on whole videos the model did not
train on (`pace_accuracy`): every video of the split at every pace, clips evenly spaced over the starts whose
clip fits, so no clip wraps and the cut at the end of a video cannot give the pace away.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpace.data import BrokenVideoError, VideoReader, load_index, open_video
from vpace.data.dataset import eval_starts, pack_clips
from vpace.data.pace import clip_span, format_pace, sample_indices
from vpace.errors import UserError
from vpace.eval.features import ClipSpec, center_clips, load_pace_clips
from vpace.eval.loading import eval_dir, load_model
from vpace.eval.plots import line_plot
from vpace.eval.results import markdown_table, pct, write_result

HELDOUT = "pace_heldout"  # <out>/pace_heldout.{json,md}: read by `vpace report` and the demo summary


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


def heldout_clips(num_frames: int, clip_len: int, paces: Sequence[Fraction], num_clips: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(indices [C, T], labels [C])``: per pace ``num_clips`` clips with starts evenly spaced over
    ``[0, num_frames - span]``, so every clip ends inside the video; a pace whose span is longer than the
    video gives none (its clips could only wrap)."""
    clips, labels = [], []
    for k, p in enumerate(paces):
        span = clip_span(clip_len, p)
        if span > num_frames:
            continue
        for s in eval_starts(num_frames, num_clips, span):
            clips.append(sample_indices(num_frames, clip_len, p, int(s)))
            labels.append(k)
    return (np.stack(clips) if clips else np.zeros((0, clip_len), np.int64)), np.array(labels, dtype=np.int64)


@torch.no_grad()
def pace_accuracy(
    checkpoint: str,
    *,
    data: str | None = None,
    split: str = "test",
    split_id: int = 1,
    num_clips: int = 5,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Held-out pace prediction per pace on clips that do not wrap (`heldout_clips`), center crop.

    ``data`` defaults to the run's data index. Writes ``<out>/pace_heldout.{json,md}`` and returns the JSON:
    rows per pace (clips, accuracy, videos too short for that pace), ``acc`` over all clips, ``mean_acc``
    over paces, ``chance``; unreadable videos are skipped and listed."""
    model = load_model(checkpoint, with_head=True)
    paces, head = model.paces, model.pace_head
    assert paces is not None and head is not None
    spec = ClipSpec.from_config(model.config, num_clips=num_clips)
    data = data or (model.config.data.index if model.config else None)
    if data is None:
        raise UserError(f"{checkpoint}: no data index in the checkpoint's config; pass data=...")
    index = load_index(data, split_id=split_id).split(split)
    net = model.backbone.eval()
    correct, total, too_short = np.zeros(len(paces)), np.zeros(len(paces)), np.zeros(len(paces), np.int64)
    skipped: list[dict[str, str]] = []
    for entry in index.entries:
        try:
            with open_video(entry.path, height=spec.height, width=spec.width) as reader:
                n = reader.num_frames
                clips, labels = heldout_clips(n, spec.clip_len, paces, num_clips)
                frames, union_map = reader.get_frames(clips.reshape(-1)) if len(clips) else (None, None)
        except BrokenVideoError as e:
            skipped.append({"path": e.path, "reason": e.reason})
            continue
        too_short += np.array([clip_span(spec.clip_len, p) > n for p in paces])
        if frames is None:
            continue
        clip_frames, index_map = pack_clips(frames, union_map.reshape(clips.shape))
        x = center_clips(torch.from_numpy(clip_frames), torch.from_numpy(index_map), spec)
        pred = head(net(x)).argmax(1).numpy()
        np.add.at(total, labels, 1)
        np.add.at(correct, labels, pred == labels)
    rows = [{"pace": format_pace(p), "clips": int(total[k]),
             "acc": float(correct[k] / total[k]) if total[k] else None, "videos_too_short": int(too_short[k])}
            for k, p in enumerate(paces)]
    accs = [r["acc"] for r in rows if r["acc"] is not None]
    res = {"protocol": f"{split} split, {num_clips} clips per video and pace evenly spaced over the starts "
                       f"whose clip fits (no clip wraps), {spec.clip_len} frames, center crop {spec.crop}",
           "split": split, "num_videos": len(index) - len(skipped), "chance": 1 / len(paces), "rows": rows,
           "acc": float(correct.sum() / total.sum()) if total.sum() else None,
           "mean_acc": float(np.mean(accs)) if accs else None, "skipped": skipped}
    write_result(eval_dir(checkpoint, out_dir), HELDOUT,
                 f"Held-out pace prediction ({split} split, clips that do not wrap)", res, heldout_table(res),
                 skipped)
    return res


def heldout_table(res: dict[str, Any]) -> str:
    """The markdown table of a `pace_accuracy` result (also in `vpace report`)."""
    rows = [[r["pace"], r["clips"], pct(r["acc"]), r["videos_too_short"]] for r in res["rows"]]
    rows.append(["all", sum(r["clips"] for r in res["rows"]), pct(res.get("acc")), ""])
    return markdown_table(["pace", "clips", "accuracy %", "videos too short (left out)"], rows)

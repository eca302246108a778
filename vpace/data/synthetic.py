"""The embedded synthetic action set: real mp4 files in a UCF101-style layout (no download exists here).

Classes differ by motion only (see ``synthetic_motions``): appearance is random per video, every class is the
same class under a horizontal flip, and each class has one natural speed jittered by at most ``SPEED_JITTER``.

Layout written by ``make_synthetic(out)`` (the convention the index loader follows)::

    out/classInd.txt          "1 Rising" ...                     1-based class indices, one per line
    out/trainlist01.txt       "Rising/v_Rising_g05_c01.mp4 1"    path relative to out/videos + 1-based label
    out/testlist01.txt        "Rising/v_Rising_g01_c01.mp4"      path relative to out/videos
    out/videos/<Class>/v_<Class>_gXX_cYY.mp4
    out/synthetic.json        arguments, counts, classes, natural speeds, one record per video (written last)

i.e. split files sit in ``out/`` and their paths resolve against ``out/videos`` (the videos root is the split
files' folder + ``videos``). Like UCF101, the split is by group: clips of a group share a background (a
"scene"), groups 1..k of each class are test, the rest train: no test video shares a scene with a train one.
Frames are H x W with W rounded up to even (yuv420p needs even sizes; 171 -> 172), h264 (libx264, no B-frames,
a key frame every second) or mpeg4 where libx264 is missing. Output is deterministic given the arguments,
whatever the number of worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from vpace.bars import progress_bar
from vpace.data.synthetic_motions import MOTIONS, RenderSpec, render_video
from vpace.errors import UserError

__all__ = ["CLASSES", "SPEED_JITTER", "SyntheticInfo", "make_synthetic"]

CLASSES: tuple[str, ...] = tuple(m.name for m in MOTIONS)
SPEED_JITTER = 0.10  # speed_factor ~ U[1 - j, 1 + j]: pace 3 vs 4 differ by 33%, so keep this well below
CLIPS_PER_GROUP = 4
_VERSION = 1
_MARKER = "synthetic.json"


@dataclass(frozen=True)
class SyntheticInfo:
    out_dir: Path
    videos_dir: Path
    classes: tuple[str, ...]
    num_train: int
    num_test: int
    codec: str
    frame_size: tuple[int, int]  # (height, width) as stored
    natural_speeds: dict[str, dict] = field(repr=False)
    seconds: float  # generation time (of the run that wrote the files)
    reused: bool  # True when an identical set already existed


@dataclass(frozen=True)
class _Job:
    spec: RenderSpec
    path: str
    fps: int
    codec: str


def _pick_codec() -> str:
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - any failure means "not available in this FFmpeg build"
        return "mpeg4"


def _encode(frames: np.ndarray, path: Path, fps: int, codec: str) -> None:
    """Write frames [T, H, W, 3] to ``path`` atomically (a crash never leaves a truncated mp4 behind)."""
    tmp = path.with_name(path.name + ".part")
    opts = {"crf": "18", "preset": "veryfast", "bf": "0"} if codec == "libx264" else {"bf": "0"}
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options=opts)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = fps  # a key frame a second: cheap random access for the reader
        stream.codec_context.thread_count = 1  # one process per core already; also keeps bytes deterministic
        if codec != "libx264":
            stream.codec_context.bit_rate = 2_000_000
        for frame in frames:
            # explicit rgb->yuv: the implicit one inside encode() gave run-to-run different bytes (PyAV 18)
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(yuv))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _run_job(job: _Job) -> str:
    _encode(render_video(job.spec), Path(job.path), job.fps, job.codec)
    return job.path


def _check_args(num_videos: int, seed: int, height: int, width: int, fps: int, min_s: float, max_s: float,
                test_fraction: float) -> None:
    min_videos = 2 * len(CLASSES)
    if not isinstance(num_videos, (int, np.integer)) or num_videos < min_videos:
        raise UserError(f"num_videos={num_videos!r}: need an int >= {min_videos} (a train and a test video "
                        f"for each of the {len(CLASSES)} classes)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed={seed!r}: must be a non-negative int")
    if height < 16 or width < 16:
        raise UserError(f"frame size {height}x{width}: height and width must be >= 16")
    if fps < 1:
        raise UserError(f"fps={fps}: must be >= 1")
    if not 0 < min_s <= max_s:
        raise UserError(f"min_seconds={min_s}, max_seconds={max_s}: need 0 < min_seconds <= max_seconds")
    if round(min_s * fps) < 2:
        raise UserError(f"min_seconds={min_s} at fps={fps} gives fewer than 2 frames")
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction={test_fraction}: must be in (0, 1)")


def _plan(num_videos: int, seed: int, height: int, width: int, fps: int, min_s: float, max_s: float,
          test_fraction: float, videos_dir: Path, codec: str) -> list[tuple[_Job, dict]]:
    """Class/group/clip of every video, its split, length and speed factor (drawn here, in a fixed order)."""
    rng = np.random.default_rng([seed, 0])
    jobs = []
    for label, name in enumerate(CLASSES):
        n = num_videos // len(CLASSES) + (label < num_videos % len(CLASSES))
        groups = min(n, max(3, math.ceil(n / CLIPS_PER_GROUP)))
        sizes = [n // groups + (g < n % groups) for g in range(groups)]
        # the first n_test groups are test (UCF101 split 1 style): as close to test_fraction as groups allow
        n_test = min(range(1, groups), key=lambda k: abs(sum(sizes[:k]) - test_fraction * n))
        for g in range(groups):
            for c in range(sizes[g]):
                frames = int(round(rng.uniform(min_s, max_s) * fps))
                factor = float(rng.uniform(1 - SPEED_JITTER, 1 + SPEED_JITTER))
                rel = f"{name}/v_{name}_g{g + 1:02d}_c{c + 1:02d}.mp4"
                spec = RenderSpec(label, frames, height, width, factor, (seed, 1, label, g, c),
                                  (seed, 2, label, g))
                split = "test" if g < n_test else "train"
                record = {"path": rel, "label": label, "class": name, "split": split, "group": g + 1,
                          "clip": c + 1, "frames": frames, "speed_factor": round(factor, 6)}
                jobs.append((_Job(spec, str(videos_dir / rel), fps, codec), record))
    return jobs


def _natural_speeds() -> dict[str, dict]:
    return {m.name: {"speed": m.speed, "unit": m.unit, "motion": m.doc} for m in MOTIONS}


def _info(out: Path, meta: dict, reused: bool) -> SyntheticInfo:
    counts = meta["counts"]
    return SyntheticInfo(out, out / "videos", tuple(meta["classes"]), counts["train"], counts["test"],
                         meta["codec"], tuple(meta["frame_size"]), meta["natural_speeds"], meta["seconds"],
                         reused)


def _existing(out: Path, args: dict) -> dict | None:
    """The metadata of an identical, complete set in ``out``, else None."""
    try:
        meta = json.loads((out / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != _VERSION or meta.get("args") != args:
        return None
    videos = out / "videos"
    if not all((videos / v["path"]).is_file() for v in meta.get("videos", [])):
        return None
    return meta


def _prepare_dir(out: Path, args: dict) -> bool:
    """Refuse a foreign non-empty folder; keep the finished videos of an interrupted run with the same
    arguments (returns True: resume), else clear our own stale set."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"synthetic output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / (_MARKER + ".partial")
    ours = (out / _MARKER).exists() or partial.exists()
    if not ours and any(out.iterdir()):
        raise FileExistsError(f"synthetic output {out} is not empty and has no {_MARKER}: use an empty one")
    try:
        if json.loads(partial.read_text()) == {"version": _VERSION, "args": args}:
            return True
    except (OSError, ValueError):
        pass
    for name in ("videos", _MARKER, partial.name, "classInd.txt", "trainlist01.txt", "testlist01.txt"):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    partial.write_text(json.dumps({"version": _VERSION, "args": args}))
    return False


def _write_lists(out: Path, records: list[dict]) -> None:
    (out / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES)))
    train = [f"{r['path']} {r['label'] + 1}\n" for r in records if r["split"] == "train"]
    test = [f"{r['path']}\n" for r in records if r["split"] == "test"]
    (out / "trainlist01.txt").write_text("".join(train))
    (out / "testlist01.txt").write_text("".join(test))


def make_synthetic(out_dir: str | Path, num_videos: int = 500, seed: int = 0, *, height: int = 128,
                   width: int = 171, fps: int = 25, min_seconds: float = 2.0, max_seconds: float = 6.0,
                   test_fraction: float = 0.3, progress: bool = True,
                   workers: int | None = None) -> SyntheticInfo:
    """Write the synthetic action set to ``out_dir`` (layout in the module docstring) and describe it.

    Idempotent: when ``out_dir/synthetic.json`` records the same arguments and every video exists, it returns
    at once (``reused=True``); an interrupted run with the same arguments resumes.
    ``workers`` processes render + encode (default: up to 2, one per core).
    """
    _check_args(num_videos, seed, height, width, fps, min_seconds, max_seconds, test_fraction)
    out = Path(out_dir).resolve()
    height, width = height + height % 2, width + width % 2  # yuv420p: even sizes only
    num_videos, seed = int(num_videos), int(seed)
    args = {"num_videos": num_videos, "seed": seed, "height": height, "width": width, "fps": fps,
            "min_seconds": min_seconds, "max_seconds": max_seconds, "test_fraction": test_fraction}
    meta = _existing(out, args)
    if meta is not None:
        return _info(out, meta, reused=True)

    t0 = time.perf_counter()
    resume = _prepare_dir(out, args)
    codec = _pick_codec()
    plan = _plan(num_videos, seed, height, width, fps, min_seconds, max_seconds, test_fraction,
                 out / "videos", codec)
    for name in CLASSES:
        (out / "videos" / name).mkdir(parents=True, exist_ok=True)
    jobs = [job for job, _ in plan if not (resume and Path(job.path).is_file())]
    workers = min(workers or min(2, os.cpu_count() or 1), max(len(jobs), 1))
    _run_all(jobs, workers, progress)

    records = [rec for _, rec in plan]
    _write_lists(out, records)
    n_train = sum(r["split"] == "train" for r in records)
    meta = {
        "format": "vpace-synthetic", "version": _VERSION, "args": args, "codec": codec,
        "frame_size": [height, width], "classes": list(CLASSES), "natural_speeds": _natural_speeds(),
        "speed_jitter": SPEED_JITTER,
        "counts": {"videos": len(records), "train": n_train, "test": len(records) - n_train,
                   "per_class": {c: sum(r["class"] == c for r in records) for c in CLASSES}},
        "seconds": round(time.perf_counter() - t0, 2),
        "videos": records,  # "label" is 0-based here (1-based in trainlist01.txt, as in UCF101)
    }
    (out / _MARKER).write_text(json.dumps(meta, indent=1))
    (out / (_MARKER + ".partial")).unlink()
    return _info(out, meta, reused=False)


def _run_all(jobs: list[_Job], workers: int, progress: bool) -> None:
    bar = progress_bar(total=len(jobs), desc="synthetic videos", unit="video", enabled=progress)
    try:
        if workers <= 1:
            for job in jobs:
                _run_job(job)
                bar.update()
            return
        # fork where there is one: spawn would re-run a caller's unguarded script (no `if __name__ == ...`);
        # the children only use numpy + PyAV, never locks a parent thread may hold
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            chunk = max(1, math.ceil(len(jobs) / (workers * 16)))
            for _ in pool.imap_unordered(_run_job, jobs, chunksize=chunk):
                bar.update()
    finally:
        bar.close()

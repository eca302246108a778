"""Data pipeline cost on video that decodes like camera footage (``benchmarks/videos.py``): raw video against
the copy ``vpace prepare`` makes of it, and the speed of ``prepare`` itself.

For each encoding of ``benchmarks.videos.ENCODINGS`` (x264 with its defaults, x264 with a keyframe every 12
frames, MPEG-4 part 2 ``.avi`` with one every 250) it writes ``VIDEOS`` UCF101-like videos (320x240, 25 fps,
7 s), prepares them in this process (``vpace.data.transcode.transcode_video`` at the default settings: short
side 128, a keyframe every 16 frames, x264 fastdecode), and measures in one process by CPU time:

* ``pace_clips`` ``<encoding>/raw`` and ``/prepared``: clips per CPU-second of ``PaceClipDataset`` (2 clips of
  16 frames, paces 1-4, decoded at 128x171; what a DataLoader worker does) + the q20/q80 rows;
* ``video_bytes`` ``<encoding>/raw`` and ``/prepared``: mean bytes per video on disk;
* ``prepare`` ``<encoding>``: videos (and frames) per CPU-second of making the copy;
* ``pace_clips`` / ``video_bytes`` ``mean/prepared_vs_raw``: the prepared-to-raw ratios, averaged over the
  encodings (the goals: >= 3x the clips, <= 0.5x the bytes).

On the x264-default raw videos also: ``decode_only`` (the reader alone), ``dataset_cached`` (the decoded-frame
cache) and ``naive_decode_all`` (decode every frame, then index), clips per CPU-second.

Step 5 of ``make gpu-check`` (``benchmarks/gpu_check.py: feed_rows``) measures the same pipeline through a
DataLoader with 1-16 workers, raw and prepared, on a GPU node's CPUs.

``python benchmarks/data.py decord DIR`` is a stand-alone random-access probe (decord + numpy + av only) used
to compare decord and decord2 in separate venvs; see docs/decord.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

VIDEOS, FRAMES, HEIGHT, WIDTH, FPS = 6, 175, 240, 320, 25  # UCF101-like: 320x240, 7 s
CLIP_LEN, CLIPS_PER_VIDEO, PACES, ITEMS, BATCH = 16, 2, "1,2,3,4", 24, 4
DECODE = (128, 171)
SHAPE = (f"{VIDEOS}x{FRAMES}f {WIDTH}x{HEIGHT} -> {CLIPS_PER_VIDEO}x{CLIP_LEN}x{DECODE[0]}x{DECODE[1]} "
         f"paces {PACES}")


def _dataset(paths: list[Path], **kw):
    from vpace.data import PaceClipDataset, VideoEntry, VideoIndex

    index = VideoIndex([VideoEntry(str(p), 0, "all") for p in paths], ["bench"], str(paths[0].parent))
    return PaceClipDataset(index, PACES, clip_len=CLIP_LEN, clips_per_video=CLIPS_PER_VIDEO, height=DECODE[0],
                           width=DECODE[1], epoch_size=ITEMS, seed=0, **kw)


def _clip_rate(fn, row: dict, items: int = ITEMS) -> tuple[list[dict], float]:
    """Rows of clips per CPU-second of ``fn`` (which makes ``items`` dataset items): median, q20, q80."""
    from benchmarks.common import Timing, bench, timing_rows

    t = bench(fn, reps=3)
    clips = items * CLIPS_PER_VIDEO
    rate = Timing(clips / t.median, clips / t.q80, clips / t.q20, t.n)  # a slower call is a lower rate
    return timing_rows(row, "clips/cpu_s", rate), rate.median


def _read_items(ds) -> None:
    from vpace.data import collate_clips

    for lo in range(0, len(ds), BATCH):
        collate_clips([ds[i] for i in range(lo, min(lo + BATCH, len(ds)))])


def _encoding_rows(folder: Path, encoding: str) -> tuple[list[dict], float, float, list[Path]]:
    """Rows of one encoding; also the prepared/raw ratios of clips per CPU-second and of bytes."""
    from benchmarks.videos import write_camera_set
    from vpace.data.decode_cost import keyframe_interval
    from vpace.data.transcode import TranscodeSettings, transcode_video

    raw, _ = write_camera_set(folder / "raw", VIDEOS, encoding, FRAMES, HEIGHT, WIDTH)
    settings = TranscodeSettings()
    outcomes = [transcode_video(str(p), str(folder / "prepared" / encoding / f"{p.stem}.mp4"), settings)
                for p in raw]
    bad = [o for o in outcomes if o.reason]
    if bad:
        raise RuntimeError(f"bench video could not be prepared: {bad[0].source}: {bad[0].reason}")
    prepared = [Path(o.output) for o in outcomes]
    cpu = sum(o.cpu_s for o in outcomes)
    shape = f"{SHAPE} gop {keyframe_interval(raw[0])}"
    rows = [dict(kernel="prepare", provider=encoding, shape=shape, metric=metric, value=f"{n / cpu:.3g}")
            for metric, n in (("videos/cpu_s", VIDEOS), ("frames/cpu_s", VIDEOS * FRAMES))]
    rates, sizes = {}, {}
    for kind, paths in (("raw", raw), ("prepared", prepared)):
        ds = _dataset(paths)
        more, rates[kind] = _clip_rate(lambda ds=ds: _read_items(ds),
                                       dict(kernel="pace_clips", provider=f"{encoding}/{kind}", shape=shape))
        sizes[kind] = sum(p.stat().st_size for p in paths) / len(paths)
        rows += more + [dict(kernel="video_bytes", provider=f"{encoding}/{kind}", shape=shape,
                             metric="bytes/video", value=f"{sizes[kind]:.0f}")]
    print(f"  {encoding:13s} raw {rates['raw']:6.1f} -> prepared {rates['prepared']:6.1f} clips/CPU-s "
          f"({rates['prepared'] / rates['raw']:.2f}x), {sizes['raw'] / 1e3:.0f} -> "
          f"{sizes['prepared'] / 1e3:.0f} kB/video, prepare {VIDEOS / cpu:.2f} videos/CPU-s", flush=True)
    return rows, rates["prepared"] / rates["raw"], sizes["prepared"] / sizes["raw"], raw


def _pipeline_rows(paths: list[Path], cache: Path) -> list[dict]:
    """Other ways to read the same raw videos: the reader alone, the frame cache, decoding every frame."""
    from vpace.data import VideoReader
    from vpace.data.reader import import_decord

    decord = import_decord()
    ds, cached = _dataset(paths), _dataset(paths, cache_dir=cache)

    def decode_only() -> None:
        for i in range(ITEMS):
            with VideoReader(ds.index[i % len(paths)].path, height=DECODE[0], width=DECODE[1]) as vr:
                vr.get_frames(ds.sample(i, vr.num_frames)[1].reshape(-1))

    def naive() -> None:
        for i in range(ITEMS):
            vr = decord.VideoReader(ds.index[i % len(paths)].path, width=DECODE[1], height=DECODE[0])
            every = vr.get_batch(list(range(len(vr)))).asnumpy()
            np.ascontiguousarray(every[ds.sample(i, len(vr))[1]])

    rows = []
    for provider, fn in (("decode_only", decode_only), ("dataset_cached", lambda: _read_items(cached)),
                         ("naive_decode_all", naive)):
        more, rate = _clip_rate(fn, dict(kernel="pace_clips", provider=f"x264_default/{provider}",
                                         shape=SHAPE))
        rows += more
        print(f"  x264_default/{provider:16s} {rate:6.1f} clips/CPU-s", flush=True)
    return rows


def run(out_dir: Path) -> None:
    import tempfile

    from benchmarks.common import append_rows
    from benchmarks.videos import ENCODINGS

    rows, speedups, shrink = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for encoding in ENCODINGS:
            more, speedup, ratio, raw = _encoding_rows(Path(tmp), encoding)
            rows += more
            speedups.append(speedup)
            shrink.append(ratio)
            if encoding == "x264_default":
                rows += _pipeline_rows(raw, Path(tmp) / "cache")
    shape = f"{SHAPE}; mean over {', '.join(ENCODINGS)}"
    rows += [dict(kernel="pace_clips", provider="mean/prepared_vs_raw", shape=shape, metric="x",
                  value=f"{np.mean(speedups):.3g}"),
             dict(kernel="video_bytes", provider="mean/prepared_vs_raw", shape=shape, metric="x",
                  value=f"{np.mean(shrink):.3g}")]
    print(f"  prepared vs raw, mean: {np.mean(speedups):.2f}x the clips per CPU-second (goal >= 3x), "
          f"{np.mean(shrink):.2f}x the bytes (goal <= 0.5x)", flush=True)
    append_rows(Path(out_dir) / "data.csv", rows)


def decord_random_access(paths: list[Path], batches: int = 12, frames: int = 24, seed: int = 0) -> dict:
    """Frames/s of decord ``get_batch`` on random sorted frame sets (reader opened per batch, 128x171).

    Best of 3 passes, by wall time and by process CPU time.
    """
    from importlib.metadata import PackageNotFoundError, version

    import decord  # stand-alone probe (no vpace); `run` imports it through vpace first

    rng = np.random.default_rng(seed)
    plans = [
        (paths[i % len(paths)], np.sort(rng.choice(FRAMES, size=frames, replace=False)).tolist())
        for i in range(batches * len(paths))
    ]
    times, cpu = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        for path, idx in plans:
            vr = decord.VideoReader(str(path), width=171, height=128, num_threads=1)
            vr.get_batch(idx).asnumpy()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # CPU time: less sensitive to a busy machine than wall time
    pkg = "unknown"
    for name in ("decord2", "decord"):
        try:
            pkg = f"{name} {version(name)}"
            break
        except PackageNotFoundError:
            continue
    n = len(plans) * frames
    return {
        "package": pkg,
        "frames_per_s": round(n / min(times), 1),
        "frames_per_cpu_s": round(n / min(cpu), 1),
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "decord":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the checkout's root
        from benchmarks.videos import write_camera_set

        folder = Path(sys.argv[2])
        vids = sorted((folder / "x264_default").glob("*.mp4")) or write_camera_set(folder, VIDEOS)[0]
        print(json.dumps(decord_random_access(vids)))
    else:
        sys.exit("usage: python benchmarks/data.py decord DIR  (the CSV rows come from benchmarks/run.py)")

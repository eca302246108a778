"""Data pipeline throughput (clips/s), side by side on small synthetic videos written here.

Rows (kernel ``pace_clips``): ``decode_only`` (decord ``get_batch`` of just the frames two pace clips
need), ``dataset`` (PaceClipDataset item: decode + sample + per-clip unique frames), ``dataset+augment`` (that
plus the eager torchvision reference augmentation, ``kernels.pace_jitter.pace_jitter_reference``),
``dataset_cached`` (frames from the decoded-frame cache) and ``naive_decode_all`` (decode every frame of the
video, then index).

``feed_rows`` (step 5 of ``make gpu-check``): can a GPU node's CPUs feed the training step? The pace-clip
pipeline's clips/s with 1, 4, 8 and 16 DataLoader workers on UCF101-like videos (320x240, 25 fps, 7 s) that it
writes itself (x264 through PyAV, else MPEG-4 through OpenCV: the GPU machine has no PyAV).

``python benchmarks/data.py decord DIR`` is a stand-alone random-access probe (decord + numpy + av only) used
to compare decord and decord2 in separate venvs; see docs/decord.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

VIDEOS, FRAMES, HEIGHT, WIDTH, FPS = 8, 100, 240, 320, 25  # UCF101-like 320x240, 4 s
CLIP_LEN, CLIPS_PER_VIDEO, PACES, ITEMS, BATCH = 16, 2, "1,2,3,4", 16, 4
AUGMENT_ITEMS = 4  # the eager per-frame reference augmentation runs at ~1 clip/s on 2 cores


def _texture(rng, height: int, width: int) -> np.ndarray:
    """A blocky random texture twice as wide as the frame (it drifts): enough detail that decoding costs."""
    tex = np.kron(rng.integers(0, 255, (height // 8, 2 * width // 8, 3), dtype=np.uint8), np.ones((8, 8, 1)))
    return tex.astype(np.uint8)


def write_bench_videos(folder: Path, videos: int = VIDEOS, frames: int = FRAMES, seed: int = 0,
                       height: int = HEIGHT, width: int = WIDTH) -> tuple[list[Path], str]:
    """mp4s of a drifting texture and the codec used: x264 (GOP 12, B-frames) through PyAV, else MPEG-4
    part 2 through OpenCV (machines without PyAV)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    try:
        import av  # noqa: F401
        writer, codec = _write_av, "h264 (PyAV)"
    except ImportError:
        writer, codec = _write_cv2, "mpeg4 (OpenCV)"
    for v in range(videos):
        path = folder / "bench" / f"v{v:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        tex = _texture(rng, height, width)
        writer(path, (np.ascontiguousarray(np.roll(tex, -3 * t, axis=1)[:, :width]) for t in range(frames)),
               height, width)
        paths.append(path)
    return paths, codec


def _write_av(path: Path, images, height: int, width: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = 12
        for img in images:
            out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode())


def _write_cv2(path: Path, images, height: int, width: int) -> None:
    import cv2

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    if not out.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write MPEG-4 video here (and PyAV is not installed)")
    try:
        for img in images:
            out.write(img[..., ::-1].copy())  # OpenCV takes BGR
    finally:
        out.release()


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


def run(out_dir: Path) -> None:
    import tempfile

    import torch

    from benchmarks.common import append_rows, bench
    from vpace.augment import sample_params
    from vpace.data import PaceClipDataset, VideoEntry, VideoIndex, VideoReader, collate_clips
    from vpace.data.reader import import_decord
    from vpace_kernels.pace_jitter import pace_jitter_reference

    decord = import_decord()  # vpace's import (see NOT_FOR_DECODING): later benchmarks share this process
    with tempfile.TemporaryDirectory() as tmp:
        paths, _ = write_bench_videos(Path(tmp))
        index = VideoIndex([VideoEntry(str(p), 0, "all") for p in paths], ["bench"], tmp)
        kw = dict(clip_len=CLIP_LEN, clips_per_video=CLIPS_PER_VIDEO, epoch_size=ITEMS, seed=0)
        ds = PaceClipDataset(index, PACES, **kw)
        cached = PaceClipDataset(index, PACES, cache_dir=Path(tmp) / "cache", **kw)
        gen = torch.Generator().manual_seed(0)

        def decode_only():
            for i in range(ITEMS):
                with VideoReader(index[i % VIDEOS].path) as vr:
                    vr.get_frames(ds.sample(i, vr.num_frames)[1].reshape(-1))

        def naive():
            for i in range(ITEMS):
                vr = decord.VideoReader(index[i % VIDEOS].path, width=171, height=128, num_threads=1)
                every = vr.get_batch(list(range(len(vr)))).asnumpy()
                np.ascontiguousarray(every[ds.sample(i, len(vr))[1]])

        def dataset(d=ds, augment=False, items=ITEMS):
            for lo in range(0, items, BATCH):
                batch = collate_clips([d[i] for i in range(lo, lo + BATCH)])
                if augment:
                    fr, im = batch["frames"].flatten(0, 1), batch["index_map"].flatten(0, 1)
                    params = sample_params(fr.shape[0], im.shape[1], fr.shape[2], fr.shape[3], crop=112,
                                           generator=gen)
                    pace_jitter_reference(fr, im, params, (0.43, 0.39, 0.38), (0.23, 0.22, 0.22))

        cases = {
            "decode_only": decode_only,
            "dataset": dataset,
            "dataset+augment": lambda: dataset(augment=True, items=AUGMENT_ITEMS),  # eager: slow
            "dataset_cached": lambda: dataset(cached),
            "naive_decode_all": naive,
        }
        shape = f"{VIDEOS}x{FRAMES}f {WIDTH}x{HEIGHT} -> {CLIPS_PER_VIDEO}x{CLIP_LEN}x128x171 paces {PACES}"
        rows = []
        for provider, fn in cases.items():
            items = AUGMENT_ITEMS if provider == "dataset+augment" else ITEMS
            t = bench(fn, reps=3 if items == ITEMS else 1)  # process CPU time: decoding runs in-process
            rows.append(dict(kernel="pace_clips", provider=provider, shape=shape, metric="clips/s",
                             value=round(items * CLIPS_PER_VIDEO / t.median, 2)))
            print(f"  {provider:18s} {rows[-1]['value']:8.2f} clips/s", flush=True)
    append_rows(Path(out_dir) / "data.csv", rows)


def feed_rows(workers: tuple[int, ...] = (1, 4, 8, 16), small: bool = False) -> list[dict]:
    """Step 5 of ``make gpu-check``: clips/s the pace-clip pipeline delivers through a DataLoader with each
    number of ``workers`` (the paper's recipe: batches of 30 videos x 2 clips of 16 frames at 128x171).

    Wall-clock time (the work happens in the worker processes) of one round - one batch from every worker -
    after a first round that pays for their start. ``small``: 2 short videos, batches of 2 (the dry run).
    """
    import tempfile

    from torch.utils.data import DataLoader

    from benchmarks.common import bench
    from vpace.data import PaceClipDataset, VideoEntry, VideoIndex, collate_clips

    batch, frames = (2, 40) if small else (30, 7 * FPS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths, codec = write_bench_videos(Path(tmp), videos=2 if small else VIDEOS, frames=frames)
        index = VideoIndex([VideoEntry(str(p), 0, "all") for p in paths], ["bench"], tmp)
        ds = PaceClipDataset(index, PACES, clip_len=CLIP_LEN, clips_per_video=CLIPS_PER_VIDEO, seed=0,
                             epoch_size=100_000)
        shape = (f"{len(paths)} videos {WIDTH}x{HEIGHT} {frames / FPS:.0f}s {codec} -> batch {batch}x"
                 f"{CLIPS_PER_VIDEO}x{CLIP_LEN}x128x171 paces {PACES}")
        for w in workers:
            loader = DataLoader(ds, batch_size=batch, num_workers=w, collate_fn=collate_clips)
            it = iter(loader)
            t = bench(lambda w=w, it=it: [next(it) for _ in range(w)], reps=1 if small else 3, clock="wall")
            del it, loader  # stops the workers
            rows.append(dict(kernel="pace_clips", provider=f"dataloader_{w}_workers", shape=shape,
                             metric="clips/s", value=f"{w * batch * CLIPS_PER_VIDEO / t.median:.1f}"))
            print(f"  {w:2d} workers: {rows[-1]['value']} clips/s", flush=True)
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "decord":
        folder = Path(sys.argv[2])
        vids = sorted((folder / "bench").glob("*.mp4")) or write_bench_videos(folder)[0]
        print(json.dumps(decord_random_access(vids)))
    else:
        sys.exit("usage: python benchmarks/data.py decord DIR  (the CSV rows come from benchmarks/run.py)")

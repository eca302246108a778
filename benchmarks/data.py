"""Data pipeline throughput (clips/s), side by side on small synthetic videos written here.

Rows (kernel ``pace_clips``): ``decode_only`` (decord ``get_batch`` of just the frames two pace clips
need), ``dataset`` (PaceClipDataset item: decode + sample + per-clip unique frames), ``dataset+augment`` (that
plus the eager torchvision reference augmentation, ``kernels.pace_jitter.pace_jitter_reference``),
``dataset_cached`` (frames from the decoded-frame cache) and ``naive_decode_all`` (decode every frame of the
video, then index).

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


def write_bench_videos(folder: Path, videos: int = VIDEOS, frames: int = FRAMES, seed: int = 0) -> list[Path]:
    """x264 mp4s of a drifting blocky texture (GOP 12, B-frames): enough detail that decoding costs."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for v in range(videos):
        path = folder / "bench" / f"v{v:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        tex = np.kron(
            rng.integers(0, 255, (HEIGHT // 8, 2 * WIDTH // 8, 3), dtype=np.uint8), np.ones((8, 8, 1))
        )
        tex = tex.astype(np.uint8)
        with av.open(str(path), "w") as out:
            s = out.add_stream("libx264", rate=FPS)
            s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            s.codec_context.gop_size = 12
            for t in range(frames):
                img = np.ascontiguousarray(np.roll(tex, -3 * t, axis=1)[:, :WIDTH])
                out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(s.encode())
        paths.append(path)
    return paths


def decord_random_access(paths: list[Path], batches: int = 12, frames: int = 24, seed: int = 0) -> dict:
    """Frames/s of decord ``get_batch`` on random sorted frame sets (reader opened per batch, 128x171).

    Best of 3 passes, by wall time and by process CPU time.
    """
    from importlib.metadata import PackageNotFoundError, version

    import decord

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


def _params(b: int, t: int, h: int, w: int, crop: int, gen):
    """Augmentation draw: vpace.augment.sample_params when it exists, else an equivalent local draw."""
    import torch

    from vpace.config import AugmentConfig
    from vpace_kernels.pace_jitter import JitterParams

    try:
        from vpace import augment

        return augment.sample_params(b, t, h, w, AugmentConfig(crop=crop), gen), "vpace.augment"
    except ImportError:
        pass
    f = torch.empty(b, t, 4)
    f[..., :3].uniform_(0.2, 1.8, generator=gen)
    f[..., 3].uniform_(-0.2, 0.2, generator=gen)
    top = torch.randint(0, h - crop + 1, (b,), generator=gen)
    left = torch.randint(0, w - crop + 1, (b,), generator=gen)
    params = JitterParams(
        crop_yx=torch.stack([top, left], 1).int(),
        crop_hw=(crop, crop),
        flip=torch.rand(b, generator=gen) < 0.5,
        apply=torch.rand(b, t, generator=gen) < 0.8,
        factors=f,
        order=torch.argsort(torch.rand(b, t, 4, generator=gen), -1).int(),
    )
    return params, "local draw (vpace.augment missing)"


def run(out_dir: Path) -> None:
    import tempfile

    import decord
    import torch

    from benchmarks.common import append_rows, time_it
    from vpace.data import PaceClipDataset, VideoEntry, VideoIndex, VideoReader, collate_clips
    from vpace_kernels.pace_jitter import pace_jitter_reference

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_bench_videos(Path(tmp))
        index = VideoIndex([VideoEntry(str(p), 0, "all") for p in paths], ["bench"], tmp)
        kw = dict(clip_len=CLIP_LEN, clips_per_video=CLIPS_PER_VIDEO, epoch_size=ITEMS, seed=0)
        ds = PaceClipDataset(index, PACES, **kw)
        cached = PaceClipDataset(index, PACES, cache_dir=Path(tmp) / "cache", **kw)
        gen = torch.Generator().manual_seed(0)
        note = {}

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
                    params, note["params"] = _params(
                        fr.shape[0], im.shape[1], fr.shape[2], fr.shape[3], 112, gen
                    )
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
            sec = time_it(fn, warmup=1, repeat=3 if items == ITEMS else 1)
            rows.append(
                dict(
                    kernel="pace_clips",
                    provider=provider,
                    shape=shape,
                    metric="clips/s",
                    value=round(items * CLIPS_PER_VIDEO / sec, 2),
                )
            )
            print(f"  {provider:18s} {rows[-1]['value']:8.2f} clips/s", flush=True)
        if "params" in note:
            print(f"  augment params: {note['params']}")
    append_rows(Path(out_dir) / "data.csv", rows)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "decord":
        folder = Path(sys.argv[2])
        vids = sorted((folder / "bench").glob("*.mp4")) or write_bench_videos(folder)
        print(json.dumps(decord_random_access(vids)))
    else:
        sys.exit("usage: python benchmarks/data.py decord DIR  (the CSV rows come from benchmarks/run.py)")

"""Shared fixtures: small REAL video files (PyAV) whose frames carry their own index, and broken files.

Frame ``i`` is a 5x4 grid of flat blocks: 10 blocks hold the bits of ``i`` (dark=0, light=1) and 10 hold the
complemented bits, so the code survives lossy compression and resizing, and a black/garbage frame is detected
as invalid instead of decoding to index 0. ``decode_index(frame)`` reads it back from any decoded size.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest

from vpace.config import Config, load_config

GRID_ROWS, GRID_COLS = 4, 5
CODE_BITS = GRID_ROWS * GRID_COLS // 2  # 10 bits + 10 complement bits -> up to 1024 frames
DARK, LIGHT = 40, 215


def _cells(h: int, w: int):
    for cell in range(GRID_ROWS * GRID_COLS):
        r, c = divmod(cell, GRID_COLS)
        rows = slice(r * h // GRID_ROWS, (r + 1) * h // GRID_ROWS)
        yield cell, rows, slice(c * w // GRID_COLS, (c + 1) * w // GRID_COLS)


def encode_frame(i: int, height: int = 96, width: int = 160) -> np.ndarray:
    """RGB uint8 frame carrying index ``i`` (bits then complement bits, one flat block each)."""
    if not 0 <= i < 2**CODE_BITS:
        raise ValueError(f"frame index {i} does not fit in {CODE_BITS} bits")
    bits = [(i >> b) & 1 for b in range(CODE_BITS)]
    bits += [1 - b for b in bits]
    img = np.empty((height, width, 3), np.uint8)
    for cell, rs, cs in _cells(height, width):
        img[rs, cs] = LIGHT if bits[cell] else DARK
    return img


def decode_index(frame: np.ndarray) -> int:
    """Index carried by a decoded frame [H, W, 3]; ValueError if the code is not valid (garbage frame)."""
    h, w = frame.shape[:2]
    luma = np.asarray(frame, dtype=np.float32).mean(-1)
    bits = []
    for _, rs, cs in _cells(h, w):
        block = luma[rs, cs]
        bh, bw = block.shape
        bits.append(int(block[bh // 4 : bh - bh // 4, bw // 4 : bw - bw // 4].mean() > (DARK + LIGHT) / 2))
    value, check = bits[:CODE_BITS], bits[CODE_BITS:]
    if any(v == c for v, c in zip(value, check, strict=True)):
        raise ValueError(f"frame carries no valid index code (bits {bits})")
    return sum(b << k for k, b in enumerate(value))


def decode_indices(frames: np.ndarray) -> list[int]:
    return [decode_index(f) for f in frames]


def write_coded_video(
    path: str | Path,
    num_frames: int,
    *,
    height: int = 96,
    width: int = 160,
    fps: int = 25,
    codec: str = "libx264",
    gop: int = 12,
) -> Path:
    """A real video whose frame ``i`` encodes ``i`` (short GOPs with B-frames, so reads must seek exactly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(num_frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(encode_frame(i, height, width), format="rgb24")))
        out.mux(stream.encode())
    return path


def write_broken_videos(folder: str | Path) -> dict[str, Path]:
    """One file per failure kind: truncated, truncated_stream, empty, not_a_video, zero_frames."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = write_coded_video(folder / "_whole.mp4", 40).read_bytes()  # moov atom at the end
    files = {
        "truncated": folder / "truncated.mp4",
        "truncated_stream": folder / "truncated_stream.mp4",
        "empty": folder / "empty.mp4",
        "not_a_video": folder / "not_a_video.mp4",
        "zero_frames": folder / "zero_frames.avi",
    }
    files["truncated"].write_bytes(good[: len(good) // 2])
    with av.open(str(folder / "_faststart.mp4"), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        rng = np.random.default_rng(0)  # noise: big enough packets that half the file cuts the stream
        for _ in range(60):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 96, 3), np.uint8))))
        out.mux(stream.encode())
    fast = (folder / "_faststart.mp4").read_bytes()
    files["truncated_stream"].write_bytes(fast[: len(fast) // 2])
    files["empty"].write_bytes(b"")
    files["not_a_video"].write_text("this is a text file, not a video\n" * 20)
    out = av.open(str(files["zero_frames"]), "w")  # a video stream with no frames at all
    stream = out.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    out.start_encoding()
    out.close()
    for tmp in ("_whole.mp4", "_faststart.mp4"):
        (folder / tmp).unlink()
    return files


@pytest.fixture(scope="session")
def coded_videos(tmp_path_factory) -> dict[str, Path]:
    """Coded videos shared by the suite: lengths 7, 20, 50 and 100 (mp4/x264) and 30 (avi/mpeg4)."""
    d = tmp_path_factory.mktemp("coded")
    vids = {f"n{n}": write_coded_video(d / f"coded_{n}.mp4", n) for n in (7, 20, 50, 100)}
    vids["avi30"] = write_coded_video(d / "coded_30.avi", 30, codec="mpeg4")
    return vids


@pytest.fixture(scope="session")
def broken_videos(tmp_path_factory) -> dict[str, Path]:
    return write_broken_videos(tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="session")
def coded_tree(tmp_path_factory) -> Path:
    """A folder tree root/<class>/<video> of coded videos (class a: 2 videos, class b: 1 video)."""
    root = tmp_path_factory.mktemp("tree")
    write_coded_video(root / "a" / "a1.mp4", 40)
    write_coded_video(root / "a" / "a2.mp4", 9)
    write_coded_video(root / "b" / "b1.mp4", 60)
    return root


@pytest.fixture
def ray_tmpdir():
    """A short RAY_TMPDIR for a Ray started in a subprocess (Ray's socket paths are limited to 107 bytes,
    which pytest's tmp_path can exceed), removed afterwards."""
    path = tempfile.mkdtemp(prefix="vpray")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------- Ray runs (shared by the train/eval/fault tests)

NUM_VIDEOS = 30  # 10 motion classes x 3 (2 train + 1 test); + 1 broken file in the train list


def synthetic_set(tmp_path_factory) -> Path:
    """The small synthetic set both train test modules use (generated once per session: make_synthetic
    returns at once when the same set already exists)."""
    from vpace.data.synthetic import make_synthetic

    root = tmp_path_factory.getbasetemp() / "vpace_train_synth"
    make_synthetic(root, num_videos=NUM_VIDEOS, seed=0, height=64, width=86, max_seconds=3.0, progress=False)
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """`synthetic_set` + one broken file listed in the train split (must be skipped and counted)."""
    from vpace.data import load_index

    root = synthetic_set(tmp_path_factory)
    trainlist = root / "trainlist01.txt"
    lines = trainlist.read_text().splitlines()
    if not any("Broken" in line for line in lines):
        rel, label = lines[0].split()[:2]  # put the broken file next to the first training video
        bad = Path(load_index(root).split("train")[0].path).with_name("v_Broken_g99_c01.mp4")
        bad.write_text("not a video\n")
        entry = f"{Path(rel).with_name(bad.name).as_posix()} {label}"
        trainlist.write_text("\n".join([*lines, entry]) + "\n")
    return root


@pytest.fixture(scope="module")
def local_ray():
    """A local 2-CPU Ray for the tests of one module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def tiny(data: Path, storage: Path, name: str, *extra: str) -> Config:
    """The shipped smoke config, shrunk further so a 2-worker run takes seconds per epoch."""
    return load_config("smoke", overrides=[
        f"data.index={data}", f"run.storage={storage}", f"run.name={name}", "data.epoch_size=null",
        "data.clip_len=8", "data.height=48", "data.width=64", "augment.crop=32", "optim.batch_size=8",
        "optim.base_batch_size=8", "scale.min_workers=2", "scale.max_workers=2", *extra])


def n_train(data: Path) -> int:
    return len((data / "trainlist01.txt").read_text().splitlines())

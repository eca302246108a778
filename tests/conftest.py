"""Shared fixtures: the devices kernel tests run on, small REAL video files (PyAV) whose frames carry their
own index, broken files, and the Ray-run helpers.

Frame ``i`` is a 5x4 grid of flat blocks: 10 blocks hold the bits of ``i`` (dark=0, light=1) and 10 hold the
complemented bits, so the code survives lossy compression and resizing, and a black/garbage frame is detected
as invalid instead of decoding to index 0. ``decode_index(frame)`` reads it back from any decoded size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

# ------------------------------------------ devices and Triton's interpreter: the one place that decides
# A source checkout runs without `pip install` (a bare GPU machine runs `make gpu-check` from one).
if (_root := str(Path(__file__).resolve().parents[1])) not in sys.path:
    sys.path.append(_root)
from benchmarks.source_tree import use_source_tree  # noqa: E402

use_source_tree()
HAS_CUDA = torch.cuda.is_available()
# Kernels run compiled on CUDA. Without CUDA, Triton's interpreter runs them on CPU tensors; it must be on
# before triton is first imported (triton.language's own @jit helpers are decorated at that import). It stays
# in this process: once triton is imported its knob holds it, and fresh processes started from here (Ray
# workers, the AOT compile child) do not inherit the variable, so they run the real CPU paths.
if "triton" not in sys.modules:  # else it is too late to choose; INTERPRETED below says what happened
    os.environ["TRITON_INTERPRET"] = "0" if HAS_CUDA else "1"
    import triton

    triton.knobs.runtime.interpret = not HAS_CUDA
    del os.environ["TRITON_INTERPRET"]

from vpace.config import Config, load_config  # noqa: E402
from vpace_kernels.utils import interpreted  # noqa: E402

INTERPRETED = interpreted()
NO_CUDA = "no CUDA device here: compiled Triton kernels and CUDA paths run on a GPU (`make gpu-check`)"
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)]
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason=(
    "CUDA is present, so Triton kernels run compiled on cuda, not interpreted on cpu" if HAS_CUDA
    else "triton was imported before conftest could turn TRITON_INTERPRET on"))
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=needs_cuda)]


def on_devices(cpu: Sequence[str], cuda: Sequence[str]) -> list:
    """``(device, backend)`` parameters of a kernel test: each of ``cpu``'s backends on CPU tensors ("triton"
    there needs the interpreter), each of ``cuda``'s on CUDA tensors (skipped without CUDA)."""
    return ([pytest.param("cpu", b, id=f"cpu-{b}", marks=[needs_interpreter] if b == "triton" else [])
             for b in cpu] + [pytest.param("cuda", b, id=f"cuda-{b}", marks=needs_cuda) for b in cuda])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one); `make gpu-check` "
                                       "runs these")


# ------------------------------------------------------------------------------- coded video files

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
    import av

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
    import av

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
# One local Ray serves every test that asks for `local_ray` (a Ray start costs 5-20 s on 2 cores). Those tests
# run last, together (`pytest_collection_modifyitems`), so Ray starts once and idles behind no other test.
# Tests that need this process without Ray (their own `Cluster`, or a check that nothing started Ray) ask for
# `no_ray`, which shuts the shared one down; the next `local_ray` test would start it again.

NUM_VIDEOS = 30  # 10 motion classes x 3 (2 train + 1 test); + 1 broken file in the train list
# The test runs' Ray settings. report() waits for the Train controller's poll: poll often. Ray starts its
# workers at nice 15 (below every normal process): on a machine busy with other jobs they would get ~3% of a
# core and a run would crawl 30x slower; at nice 0 they share the CPUs like the test process itself.
RAY_TEST_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_worker_niceness": "0"}


def ray_env(ray_tmpdir: str) -> dict[str, str]:
    """Environment of a process or cluster that starts its own Ray under `ray_tmpdir` (values set by the
    user win over `RAY_TEST_ENV`)."""
    return {**RAY_TEST_ENV, **os.environ, "RAY_TMPDIR": ray_tmpdir}


SLOW_TIMEOUT_S = 2400  # pytest-timeout of a `slow` test: a hang guard, > 4x the slowest seen on a busy box


# Test files by their time in a serial run on the 2-core machine, longest first. `make test` runs two
# pytest-xdist workers that take whole files (`--dist loadfile`) in collection order: handing out the long
# files first lets both end together. A scheduling hint only: a stale order costs minutes, never a result.
LONGEST_FILES = ("test_tune.py", "test_faults.py", "test_train.py", "test_train_elastic.py", "test_models.py",
                 "test_demo.py", "test_ray_data.py", "test_eval.py", "test_prepare.py", "test_contrastive.py")


def _file_rank(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the longest files first; tests on the shared Ray after the others of their process (so it
    starts once); `slow` tests get the larger safety net unless they carry their own timeout. Sorts are
    stable: file order is kept otherwise."""
    items.sort(key=lambda item: "local_ray" in getattr(item, "fixturenames", ()))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=_file_rank)
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def synthetic_set(tmp_path_factory) -> Path:
    """The small synthetic set the Ray-run tests use (generated once per session: make_synthetic returns at
    once when the same set already exists)."""
    from vpace.data.synthetic import make_synthetic

    root = tmp_path_factory.getbasetemp() / "vpace_train_synth"
    make_synthetic(root, num_videos=NUM_VIDEOS, seed=0, height=64, width=86, max_seconds=3.0, progress=False)
    return root


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def _ray_home():
    """RAY_TMPDIR of the shared Ray (short: Ray's socket paths are limited to 107 bytes) and the Train
    settings its runs need; Ray is shut down and the folder removed when the session ends."""
    import ray

    path = tempfile.mkdtemp(prefix="vpray")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ray_env(path).items():
            mp.setenv(k, v)
        yield
        ray.shutdown()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def local_ray(_ray_home: None) -> None:
    """The shared local 2-CPU Ray (started by the first test that needs it), with the worker hook of vpace's
    own local Ray (`vpace.train.ray_session.quiet_ray_noise`)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": "vpace.train.ray_session.quiet_ray_noise"})


@pytest.fixture
def no_ray() -> None:
    """This process without Ray: shuts the shared one down if it runs."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of process group `pgid` is left (Linux /proc; elsewhere False)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):  # gone while we looked
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


@contextlib.contextmanager
def own_session(cmd: Sequence[str], env: dict[str, str], out: Path, err: Path | None = None
                ) -> Iterator[subprocess.Popen]:
    """`cmd` (a driver that starts its own local Ray) in its own session, stdout to `out`, stderr to `err`
    (None: to `out`). On exit its whole process group - the local Ray included - is SIGKILLed, as after a
    real crash if it still runs, and waited for until none of it is left: nothing outlives the test."""
    with contextlib.ExitStack() as files:
        stdout = files.enter_context(open(out, "w"))
        stderr = files.enter_context(open(err, "w")) if err is not None else subprocess.STDOUT
        proc = subprocess.Popen(list(cmd), env=env, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            while _group_alive(proc.pid):
                time.sleep(0.2)


def tiny(data: Path, storage: Path, name: str, *extra: str) -> Config:
    """The shipped smoke config, shrunk further so a 2-worker run takes seconds per epoch. Every run on `data`
    shares one decoded-frame cache (next to it), so each video is decoded once per session."""
    return load_config("smoke", overrides=[
        f"data.index={data}", f"run.storage={storage}", f"run.name={name}", "data.epoch_size=null",
        f"data.cache_dir={data.parent / (data.name + '_frames')}",
        "data.clip_len=8", "data.height=48", "data.width=64", "augment.crop=32", "optim.batch_size=8",
        "optim.base_batch_size=8", "scale.min_workers=2", "scale.max_workers=2", *extra])


def n_train(data: Path) -> int:
    return len((data / "trainlist01.txt").read_text().splitlines())

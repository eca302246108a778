"""decord reader on real coded videos: exact frames for every pace (incl. loop-over), resize, errors."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import decode_index, decode_indices, write_coded_video

from vpace.data.pace import sample_indices
from vpace.data.reader import BrokenVideoError, CachedVideoReader, VideoReader, open_video

PACES = ["1/3", "1/2", "1", "2", "3", "4"]


def formula(num_frames: int, clip_len: int, pace: str, start: int) -> list[int]:
    """The paper's §3.1 formula, written independently of vpace."""
    return [(start + math.floor(i * Fraction(pace))) % num_frames for i in range(clip_len)]


@pytest.mark.parametrize("pace", PACES)
def test_decoded_pace_clip_holds_exactly_the_formula_frames(coded_videos, pace):
    for key, starts in (("n100", (0, 37, 99)), ("n20", (0, 13)), ("n7", (3,))):  # n20/n7 loop at clip 16
        with VideoReader(coded_videos[key]) as vr:
            for start in starts:
                frames, index_map = vr.get_frames(sample_indices(vr.num_frames, 16, pace, start))
                assert frames.shape[1:] == (128, 171, 3) and frames.dtype == np.uint8
                assert len(frames) == len(set(formula(vr.num_frames, 16, pace, start)))  # each frame once
                assert decode_indices(frames[index_map]) == formula(vr.num_frames, 16, pace, start)


def test_get_frames_unsorted_duplicates_and_every_frame(coded_videos):
    with VideoReader(coded_videos["n100"], threads=2) as vr:
        assert vr.num_frames == 100 and vr.fps == pytest.approx(25.0)
        want = [99, 3, 3, 50, 0, 98, 3, 61]
        frames, index_map = vr.get_frames(np.array(want))
        assert decode_indices(frames) == sorted(set(want))  # sorted unique, decoded once
        assert decode_indices(frames[index_map]) == want
        assert decode_indices(vr.get_frames(np.arange(100))[0]) == list(range(100))
        with pytest.raises(ValueError, match=r"\[0, 100\)"):
            vr.get_frames([100])
        with pytest.raises(ValueError, match=r"\[0, 100\)"):
            vr.get_frames([-1])


def test_second_codec_and_container(coded_videos):
    with VideoReader(coded_videos["avi30"]) as vr:
        assert vr.num_frames == 30
        frames, index_map = vr.get_frames(sample_indices(30, 16, 3, 25))
        assert decode_indices(frames[index_map]) == formula(30, 16, "3", 25)


def test_resize_options(coded_videos):
    path = coded_videos["n50"]  # stored at 96x160
    with VideoReader(path, height=None, width=None) as vr:
        assert vr.get_frames([7])[0].shape == (1, 96, 160, 3)
    with VideoReader(path, short_side=64) as vr:
        frame = vr.get_frames([7])[0]
        assert frame.shape == (1, 64, 107, 3) and decode_index(frame[0]) == 7
    with VideoReader(path, height=112, width=112) as vr:  # smaller than the paper size, and square
        assert vr.get_frames([7])[0].shape == (1, 112, 112, 3)
    with pytest.raises(ValueError, match="both height and width"):
        VideoReader(path, height=128, width=None)


REASONS = {
    "truncated": "truncated or corrupt container",
    "truncated_stream": "truncated or corrupt",
    "empty": "empty file",
    "not_a_video": "not a video file",
    "zero_frames": "zero frames",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_broken_files_raise_broken_video_error(broken_videos, kind):
    path = broken_videos[kind]
    with pytest.raises(BrokenVideoError) as info:  # decord 0.6 fails on open, decord2 on the cut-off frame
        with VideoReader(path) as vr:
            vr.get_frames([vr.num_frames - 1])
    err = info.value
    assert err.path == str(path) and REASONS[kind] in err.reason
    assert str(path) in str(err) and "Traceback" not in str(err) and ".cc:" not in str(err)
    again = pickle.loads(pickle.dumps(err))  # crosses DataLoader worker processes intact
    assert (again.path, again.reason) == (err.path, err.reason)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BrokenVideoError, match="file not found"):
        VideoReader(tmp_path / "nope.mp4")
    with pytest.raises(BrokenVideoError, match="directory"):
        VideoReader(tmp_path)
    with pytest.raises(BrokenVideoError, match="file not found"):
        CachedVideoReader(tmp_path / "nope.mp4", tmp_path / "cache")


def test_frame_cache_matches_decoder(coded_videos, tmp_path):
    path = coded_videos["n50"]
    cache = tmp_path / "cache"
    idx = sample_indices(50, 16, "1/2", 40)
    with VideoReader(path) as vr:
        ref_frames, ref_map = vr.get_frames(idx)
    first = open_video(path, cache_dir=cache)
    assert isinstance(first, CachedVideoReader)
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob(".*"))  # no temporaries left
    frames, index_map = first.get_frames(idx)
    assert (first.num_frames, first.fps) == (50, pytest.approx(25.0))
    np.testing.assert_array_equal(frames, ref_frames)
    np.testing.assert_array_equal(index_map, ref_map)
    mtime = next(cache.glob("*.npy")).stat().st_mtime_ns
    second = open_video(path, cache_dir=cache)  # reuses the file
    np.testing.assert_array_equal(second.get_frames(idx)[0], ref_frames)
    assert next(cache.glob("*.npy")).stat().st_mtime_ns == mtime
    open_video(path, cache_dir=cache, height=64, width=80)  # another size is another entry
    assert len(list(cache.glob("*.npy"))) == 2


@pytest.mark.parametrize("size", [(36, 48), (64, 96)])
def test_sizes_decord_cannot_scale_fall_back_to_an_exact_resize(coded_videos, size):
    """decord's scaler rejects some output sizes ("from_size == to_size"); the reader must still give
    those sizes, matching an antialiased resize of the native frames (the independent reference)."""
    import torch
    import torch.nn.functional as F

    path = coded_videos["n50"]  # stored at 96x160
    with VideoReader(path, height=size[0], width=size[1]) as vr:
        frames, _ = vr.get_frames([3, 9])
    assert frames.shape == (2, *size, 3) and decode_indices(frames) == [3, 9]
    with VideoReader(path, height=None, width=None) as vr:
        native, _ = vr.get_frames([3, 9])
    ref = F.interpolate(torch.from_numpy(native).permute(0, 3, 1, 2).float(), size=size, mode="bilinear",
                        antialias=True, align_corners=False)
    ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
    # decord may or may not fail for a size on a given build; either way the result is within decoder rounding
    assert np.abs(frames.astype(np.float32) - ref).mean() < 3.0


def _nvblas_installed() -> bool:
    import glob
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec else []
    return any(glob.glob(f"{root}/*/lib/libnvblas.*") for root in roots)


@pytest.mark.skipif(not _nvblas_installed(), reason="no nvidia-* wheel with libnvblas here: nothing to skip")
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_decord_import_leaves_torch_cpu_blas_alone(tmp_path):
    """decord2 3.4's import dlopens every nvidia-* library globally; libnvblas then takes torch's CPU sgemm (a
    segfault without a GPU, seen in `make bench`). vpace's import skips it: in a fresh process, decord first,
    then torch's first float32 matmul agrees with float64, and decoding still works."""
    code = (
        "import sys\n"
        "from vpace.data.reader import import_decord\n"
        "decord = import_decord()\n"
        "import torch\n"
        "assert 'libnvblas' not in open('/proc/self/maps').read(), 'libnvblas mapped'\n"
        "z = torch.randn(512, 64, generator=torch.Generator().manual_seed(0))\n"
        "print(((z @ z.T).double() - z.double() @ z.double().T).abs().max().item())\n"
        "print(len(decord.VideoReader(sys.argv[1])))\n"
    )
    video = tmp_path / "probe.mp4"
    write_coded_video(video, 12)
    proc = subprocess.run([sys.executable, "-c", code, str(video)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err, frames = proc.stdout.split()
    assert float(err) < 1e-3 and int(frames) == 12


def test_quiet_decord_drops_only_decords_own_log_lines(capfd):
    """Output written to fd 2 while decord runs is passed on, less decord's `[hh:mm:ss] file.cc:N:` lines."""
    import os

    from vpace.data.reader import _quiet_decord

    with _quiet_decord():
        os.write(2, b"[12:00:00] /project/src/video/video_reader.cc:86: ERROR opening: x.mp4\nanother line\n")
        with _quiet_decord():  # nested (threads decoding at once share one redirection)
            os.write(2, b"[12:00:01] /src/runtime/ndarray.h:3: x\n")
    assert capfd.readouterr().err == "another line\n"

"""Bench videos that decode like camera footage, for the data benchmarks (``benchmarks/data.py``, the Ray Data
ingest benchmark, ``make gpu-check``'s feed step).

Why not a synthetic pattern: decode cost follows the bitstream. A clean texture compresses to almost nothing
and decodes fast, which flatters the data path. Camera footage carries sensor noise that no encoder removes,
and is stored with long GOPs: x264's defaults put a keyframe every 250 frames (with B-frames), and UCF101
ships MPEG-4 part 2 (xvid) ``.avi``. So a frame here is a smooth scene that the camera pans over, a moving
object, a little flicker, and fresh per-pixel noise in every frame (``NOISE_SIGMA``), and ``ENCODINGS`` are
the stores real sets use. Without PyAV (the bare GPU machine) OpenCV writes MPEG-4 part 2 instead.

API: ``ENCODINGS``; ``camera_frames(n, height, width, seed)`` (an iterator of RGB uint8 frames);
``write_camera_video(path, frames, height, width, encoding, seed, fps) -> str`` (the encoding used);
``write_camera_set(folder, videos, encoding, ...) -> (paths, encoding used)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["ENCODINGS", "FPS", "NOISE_SIGMA", "OPENCV", "camera_frames", "write_camera_set",
           "write_camera_video"]

FPS = 25
# Grey levels of the fresh noise in every frame, twice: per pixel, and smoothed over ~2x2 pixels (a camera's
# demosaicing correlates neighbours; that part survives x264's quantisation). With it, x264 at its default
# quality stores this 320x240 scene at ~470 kbit/s, near UCF101's mean (6.5 GB / 13,320 clips / 7.2 s = 540).
NOISE_SIGMA = 4.0
# name -> (file suffix, PyAV codec, codec options, stream settings); x264 with no options = its defaults
ENCODINGS: dict[str, tuple[str, str, dict[str, str], dict[str, int]]] = {
    "x264_default": (".mp4", "libx264", {}, {}),  # keyframe every 250 frames, 3 B-frames, CABAC, deblocking
    "x264_gop12": (".mp4", "libx264", {"x264-params": "keyint=12:min-keyint=12:scenecut=0"}, {}),
    "mpeg4_avi": (".avi", "mpeg4", {}, {"gop_size": 250, "bit_rate": 540_000}),  # UCF101's xvid .avi
}
OPENCV = "mpeg4 (OpenCV)"


def _smooth_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """A smooth random RGB field: a coarse random grid bilinearly interpolated (a scene, not noise)."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.uniform(30, 220, (gh, gw, 3))
    ys, xs = np.linspace(0, gh - 1.001, height), np.linspace(0, gw - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def camera_frames(n: int, height: int = 240, width: int = 320, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` RGB uint8 frames: a panned scene (coarse shapes + fine detail), a moving object, flicker, and
    fresh sensor noise in every frame."""
    rng = np.random.default_rng(seed)
    scene = 0.7 * _smooth_field(rng, height, 2 * width, 40) + 0.3 * _smooth_field(rng, height, 2 * width, 6)
    yy, xx = np.mgrid[0:height, 0:width]
    pan = rng.uniform(0.8, 2.0)  # pixels per frame
    oy, ox, vy, vx = height / 2, width * 0.2, rng.uniform(-1, 1), rng.uniform(1, 3)
    colour = rng.uniform(0, 255, 3)
    for t in range(n):
        x = int(t * pan) % width
        img = scene[:, x : x + width].copy()
        cy, cx = oy + vy * t, (ox + vx * t) % width
        blob = ((yy - cy) / (height / 8)) ** 2 + ((xx - cx) / (width / 10)) ** 2 < 1
        img[blob] = colour
        img *= 1 + 0.02 * np.sin(t / 7)  # lighting flicker
        img += rng.normal(0, NOISE_SIGMA, img.shape) + _smooth_noise(rng, height, width)
        yield np.clip(img, 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Noise of standard deviation ``NOISE_SIGMA`` correlated over neighbouring pixels."""
    half = rng.normal(0, NOISE_SIGMA, ((height + 1) // 2, (width + 1) // 2, 3))
    full = np.repeat(np.repeat(half, 2, 0), 2, 1)[:height, :width]
    return (full + np.roll(full, 1, 0) + np.roll(full, 1, 1) + np.roll(full, (1, 1), (0, 1))) / 2


def _write_av(path: Path, images: Iterator[np.ndarray], height: int, width: int, encoding: str, fps: int
              ) -> None:
    import av

    _, codec, options, settings = ENCODINGS[encoding]
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps, options=dict(options))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for name, value in settings.items():
            setattr(s.codec_context, name, value)
        for img in images:
            out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode())


def _write_cv2(path: Path, images: Iterator[np.ndarray], height: int, width: int, fps: int) -> None:
    import cv2

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not out.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write MPEG-4 video here (and PyAV is not installed)")
    try:
        for img in images:
            out.write(np.ascontiguousarray(img[..., ::-1]))  # OpenCV takes BGR
    finally:
        out.release()


def write_camera_video(path: str | Path, frames: int = 7 * FPS, height: int = 240, width: int = 320,
                       encoding: str = "x264_default", seed: int = 0, fps: int = FPS) -> str:
    """Write one camera-like video at ``path`` (its suffix should be the encoding's); returns the encoding
    used (``OPENCV`` when PyAV is missing)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r}: expected one of {sorted(ENCODINGS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = camera_frames(frames, height, width, seed)
    try:
        import av  # noqa: F401
    except ImportError:
        _write_cv2(path, images, height, width, fps)
        return OPENCV
    _write_av(path, images, height, width, encoding, fps)
    return encoding


def write_camera_set(folder: str | Path, videos: int = 8, encoding: str = "x264_default",
                     frames: int = 7 * FPS, height: int = 240, width: int = 320, seed: int = 0
                     ) -> tuple[list[Path], str]:
    """``videos`` camera-like videos ``folder/<encoding>/v00<suffix>``... (UCF101-like: 320x240, 25 fps,
    7 s) and the encoding used; each video has its own scene (seed + its number)."""
    suffix = ENCODINGS[encoding][0]
    paths, used = [], encoding
    for v in range(videos):
        path = Path(folder) / encoding / f"v{v:02d}{suffix}"
        used = write_camera_video(path, frames, height, width, encoding, seed + v)
        paths.append(path)
    return paths, used

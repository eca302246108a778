"""One video of `vpace prepare`: a training-ready H.264 copy that holds exactly the frames vpace reads.

Why a copy: decoding dominates the data path. Camera footage has long GOPs (x264's default keyframe interval
is 250 frames), so reaching a clip's first frame decodes up to 249 others, and frames are decoded at full
size only to be scaled down. The copy is at the training size with a keyframe every ``gop`` frames and
x264's ``fastdecode`` tuning (no CABAC, no deblocking), the remedy of RSPNet's ``transcode_dataset.py`` and
mmaction2's ``resize_videos.py --dense``.

Frame-exact by construction: the frames are decoded by vpace's own reader (decord, as training reads the
source) and each is encoded once, in order, at a constant rate equal to the source's average fps. So the
copy has the source's frame count, order and fps metadata; a variable-frame-rate source keeps its frame
sequence (only the timestamps become regular, which vpace never reads). The frames are decoded at the size
training decodes, and an odd side gets its last row or column repeated (yuv420p needs even sizes), which the
reader crops off again: a copy at the training size is read without a rescale. Each copy is checked (count,
fps) before it is renamed into place, and its manifest (``vpace.data.manifest``) is written last.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vpace.errors import UserError

from .manifest import manifest_path, read_manifest, source_record, write_manifest
from .reader import BrokenVideoError, VideoReader, output_size
from .verify import check_frame_count

__all__ = ["PART_SUFFIX", "Outcome", "TranscodeSettings", "current_manifest", "decode_size", "target_size",
           "transcode_video"]

PART_SUFFIX = ".part"  # temporaries: not a video name, so no index ever lists a half-written copy
_CHUNK = 32  # frames decoded per get_batch: bounds memory at any size


@dataclass(frozen=True)
class TranscodeSettings:
    """How copies are made; any change makes existing copies stale (their manifest holds these)."""

    short_side: int | None = 128  # keep the aspect ratio; ignored when `size` is given
    size: tuple[int, int] | None = None  # (height, width)
    gop: int = 16  # a keyframe every `gop` frames
    crf: int = 23  # x264's constant-quality setting (its default)
    preset: str = "veryfast"
    tune: str = "fastdecode"
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 2):
            raise UserError(f"prepare size {self.size}: need height and width >= 2")
        if self.size is None and (self.short_side is None or self.short_side < 2):
            raise UserError(f"prepare short side {self.short_side}: need >= 2 (or a size HxW)")
        if self.gop < 1:
            raise UserError(f"prepare gop {self.gop}: need >= 1 frame between keyframes")
        if not 0 <= self.crf <= 51:
            raise UserError(f"prepare crf {self.crf}: x264 takes 0 (lossless) .. 51")

    def record(self) -> dict[str, Any]:
        """The settings as the manifest stores and compares them."""
        doc = asdict(self)
        doc["size"] = None if self.size is None else list(self.size)
        if self.size is not None:
            doc["short_side"] = None
        return doc


@dataclass(frozen=True)
class Outcome:
    """What became of one source: ``reason`` is None when its copy is in place."""

    source: str
    output: str
    reason: str | None = None
    frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_s: float = 0.0


def decode_size(source: str, settings: TranscodeSettings) -> tuple[int, int]:
    """``(height, width)`` the copy's frames are decoded at: what vpace's reader gives at these settings."""
    if settings.size is not None:
        return settings.size
    return output_size(source, None, None, settings.short_side)


def target_size(source: str, settings: TranscodeSettings) -> tuple[int, int]:
    """Stored ``(height, width)``: the decode size, each side rounded up to even (yuv420p needs even sizes) by
    repeating the last row / column, so the reader crops the copy back to the decode size, never scales it."""
    return _even(decode_size(source, settings))


def _even(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] + size[0] % 2, size[1] + size[1] % 2


def current_manifest(source: str, output: str, settings: TranscodeSettings) -> dict[str, Any] | None:
    """The manifest of ``output`` if it is a complete copy of this very source (path, size, mtime) made
    with these settings, else None (to be made again)."""
    doc = read_manifest(output)
    try:
        current = (doc is not None and doc["settings"] == settings.record()
                   and doc["source"] == source_record(source)
                   and os.stat(output).st_size == doc["output"]["bytes"])
    except (OSError, KeyError, TypeError):
        return None
    return doc if current else None


def _source_rate(source: str, fps: float) -> Fraction:
    """The source's average frame rate as an exact fraction (the value decord's fps is a float of)."""
    import av

    with av.open(source) as c:
        rate = c.streams.video[0].average_rate if c.streams.video else None
    if rate and abs(float(rate) - fps) <= 1e-6 * fps:
        return Fraction(rate)
    return Fraction(fps).limit_denominator(1_000_000) if fps > 0 else Fraction(25)


def _encode(vr: VideoReader, tmp: Path, rate: Fraction, size: tuple[int, int], s: TranscodeSettings) -> None:
    """Every frame of ``vr``, in order, one pts tick each, edge-padded to the even ``size``."""
    import av

    params = f"keyint={s.gop}:min-keyint={s.gop}:scenecut=0"  # exactly every `gop` frames
    options = {"preset": s.preset, "tune": s.tune, "crf": str(s.crf), "x264-params": params}
    with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream(s.codec, rate=rate, options=options)
        stream.height, stream.width = size
        stream.pix_fmt = s.pix_fmt
        stream.codec_context.thread_count = 1  # one task per CPU
        for lo in range(0, vr.num_frames, _CHUNK):
            frames = vr.read_unique(np.arange(lo, min(lo + _CHUNK, vr.num_frames)))
            pad = ((0, 0), (0, size[0] - frames.shape[1]), (0, size[1] - frames.shape[2]), (0, 0))
            frames = np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=s.pix_fmt)
                frame.pts = lo + i  # in 1/rate: one tick per frame, never a dropped or repeated one
                out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def transcode_video(source: str, output: str, settings: TranscodeSettings) -> Outcome:
    """Write the copy of ``source`` at ``output`` (+ its manifest). A broken source gives an ``Outcome``
    with the reason ``verify-data`` gives, and whatever copy of it an earlier run left is removed."""
    t0 = time.process_time()
    out = Path(output)
    manifest = manifest_path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}")
    try:
        height, width = decode_size(source, settings)
        size = _even((height, width))
        with VideoReader(source, height=height, width=width) as vr:
            check_frame_count(source, vr.num_frames)
            frames, fps = vr.num_frames, vr.fps
            rate = _source_rate(source, fps)
            out.parent.mkdir(parents=True, exist_ok=True)
            _encode(vr, tmp, rate, size, settings)
        with VideoReader(tmp, height=None, width=None) as copy:
            if copy.num_frames != frames or abs(copy.fps - fps) > 1e-6 * max(fps, 1.0):
                raise RuntimeError(f"{source}: the copy has {copy.num_frames} frames at {copy.fps} fps, "
                                   f"the source {frames} at {fps}")
        record = {"source": source_record(source), "frames": frames, "fps": fps,
                  "fps_fraction": f"{rate.numerator}/{rate.denominator}", "settings": settings.record(),
                  "output": {"bytes": tmp.stat().st_size, "height": size[0], "width": size[1]}}
        _remove(manifest)  # from here until the new manifest lands, the copy does not look complete
        os.replace(tmp, out)
        write_manifest(out, record)
    except BrokenVideoError as e:
        _remove(tmp, manifest, out)
        return Outcome(source, output, e.reason, bytes_in=_size(source), cpu_s=time.process_time() - t0)
    except BaseException:
        _remove(tmp)
        raise
    return Outcome(source, output, None, frames, _size(source), out.stat().st_size, time.process_time() - t0)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0

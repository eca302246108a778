"""decord video reader that decodes only the frames a clip needs, resized on decode.

A pace clip names at most ``clip_len`` source frames, often with repeats (slow pace) or far apart (fast pace),
so we decode the sorted unique indices once through ``get_batch`` and hand back an index map. Every failure of
decord (which raises a bare ``DECORDError``/``RuntimeError``/``AssertionError`` with a C++ trace) becomes a
``BrokenVideoError(path, reason)`` whose reason says what is wrong (empty, not a video, truncated, no video
stream, zero frames) so a data loader can skip and count it and ``verify-data`` can report it.

A copy made by ``vpace prepare`` (its manifest gives the stored size) that is at the requested size, up to
the even-size rounding of H.264, is decoded at its own size and cropped by that pixel: no rescale.
decord's C++ log lines (``[hh:mm:ss] .../video_reader.cc:86: ERROR opening: ...``) bypass its log level and go
straight to the process's stderr; they are kept out of it (``_quiet_decord``), since the reason is reported.

``cache_dir`` (``open_video``) stores each video's decoded uint8 frames once as ``.npy`` so later epochs read
them through a memory map instead of decoding: on a 2-core machine decoding dominates a small model's step.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .manifest import stored_size
from .pace import unique_with_map

__all__ = [
    "BrokenVideoError",
    "CachedVideoReader",
    "FrameSource",
    "VideoReader",
    "diagnose_video",
    "header_frame_count",
    "open_video",
    "output_size",
]

# Leading bytes of common containers: a file that starts like one but cannot be opened is truncated/corrupt.
_MAGIC = (b"RIFF", b"\x1a\x45\xdf\xa3", b"FLV", b"OggS", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
_CHUNK = 128  # frames per get_batch when decoding a whole video for the cache
_CC_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.(cc|h|cpp):\d+: ")


class BrokenVideoError(RuntimeError):
    """A video that cannot be read; ``reason`` is a short human explanation."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when raised inside a DataLoader worker
        return (type(self), (self.path, self.reason))


class FrameSource:
    """What datasets read: ``path``, ``num_frames``, ``fps``, ``get_frames``. A new source (another decoder,
    frames in memory) subclasses it and gives ``read_unique``."""

    path: str
    num_frames: int
    fps: float

    def get_frames(self, indices: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(frames uint8 [F, H, W, 3], index_map int64 [len(indices)])``, ``frames[index_map]`` = clip."""
        unique, index_map = unique_with_map(indices)
        if unique.size == 0:
            raise ValueError("get_frames needs at least one frame index")
        if unique[0] < 0 or unique[-1] >= self.num_frames:
            raise ValueError(
                f"{self.path}: frame indices must be in [0, {self.num_frames}), got {unique[0]}..{unique[-1]}"
            )
        return self.read_unique(unique), index_map

    def read_unique(self, unique: np.ndarray) -> np.ndarray:
        """Frames uint8 ``[len(unique), H, W, 3]`` at the sorted, unique, in-range indices ``unique``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder / memory map (also done by ``with``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Shared libraries decord2's import must not load. decord2 3.4 dlopens every library of the installed nvidia-*
# wheels with RTLD_GLOBAL (`decord/_ffi/base.py: _preload_cuda_libs`), libnvblas included: NVBLAS exports
# sgemm_ & co, so torch's CPU BLAS calls bound after that go to an unconfigured NVBLAS ("CPU Blas library need
# to be provided"; a segfault without a GPU). Decoding never needs it.
NOT_FOR_DECODING = ("libnvblas.",)
_IMPORT_LOCK = threading.Lock()


class _CDLLSkipping(ctypes.CDLL):
    """`ctypes.CDLL` that refuses the libraries of `NOT_FOR_DECODING`, as a missing library would be."""

    def __init__(self, name, *args, **kwargs) -> None:
        if name is not None and os.path.basename(os.fspath(name)).startswith(NOT_FOR_DECODING):
            raise OSError(f"{name}: not loaded (vpace.data.reader.NOT_FOR_DECODING)")
        super().__init__(name, *args, **kwargs)


def import_decord():
    """decord, quiet (we report failures ourselves), imported without the libraries of `NOT_FOR_DECODING`.
    The one place vpace imports it."""
    with _IMPORT_LOCK:  # two threads must not swap ctypes.CDLL over each other
        if "decord" not in sys.modules:
            saved, ctypes.CDLL = ctypes.CDLL, _CDLLSkipping
            try:
                import decord
            finally:
                ctypes.CDLL = saved
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


class _Redirect:
    """State of the one redirection of fd 2 that threads decoding at once share (reference counted)."""

    lock = threading.Lock()
    depth = 0
    saved: int | None = None
    sink: object = None


@contextlib.contextmanager
def _quiet_decord() -> Iterator[None]:
    """While decord runs, fd 2 points at a scratch file; afterwards whatever else landed there (another
    thread's output) is passed on and only decord's own ``[hh:mm:ss] file.cc:N:`` lines are dropped."""
    r = _Redirect
    with r.lock:
        if r.depth == 0:
            try:
                sys.stderr.flush()
                r.sink, r.saved = tempfile.TemporaryFile(), os.dup(2)
                os.dup2(r.sink.fileno(), 2)
            except (OSError, AttributeError, ValueError):  # no usable fd 2: nothing to keep clean
                r.saved = None
        r.depth += 1
    try:
        yield
    finally:
        with r.lock:
            r.depth -= 1
            if r.depth == 0 and r.saved is not None:
                os.dup2(r.saved, 2)
                os.close(r.saved)
                r.sink.seek(0)
                lines = r.sink.read().decode(errors="replace").splitlines(keepends=True)
                r.sink.close()
                kept = "".join(x for x in lines if not _CC_PREFIX.match(x))
                if kept:
                    os.write(2, kept.encode())
                r.saved = None


def _looks_like_container(head: bytes) -> bool:
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide") or head.startswith(_MAGIC)


def diagnose_video(path: str | os.PathLike, error: BaseException | str | None = None) -> str:
    """A short reason why ``path`` cannot be read (PyAV probe + file bytes), ``error`` as the fallback."""
    import av

    p = Path(path)
    if not p.exists():
        return "file not found"
    if p.is_dir():
        return "is a directory, not a video file"
    if p.stat().st_size == 0:
        return "empty file (0 bytes)"
    with p.open("rb") as fh:
        head = fh.read(16)
    try:
        container = av.open(str(p))
    except Exception:  # noqa: BLE001 - any PyAV/FFmpeg failure means "cannot be opened"
        if _looks_like_container(head):
            return "truncated or corrupt container (cannot be opened)"
        return "not a video file (unrecognised format)"
    with container:
        if not container.streams.video:
            return "no video stream"
        try:
            for _ in container.decode(video=0):
                break
            else:
                return "zero frames"
        except Exception as e:  # noqa: BLE001
            return f"undecodable video stream ({_short(e)})"
    return f"unreadable by decord ({_short(error)})" if error is not None else "unreadable"


def header_frame_count(path: str | os.PathLike) -> int:
    """Frame count the container header declares (0 if unknown, e.g. Matroska), read with PyAV."""
    import av

    try:
        with av.open(str(path)) as c:
            return int(c.streams.video[0].frames) if c.streams.video else 0
    except Exception:  # noqa: BLE001 - the decord open reports the real problem
        return 0


def _short(error: BaseException | str | None) -> str:
    """First informative line of a decord error without its ``[time] src/file.cc:N:`` prefixes."""
    lines = str(error).strip().splitlines()
    text = _CC_PREFIX.sub("", lines[0]).strip() if lines else ""
    return (text or type(error).__name__)[:200]


def _reason(path: str, error: BaseException, num_frames: int | None = None) -> str:
    """Why decord failed: cheap message checks first, then (opened fine, decode failed) the header count."""
    text = str(error)
    if "av_read_frame failed" in text or "partial file" in text:
        return "truncated or corrupt stream (read error while indexing frames)"
    if "Invalid frame count" in text:
        return "zero frames"
    if num_frames is None:
        return diagnose_video(path, error)
    declared = header_frame_count(path)
    if declared > num_frames:
        return f"truncated or corrupt stream ({num_frames} of {declared} declared frames, decode failed)"
    return f"decoding failed ({_short(error)})"


def output_size(path: str, height: int | None, width: int | None, short_side: int | None) -> tuple[int, int]:
    """Decode size ``(height, width)``; ``short_side`` keeps the aspect ratio, ``-1`` means native."""
    if short_side is None:
        if (height is None) != (width is None):
            raise ValueError("give both height and width (or short_side, or neither for native size)")
        return (-1, -1) if height is None else (int(height), int(width))
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    import av

    try:
        with av.open(path) as c:
            h, w = c.streams.video[0].codec_context.height, c.streams.video[0].codec_context.width
    except Exception as e:  # noqa: BLE001
        raise BrokenVideoError(path, diagnose_video(path, e)) from None
    if not h or not w:
        raise BrokenVideoError(path, "video stream has no frame size")
    scale = short_side / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of uint8 [F, H, W, 3] frames (the fallback when decord cannot scale)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class VideoReader(FrameSource):
    """``VideoReader(path, height=128, width=171)``: decord reader returning only the requested frames."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        height: int | None = 128,
        width: int | None = 171,
        short_side: int | None = None,
        threads: int = 1,
    ):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise BrokenVideoError(self.path, diagnose_video(self.path))
        h, w = output_size(self.path, height, width, short_side)
        decord = import_decord()
        self._size, self._threads, self._native = (h, w), int(threads), False
        stored = stored_size(self.path) if h > 0 else None
        # a prepared copy at the requested size, up to H.264's even-size rounding: crop, never rescale
        self.crops = stored is not None and 0 <= stored[0] - h <= 1 and 0 <= stored[1] - w <= 1
        ask_h, ask_w = (-1, -1) if self.crops else (h, w)
        try:
            with _quiet_decord():
                self._vr = decord.VideoReader(self.path, width=ask_w, height=ask_h, num_threads=int(threads))
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
        except Exception as e:  # noqa: BLE001 - decord raises DECORDError, RuntimeError, AssertionError
            self._vr = None
            raise BrokenVideoError(self.path, _reason(self.path, e)) from None
        if self.num_frames < 1:
            raise BrokenVideoError(self.path, "zero frames")

    def read_unique(self, unique: np.ndarray) -> np.ndarray:
        if self._vr is None:
            raise ValueError(f"{self.path}: reader is closed")
        try:
            with _quiet_decord():
                batch = self._vr.get_batch(unique.tolist())
            frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
        except Exception as e:  # noqa: BLE001
            if "from_size == to_size" not in str(e) or self._native:
                raise BrokenVideoError(self.path, _reason(self.path, e, self.num_frames)) from None
            # decord's scaler rejects some output sizes (e.g. width 48 or 96 from 172): decode at native
            # size and resize here instead, for this and later batches.
            with _quiet_decord():
                self._vr = import_decord().VideoReader(self.path, num_threads=self._threads)
            self._native = True
            return self.read_unique(unique)
        if self.crops:
            frames = frames[:, : self._size[0], : self._size[1]]
        elif self._native:
            frames = _resize(frames, self._size)
        wrong_size = self._size[0] > 0 and frames.shape[1:3] != self._size
        if frames.ndim != 4 or frames.shape[0] != unique.size or frames.shape[-1] != 3 or wrong_size:
            raise BrokenVideoError(self.path, f"decoder gave shape {frames.shape} for {unique.size} frames")
        return np.ascontiguousarray(frames, dtype=np.uint8)

    def read_all(self, out: np.ndarray | None = None) -> np.ndarray:
        """Every frame, decoded in chunks (optionally into a memory map) to bound peak memory."""
        for lo in range(0, self.num_frames, _CHUNK):
            chunk = self.read_unique(np.arange(lo, min(lo + _CHUNK, self.num_frames)))
            if out is None:
                out = np.empty((self.num_frames, *chunk.shape[1:]), np.uint8)
            out[lo : lo + len(chunk)] = chunk
        return out

    def close(self) -> None:
        self._vr = None


class CachedVideoReader(FrameSource):
    """Same interface as ``VideoReader`` but backed by a ``.npy`` of all decoded frames (built on first use).

    The cache key covers the file's path, size, mtime and the decode size, so an edited video or another
    resolution never reads stale frames. Files are written under a temporary name and renamed, so concurrent
    DataLoader workers at worst decode the same video twice.
    """

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike, **reader_kw):
        """``reader_kw``: the ``VideoReader`` options (height, width, short_side, threads)."""
        self.path = str(path)
        try:
            st = os.stat(self.path)
        except OSError:
            raise BrokenVideoError(self.path, diagnose_video(self.path)) from None
        size = {k: reader_kw.get(k, d) for k, d in (("height", 128), ("width", 171), ("short_side", None))}
        key = f"{os.path.abspath(self.path)}|{st.st_size}|{st.st_mtime_ns}|{sorted(size.items())}"
        stem = Path(cache_dir) / f"{Path(self.path).stem[:40]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
        npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
        if not meta.is_file() or not npy.is_file():
            self._build(npy, meta, **reader_kw)
        self.fps = float(json.loads(meta.read_text())["fps"])
        self._frames = np.load(npy, mmap_mode="r")
        self.num_frames = int(self._frames.shape[0])

    def _build(self, npy: Path, meta: Path, **kw) -> None:
        npy.parent.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_name(f".{npy.stem}.{os.getpid()}.tmp.npy")
        with VideoReader(self.path, **kw) as vr:
            shape = (vr.num_frames, *vr.get_frames([0])[0].shape[1:])
            try:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                vr.read_all(out)
                out.flush()
                del out
                os.replace(tmp, npy)
            finally:
                tmp.unlink(missing_ok=True)
            tmp_meta = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
            tmp_meta.write_text(json.dumps({"path": self.path, "fps": vr.fps, "num_frames": vr.num_frames}))
            os.replace(tmp_meta, meta)

    def read_unique(self, unique: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._frames[unique])

    def close(self) -> None:
        self._frames = None


def open_video(
    path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, **reader_kw
) -> VideoReader | CachedVideoReader:
    """A ``VideoReader(path, **reader_kw)``, or a ``CachedVideoReader`` when ``cache_dir`` is given."""
    return CachedVideoReader(path, cache_dir, **reader_kw) if cache_dir else VideoReader(path, **reader_kw)

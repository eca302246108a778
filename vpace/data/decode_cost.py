"""Would ``vpace prepare`` pay off for this data? A cheap look at a few videos before a long run.

Decoding a clip costs every frame since the keyframe before it, at the stored size. Two things make raw
video expensive (measured in README "Data pipeline"): long GOPs (camera footage and x264's defaults: a
keyframe every 250 frames) and frames much larger than the decode size. A prepared copy has a keyframe every
16 frames at the training size. ``advise_prepare`` probes a few videos of the index (container headers and
packet flags only, no decoding) and warns once, with the command to run, when either is far from that.
"""

from __future__ import annotations

import itertools
import os
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

from vpace.config import DataConfig

from .index import VideoIndex
from .layout import prepared_name
from .manifest import read_manifest
from .transcode import TranscodeSettings

__all__ = ["LONG_GOP", "SIZE_FACTOR", "VideoCost", "advise_prepare", "keyframe_interval", "probe_cost"]

LONG_GOP = 2 * TranscodeSettings.gop  # frames between keyframes above which seeking dominates
SIZE_FACTOR = 2.0  # stored pixels over decoded pixels above which scaling dominates
_SAMPLE = 4  # videos probed
_PACKETS = 600  # packets read per video at most


@dataclass(frozen=True)
class VideoCost:
    path: str
    gop: int  # the longest run of frames between keyframes seen (at least the frames read if only one)
    height: int
    width: int


def keyframe_interval(path: str | os.PathLike, packets: int = _PACKETS) -> int:
    """The longest run of frames from one keyframe to the next in the first ``packets`` packets (a lower bound
    when the video has fewer keyframes than that); reads packet flags only."""
    import av

    with av.open(str(path)) as c:
        flags = [p.is_keyframe for p in itertools.islice(c.demux(video=0), packets) if p.size]
    keys = [i for i, key in enumerate(flags) if key] or [0]
    return max(b - a for a, b in zip(keys, [*keys[1:], len(flags)], strict=True))


def probe_cost(path: str | os.PathLike) -> VideoCost | None:
    """GOP and stored size of one video; None when it cannot be probed (``verify-data`` reports those)."""
    import av

    try:
        with av.open(str(path)) as c:
            ctx = c.streams.video[0].codec_context
            height, width = ctx.height, ctx.width
        return VideoCost(str(path), keyframe_interval(path), height, width)
    except Exception:  # noqa: BLE001 - a broken video is skipped and counted by the data loader
        return None


def advise_prepare(index: VideoIndex, data: DataConfig) -> str | None:
    """Warn (once, a ``UserWarning``) and return the advice when the videos of ``index`` would decode much
    cheaper prepared; None when they are prepared already, cached (``data.cache_dir``) or cheap."""
    if data.cache_dir or not index.entries:
        return None  # decoded once into the frame cache: decode cost does not recur
    step = max(1, len(index.entries) // _SAMPLE)
    picks = [e.path for e in index.entries[::step][:_SAMPLE]]
    if any(read_manifest(p) is not None for p in picks):
        return None
    costs = [c for c in map(probe_cost, picks) if c is not None]
    if not costs:
        return None
    gop = max(c.gop for c in costs)
    big = max(costs, key=lambda c: c.height * c.width)
    why = []
    if gop > LONG_GOP:
        why.append(f"a keyframe only every {gop}+ frames" if gop >= _PACKETS - 1 else
                   f"a keyframe every {gop} frames")
    if big.height * big.width > SIZE_FACTOR * data.height * data.width:
        why.append(f"{big.width}x{big.height} frames decoded at {data.width}x{data.height}")
    if not why:
        return None
    src = Path(data.index).expanduser()
    out = src.with_name(prepared_name(src, data.height, data.width))
    size = f"{data.height}x{data.width}"
    command = f"vpace prepare {shlex.quote(str(src))} {shlex.quote(str(out))} --size {size}"
    advice = (f"data.index {src}: its videos have {' and '.join(why)}; a prepared copy (a keyframe every "
              f"{TranscodeSettings.gop} frames at {size}) decodes several times cheaper per clip (README "
              f"'Data pipeline'). Run `{command}` once, then train with "
              f"--set data.index={shlex.quote(str(out))}")
    warnings.warn(advice, UserWarning, stacklevel=2)
    return advice

"""``vpace verify-data``: find broken videos before a long run does (it would skip and count them anyway).

Each video is opened with the same decord reader training uses and its last frame is decoded, which catches
files that break off mid-stream. decord 0.6 refuses a truncated stream when opening it, but decord2 opens it
and reports only the frames present, so the readable count is also checked against the container header.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpace.bars import progress_bar

from .index import VideoIndex
from .reader import BrokenVideoError, VideoReader, header_frame_count

__all__ = ["VerifyReport", "check_frame_count", "verify_index"]

MISSING_REASON = "file not found (listed in the index)"


@dataclass
class VerifyReport:
    total: int
    ok: int
    broken: list[tuple[str, str]] = field(default_factory=list)  # (path, reason); missing/unusable included
    frames: int = 0  # frames in the readable videos

    @property
    def num_broken(self) -> int:
        return len(self.broken)

    def format(self, max_lines: int = 50) -> str:
        """Human summary: counts, then one ``path: reason`` line per broken video."""
        lines = [f"{self.total} videos: {self.ok} ok ({self.frames} frames), {self.num_broken} broken"]
        by_reason: dict[str, int] = {}
        for _, reason in self.broken:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        lines += [f"  {n:6d} x {reason}" for reason, n in sorted(by_reason.items(), key=lambda x: -x[1])]
        lines += [f"BROKEN {path}: {reason}" for path, reason in self.broken[:max_lines]]
        if self.num_broken > max_lines:
            lines.append(f"... and {self.num_broken - max_lines} more")
        return "\n".join(lines)


def check_frame_count(path: str, readable: int) -> None:
    """Raise ``BrokenVideoError`` when far fewer frames are readable than the container header declares."""
    declared = header_frame_count(path)
    if declared - readable > max(1, declared // 50):  # tolerate off-by-one headers
        raise BrokenVideoError(path, f"truncated: {readable} of {declared} declared frames readable")


def verify_index(
    index: VideoIndex, *, progress: bool = True, height: int | None = 128, width: int | None = 171
) -> VerifyReport:
    """Open every video of ``index``, decode one frame, and collect the broken ones with their reasons."""
    report = VerifyReport(total=len(index) + len(index.missing) + len(index.unusable), ok=0)
    report.broken += [(path, MISSING_REASON) for path in index.missing]
    report.broken += index.unusable  # e.g. a dangling symbolic link, a folder named x.mp4
    for entry in progress_bar(index.entries, desc="verify", unit="video", enabled=progress):
        try:
            with VideoReader(entry.path, height=height, width=width) as vr:
                vr.get_frames([vr.num_frames - 1])
                check_frame_count(entry.path, vr.num_frames)
                report.frames += vr.num_frames
            report.ok += 1
        except BrokenVideoError as e:
            report.broken.append((entry.path, e.reason))
    return report

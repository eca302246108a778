"""``vpace prepare INDEX OUT``: a training-ready copy of a video set, one Ray task per video.

Why: decoding, not the GPU, bounds pre-training on real video (long GOPs, frames far larger than the
128x171 that is trained on). The copy (``vpace.data.transcode``) holds exactly the frames vpace reads from
each source, at the training size, with a keyframe every ``gop`` frames; ``vpace.data.layout`` lays it out
like the source and writes its index. The tasks run on this machine's CPUs (a local Ray) or on a cluster's
(``address``); every node must see INDEX and OUT at the same paths.

Resume: a copy whose manifest matches its source and the settings is kept; anything else is made again, and
the temporaries of a killed run are removed first. Broken sources never stop the run: each is listed with the
reason ``verify-data`` gives, counted, and left out of the copy's index; the report says so and is also
written to ``OUT/vpace-prepare-report.txt``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vpace.bars import progress_bar
from vpace.data.layout import Layout, plan_layout, write_index
from vpace.data.manifest import write_text_atomic
from vpace.data.transcode import PART_SUFFIX, Outcome, TranscodeSettings, current_manifest, transcode_video
from vpace.data.verify import VerifyReport

__all__ = ["REPORT_NAME", "PrepareReport", "prepare"]

REPORT_NAME = "vpace-prepare-report.txt"
_IN_FLIGHT_PER_CPU = 4  # tasks queued per CPU: the cluster stays busy, the driver holds few references


@dataclass
class PrepareReport:
    out_index: str  # pass this as data.index
    settings: TranscodeSettings
    made: list[Outcome] = field(default_factory=list)  # copied in this run
    current: int = 0  # already complete and current: kept
    current_frames: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason): no copy, not in the index
    wall_s: float = 0.0  # of the tasks, start of Ray included

    @property
    def total(self) -> int:
        return len(self.made) + self.current + len(self.failed)

    def format(self, max_lines: int = 50) -> str:
        """Counts, the broken sources as ``verify-data`` lists them (the first ``max_lines``), sizes and
        speed, the index to use."""
        frames = sum(o.frames for o in self.made) + self.current_frames
        verify = VerifyReport(self.total, len(self.made) + self.current, list(self.failed), frames)
        listing = verify.format(max_lines)
        head, *rest = listing.splitlines()
        if self.failed:
            head = head.replace(" broken", " broken (left out of the index)")
        lines = [f"prepare: {head}; {len(self.made)} copied now, {self.current} already current", *rest]
        if self.made:
            bytes_in, bytes_out = sum(o.bytes_in for o in self.made), sum(o.bytes_out for o in self.made)
            cpu = sum(o.cpu_s for o in self.made)
            lines.append(f"copied now: {bytes_in / 1e6:.1f} MB -> {bytes_out / 1e6:.1f} MB "
                         f"({bytes_out / max(bytes_in, 1):.2f}x) in {self.wall_s:.0f} s, "
                         f"{len(self.made) / max(cpu, 1e-9):.2f} videos per CPU-second")
        s = self.settings
        size = f"{s.size[0]}x{s.size[1]}" if s.size else f"short side {s.short_side}"
        lines.append(f"settings: {size}, keyframe every {s.gop} frames, crf {s.crf}, {s.codec} {s.tune}")
        lines.append(f"prepared index: {self.out_index}  (--set data.index={self.out_index})")
        return "\n".join(lines)


def _copy_one(source: str, output: str, settings: TranscodeSettings) -> Outcome:
    """One task: a broken source is an outcome with its reason, and so is any other failure."""
    try:
        return transcode_video(source, output, settings)
    except Exception as e:  # noqa: BLE001 - a full disk, an encoder error: listed, counted, the run goes on
        why = " ".join(str(e).split())
        return Outcome(source, output, f"could not be copied ({type(e).__name__}: {why})")


def _remove_temporaries(out: Path) -> int:
    """Delete what killed runs left half-written (``.<name>.<pid>-<id>.part``); they are never renamed now."""
    removed = 0
    for folder, _, files in os.walk(out):
        for name in files:
            if name.startswith(".") and name.endswith(PART_SUFFIX):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


def _run_tasks(todo: list[tuple[str, str]], settings: TranscodeSettings, address: str | None,
               progress: bool) -> Iterator[Outcome]:
    """Outcomes of ``todo`` as the tasks finish, on a local Ray (or the cluster at ``address``)."""
    import ray

    from vpace.train.ray_session import start_ray, stop_ray

    started = start_ray(address)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(_copy_one)
        window = max(16, _IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[ray.ObjectRef, tuple[str, str]] = {}
        queue = iter(todo)
        failed = 0
        with progress_bar(total=len(todo), desc="prepare", unit="video", enabled=progress) as bar:
            while True:
                for source, output in queue:
                    pending[task.remote(source, output, settings)] = (source, output)
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                source, output = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as e:  # the task's process died (a decoder crash, memory)
                    outcome = Outcome(source, output, f"its copying process died ({type(e).__name__})")
                failed += outcome.reason is not None
                bar.set_postfix(failed=failed, refresh=False)
                bar.update(1)
                yield outcome
    finally:
        if started:
            stop_ray()


def prepare(index: str | os.PathLike, out: str | os.PathLike, settings: TranscodeSettings | None = None, *,
            address: str | None = None, progress: bool = True) -> PrepareReport:
    """Copy every video of ``index`` under ``out`` (see the module docstring); returns the report, which is
    also written to ``out/vpace-prepare-report.txt``."""
    settings = settings or TranscodeSettings()
    layout: Layout = plan_layout(index, out)
    layout.out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(layout.out)
    report = PrepareReport(str(layout.out_spec), settings, failed=list(layout.problems))
    todo = []
    for source, output in layout.copies.items():
        doc = current_manifest(source, output, settings)
        if doc is None:
            todo.append((source, output))
        else:
            report.current += 1
            report.current_frames += int(doc.get("frames", 0))
    t0 = time.perf_counter()
    for outcome in _run_tasks(todo, settings, address, progress) if todo else ():
        if outcome.reason is None:
            report.made.append(outcome)
        else:
            report.failed.append((outcome.source, outcome.reason))
    report.wall_s = time.perf_counter() - t0
    write_index(layout, {source for source, _ in report.failed})
    write_text_atomic(layout.out / REPORT_NAME, report.format(max_lines=len(report.failed)) + "\n")
    return report

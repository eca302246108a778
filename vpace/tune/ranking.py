"""The one ranking rule of a search: what results.md, results.csv, the plot and best_config.yaml all show.

Configurations that ran the full budget come first, by their final metric; then those ASHA stopped early, by
the metric at the highest rung they reached (later rungs first), labelled with it; then those measured at no
rung. Comparing a trial stopped after one epoch with one that ran them all would rank budgets, not settings.
A configuration is one trial, or with `tune.repeats` its seeds, ranked by their mean; at the same rung, one
with all its seeds measured comes before one whose seeds failed (a mean of fewer seeds is a noisier value).

A row (`vpace.tune.run.collect_rows`) is one trial: `trial`, `status`, `epochs`, `params`, `seed_index`,
`seed`, and `history`, its measurements as `{"epoch", "value", "lo", "hi"}` in epoch order.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from vpace.tune.space import SearchSpec

COMPLETED, STOPPED, ERROR, NO_RESULT = "completed", "stopped early", "error", "no result"
FULL, EARLY, UNMEASURED = 0, 1, 2  # tiers of the ranking


def point_at(row: dict[str, Any], epoch: int) -> dict[str, Any] | None:
    """The trial's measurement ASHA compares at rung `epoch`: its first after at least that many epochs."""
    return next((p for p in row["history"] if p["epoch"] >= epoch), None)


def reached(row: dict[str, Any], rungs: list[int]) -> int | None:
    """The highest rung (epochs) at which the trial has a measurement; None if none."""
    last = max((p["epoch"] for p in row["history"]), default=0)
    return max((r for r in rungs if r <= last), default=None)


def ends(point: dict[str, Any]) -> tuple[float, float] | None:
    """A measurement's interval, if it has one."""
    return (point["lo"], point["hi"]) if point["lo"] is not None and point["hi"] is not None else None


def overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    """Whether two intervals share a point; None when either is missing."""
    return None if a is None or b is None else a[0] <= b[1] and b[0] <= a[1]


@dataclass
class Entry:
    """One configuration in the ranking: its trials (one per seed) and their measurements at epoch `rung`."""

    params: dict[str, Any]
    trials: list[dict[str, Any]]
    rung: int | None
    points: list[dict[str, Any]]  # the measured trials' points at `rung` (trials measured at no rung: none)
    tier: int
    rank: int = 0

    @property
    def name(self) -> str:
        return ", ".join(t["trial"] for t in self.trials)

    @property
    def value(self) -> float | None:
        """The ranked value: the metric at `rung`, the mean over the seeds measured there."""
        return statistics.fmean(p["value"] for p in self.points) if self.points else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The query-bootstrap interval (seeds: their intervals' ends averaged; seed noise is `spread`)."""
        both = [iv for p in self.points if (iv := ends(p)) is not None]
        if not both:
            return None
        return statistics.fmean(lo for lo, _ in both), statistics.fmean(hi for _, hi in both)

    @property
    def spread(self) -> tuple[float, float] | None:
        """Lowest and highest value over the seeds."""
        vals = [p["value"] for p in self.points]
        return (min(vals), max(vals)) if vals else None

    @property
    def sd(self) -> float | None:
        """Standard deviation over the seeds (None below two)."""
        vals = [p["value"] for p in self.points]
        return statistics.stdev(vals) if len(vals) > 1 else None


def _configurations(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Trials grouped into configurations: the k-th trial of given params and seed index belongs to the k-th
    configuration of those params. Without repeats every trial has seed index 0, so each is its own; two
    random samples that happen to draw the same values stay two configurations."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    seen: dict[tuple[str, int], int] = {}
    for r in sorted(rows, key=lambda r: (r.get("seed_index", 0), r["trial"])):
        params = json.dumps(r["params"], sort_keys=True, default=str)
        nth = seen.get((params, r.get("seed_index", 0)), 0)
        seen[(params, r.get("seed_index", 0))] = nth + 1
        groups.setdefault((params, nth), []).append(r)
    return list(groups.values())


def rank(rows: list[dict[str, Any]], spec: SearchSpec) -> list[Entry]:
    """The ranking of the search's configurations, best first (module docstring); `rank` numbers from 1.
    A configuration whose seeds reached different rungs is ranked at the lowest of them."""
    rungs, budget = spec.rungs(), spec.budget
    entries = []
    for trials in _configurations(rows):
        measured = [(t, r) for t in trials if (r := reached(t, rungs)) is not None]
        rung = min((r for _, r in measured), default=None)
        points = [point_at(t, rung) for t, _ in measured] if rung is not None else []
        tier = UNMEASURED if rung is None else FULL if rung >= budget else EARLY
        entries.append(Entry(trials[0]["params"], trials, rung, points, tier))
    sign = -1.0 if spec.tune.mode == "max" else 1.0
    entries.sort(key=lambda e: (e.tier, -(e.rung or 0), -len(e.points), e.value is None,
                                sign * (e.value or 0.0), e.name))
    for i, e in enumerate(entries, 1):
        e.rank = i
    return entries


def pick_best(entries: list[Entry]) -> Entry | None:
    """The first of the ranking, if it was measured at a rung."""
    best = entries[0] if entries else None
    return best if best is not None and best.value is not None and math.isfinite(best.value) else None


def status_label(e: Entry, spec: SearchSpec) -> str:
    """What the table says of a configuration: completed, or at which rung (and epoch) it was ranked."""
    statuses = {t["status"] for t in e.trials}
    seeds = f", {len(e.points)} of {len(e.trials)} seeds measured" if len(e.points) < len(e.trials) else ""
    if e.tier == FULL:
        return COMPLETED + seeds
    if e.tier == UNMEASURED:
        return "/".join(sorted(statuses))
    rungs = spec.rungs()
    why = STOPPED if statuses == {STOPPED} else "/".join(sorted(statuses))
    return f"{why}: ranked at rung {rungs.index(e.rung) + 1} of {len(rungs)} (epoch {e.rung}){seeds}"


def noisy_stops(rows: list[dict[str, Any]], spec: SearchSpec) -> tuple[int, int]:
    """(trials ASHA stopped, those of them whose interval at the rung where they stopped overlapped the
    interval of a trial that went on from that rung): the second are stops within the proxy's noise."""
    rungs = spec.rungs()
    stopped = noisy = 0
    for t in rows:
        rung = reached(t, rungs)
        if t["status"] != STOPPED or rung is None or rung >= spec.budget:
            continue
        stopped += 1
        p = point_at(t, rung)
        went_on = [point_at(o, rung) for o in rows if (reached(o, rungs) or 0) > rung]
        if p is not None and any(q is not None and overlap(ends(p), ends(q)) for q in went_on):
            noisy += 1
    return stopped, noisy

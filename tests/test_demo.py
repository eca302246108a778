"""`vpace demo --quick`: the same code path as `make demo` (synthetic data -> Ray pre-training -> retrieval
vs random init -> attention -> report), smaller. Runs the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from conftest import own_session, ray_env


def _demo(runs: Path, ray_tmpdir: str, name: str) -> str:
    """`vpace demo --quick` as a user runs it; its stdout (stderr next to it in `<name>.err`)."""
    env = ray_env(ray_tmpdir)
    out, err = runs.parent / f"{name}.out", runs.parent / f"{name}.err"
    cmd = [sys.executable, "-m", "vpace.cli", "demo", "--quick", "--runs", str(runs)]
    with own_session(cmd, env, out, err) as proc:
        returncode = proc.wait()
    assert returncode == 0, out.read_text()[-3000:] + err.read_text()[-3000:]
    return out.read_text()


def _checkpoints(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.glob("checkpoint_*/*")}


def _ray_sessions(ray_tmpdir: str) -> list[str]:
    return sorted(p.name for p in Path(ray_tmpdir).rglob("session_2*"))


@pytest.mark.slow
def test_quick_demo_writes_a_wellformed_report_and_a_second_run_reuses_it(no_ray, tmp_path: Path,
                                                                           ray_tmpdir: str) -> None:
    runs = tmp_path / "runs"
    out = _demo(runs, ray_tmpdir, "first")
    for n in range(1, 6):  # progress: every stage announced
        assert f"[demo {n}/5]" in out

    run = runs / "demo-quick"
    for rel in ("report.md", "curves.png", "metrics.csv", "steps.csv", "eval/attention.png",
                "eval/retrieval.json", "demo_summary.json"):
        assert (run / rel).is_file() and (run / rel).stat().st_size > 0, rel

    s = json.loads((run / "demo_summary.json").read_text())
    assert 0.0 <= s["pace_acc"] <= 1.0 and s["pace_chance"] == pytest.approx(0.25)
    n_test = s["num_test"]
    assert isinstance(n_test, int) and n_test > 0
    for layer in ("p5", "p4"):
        for model in ("pretrained", "random"):
            top1 = s["top1"][layer][model]
            assert 0.0 <= top1 <= 100.0 and math.isfinite(top1)
            # top-1 is a count of correct test videos over n_test: anything else is a wrong denominator
            assert abs(top1 * n_test / 100 - round(top1 * n_test / 100)) < 1e-6

    # the printed summary quotes the same numbers as the file
    m = re.search(r"retrieval top-1 p5: pre-trained ([\d.]+)%\s+vs random init ([\d.]+)%", out)
    assert m, out[-2000:]
    assert float(m.group(1)) == pytest.approx(s["top1"]["p5"]["pretrained"], abs=0.05)
    assert float(m.group(2)) == pytest.approx(s["top1"]["p5"]["random"], abs=0.05)

    report = (run / "report.md").read_text()
    assert "![attention](eval/attention.png)" in report and "![loss and accuracy](curves.png)" in report
    row = re.search(r"^\| pretrained \| p5 \| video \| ([\d.]+) \|", report, re.M)
    assert row and float(row.group(1)) == pytest.approx(s["top1"]["p5"]["pretrained"], abs=0.05)

    # a second run reuses the data set, the finished training (no checkpoint rewritten) and cached features
    ckpts, sessions = _checkpoints(run), _ray_sessions(ray_tmpdir)
    assert ckpts and sessions
    again = _demo(runs, ray_tmpdir, "second")
    assert "reused)" in again
    assert _checkpoints(run) == ckpts
    assert _ray_sessions(ray_tmpdir) == sessions  # a finished run returns without starting Ray
    assert json.loads((run / "demo_summary.json").read_text())["top1"] == s["top1"]

"""`make gpu-check` without a GPU: the dry run passes from an un-installed checkout, results are judged right.

The dry run runs in a child python that sees this machine the way a bare GPU machine would: vpace is not
installed (the editable-install finder is removed) and Ray, decord and PyAV cannot be imported. So it proves
that the check, the CUDA test modules it collects and the AOT child process start from the source tree alone.
"""

import csv
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.common import Checks

BARE_MACHINE = textwrap.dedent('''
    """sitecustomize of the dry-run test: no vpace install, no Ray / decord / PyAV (as on a GPU machine)."""
    import sys

    editable = [f for f in sys.meta_path if getattr(f, "__module__", "").startswith("__editable__")]
    sys.meta_path[:] = [f for f in sys.meta_path if f not in editable]

    class _Hide:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("ray", "decord", "av"):
                raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)", name=name)
            return None

    sys.meta_path.insert(0, _Hide())
''')


def test_dry_run_from_a_bare_checkout(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BARE_MACHINE)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    results = tmp_path / "results"
    script = Path(gpu_check.__file__)  # run as a file from elsewhere: nothing comes from the working dir
    proc = subprocess.run([sys.executable, str(script), "--cpu", "--results", str(results)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "vpace_kernels from the source tree" in out and "no GPU (" in out
    for part in ("== 1 CUDA tests", "== 2 pace-jitter", "== 3 contrastive loss", "== 4 training step",
                 "== 5 DataLoader feed rate", "== 6 results"):
        assert part in out, part
    assert "skipped: decord is not importable" in out and "wrong results: 0" in out
    collected = re.search(r"collected (\d+) CUDA tests", out)  # collected, not run, in the bare environment
    assert collected and int(collected.group(1)) >= 3 * len(gpu_check.CUDA_TEST_FILES)
    rows = {area: list(csv.DictReader((results / f"{area}.csv").open())) for area in ("kernels", "train")}
    kernels = {r["kernel"] for r in rows["kernels"]}
    assert kernels == {"pace_jitter", "contrastive_loss"}
    assert {r["device"] for r in rows["kernels"]} == {"cpu"}
    assert {r["provider"] for r in rows["train"]} == {"fused_augment_channels_last", "eager_augment"}
    assert all(math.isfinite(float(r["value"])) for r in rows["kernels"] if r["metric"].startswith("time_ms"))


def test_junit_report_counts_and_skip_reasons(tmp_path):
    """Step 1 reads pytest's junit report: counts, failures and each skip's reason (a skip on a GPU is a
    failure unless it is the multi-GPU test's on a one-GPU machine)."""
    xml = tmp_path / "junit.xml"
    xml.write_text(f"""<testsuites><testsuite tests="4" failures="1" errors="0" skipped="2">
        <testcase name="a"/><testcase name="b"><failure message="off"/></testcase>
        <testcase name="c"><skipped message="{gpu_check.TWO_GPUS}"/></testcase>
        <testcase name="d"><skipped message="no CUDA device here"/></testcase></testsuite></testsuites>""")
    n, bad, why = gpu_check.junit_counts(xml)
    assert (n, bad) == (4, 1) and [w for w in why if gpu_check.TWO_GPUS not in w] == ["no CUDA device here"]


def test_checks_fail_the_run_on_a_wrong_result():
    checks = Checks()
    assert checks.within("close enough", 1e-5, 1e-4) and not checks.failures
    assert not checks.within("too far", 2e-4, 1e-4)
    assert not checks.within("not a number", float("nan"), 1e-4)
    assert [f.split(":")[0] for f in checks.failures] == ["too far", "not a number"]


def test_summary_judges_the_goals():
    """Issue 13's goals from rows: ratios are computed from the right rows and compared the right way."""
    sh = "B=30 T=16 112x112 from 128x171 out=fp32"
    jit = [dict(kernel="pace_jitter", provider="triton_kernel", shape=sh, metric=m, value=v) for m, v in (
        ("speedup_vs_reference_x", "80"), ("speedup_vs_eager_batched_x", "4"),
        ("pct_of_copy_bandwidth", "61"))]
    con = [dict(kernel="contrastive_loss", provider=p, shape="N=8192,D=128,fp32", metric=m, value=v)
           for p, m, v in (("fused", "fwd_bwd_time_ms", "2.6"), ("eager", "fwd_bwd_time_ms", "2.0"),
                           ("fused", "peak_mb", "10"), ("eager", "peak_mb", "600"))]
    train = [dict(kernel="train_step", provider=p, shape="r21d", metric="clips_per_s", value=v)
             for p, v in (("fused_augment_channels_last", "600"), ("eager_augment_channels_last", "400"))]
    got = {what: (measured, met) for what, _, measured, met in
           gpu_check.summary({"kernels": jit + con, "train": train})}
    assert got[f"pace-jitter vs per-frame reference ({sh})"] == ("80", "yes")
    assert got[f"pace-jitter vs batched eager ({sh})"] == ("4", "NO")
    assert got[f"pace-jitter % of copy bandwidth ({sh})"] == ("61", "yes")
    assert got["contrastive fused / eager time (N=8192,D=128,fp32)"] == ("1.3", "yes")
    assert got["contrastive eager / fused peak memory (N=8192,D=128,fp32)"] == ("60", "yes")
    assert got["contrastive N=65536 fp32 runs (fused ms)"] == ("-", "n/a")
    assert got["train step fused / eager augment clips/s channels last"] == ("1.5", "yes")
    assert got["train step fused / eager augment clips/s"] == ("-", "n/a")


def test_feed_rate_rows_on_tiny_videos():
    """Step 5 at its dry-run size where decord is installed: workers feed real decoded pace clips from raw
    camera-like video and from its prepared copies (read through their manifests, at the training size)."""
    pytest.importorskip("decord")
    rows = gpu_check.feed_rows((1,), small=True)
    assert [r["provider"] for r in rows] == ["raw/dataloader_1_workers", "prepared/dataloader_1_workers"]
    assert all(r["metric"] == "clips/s" and float(r["value"]) > 0 for r in rows)
    assert "(raw)" in rows[0]["shape"] and "(prepared)" in rows[1]["shape"]


def _parts(log: list[str], clock: list[float], cost: dict[str, float], required: str = "1") -> list:
    """Parts that take ``cost[key]`` seconds of a fake clock and log that they ran."""
    def run(key: str):
        def part(left: float) -> list[dict]:
            clock[0] += cost[key]
            log.append(key)
            return [dict(kernel=key, provider="p", shape="s", metric="m", value="1")]
        return part

    return [gpu_check.Part(k, f"{k} part", "kernels", run(k), required=k == required) for k in cost]


def test_parts_that_do_not_fit_before_the_deadline_are_skipped_and_said(monkeypatch, capsys):
    """The check's schedule on a fake clock: parts run while the time they need is left; the rest are
    skipped with the reason; a required part that cannot run is a failure; the rows so far are kept."""
    clock = [0.0]
    monkeypatch.setattr(gpu_check.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(gpu_check, "NEEDS_S", {"1": 10.0, "2": 10.0, "3": 100.0, "4": 10.0})
    check = gpu_check.Check(deadline_s=60.0 + gpu_check.RESERVE_S, results=None, gpu_name=None)
    log: list[str] = []
    check.run(_parts(log, clock, {"1": 30.0, "2": 5.0, "3": 1.0, "4": 5.0}))
    out = capsys.readouterr().out
    assert log == ["1", "2", "4"] and len(check.rows["kernels"]) == 3
    assert "skipped: 25 s left before the 75 s deadline, it needs ~100 s" in out and not check.checks.failures
    clock[0] = 0.0
    late = gpu_check.Check(deadline_s=5.0 + gpu_check.RESERVE_S, results=None, gpu_name=None)
    late.run(_parts([], clock, {"1": 1.0}))
    assert late.checks.failures == ["1 part: not run, 5 s left before the 20 s deadline, it needs ~10 s"]


def test_the_watchdog_ends_a_stuck_check_at_its_deadline(tmp_path):
    """A part that never returns: at the deadline the watchdog appends the rows measured so far, names the
    part it stopped and what did not run, prints the summary and exits (the timeout is only a safety net)."""
    code = textwrap.dedent(f"""
        import threading, sys
        sys.path.insert(0, {str(Path(gpu_check.__file__).parents[1])!r})
        from benchmarks import gpu_check
        gpu_check.NEEDS_S, gpu_check.RESERVE_S = dict.fromkeys(gpu_check.NEEDS_S, 0.0), 1.0
        check = gpu_check.Check(4.0, {str(tmp_path)!r}, None)
        threading.Timer(4.0, check.on_deadline).start()
        row = dict(kernel="k", provider="p", shape="s", metric="m", value="1")
        check.run([gpu_check.Part("2", "2 quick", "kernels", lambda s: [row]),
                   gpu_check.Part("3", "3 stuck", "kernels", lambda s: threading.Event().wait()),
                   gpu_check.Part("4", "4 never", "kernels", lambda s: [row])])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deadline: 4 s reached during 3 stuck; not run: 4 never" in proc.stdout
    assert "3 stuck: stopped by the deadline" in proc.stdout and "wrong results: 0" in proc.stdout
    assert len(list(csv.DictReader((tmp_path / "kernels.csv").open()))) == 1

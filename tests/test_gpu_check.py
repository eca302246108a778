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

from benchmarks import data, gpu_check
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
    """Step 5 at its dry-run size where decord is installed: a worker feeds real decoded pace clips."""
    pytest.importorskip("decord")
    (row,) = data.feed_rows((1,), small=True)
    assert row["provider"] == "dataloader_1_workers" and row["metric"] == "clips/s"
    assert float(row["value"]) > 0 and "2 videos 320x240" in row["shape"]

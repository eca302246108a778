"""The wheel a user installs: only import names vpace owns, and every package of the source tree inside.

Built offline from a copy of the tree (so the shared checkout gets no build/ or egg-info), with the venv's
own pip and setuptools (--no-build-isolation): a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWNED = {"vpace", "vpace_kernels"}  # import names vpace may install; `kernels/` is installed as vpace_kernels
FOLDERS = {"vpace": "vpace", "kernels": "vpace_kernels"}  # source folder -> its name in the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "results")
    for folder in (*FOLDERS, "benchmarks"):  # benchmarks/ is in the tree but must not be shipped
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    dist = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "-q", "-w", str(dist), str(src)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (whl,) = dist.glob("vpace-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_installs_only_names_vpace_owns(wheel) -> None:
    top = {n.split("/")[0] for n in wheel.namelist()}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top - dist_info == OWNED, f"top-level names in the wheel: {sorted(top - dist_info)}"
    for name in wheel.namelist():  # setuptools' own record of the import names, where it writes one
        if name.endswith(".dist-info/top_level.txt"):
            assert set(wheel.read(name).decode().split()) <= OWNED


def test_every_package_module_and_named_config_is_inside(wheel) -> None:
    """pyproject lists the packages by hand: a new subpackage must not be left out of the wheel."""
    expected = {f"{name}/{p.relative_to(ROOT / folder).as_posix()}"
                for folder, name in FOLDERS.items() for p in (ROOT / folder).rglob("*")
                if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    assert {"vpace/eval/__init__.py", "vpace_kernels/__init__.py", "vpace/configs/demo.yaml"} <= expected
    missing = sorted(expected - set(wheel.namelist()))
    assert not missing, f"in the source tree but not in the wheel: {missing}"

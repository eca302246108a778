"""Run a source checkout without `pip install`: the one bootstrap the tests and `make gpu-check` share.

A bare GPU machine has the checkout and a python3 with torch/triton, but vpace is not installed there, so
neither ``vpace`` nor ``vpace_kernels`` (the wheel's name for the ``kernels/`` folder) is importable. This
puts the repository root on ``sys.path`` and, when ``vpace_kernels`` is still missing, a directory holding a
``vpace_kernels -> kernels/`` symlink. Being ordinary ``sys.path`` entries (also exported in PYTHONPATH),
they reach child processes too: the AOT compile child of ``vpace_kernels.aot``, DataLoader workers, pytest.
Where vpace is installed (editable or not) nothing is shadowed: the root is appended, not prepended.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS_NAME = "vpace_kernels"  # pyproject's package-dir maps the kernels/ folder to this import name

__all__ = ["ROOT", "use_source_tree"]


def _add_path(entry: str) -> None:
    if entry not in sys.path:
        sys.path.append(entry)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if entry not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([*parts, entry])


def _kernels_link() -> Path:
    """A directory (per checkout, in the temp dir) whose ``vpace_kernels`` entry links to ``ROOT/kernels``."""
    tag = hashlib.sha1(str(ROOT).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"vpace-src-{tag}"
    folder.mkdir(exist_ok=True)
    link = folder / KERNELS_NAME
    if not link.is_symlink() or link.resolve() != (ROOT / "kernels").resolve():
        tmp = folder / f".{KERNELS_NAME}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(ROOT / "kernels", target_is_directory=True)
        os.replace(tmp, link)  # atomic: processes starting together may race here
    return folder


def use_source_tree() -> str:
    """Make ``vpace``, ``vpace_kernels`` and ``benchmarks`` importable from this checkout; returns where
    ``vpace_kernels`` comes from ("installed" or "source tree")."""
    _add_path(str(ROOT))
    if importlib.util.find_spec(KERNELS_NAME) is not None:
        return "installed"
    _add_path(str(_kernels_link()))
    importlib.invalidate_caches()
    if importlib.util.find_spec(KERNELS_NAME) is None:
        raise ImportError(f"{KERNELS_NAME}: could not expose {ROOT / 'kernels'} under that name")
    return "source tree"

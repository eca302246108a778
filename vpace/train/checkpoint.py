"""Checkpoints: one directory per save, written atomically, loaded with `weights_only=True`, and THE rule for
"the latest good checkpoint" that every reader (resume, export, eval, report) uses.

A checkpoint directory (what `ray.train.report(checkpoint=...)` uploads): `state.pt`, a `torch.save` of plain
containers and tensors only (so loading never unpickles arbitrary objects), `meta.json` (step, epoch, task,
backbone and its state-dict prefix; readable without torch) and small JSON side files. We write into a hidden
sibling and `os.replace` it into place, so a crash mid-save never leaves a folder that looks complete. Ray
then copies the folder into `<run>/checkpoint_N` *non*-atomically, so a kill mid-copy can still leave a
half-written one: readers take the newest checkpoint that loads and name each newer broken one in a warning
(`_first_good`). A checkpoint that cannot be loaded raises `CheckpointError` (the folder and why; it never
advises unsafe unpickling).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from vpace.errors import UserError

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT = "vpace-checkpoint-1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any],
                    json_files: dict[str, Any] | None = None) -> Path:
    """Write `state` (+ `meta`, + small JSON side files) as checkpoint directory `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1, default=str))
        for name, obj in (json_files or {}).items():
            (tmp / name).write_text(json.dumps(obj, default=str))
        _fsync_dir(tmp)
        if path.exists():  # a directory cannot be os.replace'd onto a non-empty one: move the old one aside
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


class CheckpointError(UserError):
    """A checkpoint that cannot be used: names the folder and says why (one line, no unpickling advice)."""

    def __init__(self, path: str | os.PathLike, why: str) -> None:
        self.path, self.why = str(path), why
        super().__init__(f"checkpoint {self.path}: {why}")

    def __reduce__(self):  # raised inside Ray workers: keep (path, why) across the pickle
        return (type(self), (self.path, self.why))


class SkippedCheckpointWarning(UserWarning):
    """A broken checkpoint was passed over for the previous good one."""


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / META_FILE
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, f"no {META_FILE} (an unfinished copy?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"{META_FILE} is not valid UTF-8 JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot read {META_FILE} ({e.strerror})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(path, f"{META_FILE} is not a vpace checkpoint record (format {got!r}, "
                                    f"expected {FORMAT!r})")
    return meta


def _load_failure(e: Exception, name: str) -> str:
    """Why torch.load failed, in one line. torch's own text advises `weights_only=False` (i.e. running
    whatever the file holds); a checkpoint that needs it is not a vpace checkpoint: never shown."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f"asks to import `{m.group(1)}`" if m else "holds objects other than tensors and plain data"
        return (f"{name} refused: it {what}, which a vpace checkpoint never does "
                "(not written by vpace, or tampered with)")
    if "mmap can only be used" in text:
        return f"{name} is not a torch zip archive (corrupt or not written by torch.save)"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(e).__name__
    why = f"{name} is truncated or corrupt ({first})"
    return why if "weights_only" not in why else f"{name} is truncated or corrupt"


def load_torch_file(f: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False,
                    where: str | os.PathLike | None = None) -> Any:
    """`torch.load(f, weights_only=True)`; `CheckpointError` naming `where` (default: the file) if it
    cannot be loaded. `mmap=True` checks the whole pickle without reading the tensor data."""
    f = Path(f)
    try:
        return torch.load(f, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, IndexError) as e:
        raise CheckpointError(where if where is not None else f, _load_failure(e, f.name)) from None


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False
               ) -> dict[str, Any]:
    """Load a checkpoint's state with `weights_only=True` (no arbitrary unpickling); `CheckpointError` if it
    cannot be."""
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise CheckpointError(path, f"no {STATE_FILE} (an unfinished copy?)")
    state = load_torch_file(f, map_location, mmap=mmap, where=path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(path, f"{STATE_FILE} holds no model state dict")
    return state


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Meta + state readable (tensor data not read); returns the meta. Raises `CheckpointError`."""
    meta = read_meta(path)
    load_state(path, mmap=True)
    return meta


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint folder, complete or not: a half-copied one counts (it is skipped *with* a warning)."""
    p = Path(path)
    return p.is_dir() and ((p / STATE_FILE).exists() or (p / META_FILE).exists())


def _newest_first(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, highest step first (the step of the folder name when meta is broken)."""
    def key(c: Path) -> tuple[int, str]:
        try:
            step = int(read_meta(c).get("step", -1))
        except (CheckpointError, TypeError, ValueError):
            m = re.search(r"(\d+)", c.name)
            step = int(m.group(1)) if m else -1
        return step, c.name

    found = [c for c in run_dir.iterdir() if not c.name.startswith(".") and is_checkpoint(c)]
    return sorted(found, key=key, reverse=True)


T = TypeVar("T")


def _first_good(run_dir_or_ckpt: str | os.PathLike, use: Callable[[Path], T]) -> tuple[Path, T]:
    """THE rule for "the latest good checkpoint": a checkpoint folder given directly must work; under a run
    directory the newest one that `use` accepts wins and each newer broken one is named in a warning."""
    p = Path(run_dir_or_ckpt)
    if is_checkpoint(p):
        return p, use(p)
    if not p.is_dir():
        raise FileNotFoundError(f"no run directory or checkpoint at {p}")
    candidates = _newest_first(p)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint (a folder with {STATE_FILE} + {META_FILE}) under {p}")
    broken: list[CheckpointError] = []
    for c in candidates:
        try:
            out = use(c)
        except CheckpointError as e:
            broken.append(e)
            continue
        for e in broken:
            warnings.warn(SkippedCheckpointWarning(f"skipping checkpoint {e.path}: {e.why}; using the "
                                                   f"previous good one, {c.name}"), stacklevel=3)
        return c, out
    if len(broken) == 1:
        raise broken[0]
    older = "; ".join(f"{Path(e.path).name}: {e.why}" for e in broken[1:])
    raise CheckpointError(broken[0].path, f"{broken[0].why}; no older checkpoint of the run loads either "
                                          f"({older})")


def find_latest(run_dir_or_ckpt: str | os.PathLike) -> Path:
    """The checkpoint itself, or the newest good one of a run directory (see `_first_good`)."""
    return _first_good(run_dir_or_ckpt, check_checkpoint)[0]


def load_latest(run_dir_or_ckpt: str | os.PathLike, map_location: str | torch.device = "cpu"
                ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(path, state, meta) of the checkpoint itself or of the newest good one of a run directory."""
    path, (meta, state) = _first_good(run_dir_or_ckpt, lambda c: (read_meta(c), load_state(c, map_location)))
    return path, state, meta


def checkpoint_dir_name(step: int, taken: frozenset[str] = frozenset()) -> str:
    """`checkpoint_<step>`, suffixed `_1`, `_2`, ... past the names in `taken`: a resume that passed over a
    broken checkpoint must not reuse its name (Ray would later delete the new folder as the old entry)."""
    name = base = f"checkpoint_{step:08d}"
    n = 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name

"""Paths and storage URIs: what is local, what is remote, and the absolute paths a Ray worker needs.

Ray Train workers and Tune trials run in their own working directories, so a config's relative paths are made
absolute on the driver (`resolve_paths`). Run storage is probed with a real write before Ray starts
(`check_storage`): a bad `run.storage` is one line, not a worker traceback minutes later.
"""

from __future__ import annotations

import contextlib
import copy
import uuid
from pathlib import Path

from vpace.config import Config, ConfigError


def is_uri(path: str) -> bool:
    """A storage URI (s3://, gs://, file://, ...), not a plain path: never resolved against the cwd."""
    return "://" in path


def is_remote(uri: str) -> bool:
    """Storage that is not this machine's file system (the one test of it: run dirs, outputs, paths)."""
    return is_uri(uri) and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    """The path of a local run dir given as a path or a file:// URI (`is_remote` is False)."""
    return Path(uri.removeprefix("file://"))


def resolve_paths(cfg: Config) -> Config:
    """A copy with absolute data/storage/weights/proxy paths (URIs as they are)."""
    cfg = copy.deepcopy(cfg)

    def fix(p: str | None) -> str | None:
        return p if p is None or is_uri(p) else str(Path(p).expanduser().resolve())

    cfg.data.index = fix(cfg.data.index)  # type: ignore[assignment]
    cfg.data.cache_dir = fix(cfg.data.cache_dir)
    cfg.model.weights = fix(cfg.model.weights)
    cfg.run.storage = fix(cfg.run.storage)  # type: ignore[assignment]
    cfg.proxy.index = fix(cfg.proxy.index)
    return cfg


def check_storage(storage: str, field: str = "run.storage") -> None:
    """Write and delete a probe file in `storage` (creating, then removing, missing folders on the way);
    `ConfigError(field)` if that fails: a read-only place, a parent that cannot be created, a URI whose file
    system refuses the write."""
    probe = f".vpace-probe-{uuid.uuid4().hex[:8]}"
    if not is_remote(storage):
        root = local_path(storage).expanduser().absolute()
        created = [d for d in (root, *root.parents) if not d.exists()]  # removed again: no trace left
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / probe).write_bytes(b"")
            (root / probe).unlink()
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise ConfigError(field, f"{storage} is not a writable folder ({why})") from None
        finally:
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()
        return
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage)
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root.rstrip('/')}/{probe}") as f:
            f.write(b"")
        fs.delete_file(f"{root.rstrip('/')}/{probe}")
    except (OSError, ValueError, pyarrow.ArrowException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(field, f"{storage} refused a probe write ({first})") from None


def run_dir_of(cfg: Config) -> str:
    """`<run.storage>/<run.name>`: where a run's checkpoints and outputs live (a path or a URI)."""
    return f"{cfg.run.storage.rstrip('/')}/{cfg.run.name}"


__all__ = ["check_storage", "is_remote", "is_uri", "local_path", "resolve_paths", "run_dir_of"]

"""Load a backbone (+ pace head) for evaluation from whatever the user points at.

Accepted sources: a run directory (its latest checkpoint), a checkpoint directory, an exported backbone
``.safetensors`` or a ``.pt`` state dict; or ``None`` with a backbone name for the random-init baseline.
Everything is read with ``weights_only=True`` / safetensors (a checkpoint is data, never code). The backbone
name comes from the checkpoint's meta / safetensors metadata, the run config, or ``backbone=``, in that order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from torch import Tensor, nn

from vpace.config import Config, load_config, stored_config
from vpace.data.pace import parse_pace_set
from vpace.errors import UserError
from vpace.models import build_backbone
from vpace.models.common import read_state_dict
from vpace.train.checkpoint import STATE_FILE, is_checkpoint, load_latest, load_torch_file

CONFIG_NAMES = ("config.yaml", "config.yml")
# Where foreign training wrappers keep the backbone (first match wins; moco query encoder first).
BACKBONE_PREFIXES = ("encoder_q.backbone.", "model.backbone.", "backbone.", "encoder.backbone.")


@dataclass
class LoadedModel:
    backbone: nn.Module
    backbone_name: str
    digest: str  # content hash of the weights (cache key), or "random-<name>-seed<s>"
    source: str
    config: Config | None = None
    pace_head: nn.Linear | None = None
    paces: tuple[Fraction, ...] | None = None


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def find_config(path: Path) -> Path | None:
    """The run's config.yaml next to, or up to three levels above, a checkpoint or weights file."""
    d = path if path.is_dir() else path.parent
    for cand in [d, *list(d.parents)[:3]]:
        for name in CONFIG_NAMES:
            if (cand / name).is_file():
                return cand / name
    return None


def split_state(
    state: dict[str, Tensor], prefix: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """-> (backbone state, pace-head state). ``prefix`` is the backbone's key prefix when known (vpace
    checkpoints record it); else the known wrapper prefixes are tried; a bare backbone passes through."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    for p in ([prefix] if prefix is not None else list(BACKBONE_PREFIXES)):
        bb = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        if bb:
            head_prefix = (p[: -len("backbone.")] if p.endswith("backbone.") else "") + "pace_head."
            head = {k[len(head_prefix):]: v for k, v in state.items() if k.startswith(head_prefix)}
            return bb, head
    return state, {}


def _config_from(obj: object) -> Config | None:
    if isinstance(obj, Config):
        return obj
    if isinstance(obj, dict) and obj:
        return stored_config(obj)
    return None


def _read_source(path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], Config | None, dict, str]:
    """-> (backbone state, head state, config, meta, digest) of a checkpoint dir / run dir / weights file."""
    if path.is_dir():
        ckpt, state, meta = load_latest(path)  # the checkpoint itself, or the run's newest good one
        bb, head = split_state(state["model"], meta.get("backbone_prefix", "backbone."))
        cfg = _config_from(state.get("config"))
        return bb, head, cfg, meta, file_digest(ckpt / STATE_FILE)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        bb, head = split_state(read_state_dict(path))
        return bb, head, None, meta, file_digest(path)
    obj = load_torch_file(path)
    cfg, meta = None, {}
    if isinstance(obj, dict):
        cfg = _config_from(obj.get("config")) if isinstance(obj.get("config"), dict) else None
        for key in ("model", "state_dict", "model_state"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a model state dict (got {type(obj).__name__})")
    bb, head = split_state(obj)
    return bb, head, cfg, meta, file_digest(path)


def load_model(
    source: str | Path | None,
    *,
    backbone: str | None = None,
    seed: int = 0,
    with_head: bool = False,
) -> LoadedModel:
    """Backbone (eval mode, CPU) from ``source``; ``source=None`` -> random init of ``backbone`` (baseline).

    ``with_head=True`` also loads the pace classifier (needed by ``speed``); its paces come from the config.
    """
    if source is None:
        if backbone is None:
            raise UserError("a random-init baseline needs a backbone name (backbone=...)")
        torch.manual_seed(seed)
        net = build_backbone(backbone)
        return LoadedModel(net.eval(), backbone, f"random-{backbone}-seed{seed}", "random")

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    bb_state, head_state, cfg, meta, digest = _read_source(path)
    if cfg is None and (cfg_path := find_config(path)) is not None:
        cfg = load_config(cfg_path)
    name = meta.get("backbone") or (cfg.model.backbone if cfg else None) or backbone
    if backbone is not None and name != backbone:
        raise UserError(f"{path}: holds backbone {name!r} but backbone={backbone!r} was given")
    if not name:
        raise UserError(f"{path}: cannot tell which backbone this is (no checkpoint meta, safetensors "
                         f"metadata or config.yaml); pass backbone=...")
    net = build_backbone(name)
    try:
        net.load_state_dict(bb_state)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches: say which file and backbone
        detail = " ".join(str(e).split())[:400]
        raise UserError(f"{path}: weights do not fit backbone {name!r}: {detail}") from None
    out = LoadedModel(net.eval(), name, digest, str(path), cfg)
    if with_head:
        if not head_state:
            raise UserError(f"{path}: has no pace head (pace_head.*); use a pace pre-training checkpoint, "
                             f"not an exported backbone or an RSPNet run")
        w = head_state["weight"]
        head = nn.Linear(w.shape[1], w.shape[0])
        head.load_state_dict(head_state)
        paces = parse_pace_set(cfg.pace.paces if cfg else meta.get("paces", ""))
        if len(paces) != w.shape[0]:
            raise UserError(f"{path}: pace head has {w.shape[0]} classes but the paces are {paces}")
        out.pace_head, out.paces = head.eval(), paces
    return out


def describe(m: LoadedModel) -> dict[str, str]:
    return {"backbone": m.backbone_name, "source": m.source, "digest": m.digest,
            "paces": json.dumps([str(p) for p in m.paces]) if m.paces else ""}


def eval_dir(source: str | Path | None, out_dir: str | Path | None) -> Path:
    """Where evaluation outputs go: ``out_dir`` if given, else ``<run>/eval`` for a run or one of its
    checkpoints (``vpace report`` reads it there), else ``runs/eval/<weights file stem>``."""
    if out_dir is not None:
        return Path(out_dir)
    if source is None:
        return Path("runs/eval/random")
    p = Path(source)
    if p.is_dir():
        return (p.parent if is_checkpoint(p) else p) / "eval"
    return Path("runs/eval") / p.stem

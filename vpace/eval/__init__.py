"""Evaluation: retrieval, fine-tuning / probes, attention maps, embeddings, speed plots, reports.

Heavy modules (Ray, matplotlib) load on first use, so ``import vpace.eval`` stays cheap for the CLI.
One plain function per CLI verb: ``retrieve``, ``finetune`` (+ ``linear_probe``, ``knn_classify``),
``attention``, ``embed`` / ``embed_to_file``, ``speed``, ``write_report``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "retrieve": "vpace.eval.retrieval",
    "finetune": "vpace.eval.finetune",
    "linear_probe": "vpace.eval.probes",
    "knn_classify": "vpace.eval.probes",
    "attention": "vpace.eval.attention",
    "embed": "vpace.eval.embed",
    "embed_to_file": "vpace.eval.embed",
    "speed": "vpace.eval.speed",
    "write_report": "vpace.eval.report",
    "load_model": "vpace.eval.loading",
    "extract_features": "vpace.eval.features",
    "topk_retrieval": "vpace.eval.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vpace.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

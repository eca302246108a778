"""Evaluation: retrieval, fine-tuning / probes, attention maps, embeddings, speed plots, reports.

One plain function per CLI verb: ``retrieve``, ``finetune`` (+ ``linear_probe``, ``knn_classify``),
``attention``, ``embed`` / ``embed_to_file``, ``speed``, ``write_report``; and the two pieces they share,
``load_model`` and ``extract_features``. No submodule is named like a function here, so ``vpace.eval.speed``
is the function whatever was imported before (tests/test_architecture.py checks it).
"""

from vpace.eval.attention_maps import attention
from vpace.eval.embedding import embed, embed_to_file
from vpace.eval.features import extract_features
from vpace.eval.finetuning import finetune
from vpace.eval.loading import load_model
from vpace.eval.probes import knn_classify, linear_probe
from vpace.eval.report import write_report
from vpace.eval.retrieval import retrieve
from vpace.eval.speed_segments import speed

__all__ = ["attention", "embed", "embed_to_file", "extract_features", "finetune", "knn_classify",
           "linear_probe", "load_model", "retrieve", "speed", "write_report"]

"""Evaluation: retrieval, fine-tuning / probes, attention maps, embeddings, speed plots, reports.

One plain function per CLI verb: ``retrieve``, ``finetune`` (+ ``linear_probe``, ``knn_classify``),
``attention``, ``embed`` / ``embed_to_file``, ``speed``, ``write_report``. Imported eagerly on purpose: three
of them share their module's name (``attention``, ``embed``, ``speed``), and a lazy package attribute would
turn into the submodule as soon as anything imported it. Ray and the data loaders still load on first use.
"""

from vpace.eval.attention import attention
from vpace.eval.embed import embed, embed_to_file
from vpace.eval.features import extract_features
from vpace.eval.finetune import finetune
from vpace.eval.loading import load_model
from vpace.eval.metrics import topk_retrieval
from vpace.eval.probes import knn_classify, linear_probe
from vpace.eval.report import write_report
from vpace.eval.retrieval import retrieve
from vpace.eval.speed import speed

__all__ = ["attention", "embed", "embed_to_file", "extract_features", "finetune", "knn_classify",
           "linear_probe", "load_model", "retrieve", "speed", "topk_retrieval", "write_report"]

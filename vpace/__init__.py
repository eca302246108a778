"""vpace: self-supervised video representation learning by pace prediction and RSPNet."""

__version__ = "0.1.0"


def embed(videos, checkpoint, **kw):  # noqa: ANN001, ANN201 - thin re-export, see vpace.eval.embedding.embed
    """Features of `videos` (paths or a data index) from `checkpoint` as an ``np.ndarray`` [N, D]."""
    from vpace.eval.embedding import embed as _embed

    return _embed(videos, checkpoint, **kw)

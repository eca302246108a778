"""Ray Tune search over pace settings and loss weights, ranked by a downstream proxy (kNN retrieval).

`tune(search_yaml)` is `vpace tune`; `load_spec` validates a search file without starting Ray.
"""

from vpace.tune.run import TuneOutcome, tune
from vpace.tune.space import SearchSpaceError, SearchSpec, load_spec

__all__ = ["SearchSpaceError", "SearchSpec", "TuneOutcome", "load_spec", "tune"]

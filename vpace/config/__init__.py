"""Run configuration: the typed schema (`schema`), its checks (`validation`), YAML and `--set` (`loading`),
and the two vocabularies validation needs, backbone names (`backbones`) and paces (`paces`).

One package so that each fact has one home and every module can be typed against `Config`; the layers above
import from `vpace.config` only.
"""

from vpace.config.backbones import BACKBONES, REGISTRY, RESIDUAL_SUFFIX, base_backbone, unknown_backbone
from vpace.config.loading import (
    deep_merge,
    from_dict,
    load_config,
    named_configs,
    resolve_config_path,
    set_dotted,
    stored_config,
    yaml_mapping,
)
from vpace.config.paces import PaceLike, format_pace, parse_pace, parse_pace_set
from vpace.config.schema import (
    KINETICS_MEAN,
    KINETICS_STD,
    AugmentConfig,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PaceConfig,
    ProxyConfig,
    RSPNetConfig,
    RunConfig,
    ScaleConfig,
)
from vpace.config.validation import (
    CTR_MODES,
    LOADERS,
    METHODS,
    OPTIMIZERS,
    PROJ_HEADS,
    START_POLICIES,
    ConfigError,
    augment_problem,
    pace_set_field,
    validate,
)

__all__ = [
    "BACKBONES", "CTR_MODES", "KINETICS_MEAN", "KINETICS_STD", "LOADERS", "METHODS", "OPTIMIZERS",
    "PROJ_HEADS", "REGISTRY", "RESIDUAL_SUFFIX", "START_POLICIES", "AugmentConfig", "Config", "ConfigError",
    "DataConfig", "ModelConfig", "OptimConfig", "PaceConfig", "PaceLike", "ProxyConfig", "RSPNetConfig",
    "RunConfig", "ScaleConfig", "augment_problem", "base_backbone", "deep_merge", "format_pace", "from_dict",
    "load_config", "named_configs", "pace_set_field", "parse_pace", "parse_pace_set", "resolve_config_path",
    "set_dotted", "stored_config", "unknown_backbone", "validate", "yaml_mapping",
]

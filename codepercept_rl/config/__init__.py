"""Typed configs: YAML recipes + dotted overrides, validated at start-up (see :mod:`.loader`, :mod:`.schema`)."""

from codepercept_rl.config.loader import (
    apply_override,
    dump_yaml,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from codepercept_rl.config.schema import (
    ActorConfig,
    AlgorithmConfig,
    DataConfig,
    JobConfig,
    ModelConfig,
    OptimConfig,
    RayConfig,
    RewardConfig,
    RolloutConfig,
    TrackingConfig,
    TrainerConfig,
)

__all__ = [
    "ActorConfig",
    "AlgorithmConfig",
    "DataConfig",
    "JobConfig",
    "ModelConfig",
    "OptimConfig",
    "RayConfig",
    "RewardConfig",
    "RolloutConfig",
    "TrackingConfig",
    "TrainerConfig",
    "apply_override",
    "dump_yaml",
    "from_dict",
    "load_config",
    "parse_override",
    "to_dict",
]

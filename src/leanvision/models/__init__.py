"""Models: one factory over timm's registry (plus our small nets), local pretrained weights,
fine-tuning strategies and size/cost statistics. Knows nothing of data, training or the CLI."""

from leanvision.models import fast_nets, small_resnets  # noqa: F401  (register our nets in timm)
from leanvision.models.finetune import (
    FINETUNE_STRATEGIES,
    FinetunePlan,
    describe_finetune,
    freeze_norm_stats,
    param_groups,
    plan_finetune,
    unfreeze,
    unfreeze_epoch,
)
from leanvision.models.pretrained import load_pretrained, read_state_dict
from leanvision.models.registry import (
    RECOMMENDED_MODELS,
    create_model,
    list_models,
    model_preprocessing,
)
from leanvision.models.stats import count_flops, count_parameters

__all__ = [
    "FINETUNE_STRATEGIES",
    "RECOMMENDED_MODELS",
    "FinetunePlan",
    "count_flops",
    "count_parameters",
    "create_model",
    "describe_finetune",
    "freeze_norm_stats",
    "list_models",
    "load_pretrained",
    "model_preprocessing",
    "param_groups",
    "plan_finetune",
    "read_state_dict",
    "unfreeze",
    "unfreeze_epoch",
]

"""Training: episodic meta-training, classification pre-training, checkpoints and default models.

- :mod:`.loops`: ``train_episodic`` meta-trains any registered few-shot model on episodes drawn from
  base classes (one backbone pass over support and query together), keeps the state that scores best
  on validation episodes, and writes and resumes checkpoints; ``pretrain`` trains a backbone with a
  linear classification head (for SimpleShot and the fine-tuning baseline).
- :mod:`.validation`: accuracy over fixed validation episodes, from images embedded once.
- :mod:`.recipes`: the class splits of the shared datasets and the recipes of the default models.
- :mod:`.zoo`: ``default_model`` gives a ready model per shared dataset, trained once and cached.
- Checkpoints themselves are :mod:`fsl_xai.checkpoints` (re-exported here).
"""

from ..checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint
from .loops import TrainResult, pretrain, set_threads, torch_threads, train_episodic
from .recipes import (
    CROSS_DOMAIN,
    DEFAULT_SPLITS,
    FROM_PROTONET,
    PRETRAINED_MODELS,
    SELF_TRAINED,
    DefaultRecipe,
    canonical_dataset_name,
    default_class_split,
    default_recipe,
)
from .validation import episode_accuracies, validation_accuracy
from .zoo import build_model, default_model, default_model_from_recipe, fit_base_statistics, train_recipe

__all__ = [
    "CROSS_DOMAIN", "CheckpointInfo", "DEFAULT_SPLITS", "DefaultRecipe", "FROM_PROTONET", "PRETRAINED_MODELS",
    "SELF_TRAINED", "TrainResult", "build_model", "canonical_dataset_name", "default_class_split",
    "default_model", "default_model_from_recipe", "default_recipe", "episode_accuracies", "fit_base_statistics",
    "load_checkpoint", "pretrain", "save_checkpoint", "set_threads", "torch_threads", "train_episodic",
    "train_recipe", "validation_accuracy",
]

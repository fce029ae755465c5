"""fsl-xai: inspectable prototype-based few-shot classifiers for medical images."""

from .data import ImageSet, read_npz
from .episodes import ClassSplit, Episode, EpisodeSampler
from .errors import (CheckpointError, ChecksumError, DataError, DatasetNotFoundError, EpisodeError,
                     FslXaiError, ModelError)
from .models import FewShotClassifier, PrototypicalNetwork, list_backbones, list_models, make_backbone, make_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ChecksumError", "ClassSplit", "DataError", "DatasetNotFoundError", "Episode",
    "EpisodeError", "EpisodeSampler", "FewShotClassifier", "FslXaiError", "ImageSet", "ModelError",
    "PrototypicalNetwork", "list_backbones", "list_models", "make_backbone", "make_model", "read_npz",
]

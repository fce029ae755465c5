"""fsl-xai: inspectable prototype-based few-shot classifiers for medical images.

The public names below are imported lazily (PEP 562), so that light parts such as
``fsl_xai.study`` (the rater app's store) start without importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ImageSet": "fsl_xai.data",
    "read_npz": "fsl_xai.data",
    "ClassSplit": "fsl_xai.episodes",
    "Episode": "fsl_xai.episodes",
    "EpisodeSampler": "fsl_xai.episodes",
    "CheckpointError": "fsl_xai.errors",
    "ChecksumError": "fsl_xai.errors",
    "DataError": "fsl_xai.errors",
    "DatasetNotFoundError": "fsl_xai.errors",
    "EpisodeError": "fsl_xai.errors",
    "FslXaiError": "fsl_xai.errors",
    "ModelError": "fsl_xai.errors",
    "FewShotClassifier": "fsl_xai.models",
    "FittedEpisode": "fsl_xai.models",
    "PrototypicalNetwork": "fsl_xai.models",
    "list_backbones": "fsl_xai.models",
    "list_models": "fsl_xai.models",
    "make_backbone": "fsl_xai.models",
    "make_model": "fsl_xai.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fsl_xai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""Typed errors. Every message says what was wrong and how to fix it."""


class FslXaiError(Exception):
    """Base class of every error this library raises on purpose."""


class DataError(FslXaiError, ValueError):
    """Input data is missing, corrupt or of the wrong shape, dtype or range."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset is unknown, or known but not present and not downloadable now."""


class ChecksumError(DataError):
    """A file's MD5 differs from the expected one."""


class EpisodeError(FslXaiError, ValueError):
    """An episode cannot be built as asked (too few images, unknown class, ...)."""


class ModelError(FslXaiError, ValueError):
    """A model, backbone or explainer is unknown, or used in a way it does not support."""


class CheckpointError(FslXaiError, ValueError):
    """A checkpoint is unreadable or does not fit the model or data it is used with."""

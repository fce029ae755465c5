"""Checkpoints: weights plus everything needed to rebuild, audit and resume a model.

A checkpoint file is a ``torch.save`` dictionary, read back with ``weights_only=True`` (no pickled
code is ever executed) and written atomically (temporary file, then rename), so an interrupted
save never leaves a half-written checkpoint behind.

A model with an external backbone records its spec and input transform: a TorchScript network is
stored inside the file (its archive, checked against its sha256), a timm network is rebuilt by
name, and a ``py:MODULE:FUNCTION`` factory is imported and called by name, so such a checkpoint
runs code of an installed module: load it only from people whose code you would run.
"""

from __future__ import annotations

import datetime as _dt
import os
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import CheckpointError, EpisodeError, FslXaiError
from .files import atomic_write
from .models import make_backbone, make_model
from .models.base import FewShotClassifier
from .models.external import is_external_spec, sha256_of

if TYPE_CHECKING:
    from .data import ImageSet

#: bump when the layout of the file changes incompatibly
FORMAT_VERSION = 1
_MAGIC = "fsl-xai-checkpoint"
#: payload key of an external TorchScript backbone's archive (a uint8 tensor of the file's bytes)
_ARCHIVE = "backbone_archive"


@dataclass
class CheckpointInfo:
    """What a checkpoint says about its model (everything except the weights).

    Attributes:
        model: registered model name (``protonet``, ``simpleshot``, ...).
        model_params: keyword arguments that rebuild the model (from ``model.config()``).
        backbone: registered backbone name, or an external spec (``timm:NAME``, ``torchscript:PATH``,
            ``py:MODULE:FUNCTION``); backbone_params: its keyword arguments (e.g. width), for an
            external backbone its input transform and ``code_hash`` (the TorchScript archive's
            sha256, or a hash of the factory's source file).
        in_channels: input channels the backbone expects; image_size: (height, width).
        dataset: name of the training image set; data_fingerprint: its fingerprint.
        classes: the classes the model was trained on.
        class_split: base / val / novel class lists (``ClassSplit.to_dict()``), or None.
        val_metrics: model-selection results (best validation accuracy, its CI, episode, ...).
        progress: training progress (episode reached, episodes planned, episode shape, seed, lr,
            finished).
        extra: free-form provenance (recipe of a default model, source data sets, ...).
        created: UTC time of writing; version: the fsl_xai version that wrote it.
    """

    model: str
    backbone: str
    in_channels: int
    image_size: tuple[int, int]
    model_params: dict = field(default_factory=dict)
    backbone_params: dict = field(default_factory=dict)
    dataset: str = ""
    data_fingerprint: str = ""
    classes: tuple[str, ...] = ()
    class_split: dict | None = None
    val_metrics: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    created: str = ""
    version: str = ""

    def __post_init__(self) -> None:
        height, width = self.image_size
        self.image_size = (int(height), int(width))
        self.classes = tuple(str(c) for c in self.classes)
        self.in_channels = int(self.in_channels)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["image_size"] = list(self.image_size)
        out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CheckpointInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def for_model(cls, model: FewShotClassifier, **kwargs) -> CheckpointInfo:
        """Describe ``model`` (name, params, backbone) plus any other fields given."""
        config = dict(model.config())
        name = config.pop("model", model.name)
        bb = model.backbone
        return cls(model=name, model_params=config, backbone=getattr(bb, "backbone_name", type(bb).__name__.lower()),
                   backbone_params=backbone_params(bb), in_channels=getattr(bb, "in_channels", 3),
                   image_size=tuple(getattr(bb, "image_size", (28, 28))), **kwargs)


def backbone_params(backbone: nn.Module) -> dict:
    """Constructor arguments of a registered backbone that differ between instances."""
    explicit = getattr(backbone, "backbone_kwargs", None)
    if isinstance(explicit, dict):
        return dict(explicit)
    name = getattr(backbone, "backbone_name", "")
    net: Any = backbone  # the layouts of the registered backbones, read by name
    try:
        if name == "conv4":
            return {"width": int(net.blocks[0][0].out_channels)}
        if name == "resnet12":
            return {"widths": [int(b.body[0].out_channels) for b in net.blocks]}
    except (AttributeError, IndexError, TypeError):
        pass
    return {}


def _jsonable(value: Any) -> Any:
    """Plain Python values only, so the file loads with ``weights_only=True``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None or isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def save_checkpoint(path: str | os.PathLike, model: FewShotClassifier, info: CheckpointInfo | None = None,
                    training_state: dict | None = None) -> Path:
    """Write ``model`` and ``info`` to ``path`` atomically.

    Args:
        path: the file to write (parent folders are created).
        model: the few-shot model; its ``state_dict`` is stored.
        info: what to record with it (default: ``CheckpointInfo.for_model(model)``).
        training_state: optional state that lets ``train_episodic(..., resume=True)`` go on
            (current weights, optimizer state, best state, history).

    Returns:
        The path written.
    """
    from . import __version__

    path = Path(path)
    info = info or CheckpointInfo.for_model(model)
    info.created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    info.version = __version__
    payload = {
        "magic": _MAGIC,
        "format": FORMAT_VERSION,
        "info": _jsonable(info.to_dict()),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "training": training_state,
    }
    archive = getattr(model.backbone, "archive", None)
    if isinstance(archive, bytes):  # a TorchScript backbone travels inside the checkpoint (see _rebuild)
        payload[_ARCHIVE] = torch.frombuffer(bytearray(archive), dtype=torch.uint8)
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder and a rename, so
    that readers see the old file or the complete new one, never a partial one (parent folders are
    created). Returns the path written."""
    with atomic_write(path) as handle:
        torch.save(obj, handle)
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dictionary; CheckpointError when missing, corrupt or not ours."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; check the path, or train one with "
                              "`fsl-xai train ... --out FILE`")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; give the .pt file inside it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, ImportError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "it may be truncated or corrupt, or written by other software: delete it and train again"
        ) from None
    except Exception as exc:  # unpickling errors have no common public base class
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}); it may be corrupt or written by "
            "other software: delete it and train again"
        ) from None
    if not isinstance(payload, dict) or payload.get("magic") != _MAGIC:
        raise CheckpointError(f"{path} is not an fsl-xai checkpoint (a plain state_dict or another program's "
                              "file?); save models with fsl_xai.training.save_checkpoint")
    if payload.get("format", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer fsl-xai (format {payload['format']}); "
                              "upgrade fsl-xai to load it")
    return payload


def describe_mismatch(info: CheckpointInfo, model: FewShotClassifier) -> list[str]:
    """Human-readable differences between a checkpoint and an existing model."""
    own = CheckpointInfo.for_model(model)
    diffs = []
    if own.backbone != info.backbone:
        diffs.append(f"backbone: checkpoint {info.backbone!r}, model {own.backbone!r}")
    elif own.backbone_params != info.backbone_params:
        diffs.append(f"backbone parameters: checkpoint {info.backbone_params}, model {own.backbone_params}")
    if own.in_channels != info.in_channels:
        diffs.append(f"input channels: checkpoint {info.in_channels}, model {own.in_channels}")
    if own.model != info.model:
        diffs.append(f"model: checkpoint {info.model!r}, model {own.model!r}")
    return diffs


def _external_backbone(info: CheckpointInfo, path: Path, payload: dict) -> nn.Module:
    """Rebuild an external backbone (``timm:``, ``torchscript:``, ``py:``) with its stored input transform.

    A TorchScript network is stored inside the checkpoint, not referenced: the checkpoint then works
    wherever it is copied, and a later edit or loss of the original file cannot change what it holds;
    the archive's sha256 (``backbone_params["code_hash"]``) is checked before it is loaded. A py:
    factory is imported again by name, a timm network built again by name; their weights come from
    the checkpoint's state_dict.
    """
    params = info.backbone_params
    archive = None
    if info.backbone.startswith("torchscript:"):
        stored = payload.get(_ARCHIVE)
        if not isinstance(stored, torch.Tensor):
            raise CheckpointError(f"{path} names the TorchScript backbone {info.backbone} but does not hold its "
                                  "archive; save the model again with this fsl-xai")
        archive = stored.numpy().tobytes()
        if sha256_of(archive) != params.get("code_hash"):
            raise CheckpointError(f"{path}: the TorchScript archive inside does not match its recorded sha256; the "
                                  "file is damaged: train or save it again")
    return make_backbone(info.backbone, in_channels=info.in_channels, image_size=info.image_size,
                         transform=params.get("transform"), archive=archive)


def _rebuild(info: CheckpointInfo, path: Path, payload: dict) -> FewShotClassifier:
    try:
        if is_external_spec(info.backbone):
            backbone = _external_backbone(info, path, payload)
        else:
            backbone = make_backbone(info.backbone, in_channels=info.in_channels, image_size=info.image_size,
                                     **info.backbone_params)
        return make_model(info.model, backbone, **info.model_params)
    except CheckpointError:
        raise
    except FslXaiError as exc:
        if is_external_spec(info.backbone):
            raise CheckpointError(f"{path}: its backbone {info.backbone} cannot be rebuilt here ({exc})") from None
        raise CheckpointError(f"{path} names a model this fsl-xai cannot build ({exc}); "
                              "use the fsl-xai version that wrote it") from None
    except TypeError as exc:
        raise CheckpointError(f"{path}: the stored model parameters no longer fit ({exc}); "
                              "retrain the model with this fsl-xai version") from None


def load_checkpoint(path: str | os.PathLike, model: FewShotClassifier | None = None
                    ) -> tuple[FewShotClassifier, CheckpointInfo]:
    """Rebuild the model stored in ``path`` (or load its weights into ``model``).

    Args:
        path: a file written by :func:`save_checkpoint`.
        model: optional existing model to load into; it must have the same backbone, backbone
            parameters, input channels and model type.

    Returns:
        (model in eval mode, CheckpointInfo).

    Raises:
        CheckpointError: the file is missing, corrupt or not a checkpoint, or it does not fit
            ``model`` (the message lists what differs).
    """
    path = Path(path)
    payload = read_checkpoint(path)
    try:
        info = CheckpointInfo.from_dict(payload["info"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's description is damaged ({exc}); train again") from None
    if model is None:
        model = _rebuild(info, path, payload)
    else:
        diffs = describe_mismatch(info, model)
        if diffs:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model: " + "; ".join(diffs) +
                f". Build the model as the checkpoint says (load_checkpoint(path) without a model does), "
                f"or convert the images to {info.in_channels} channel(s) / retrain for your backbone"
            )
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise CheckpointError(
            f"checkpoint {path} does not fit the {info.backbone} backbone it names: "
            f"{' '.join(first[:3])[:300]}; the file was changed or comes from another version: train again"
        ) from None
    model.eval()
    return model, info


def training_state(path: str | os.PathLike) -> tuple[CheckpointInfo, dict | None, dict]:
    """(info, training state or None, raw payload) of a checkpoint, for resuming."""
    payload = read_checkpoint(path)
    return CheckpointInfo.from_dict(payload["info"]), payload.get("training"), payload


def images_for_checkpoint(images: ImageSet, info: CheckpointInfo, convert: bool) -> ImageSet:
    """The images at the checkpoint's channels and size, converted only when ``convert`` is set."""
    want_c, want_hw = info.in_channels, tuple(info.image_size)
    if images.n_channels == want_c and tuple(images.image_size) == want_hw:
        return images
    if not convert:
        raise CheckpointError(
            f"the checkpoint expects {want_c}-channel {want_hw[0]}x{want_hw[1]} images but {images.name} has "
            f"{images.n_channels}-channel {images.image_size[0]}x{images.image_size[1]} images; "
            "pass --convert to convert them, or use a checkpoint trained on such images")
    return images.convert(channels=want_c, size=info.image_size)


def untrained_classes(info: CheckpointInfo, images: ImageSet, chosen: list[str] | tuple[str, ...] | None = None
                      ) -> list[str]:
    """The classes to draw episodes from: ``chosen`` (``--classes``), else those of ``images`` the
    checkpoint was not trained on (at least two, or an EpisodeError saying to name them)."""
    if chosen:
        return list(chosen)
    seen = set(info.classes)
    classes = [c for c in images.class_names if c not in seen]
    if len(classes) < 2:
        raise EpisodeError(
            f"{images.name} has {len(classes)} class(es) the model was not trained on; "
            f"name the classes to use with --classes (classes: {list(images.class_names)})")
    return classes

"""The input transform a backbone states: image size, channels and normalisation.

A backbone from outside the project (``timm:``, ``torchscript:``, ``py:``) was made for some input:
a size, a number of channels, and a per-channel mean and standard deviation to subtract and divide
by. :class:`InputTransform` records that, field by field with where each value came from (``option``:
given by the user; ``model``: read off the model; ``default``: the data as it is, no normalisation).

Where it is applied: the size and channels are the backbone's ``image_size`` and ``in_channels``,
which every path that feeds images reads to convert an image set (``embeddings.images_for_model``,
the CLI's checkpoint check, the workbench); the normalisation is the first step of the wrapped
backbone's ``forward`` (:class:`~fsl_xai.models.external.ExternalBackbone`), so embedding, evaluation
and every explanation see it, and attributions stay in the project's [0, 1] pixel space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelError

#: named normalisations accepted by ``--normalise``
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "none": ((0.0,), (1.0,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5,), (0.5,)),  # [0, 1] -> [-1, 1]
}


@dataclass(frozen=True)
class InputTransform:
    """What a backbone expects: ``image_size`` (H, W), ``channels``, per-channel ``mean`` and ``std``
    (one value, or one per channel), and ``sources`` naming where each field came from."""

    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.channels < 1 or min(self.image_size) < 1:
            raise ModelError(f"an input transform needs at least 1 channel and 1x1 pixels, got {self.channels} "
                             f"channel(s) of {self.image_size}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ModelError(f"normalisation {name} has {len(values)} values for {self.channels}-channel "
                                 f"images; give one value or one per channel")
        if any(s <= 0 for s in self.std):
            raise ModelError(f"normalisation std must be positive, got {list(self.std)}")

    @property
    def is_identity(self) -> bool:
        return all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std), "sources": dict(self.sources)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputTransform:
        try:
            h, w = data["image_size"]
            return cls((int(h), int(w)), int(data["channels"]), tuple(float(v) for v in data["mean"]),
                       tuple(float(v) for v in data["std"]), dict(data.get("sources", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"a stored input transform is damaged ({exc}); rebuild the model") from None

    def describe(self) -> str:
        """One line: ``3x224x224, mean [...], std [...] (size: model, ...)``."""
        norm = "no normalisation" if self.is_identity else f"mean {list(self.mean)}, std {list(self.std)}"
        where = ", ".join(f"{k}: {v}" for k, v in sorted(self.sources.items()))
        return f"{self.channels}x{self.image_size[0]}x{self.image_size[1]}, {norm} ({where})"


def as_size(value: Any, what: str = "input size") -> tuple[int, int]:
    """An int, "H" / "HxW" string or (H, W) pair -> (H, W); ModelError otherwise."""
    try:
        if isinstance(value, str):
            parts = value.lower().replace(",", "x").split("x")
            value = [int(p) for p in parts if p.strip()]
        if isinstance(value, (int, float)):
            return int(value), int(value)
        seq = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ModelError(f"{what} {value!r} is not understood; give one number (224) or HxW (224x192)") from None
    if len(seq) == 1:
        return seq[0], seq[0]
    if len(seq) == 2:
        return seq[0], seq[1]
    raise ModelError(f"{what} {value!r} is not understood; give one number (224) or HxW (224x192)")


def parse_normalise(values: str | Sequence[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``--normalise`` values -> (mean, std): a name (``imagenet``, ``none``, ``half``) or two
    comma-separated lists ``MEAN STD`` (``0.5 0.25`` or ``0.485,0.456,0.406 0.229,0.224,0.225``)."""
    parts = [values] if isinstance(values, str) else list(values)
    if len(parts) == 1 and parts[0].lower() in NORMALISATIONS:
        return NORMALISATIONS[parts[0].lower()]
    if len(parts) != 2:
        raise ModelError(f"--normalise {' '.join(parts)} is not understood; give a name ({sorted(NORMALISATIONS)}) "
                         "or MEAN STD as comma-separated lists, e.g. --normalise 0.5 0.25")
    try:
        mean, std = (tuple(float(v) for v in p.split(",") if v.strip()) for p in parts)
    except ValueError:
        raise ModelError(f"--normalise {' '.join(parts)}: MEAN and STD must be numbers separated by commas") from None
    return mean, std


def _stated_by_model(net: Any) -> dict[str, Any]:
    """What the model says about its input: timm's ``pretrained_cfg`` / ``default_cfg`` (input_size
    (C, H, W), mean, std) or plain attributes ``input_size`` (C, H, W), ``image_size``, ``in_channels``,
    ``mean``, ``std``."""
    stated: dict[str, Any] = {}
    for cfg_name in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(net, cfg_name, None)
        if isinstance(cfg, Mapping) and cfg:
            if "input_size" in cfg:
                c, h, w = cfg["input_size"]
                stated.update(channels=int(c), image_size=(int(h), int(w)))
            for key in ("mean", "std"):
                if key in cfg:
                    stated[key] = tuple(float(v) for v in cfg[key])
            break
    input_size = getattr(net, "input_size", None)
    if isinstance(input_size, (tuple, list)) and len(input_size) == 3:
        stated.setdefault("channels", int(input_size[0]))
        stated.setdefault("image_size", (int(input_size[1]), int(input_size[2])))
    size = getattr(net, "image_size", None)
    if size is not None and "image_size" not in stated:
        stated["image_size"] = as_size(size, "the model's image_size")
    chans = getattr(net, "in_channels", None)
    if isinstance(chans, int) and "channels" not in stated:
        stated["channels"] = chans
    for key in ("mean", "std"):
        value = getattr(net, key, None)
        if key not in stated and isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
            stated[key] = tuple(float(v) for v in value)
    return stated


def resolve_transform(net: Any, *, image_size: Any = None, channels: int | None = None,
                      normalise: tuple[Sequence[float], Sequence[float]] | None = None,
                      default_size: Any = 28, default_channels: int = 3) -> InputTransform:
    """The transform of ``net``: each field from the options given here, else from the model's own
    attributes, else the default (the data as it is: ``default_size``, ``default_channels``, no
    normalisation)."""
    stated = _stated_by_model(net)
    sources: dict[str, str] = {}

    def pick(key: str, option: Any, default: Any) -> Any:
        if option is not None:
            sources[key] = "option"
            return option
        if key in stated:
            sources[key] = "model"
            return stated[key]
        sources[key] = "default"
        return default

    size = as_size(pick("image_size", None if image_size is None else as_size(image_size), default_size))
    chans = int(pick("channels", channels, default_channels))
    if normalise is not None:
        mean, std, sources["normalisation"] = tuple(normalise[0]), tuple(normalise[1]), "option"
    elif "mean" in stated or "std" in stated:
        mean, std, sources["normalisation"] = stated.get("mean", (0.0,)), stated.get("std", (1.0,)), "model"
        if any(len(v) not in (1, chans) for v in (mean, std)):
            # the model states one value per channel of its own input (timm: 3, ImageNet's), but it is
            # fed another number of channels (--input-channels 1: timm adapts the first layer by summing
            # its RGB weights): one value, the average over the stated channels, fits any number
            mean, std = ((sum(v) / len(v),) for v in (mean, std))
            sources["normalisation"] = f"model, averaged over its channels for {chans}-channel input"
    else:
        mean, std, sources["normalisation"] = (0.0,), (1.0,), "default"
    return InputTransform(size, chans, tuple(float(v) for v in mean), tuple(float(v) for v in std), sources)


__all__ = ["NORMALISATIONS", "InputTransform", "as_size", "parse_normalise", "resolve_transform"]

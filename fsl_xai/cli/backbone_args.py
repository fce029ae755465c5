"""The ``--backbone`` options that ``train`` and ``evaluate`` share: an external backbone
(``timm:NAME``, ``torchscript:PATH``, ``py:MODULE:FUNCTION``) and its input transform."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    from torch import nn

BACKBONE_HELP = ("conv4, resnet12, or an external network: timm:NAME (needs timm), torchscript:PATH, "
                 "py:MODULE:FUNCTION (a function returning an nn.Module)")


def add_backbone_options(p: argparse.ArgumentParser) -> None:
    """Add --backbone-weights, --input-size, --input-channels and --normalise to a command."""
    g = p.add_argument_group("external backbone (--backbone timm:NAME | torchscript:PATH | py:MODULE:FUNCTION)")
    g.add_argument("--backbone-weights", metavar="PATH",
                   help="a state_dict file for the external network; 'hub' lets timm download its published weights")
    g.add_argument("--input-size", metavar="SIZE",
                   help="the image size the network expects (224 or HxW; default: what the network states, "
                        "else the data's size)")
    g.add_argument("--input-channels", type=int, metavar="C",
                   help="the channels the network expects (default: what the network states, else the data's)")
    g.add_argument("--normalise", nargs="+", metavar="MEAN STD",
                   help="normalisation applied inside the backbone: imagenet, half, none, or MEAN STD as "
                        "comma-separated lists (default: what the network states, else none)")


def check_backbone_name(name: str) -> None:
    """ModelError unless ``name`` is a registered backbone or a well-formed external spec."""
    from ..models import list_backbones
    from ..models.external import parse_spec

    if ":" in name:
        parse_spec(name)
    elif name not in list_backbones():
        raise ModelError(f"unknown backbone {name!r}; choose one of {list_backbones()} or an external "
                         "timm:NAME, torchscript:PATH or py:MODULE:FUNCTION")


def _given(args: argparse.Namespace) -> list[str]:
    values = {"--backbone-weights": args.backbone_weights, "--input-size": args.input_size,
              "--input-channels": args.input_channels, "--normalise": args.normalise}
    return [k for k, v in values.items() if v is not None]


def refuse_external_options(args: argparse.Namespace, why: str) -> None:
    """ModelError when external-backbone options were given where they do not apply (``why`` says why)."""
    used = _given(args)
    if used:
        raise ModelError(f"{', '.join(used)} apply to external backbones (--backbone timm:, torchscript:, py:) "
                         f"only; {why}")


def external_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``make_backbone`` (``backbone_params`` of ``build_model``) from the
    options; ModelError when they are given for a registered backbone."""
    from ..models.transforms import as_size, parse_normalise

    if ":" not in (args.backbone or ""):
        refuse_external_options(args, f"{args.backbone} states its own input")
        return {}
    return {"weights": args.backbone_weights,
            "input_size": None if args.input_size is None else as_size(args.input_size, "--input-size"),
            "input_channels": args.input_channels,
            "normalise": None if args.normalise is None else parse_normalise(args.normalise)}


def report_backbone(backbone: nn.Module) -> None:
    """One stderr line stating an external backbone's input transform and default layer."""
    transform = getattr(backbone, "transform", None)
    if transform is None:
        return
    layer = getattr(backbone, "default_cam_layer", None) or "none"
    print(f"backbone {getattr(backbone, 'backbone_name', '')}: input {transform.describe()}; "
          f"{getattr(backbone, 'out_dim', '?')}-dim embeddings; Grad-CAM layer {layer}", file=sys.stderr)

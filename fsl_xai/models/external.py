"""Backbones from outside the project: ``timm:NAME``, ``torchscript:PATH`` and ``py:MODULE:FUNCTION``.

:func:`load_external` builds the network a spec names and wraps it in :class:`ExternalBackbone`,
which looks like the project's own backbones: ``forward`` gives embeddings (N, out_dim) (a network
that returns a map (N, C, h, w) is average-pooled), ``feature_map`` gives the spatial map that
Grad-CAM and similarity maps use, ``default_cam_layer`` names that layer, and ``in_channels`` /
``image_size`` / ``transform`` state the input (see :mod:`fsl_xai.models.transforms`).

- ``timm:NAME``: ``timm.create_model(NAME, num_classes=0)`` (an optional extra; timm needs
  torchvision), with ``in_chans`` and, for a model that takes it (a ViT), ``img_size`` when the
  input channels / size are given. Weights: ``weights=PATH`` (a state_dict file), or
  ``weights="hub"`` to let timm download the published ones; without either the network starts
  from random weights.
- ``torchscript:PATH``: ``torch.jit.load``. The archive's bytes are kept (``archive``) so that a
  checkpoint can hold the network itself; ``sha256`` identifies it.
- ``py:MODULE:FUNCTION``: ``MODULE.FUNCTION()`` must return an ``nn.Module``; it is imported again
  by name and called when a checkpoint is loaded, so load such checkpoints only from people whose
  code you would run (a standard-library module is refused).

``weights=PATH`` loads a state_dict into the network for any kind.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .backbones import Backbone
from .spatial import (
    TokenLayout,
    TokenMap,
    find_spatial_layers,
    install_token_map,
    last_reaching_block,
    trace_outputs,
)
from .transforms import InputTransform, as_size, resolve_transform

KINDS = ("timm", "torchscript", "py")
#: a TorchScript archive may state its input in this extra file: {"input_size": [C, H, W], "mean": [...],
#: "std": [...]} (torch.jit.save(net, PATH, _extra_files={TORCHSCRIPT_INPUT_FILE: json.dumps(...)}))
TORCHSCRIPT_INPUT_FILE = "fsl_xai_input.json"
#: what a layer method is told when a network has no spatial layer it can hook
NO_LAYER_TORCHSCRIPT = ("its submodules run inside compiled TorchScript code, where no hook can see them, and it "
                        "returns embeddings (N, D); export it so that it returns its spatial map (N, C, h, w) "
                        "(embeddings then come from average pooling), or load it as a py: factory")
NO_LAYER_PY = ("no module of it returns a spatial map (N, C, h, w) larger than 1x1 or a ViT-style token sequence "
               "on a patch grid; pass layer= the name of a module whose output is such a map")


def _error_line(exc: BaseException) -> str:
    """The telling line of an error from foreign code: the first line, or for a TorchScript error
    (a traceback of the compiled code) its last line, which holds the Python-level error."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    line = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
    return line.removeprefix("RuntimeError: ")[:200]


def is_external_spec(name: str) -> bool:
    """Whether a backbone name is a ``kind:...`` spec rather than a registered name."""
    return isinstance(name, str) and name.split(":", 1)[0] in KINDS and ":" in name


def parse_spec(spec: str) -> tuple[str, str]:
    """``kind:rest`` -> (kind, rest); ModelError saying the forms for anything else."""
    kind, _, rest = str(spec).partition(":")
    forms = "timm:NAME, torchscript:PATH or py:MODULE:FUNCTION"
    if kind not in KINDS or not rest:
        raise ModelError(f"backbone spec {spec!r} is not understood; give a registered name or {forms}")
    if kind == "py":
        module, _, function = rest.rpartition(":")
        if not module or not function.isidentifier():
            raise ModelError(f"backbone spec {spec!r}: a py: backbone is py:MODULE:FUNCTION, e.g. "
                             "py:mypackage.models:make_net (MODULE importable, FUNCTION returning an nn.Module)")
    return kind, rest


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ExternalBackbone(Backbone):
    """A foreign network wrapped as a project backbone (built by :func:`load_external`).

    Attributes:
        net: the network (its state_dict keys start with ``net.``).
        kind: timm, torchscript or py; spec: the spec it came from (``backbone_name`` too).
        transform: the :class:`InputTransform` (normalisation is applied first in ``forward``).
        spatial_layers: names (relative to this backbone) of layers with spatial maps.
        no_layer_reason: why there is no default layer (None when there is one).
        hookable: False when module rules (DeepLIFT, Guided Backprop) cannot reach its submodules.
        backbone_identity: what, besides the weights, makes this backbone what it is (spec, code
            or archive hash, transform): the embedding cache keys on it.
        archive: a TorchScript network's archive bytes (None otherwise).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, kind: str, spec: str, transform: InputTransform, code_hash: str = "",
                 archive: bytes | None = None):
        super().__init__()
        self.net = net
        self.kind, self.spec, self.transform, self.archive = kind, spec, transform, archive
        self.backbone_name = spec
        self.in_channels = transform.channels
        self.image_size = transform.image_size
        self.hookable = kind != "torchscript"
        self.normalise = not transform.is_identity
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(transform.mean).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(transform.std).reshape(shape), persistent=False)
        self.backbone_identity = sha256_of(f"{spec}|{code_hash}|{transform.to_dict()}".encode())[:16]
        self.backbone_kwargs: dict[str, Any] = {"transform": transform.to_dict(), "code_hash": code_hash}
        self.default_cam_layer: str | None = None  # type: ignore[assignment]
        self.spatial_layers: list[str] = []
        self.no_layer_reason: str | None = None
        self.returns_map = False
        self._inspect()

    def _inspect(self) -> None:
        """One dry run: check the output, find the spatial layers and the default layer."""
        c, (h, w) = self.in_channels, self.image_size
        try:
            traces, out = trace_outputs(self.net, self._normalised(torch.zeros(2, c, h, w)))
        except Exception as exc:  # any failure of foreign code on the stated input
            first = _error_line(exc)
            raise ModelError(
                f"backbone {self.spec} fails on {c}-channel {h}x{w} images ({type(exc).__name__}: {first}); state "
                "the input it expects with --input-channels / --input-size (make_backbone(spec, input_channels=..., "
                "input_size=...) in Python), or give the network attributes input_size=(C, H, W), mean, std") from None
        if not isinstance(out, torch.Tensor) or out.ndim not in (2, 4) or out.shape[0] != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"backbone {self.spec} returns {shape} for 2 images; it must return embeddings (N, D) "
                             "or a spatial map (N, C, h, w) (drop the classifier head, e.g. timm's num_classes=0)")
        self.returns_map = out.ndim == 4
        self.out_dim = int(out.shape[1])
        names, layouts = find_spatial_layers(traces, 2)
        self.spatial_layers = [f"net.{n}" for n in names]
        token_map = None if self.returns_map else self._token_map(layouts)
        if self.returns_map:
            self.output_map = nn.Identity()
            self.spatial_layers.append("output_map")
            self.default_cam_layer = "output_map"
        elif token_map is not None:
            self.token_map = token_map
            self.spatial_layers.append("token_map")
            self.default_cam_layer = "token_map"
        elif names:
            self.default_cam_layer = self.spatial_layers[-1]
        else:
            self.no_layer_reason = NO_LAYER_TORCHSCRIPT if self.kind == "torchscript" else NO_LAYER_PY

    def _token_map(self, layouts: list[TokenLayout]) -> TokenMap | None:
        """The token map of the last block whose patch tokens reach the output, hooked in place."""
        c, (h, w) = self.in_channels, self.image_size
        x = self._normalised(torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(0)))
        layout = last_reaching_block(self.net, x, layouts)
        return None if layout is None else install_token_map(self.net, layout)[0]

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std if self.normalise else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(self._normalised(images))
        if self.returns_map:
            return self.output_map(out).mean(dim=(2, 3))
        return out

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) -> the default layer's map (N, C', h, w)."""
        if self.default_cam_layer is None:
            raise ModelError(f"backbone {self.spec} has no spatial feature map: {self.no_layer_reason}")
        captured: list[torch.Tensor] = []
        module = dict(self.named_modules())[self.default_cam_layer]
        handle = module.register_forward_hook(lambda m, a, out: captured.append(out))
        try:
            self(images)
        finally:
            handle.remove()
        return captured[-1]

    def __deepcopy__(self, memo: dict) -> ExternalBackbone:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        if self.kind == "torchscript":
            # a deep copy of a scripted network holds its parameters as non-leaf tensors: make them
            # leaves again, with the original's requires_grad flags
            for original, copied in zip(self.net.parameters(), new.net.parameters(), strict=True):
                copied.detach_().requires_grad_(original.requires_grad)
        return new

    def _apply(self, fn: Any, recurse: bool = True) -> ExternalBackbone:
        if self.kind != "torchscript":
            return super()._apply(fn, recurse)
        # nn.Module's own conversion replaces a scripted network's parameters by non-leaf tensors
        # (torch then refuses requires_grad_ on them): convert their data in place instead
        with torch.no_grad():
            for tensor in (*self.net.parameters(), *self.net.buffers()):
                tensor.data = fn(tensor.data)
        for name, buffer in self.named_buffers(recurse=False):  # mean and std; the other children hold none
            setattr(self, name, fn(buffer))
        return self


# ------------------------------------------------------------------------------------------ loaders
def _load_py(target: str) -> tuple[nn.Module, str]:
    module_name, _, function = target.rpartition(":")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        # a checkpoint names its factory, and loading it calls that function: never one of Python's own
        raise ModelError(f"backbone py:{target}: {module_name!r} is a module of Python's standard library, not a "
                         "model factory; give a module of yours (py:mypackage.models:make_net)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(f"backbone py:{target}: cannot import module {module_name!r} ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); check the name and that its folder is on PYTHONPATH") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ModelError(f"backbone py:{target}: module {module_name!r} has no function {function!r}")
    try:
        net = factory()
    except Exception as exc:  # foreign code
        raise ModelError(f"backbone py:{target}: {function}() failed ({type(exc).__name__}: {_error_line(exc)}); it "
                         "must build the network without arguments") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"backbone py:{target}: {function}() returned {type(net).__name__}, not a torch nn.Module")
    code_hash = ""
    try:
        source = inspect.getsourcefile(module)
        if source:
            code_hash = sha256_of(Path(source).read_bytes())[:16]
    except (OSError, TypeError):
        pass
    return net, code_hash


def _load_torchscript(target: str, archive: bytes | None) -> tuple[nn.Module, bytes]:
    if archive is None:
        path = Path(target)
        if not path.is_file():
            raise ModelError(f"backbone torchscript:{target}: file not found; give the path of a file written by "
                             "torch.jit.save")
        archive = path.read_bytes()
    extra = {TORCHSCRIPT_INPUT_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; loading it is what was asked for
            # torch 2.13 says so with a DeprecationWarning, 2.14 with a FutureWarning (shown to every user)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=Warning)
            net = torch.jit.load(io.BytesIO(archive), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ModelError(f"backbone torchscript:{target} is not a TorchScript archive ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); save the model with "
                         "torch.jit.save(torch.jit.script(model), PATH)") from None
    if extra[TORCHSCRIPT_INPUT_FILE]:
        try:
            stated = json.loads(extra[TORCHSCRIPT_INPUT_FILE])
        except (ValueError, TypeError):
            raise ModelError(f"backbone torchscript:{target}: its {TORCHSCRIPT_INPUT_FILE} is not JSON") from None
        for key in ("input_size", "mean", "std"):  # read by resolve_transform like a module's attributes
            if key in stated:
                setattr(net, key, tuple(stated[key]))
    return net, archive


def _load_timm(name: str, channels: int | None, hub: bool, size: tuple[int, int] | None = None) -> nn.Module:
    try:
        import timm  # type: ignore[import-not-found, unused-ignore]
    except (ImportError, RuntimeError, AttributeError, OSError, TypeError) as exc:  # torchvision may fail too
        raise ModelError(f"backbone timm:{name} needs the optional package timm, which cannot be imported here "
                         f"({type(exc).__name__}: {str(exc)[:120]}); install it with `pip install timm` in an "
                         "environment where torchvision works, or export the model to TorchScript "
                         "(torchscript:PATH)") from None
    kwargs: dict[str, Any] = {"num_classes": 0}
    if channels is not None:
        kwargs["in_chans"] = channels
    try:
        if size is not None:
            # a ViT is built for one image size (224): timm builds it for the size asked for (and
            # resamples published position embeddings); a CNN takes any size and no img_size argument
            try:
                return timm.create_model(name, pretrained=hub, img_size=size, **kwargs)
            except TypeError:
                pass
        return timm.create_model(name, pretrained=hub, **kwargs)
    except Exception as exc:
        raise ModelError(f"backbone timm:{name}: timm cannot build it ({type(exc).__name__}: {str(exc)[:200]}); "
                         "see timm.list_models() for the names") from None


def load_weights(net: nn.Module, path: str | Path, spec: str) -> None:
    """Load a state_dict file (or a dict holding one under ``state_dict`` / ``model``) into ``net``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"backbone weights {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"backbone weights {path} cannot be read as a state_dict ({type(exc).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelError(f"backbone weights {path} do not fit {spec} ({' '.join(str(exc).split())[:300]})") from None


def load_external(spec: str, *, input_channels: int | None = None, input_size: Any = None,
                  normalise: tuple | None = None, weights: str | Path | None = None,
                  default_channels: int = 3, default_size: Any = 28, archive: bytes | None = None,
                  transform: InputTransform | dict | None = None) -> ExternalBackbone:
    """Build and wrap the backbone ``spec`` names.

    Args:
        spec: ``timm:NAME``, ``torchscript:PATH`` or ``py:MODULE:FUNCTION``.
        input_channels, input_size, normalise ((mean, std)): the input transform, overriding what the
            network states; unset fields come from the network, else ``default_channels`` /
            ``default_size`` and no normalisation.
        weights: a state_dict file for the network, or "hub" (timm only: timm's published weights).
        archive: a TorchScript archive's bytes (from a checkpoint) instead of reading PATH.
        transform: a stored transform (from a checkpoint), used as it is.

    Raises:
        ModelError: a bad spec, a missing file, a module that does not import, a factory that does not
            return a module, a network that fails on the stated input or returns neither (N, D) nor
            (N, C, h, w).
    """
    kind, target = parse_spec(spec)
    hub = weights == "hub"
    if hub and kind != "timm":
        raise ModelError(f"weights 'hub' are for timm: backbones; for {spec} give a state_dict file")
    stored = InputTransform.from_dict(transform) if isinstance(transform, dict) else transform
    chans = stored.channels if stored is not None else input_channels
    size = stored.image_size if stored is not None else (None if input_size is None else as_size(input_size))
    found_hash = ""
    if kind == "py":
        net, found_hash = _load_py(target)
    elif kind == "torchscript":
        net, archive = _load_torchscript(target, archive)
        found_hash = sha256_of(archive)
    else:
        net = _load_timm(target, chans, hub, size)
    if weights is not None and not hub:
        load_weights(net, weights, spec)
    if stored is None:
        stored = resolve_transform(net, image_size=input_size, channels=input_channels, normalise=normalise,
                                   default_size=default_size, default_channels=default_channels)
    return ExternalBackbone(net, kind, spec, stored, found_hash, archive if kind == "torchscript" else None)


__all__ = ["KINDS", "TORCHSCRIPT_INPUT_FILE", "ExternalBackbone", "is_external_spec", "load_external", "load_weights",
           "parse_spec", "sha256_of"]

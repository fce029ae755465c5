"""The ONNX backbone of a bundle, and the check that onnxruntime scores as torch does.

The backbone is exported with torch's TorchScript-based ONNX exporter (``dynamo=False``) while this
torch has it, else with the ``torch.export``-based one (``dynamo=True``, which needs onnxscript).
Both reproduce the default Conv-4 ProtoNets closely: embeddings within 2.2e-6 of torch's on the 120
PBC (64 px) test images of the novel classes and within 4.3e-6 on the 300 MedNIST ones, class
scores within 3.3e-7 of their size (squared distances reach 1,900 on MedNIST, where float32 itself
moves torch's scores by 2.2e-4);
the TorchScript exporter takes about a fifth of the time (0.7 s against 4 s for a Conv-4 on 2 cores),
which matters on the small machines bundles are made on. It warns that a later torch removes it;
the fallback is tested.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError

if TYPE_CHECKING:
    from ..models import FewShotClassifier, FittedEpisode

#: the largest difference between onnxruntime's and torch's outputs a bundle may show
PARITY_TOLERANCE = 1e-4
#: names of the ONNX graph's input and output
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
#: the exporter's logger, which reports optional torchvision operators it skips
_EXPORTER_LOGGER = "torch.onnx._internal.exporter._registration"


class _Embedder(nn.Module):
    """The model's embedding function as a module of its own (what the ONNX graph computes)."""

    def __init__(self, model: FewShotClassifier):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


def _export(embedder: nn.Module, path: str | os.PathLike[str], example: torch.Tensor, dynamo: bool) -> None:
    names: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if dynamo:
        torch.onnx.export(embedder, (example,), path, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **names)
    else:
        torch.onnx.export(embedder, (example,), path, dynamo=False, do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)


def export_backbone(model: FewShotClassifier, path: str | os.PathLike[str], example: torch.Tensor,
                    dynamo: bool | None = None) -> str:
    """Write the model's embedding function (images (N, C, H, W) -> embeddings (N, D), N free) to
    ``path`` as one self-contained ONNX file; the model is not changed. Returns the exporter used.

    Args:
        model: the few-shot model (a copy in eval mode is exported).
        path: the .onnx file to write.
        example: a few real images (n, C, H, W) that trace the graph.
        dynamo: the exporter (see the module docstring); None: the TorchScript one, or the
            ``torch.export`` one where this torch no longer has it.
    """
    embedder = _Embedder(copy.deepcopy(model)).eval()
    logger = logging.getLogger(_EXPORTER_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)  # "torchvision is not installed": its detection operators are not used here
    try:
        with warnings.catch_warnings():
            # the exporters' notices about torch's own future (deprecations), nothing a user can act on
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            if dynamo is None:
                try:
                    _export(embedder, path, example, dynamo=False)
                    dynamo = False
                except (TypeError, ValueError, RuntimeError, NotImplementedError, ImportError):
                    dynamo = True
                    _export(embedder, path, example, dynamo=True)
            else:
                _export(embedder, path, example, dynamo=dynamo)
    except Exception as exc:  # the exporter raises many kinds; all mean the same to the user
        raise ModelError(f"torch could not export the {type(model.backbone).__name__} backbone to ONNX "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); "
                         "export a Conv-4 or ResNet-12 checkpoint trained by fsl-xai") from None
    finally:
        logger.setLevel(level)
    return f"torch.onnx.export(dynamo={dynamo}), torch {torch.__version__}"


@dataclass(frozen=True)
class Parity:
    """How closely the bundle (onnxruntime + numpy) reproduces torch on real images.

    onnxruntime's output is the embedding, so that is what must match to :data:`PARITY_TOLERANCE`
    (``max_diff``). The class scores follow from it through the numpy rule; a squared distance of
    a few thousand is only good to about 1e-4 in float32 (torch's own result moves by that much
    between float32 and float64), so the scores are held to the same tolerance relative to their
    size, ``|difference| / max(1, |score|)``.

    Attributes:
        n_images: images compared.
        max_embedding_diff: largest absolute difference between the embeddings.
        max_score_diff: largest absolute difference between the class scores (logits).
        max_score_rel_diff: largest score difference relative to the score's size (at least 1).
        same_predictions: whether every image gets the same class.
        tolerance: the largest difference allowed.
    """

    n_images: int
    max_embedding_diff: float
    max_score_diff: float
    max_score_rel_diff: float
    same_predictions: bool
    tolerance: float = PARITY_TOLERANCE

    @property
    def max_diff(self) -> float:
        """The largest difference between onnxruntime's and torch's outputs (the embeddings)."""
        return self.max_embedding_diff

    @property
    def ok(self) -> bool:
        return self.max_embedding_diff <= self.tolerance and self.max_score_rel_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "max_diff": self.max_diff, "max_embedding_diff": self.max_embedding_diff,
                "max_score_diff": self.max_score_diff, "max_score_rel_diff": self.max_score_rel_diff,
                "same_predictions": self.same_predictions, "tolerance": self.tolerance}


def check_parity(bundle: Any, fitted: FittedEpisode, images: np.ndarray, batch_size: int = 64
                 ) -> tuple[Parity, np.ndarray]:
    """Score ``images`` (N, C, H, W) with the bundle's predictor and with torch; returns the parity
    and the bundle's scores (N, n_classes).

    Args:
        bundle: a ``fsl_xai.deploy.predict.Bundle`` read from the folder being built.
        fitted: the fitted episode the bundle was made from.
        images: real images, float32 in [0, 1].
        batch_size: images per pass.

    Raises:
        ModelError: a difference exceeds :data:`PARITY_TOLERANCE` (the bundle must not be used).
    """
    emb_diff = score_diff = rel_diff = 0.0
    same = True
    scores = []
    model = fitted.model
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start: start + batch_size], dtype=np.float32)
            ours_emb = bundle.embed(batch)
            ours = bundle.scores(ours_emb)
            torch_emb = model.embed(torch.from_numpy(batch))
            theirs = fitted.logits_from_embeddings(torch_emb).double().numpy()
            emb_diff = max(emb_diff, float(np.abs(ours_emb - torch_emb.double().numpy()).max()))
            score_diff = max(score_diff, float(np.abs(ours - theirs).max()))
            rel_diff = max(rel_diff, float((np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))).max()))
            same = same and bool((ours.argmax(1) == theirs.argmax(1)).all())
            scores.append(ours)
    parity = Parity(len(images), emb_diff, score_diff, rel_diff, same, PARITY_TOLERANCE)
    if not parity.ok:
        raise ModelError(f"onnxruntime's outputs differ from torch's on {len(images)} images: embeddings by up to "
                         f"{emb_diff:.3g}, class scores by up to {rel_diff:.3g} of their size (allowed: "
                         f"{PARITY_TOLERANCE:g}); the bundle was not written. Report this with the checkpoint: the "
                         "backbone uses an operation the exporter translates inexactly")
    return parity, np.concatenate(scores)

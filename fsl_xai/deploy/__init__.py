"""Deployable bundles: an ONNX backbone, the class vectors, the input transform, the scoring rule and a
model card, with a predictor that needs only numpy and onnxruntime (``fsl-xai export-model``).

``predict.py`` is that predictor; it imports neither torch nor fsl_xai and is copied into every bundle.
"""

from __future__ import annotations

from .bundle import BUNDLE_FORMAT, ExportResult, export_bundle
from .onnx_export import PARITY_TOLERANCE, Parity
from .rules import SUPPORTED, scoring_rule

__all__ = ["BUNDLE_FORMAT", "PARITY_TOLERANCE", "SUPPORTED", "ExportResult", "Parity", "export_bundle",
           "scoring_rule"]

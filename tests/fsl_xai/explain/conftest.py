"""A small trained model shared by the quality tests (trained once per test session)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl_xai.data.synthetic import make_synthetic
from fsl_xai.models import make_backbone, make_model
from fsl_xai.training import pretrain

SIZE = 32


@pytest.fixture(scope="session")
def trained():
    """A Conv-4 ProtoNet pre-trained for a few seconds on the synthetic lesion set, fitted on its
    training images; the test split gives queries with lesion masks.

    Its weights differ in the last bits between CPUs (AVX2, AVX-512), so tests assert properties of
    what it learned, never exact values.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        data = make_synthetic(n_per_class=40, size=SIZE, n_classes=3, seed=0, split="all")
        split = data.metadata["split"].to_numpy()
        train, test = data.subset(np.flatnonzero(split == "train")), data.subset(np.flatnonzero(split == "test"))
        backbone = make_backbone("conv4", in_channels=1, image_size=SIZE, width=16)
        pretrain(backbone, train, epochs=8, batch_size=16, lr=3e-3, seed=0, progress=False)
    s_img, s_lab = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    fitted = make_model("protonet", backbone).eval().fit(s_img, s_lab)
    q_img = torch.from_numpy(test.images)
    with torch.no_grad():
        accuracy = float((fitted(q_img).argmax(1).numpy() == test.labels).mean())
    assert accuracy > 0.6, f"the fixture model did not learn the synthetic task (accuracy {accuracy:.2f})"
    return {"model": fitted, "support": (s_img, s_lab), "queries": q_img, "labels": test.labels,
            "masks": test.masks}

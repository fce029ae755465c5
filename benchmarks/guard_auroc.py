"""How well the domain guard (fsl_xai.guard) tells held-in images from other kinds, on the shared data.

Two settings, each with the default Conv-4 ProtoNet of its data (``default_model``, cached):

- another modality: held in = PBC blood cells 64 px (reference: train split, calibration: val split,
  tested: test split); out of distribution = the test splits of MedNIST (CT, MRI, X-ray), HAM10000
  (dermoscopy), BreastMNIST (ultrasound) and RetinaMNIST (fundus), converted to the model's input;
- a near shift: HAM10000 64 px, one acquisition site held in (train / val / test of that site), the
  test images of each other site out of distribution.

For each it prints AUROC, FPR at 95% TPR and the share flagged at the calibrated threshold, for the
guard's kNN score at several k, and for the alternative it was chosen over (a Mahalanobis distance
with a Ledoit-Wolf covariance of the L2-normalised reference embeddings), so the choice can be
rechecked. Embeddings are cached on disk (``embed_all(disk_cache=True)``): the first run embeds
about 12,000 images, later runs only score.

Usage: ``python benchmarks/guard_auroc.py [--k 1 5 10 50] [--skip-near]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from fsl_xai.data import ImageSet
from fsl_xai.data.registry import load_dataset
from fsl_xai.embeddings import embed_all, images_for_model
from fsl_xai.guard import DEFAULT_K, DomainGuard, auroc, fpr_at_tpr
from fsl_xai.models.base import FewShotClassifier
from fsl_xai.training import default_model

FAR_OOD = ("mednist", "ham10000-64", "breastmnist", "retinamnist")

Scorer = Callable[[np.ndarray], np.ndarray]


def embed(model: FewShotClassifier, images: ImageSet) -> np.ndarray:
    return embed_all(model, images_for_model(images, model), disk_cache=True).numpy()


def scorers(ref: np.ndarray, cal: np.ndarray, ks: list[int]) -> dict[str, tuple[Scorer, float]]:
    """name -> (score function, threshold calibrated at the 95th percentile of ``cal``)."""
    from sklearn.covariance import LedoitWolf

    out: dict[str, tuple[Scorer, float]] = {}
    for k in ks:
        guard = DomainGuard.fit(ref, cal, k=k)
        out[f"knn k={k}"] = (guard.score, guard.threshold)
    unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cov = LedoitWolf().fit(unit)

    def maha(x: np.ndarray) -> np.ndarray:
        return np.sqrt(cov.mahalanobis(x / np.linalg.norm(x, axis=1, keepdims=True)))

    out["mahalanobis"] = (maha, float(np.quantile(maha(cal), 0.95)))
    return out


def report(title: str, ref: np.ndarray, cal: np.ndarray, held_in: np.ndarray, others: dict[str, np.ndarray],
           ks: list[int]) -> None:
    print(f"\n{title}: reference {len(ref)}, calibration {len(cal)}, held-in test {len(held_in)}")
    print(f"{'score':14s} {'in flagged':>10s}  " + "  ".join(f"{n[:22]:>22s}" for n in others))
    print(f"{'':14s} {'':>10s}  " + "  ".join(f"{'AUROC / FPR95 / flag':>22s}" for _ in others))
    for name, (score, threshold) in scorers(ref, cal, ks).items():
        a = score(held_in)
        cells = []
        for ood in others.values():
            b = score(ood)
            cells.append(f"{auroc(a, b):.3f} / {fpr_at_tpr(a, b):.3f} / {np.mean(b > threshold):.2f}")
        print(f"{name:14s} {np.mean(a > threshold):>10.3f}  " + "  ".join(f"{c:>22s}" for c in cells), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=sorted({1, DEFAULT_K, 10, 50}))
    parser.add_argument("--skip-near", action="store_true", help="only the other-modality setting")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()

    model, _ = default_model("pbc-blood-64", progress=True)
    ref, cal, held_in = (embed(model, load_dataset("pbc-blood-64", split=s, progress=False))
                         for s in ("train", "val", "test"))
    others = {name: embed(model, load_dataset(name, split="test", progress=False)) for name in FAR_OOD}
    report("another modality: PBC 64 px held in (default pbc-blood-64 ProtoNet)", ref, cal, held_in, others, args.k)

    if not args.skip_near:
        model, _ = default_model("ham10000-64", progress=True)
        sets = {s: load_dataset("ham10000-64", split=s, progress=False) for s in ("train", "val", "test")}
        emb = {s: embed(model, images) for s, images in sets.items()}
        site = {s: images.metadata["site"].to_numpy() for s, images in sets.items()}
        for held in sorted(set(site["test"])):
            others = {f"{other} ({int((site['test'] == other).sum())})": emb["test"][site["test"] == other]
                      for other in sorted(set(site["test"])) if other != held}
            report(f"near shift: HAM10000 site {held} held in (default ham10000-64 ProtoNet)",
                   emb["train"][site["train"] == held], emb["val"][site["val"] == held],
                   emb["test"][site["test"] == held], others, args.k)
    print(f"\n{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one place where the widgets call into ``fsl_xai``.

Every view goes through these functions so that the library's entry points are named once. Where a
library part is not importable (an older checkout, an optional extra missing), a small documented
fallback keeps the workbench usable and says so in ``backend_notes()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from fsl_xai.config import data_dir as _data_dir
from fsl_xai.data.imageset import ImageSet
from fsl_xai.errors import DataError, DatasetNotFoundError, ModelError

_NOTES: list[str] = []


def _note(text: str) -> None:
    if text not in _NOTES:
        _NOTES.append(text)


def backend_notes() -> list[str]:
    """Fallbacks used in this session (shown by the workbench so nothing is silently different)."""
    return list(_NOTES)


# ---------------------------------------------------------------------------------------- data
# Files of the shared data layout, used only when fsl_xai.data.registry is not importable.
_NPZ_FILES = {
    "pbc-blood": "pbc_blood/pbc_bloodlike_28.npz",
    "pbc-blood-64": "pbc_blood/pbc_bloodlike_64_200perclass.npz",
    "mednist": "mednist/mednist_64_500perclass.npz",
    "ham10000": "ham10000_subset/ham_subset_28.npz",
    "ham10000-64": "ham10000_subset/ham_subset_64.npz",
    "breastmnist": "medmnist_official/breastmnist.npz",
    "retinamnist": "medmnist_official/retinamnist.npz",
}


def list_dataset_names() -> list[str]:
    """Dataset names that can be opened now (present locally, downloadable or built in)."""
    try:
        from fsl_xai.data.registry import list_datasets
    except ImportError:
        root = _data_dir()
        names = [n for n, f in _NPZ_FILES.items() if root is not None and (root / f).exists()]
        return names + ["synthetic"]
    names = []
    for info in list_datasets():
        if getattr(info, "supported", True) and (getattr(info, "present", False) or getattr(info, "url", None)):
            names.append(info.name)
    if "synthetic" not in names:
        names.append("synthetic")
    return names


def pick_dataset(*preferred: str) -> str:
    """The first of ``preferred`` that is on this machine now (no download), else the built-in 'synthetic'."""
    try:
        from fsl_xai.data.registry import list_datasets
    except ImportError:
        root = _data_dir()
        present = {n for n, f in _NPZ_FILES.items() if root is not None and (root / f).exists()}
    else:
        present = {i.name for i in list_datasets() if getattr(i, "present", False) and getattr(i, "supported", True)}
    return next((p for p in preferred if p in present), "synthetic")


def load_images(name: str, split: str = "test", progress: bool = False) -> ImageSet:
    """One split of a named dataset as an ImageSet.

    Raises:
        DatasetNotFoundError: the name is unknown or the data is absent.
    """
    try:
        from fsl_xai.data.registry import load_dataset
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        return load_dataset(name, split=split, progress=progress)
    _note("fsl_xai.data.registry is not available: datasets are read straight from the data directory")
    if name == "synthetic":
        return _fallback_synthetic()
    if name not in _NPZ_FILES:
        raise DatasetNotFoundError(f"unknown dataset {name!r}; choose one of {sorted(_NPZ_FILES)} or 'synthetic'")
    root = _data_dir()
    if root is None or not (root / _NPZ_FILES[name]).exists():
        raise DatasetNotFoundError(
            f"dataset {name!r} is not in the data directory; set FSL_XAI_DATA_DIR or use 'synthetic'")
    from fsl_xai.data.npz import read_npz

    return read_npz(root / _NPZ_FILES[name], split=split, name=name)


def make_synthetic(n_per_class: int = 40, size: int = 64, seed: int = 0, **kwargs) -> ImageSet:
    """The built-in synthetic set with lesion masks and site metadata."""
    try:
        from fsl_xai.data.synthetic import make_synthetic as real
    except ImportError:
        return _fallback_synthetic(n_per_class=n_per_class, size=size, seed=seed)
    return real(n_per_class=n_per_class, size=size, seed=seed, **kwargs)


def _fallback_synthetic(n_per_class: int = 40, size: int = 64, seed: int = 0) -> ImageSet:
    _note("fsl_xai.data.synthetic is not available: a simpler built-in synthetic set is used")
    rng = np.random.default_rng(seed)
    shapes = ("disc", "square", "ring", "cross", "bar")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images, masks, labels, rows = [], [], [], []
    for c, shape in enumerate(shapes):
        for i in range(n_per_class):
            cy, cx = rng.uniform(0.3, 0.7, 2) * size
            r = rng.uniform(0.12, 0.2) * size
            dy, dx = yy - cy, xx - cx
            if shape == "disc":
                m = dy ** 2 + dx ** 2 < r ** 2
            elif shape == "square":
                m = (abs(dy) < r * 0.85) & (abs(dx) < r * 0.85)
            elif shape == "ring":
                d = np.sqrt(dy ** 2 + dx ** 2)
                m = (d < r) & (d > r * 0.55)
            elif shape == "cross":
                m = ((abs(dy) < r * 0.3) & (abs(dx) < r)) | ((abs(dx) < r * 0.3) & (abs(dy) < r))
            else:
                m = (abs(dy) < r * 0.3) & (abs(dx) < r * 1.2)
            site = "A" if i % 2 == 0 else "B"
            noise = 0.05 if site == "A" else 0.15
            img = 0.2 + 0.6 * m + rng.normal(0, noise, (size, size))
            images.append(np.clip(img, 0, 1).astype(np.float32))
            masks.append(m)
            labels.append(c)
            rows.append({"sample_id": f"syn-{c}-{i:03d}", "site": site, "marker": False})
    return ImageSet(np.stack(images)[:, None], np.array(labels), shapes, pd.DataFrame(rows),
                    name="synthetic", masks=np.stack(masks))


# ---------------------------------------------------------------------------------------- models
def list_model_names() -> list[str]:
    from fsl_xai.models import list_models

    return list_models()


@dataclass
class ModelInfo:
    """What the workbench shows about a model when the training module gives no CheckpointInfo."""

    dataset: str
    model: str
    trained: bool
    note: str = ""


def load_model(dataset_name: str, images: ImageSet, model_name: str = "protonet",
               progress: bool = True) -> tuple[torch.nn.Module, Any]:
    """The cached default model for a dataset (trained on first use) in eval mode.

    Raises:
        ModelError: the model cannot be built for these images.
    """
    try:
        from fsl_xai.training import default_model
    except ImportError:
        default_model = None
    if default_model is not None:
        try:
            model, info = default_model(dataset_name, model=model_name, progress=progress)
        except ImportError as exc:
            _note(f"the default model cannot be trained yet ({exc})")
        else:
            model.eval()
            return model, info
    _note("fsl_xai.training is not available: the model is an UNTRAINED Conv-4 ProtoNet (seeded)")
    from fsl_xai.models import make_backbone, make_model

    torch.manual_seed(0)
    backbone = make_backbone("conv4", in_channels=images.n_channels, image_size=images.image_size)
    model = make_model(model_name, backbone)
    model.eval()
    return model, ModelInfo(dataset_name, model_name, trained=False, note="untrained fallback")


# ---------------------------------------------------------------------------------------- explain
@dataclass(frozen=True)
class _FallbackMap:
    attributions: np.ndarray
    maps: np.ndarray
    normalized: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    targets: tuple = ()
    contrasts: tuple | None = None
    model_fingerprint: str = ""
    episode_id: str = ""
    query_indices: tuple = ()


_FALLBACK_METHODS = ("gradcam", "saliency", "integrated_gradients")


def list_methods() -> list[str]:
    try:
        from fsl_xai.explain import list_methods as real
    except ImportError:
        _note("fsl_xai.explain is not available: Grad-CAM, saliency and IG are computed by a small fallback")
        return list(_FALLBACK_METHODS)
    return list(real())


def explain(model, query_images: torch.Tensor, method: str, target, contrast=None, seed: int = 0,
            episode_id: str = "", **params):
    """An attribution map (``.normalized`` (n, H, W) in [-1, 1]) for the fitted model."""
    try:
        from fsl_xai.explain import explain as real
    except ImportError:
        real = None
    if real is not None:
        return real(model, query_images, method=method, target=target, contrast=contrast, seed=seed,
                    episode_id=episode_id, **params)
    return _fallback_explain(model, query_images, method, target, contrast, **params)


def _fallback_explain(model, x: torch.Tensor, method: str, target, contrast, n_steps: int = 32, **params):
    if method not in _FALLBACK_METHODS:
        raise ModelError(f"unknown method {method!r}; choose one of {list(_FALLBACK_METHODS)}")
    with torch.no_grad():
        logits = model(x)
    tgt = logits.argmax(1) if target == "predicted" else torch.as_tensor(np.broadcast_to(target, (len(x),)).copy())
    if contrast is None:
        con = None
    elif contrast == "runner_up":
        masked = logits.clone()
        masked[torch.arange(len(x)), tgt] = -torch.inf
        con = masked.argmax(1)
    else:
        con = torch.as_tensor(np.broadcast_to(contrast, (len(x),)).copy())

    def objective(out):
        val = out.gather(1, tgt[:, None])[:, 0]
        if con is not None:
            val = val - out.gather(1, con[:, None])[:, 0]
        return val

    if method == "gradcam":
        fmap = model.backbone.feature_map(x).detach().requires_grad_(True)
        out = model.logits_from_embeddings(model.backbone.pool(fmap))
        (grad,) = torch.autograd.grad(objective(out).sum(), fmap)
        cam = torch.relu((grad.mean((2, 3), keepdim=True) * fmap).sum(1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
        attributions = cam.expand_as(x).detach().numpy() / x.shape[1]
    else:
        steps = n_steps if method == "integrated_gradients" else 1
        total = torch.zeros_like(x)
        for k in range(1, steps + 1):
            xi = (x * k / steps).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(objective(model(xi)).sum(), xi)
            total += g
        attributions = ((total / steps) * (x if method == "integrated_gradients" else 1)).numpy()
        if method == "saliency":
            attributions = np.abs(attributions)
    maps = attributions.sum(1)
    scale = np.abs(maps).reshape(len(maps), -1).max(1)[:, None, None]
    normalized = maps / np.where(scale > 0, scale, 1)
    return _FallbackMap(attributions.astype(np.float32), maps.astype(np.float32), normalized.astype(np.float32),
                        method, dict(params, n_steps=n_steps) if method == "integrated_gradients" else dict(params),
                        tuple(int(t) for t in tgt), None if con is None else tuple(int(c) for c in con))


def quality_badges(model, query_images: torch.Tensor, amap, method: str, support_images: torch.Tensor,
                   support_labels: torch.Tensor, mask: np.ndarray | None = None, target="predicted", contrast=None,
                   seed: int = 0, **params) -> dict[str, Any]:
    """Quality badges of one shown map (fsl_xai's ``badges``): randomisation check, deletion AUC
    (with a random-map reference) and, with a mask, localisation. Empty when the quality module is absent."""
    try:
        from fsl_xai.explain import badges
    except ImportError:
        try:
            from fsl_xai.explain.quality import badges
        except ImportError:
            _note("explanation quality badges need fsl_xai.explain's badges(); none are shown")
            return {}
    return dict(badges(model, query_images[0], method, support_images, support_labels, mask=mask, target=target,
                       contrast=contrast, seed=seed, attribution=amap, **params))


def support_influence(model, support_embeddings: torch.Tensor, support_labels: torch.Tensor,
                      query_embedding: torch.Tensor) -> pd.DataFrame:
    """One row per support image with an ``influence`` column (positive = supports the decision)."""
    try:
        from fsl_xai.explain import support_influence as real
    except ImportError:
        real = None
    if real is not None:
        return real(model, support_embeddings, support_labels, query_embedding)
    # Leave-one-out: how much the predicted class's margin drops without each support image.
    labels = support_labels
    base = model.score(query_embedding[None], model.compute_prototypes(support_embeddings, labels))[0]
    pred = int(base.argmax())
    base_margin = float(base[pred] - torch.cat([base[:pred], base[pred + 1:]]).max())
    rows = []
    for i in range(len(labels)):
        keep = torch.arange(len(labels)) != i
        lab = labels[keep]
        if torch.bincount(lab, minlength=len(base)).min() == 0:
            influence = math.nan
        else:
            s = model.score(query_embedding[None], model.compute_prototypes(support_embeddings[keep], lab))[0]
            influence = base_margin - float(s[pred] - torch.cat([s[:pred], s[pred + 1:]]).max())
        rows.append({"support_index": i, "label": int(labels[i]), "influence": influence})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- evaluation
def evaluate(model, images: ImageSet, n_way: int, n_shot: int, n_query: int, episodes: int, seed: int,
             classes: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The per-query predictions table over many episodes (columns as in docs/CONTRACTS.md)."""
    try:
        from fsl_xai.evaluation import evaluate as real
    except ImportError:
        real = None
    if real is not None:
        result = real(model, images, n_way=n_way, n_shot=n_shot, n_query=n_query, episodes=episodes,
                      seed=seed, classes=classes, progress=False)
        return result.predictions
    _note("fsl_xai.evaluation is not available: many-episode evaluation uses a small fallback")
    from fsl_xai.episodes import EpisodeSampler

    sampler = EpisodeSampler(images, n_way, n_shot, n_query, classes=classes, seed=seed)
    with torch.no_grad():
        emb = torch.cat([model.embed(torch.from_numpy(images.images[i:i + 256]))
                         for i in range(0, len(images), 256)])
    meta = images.metadata.drop(columns=["sample_id"])
    frames = []
    for e in range(episodes):
        chosen, s, sl, q, ql = sampler.sample_indices(e)
        model.fit_support_embeddings(emb[s], torch.as_tensor(sl))
        logits = model.logits_from_embeddings(emb[q]).numpy()
        order = np.sort(logits, 1)
        pred = logits.argmax(1)
        other = logits.copy()
        other[np.arange(len(q)), ql] = -np.inf
        table = pd.DataFrame({
            "episode": e, "episode_id": "", "query_index": np.arange(len(q)),
            "sample_id": images.sample_ids[q], "true_label": ql, "pred_label": pred,
            "true_class": [images.class_names[chosen[i]] for i in ql],
            "pred_class": [images.class_names[chosen[i]] for i in pred],
            "correct": pred == ql, "margin": order[:, -1] - order[:, -2],
            "true_margin": logits[np.arange(len(q)), ql] - other.max(1),
        })
        for c, name in enumerate(images.class_names):
            where = np.flatnonzero(chosen == c)
            table[f"dist_{name}"] = -logits[:, where[0]] if len(where) else np.nan
        frames.append(pd.concat([table, meta.iloc[q].reset_index(drop=True)], axis=1))
        if progress is not None:
            progress(e + 1, episodes)
    return pd.concat(frames, ignore_index=True)


def subgroup_table(predictions: pd.DataFrame, by: Sequence[str], min_n: int = 30) -> pd.DataFrame:
    """Error rate per subgroup with n and a 95% CI (fsl_xai.metrics, else Wilson intervals)."""
    try:
        from fsl_xai.metrics import subgroup_table as real
    except ImportError:
        real = None
    if real is not None:
        return real(predictions, by=list(by), min_n=min_n, per_class=False)
    _note("fsl_xai.metrics is not available: subgroup rates use plain Wilson intervals (no episode bootstrap)")
    rows = []
    for key, group in predictions.groupby(list(by), dropna=False):
        n, k = len(group), int((~group["correct"]).sum())
        lo, hi = wilson(k, n)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**{b: str(v) for b, v in zip(by, key)}, "group": ", ".join(f"{b}={v}" for b, v in zip(by, key)),
                     "n": n, "n_errors": k, "error_rate": k / n if n else math.nan, "error_ci_low": lo,
                     "error_ci_high": hi, "ci_method": "wilson", "too_small": n < min_n,
                     "note": f"too small: n = {n} < {min_n}" if n < min_n else ""})
    return pd.DataFrame(rows)


def disparity(predictions: pd.DataFrame, by: Sequence[str], min_n: int = 30) -> dict | None:
    """The largest subgroup gap with its CI (fsl_xai.metrics.disparity), or None when unavailable."""
    try:
        from fsl_xai.metrics import disparity as real
    except ImportError:
        return None
    return real(predictions, by=list(by), min_n=min_n)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion k/n ((nan, nan) when n is 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def novel_classes(info: Any, images: ImageSet) -> list[str]:
    """The classes a model was NOT trained on (its checkpoint's novel split) that are in ``images``;
    all classes when the checkpoint does not say."""
    split = getattr(info, "class_split", None) or {}
    novel = [c for c in split.get("novel", ()) if c in images.class_names]
    trained = set(getattr(info, "classes", ()) or ())
    if len(novel) >= 2:
        return novel
    rest = [c for c in images.class_names if c not in trained]
    return rest if len(rest) >= 2 else list(images.class_names)


def check_channels(images: ImageSet, model) -> ImageSet:
    """The images converted to the model's channels and input size, when they differ."""
    cin = getattr(model.backbone, "in_channels", images.n_channels)
    size = getattr(model.backbone, "image_size", images.image_size)
    if images.n_channels != cin or images.image_size != tuple(size):
        try:
            return images.convert(channels=cin, size=tuple(size))
        except DataError as exc:
            raise DataError(f"these images do not fit the model ({exc}); pick a model trained on such images") from exc
    return images

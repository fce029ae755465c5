"""The failure gallery: the most confident wrong answers, their query images and attribution maps.

Query images come from the image set named in the manifest, loaded as the command line loads it: a
registered dataset by name (never downloaded here), or the ``.npz`` file given with ``--data-file``,
else the one named in the manifest's reproduce command. Maps come from the audit's float16 chunks.
Both are embedded in the page as base64 PNG data, so the report needs nothing else to show them.
"""

from __future__ import annotations

import base64
import io
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import FslXaiError
from .folder import LoadedAudit, finite
from .markup import count, esc, number, partial
from .sections import IDENTIFYING

if TYPE_CHECKING:
    from ..data import ImageSet

#: failures shown by default
DEFAULT_GALLERY = 12
#: strongest overlay opacity (at the map's 99th percentile of |attribution|)
MAX_ALPHA = 0.75


def confident_failures(queries: pd.DataFrame, k: int = DEFAULT_GALLERY) -> pd.DataFrame:
    """The ``k`` wrong queries the model was surest of: highest confidence first, then the larger
    margin, then the lower row (so the order is fully determined); missing confidences last."""
    wrong = queries[~queries["correct"].astype(bool)]
    ordered = wrong.sort_values(["confidence", "margin", "row"], ascending=[False, False, True], kind="stable",
                                na_position="last")
    return ordered.head(max(int(k), 0))


@dataclass(frozen=True)
class QueryImages:
    """The audited split's images, or why they cannot be shown."""

    images: ImageSet | None
    problem: str = ""


def recorded_data_file(manifest: dict) -> Path | None:
    """The ``--data-file`` path in the manifest's reproduce command, if it has one."""
    try:
        args = shlex.split(str(manifest.get("reproduce") or ""))
    except ValueError:
        return None
    for i, arg in enumerate(args[:-1]):
        if arg == "--data-file":
            return Path(args[i + 1])
        if arg.startswith("--data-file="):
            return Path(arg.split("=", 1)[1])
    return None


def load_query_images(manifest: dict, data_file: str | os.PathLike[str] | None = None) -> QueryImages:
    """The split the audit ran on, checked against the manifest (image count and class names).

    Args:
        manifest: the audit's manifest.
        data_file: the images the audit read (an npz file, an image folder or a DICOM folder), when
            it used ``--data-file`` (the manifest keeps only its base name; without this argument the
            path in the manifest's reproduce command is tried). Overrides the dataset name when given.

    Returns:
        The images, or a problem saying how to supply them; nothing is downloaded.
    """
    from ..data.open import open_images
    from ..data.registry import load_dataset

    data = manifest.get("data") or {}
    name, split = str(data.get("name", "")), str(data.get("split", "test"))
    try:
        if data_file is not None:
            images = open_images(data_file, split=split)
        elif data.get("source") == "file":
            recorded = recorded_data_file(manifest)
            if recorded is None or not recorded.exists():
                return QueryImages(None, f"the audit read your own images ({name}); pass --data-file with that "
                                         "file or folder to show the query images")
            images = open_images(recorded, split=split)
        else:
            images = load_dataset(name, split=split, download=False, progress=False)
    except FslXaiError as exc:
        return QueryImages(None, f"the audited images ({name}, split {split}) could not be loaded: "
                                 f"{' '.join(str(exc).split())}")
    expected_n, expected_classes = data.get("n_images"), data.get("classes")
    if expected_n is not None and len(images) != int(expected_n):
        return QueryImages(None, f"the images found for {name} (split {split}) number {len(images)}, but the audit "
                                 f"ran on {expected_n}: pass --data-file with the file the audit used")
    if expected_classes and list(images.class_names) != [str(c) for c in expected_classes]:
        return QueryImages(None, f"the images found for {name} (split {split}) have the classes "
                                 f"{list(images.class_names)}, not the audit's {list(expected_classes)}: pass "
                                 "--data-file with the file the audit used")
    return QueryImages(images)


def _rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) floats."""
    if image.shape[0] == 1:
        return np.repeat(image[0][..., None], 3, axis=-1)
    return np.moveaxis(image[:3], 0, -1)


def _resized(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) image in [0, 1] at ``size`` (height, width)."""
    if rgb.shape[:2] == size:
        return rgb
    from PIL import Image

    pil = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float64) / 255


def png_data_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) image in [0, 1] as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_uri(image: np.ndarray) -> str:
    """A query image (C, H, W) in [0, 1] as a PNG data URI."""
    return png_data_uri(_rgb(np.asarray(image, dtype=np.float64)))


def overlay_uri(image: np.ndarray | None, attribution: np.ndarray) -> str:
    """A signed map (H, W) over the greyed query image as a PNG data URI.

    Positive attribution is red, negative blue, the opacity growing with |attribution| (scaled per
    map by the 99th percentile of |map|, as the workbench shows maps). Without an image the map is
    drawn on white. The image is resized to the map when their sizes differ.
    """
    from ..explain import normalize_maps

    values = normalize_maps(np.asarray(attribution, dtype=np.float32)[None])[0].astype(np.float64)
    size = (values.shape[0], values.shape[1])
    if image is None:
        base = np.ones((*size, 3))
    else:
        grey = _resized(_rgb(np.asarray(image, dtype=np.float64)), size).mean(axis=-1, keepdims=True)
        base = 0.25 + 0.6 * np.repeat(grey, 3, axis=-1)
    colour = np.where(values[..., None] >= 0, np.array([0.86, 0.16, 0.16]), np.array([0.16, 0.35, 0.86]))
    alpha = MAX_ALPHA * np.abs(values)[..., None]
    return png_data_uri(base * (1 - alpha) + colour * alpha)


def _case(audit: LoadedAudit, rank: int, query: pd.Series, images: ImageSet | None,
          maps: dict[str, dict[int, np.ndarray]]) -> str:
    row = int(query["row"])
    image = None
    figures = []
    if images is not None and 0 <= int(query["image_index"]) < len(images):
        image = images.images[int(query["image_index"])]
        figures.append(f'<figure><img alt="query image" src="{image_uri(image)}"><figcaption>query</figcaption>'
                       "</figure>")
    for method in audit.methods:
        attribution = maps.get(method, {}).get(row)
        if attribution is None:
            figures.append(f"<figure><div class=muted>no map</div><figcaption>{esc(method)}</figcaption></figure>")
        else:
            figures.append(f'<figure><img alt="{esc(method)} map" src="{overlay_uri(image, attribution)}">'
                           f"<figcaption>{esc(method)}</figcaption></figure>")
    facts = [f"episode {count(query['episode'])}, query {count(query['query'])}",
             f"confidence {number(query['confidence'])}, margin {number(query['margin'])}"]
    if "ood_flag" in query.index:
        score = finite(query.get("ood_score"))
        flag = "flagged out-of-distribution" if bool(query["ood_flag"]) else "in distribution"
        facts.append(flag + (f" (score {number(score)})" if score is not None else ""))
    by = [c for c in audit.manifest.get("by") or [] if c in query.index and c not in IDENTIFYING]
    if by:
        facts.append(", ".join(f"{c} = {query[c]}" for c in by))
    return (f'<div class="case" data-row="{row}" data-rank="{rank}"><div><b>#{rank}</b> true '
            f"<b>{esc(query['true'])}</b> → predicted <b>{esc(query['pred'])}</b></div>"
            f'<div class="imgs">{"".join(figures)}</div>'
            + "".join(f'<div class="muted">{esc(f)}</div>' for f in facts) + "</div>")


def gallery_section(audit: LoadedAudit, images: QueryImages, k: int = DEFAULT_GALLERY) -> str:
    """The most confident failures, each with its query image and one map per method."""
    failures = confident_failures(audit.queries, k)
    n_wrong = int((~audit.queries["correct"].astype(bool)).sum())
    notes = [partial(message) for where, message in audit.problems if where == "gallery"]
    if images.problem:
        notes.append(partial(images.problem))
    maps = {m: audit.maps_for_rows(m, failures["row"].tolist()) for m in audit.methods}
    cases = [_case(audit, rank, q, images.images, maps) for rank, (_, q) in enumerate(failures.iterrows(), start=1)]
    intro = (f'<p>The {count(len(failures))} wrong answers the model was surest of, of {count(n_wrong)} wrong answers '
             f"among {count(len(audit.queries))} queries. Maps: blue negative, red positive "
             'attribution, scaled per map <span class="legend"></span></p>')
    body = intro + "".join(notes) + (f'<div class="gallery">{"".join(cases)}</div>' if cases else
                                     '<p class="muted">No wrong answers.</p>')
    return (f'<section id="gallery"><h2>Most confident failures</h2><p class="sub">Highest confidence first; '
            f"query images and maps are embedded in this file.</p>{body}</section>")


__all__ = ["DEFAULT_GALLERY", "QueryImages", "confident_failures", "gallery_section", "image_uri", "load_query_images",
           "overlay_uri", "png_data_uri"]

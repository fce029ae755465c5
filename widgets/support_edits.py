"""The workbench's edits of an episode, as pure functions: an episode (and its image set) in, the
edited episode out, or an EpisodeError saying why the edit is refused and what to do instead.

``WorkbenchState`` applies them and swaps in the matching fitted episode; keeping the rules here
lets them be read and tested without a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fsl_xai.data.imageset import ImageSet
from fsl_xai.episodes import Episode
from fsl_xai.errors import DataError, EpisodeError


def episode_label(episode: Episode, label: int | str) -> int:
    """The episode label (0..n_way-1) of a class name or label of ``episode``."""
    if isinstance(label, str):
        if label not in episode.classes:
            raise EpisodeError(f"class {label!r} is not in this episode ({list(episode.classes)})")
        return episode.classes.index(label)
    if not 0 <= int(label) < episode.n_way:
        raise EpisodeError(f"label {label} is not an episode label (0..{episode.n_way - 1})")
    return int(label)


def check_pool_image(images: ImageSet, episode: Episode, sample_id: str) -> None:
    """Refuse an image that is not in the pool: already a support image or a query, or unknown."""
    if sample_id in episode.support_ids:
        raise EpisodeError(f"{sample_id} is already in the support set")
    if sample_id in episode.query_ids:
        raise EpisodeError(f"{sample_id} is a query of this episode; a query cannot also be a support image "
                           "(use 'add query as confirmed case' instead)")
    images.indices_of([sample_id])  # DataError naming an unknown id


def _position(episode: Episode, position: int) -> int:
    n = len(episode.support_ids)
    if not 0 <= position < n:
        raise EpisodeError(f"support position {position} does not exist (0..{n - 1})")
    return position


def swapped(images: ImageSet, episode: Episode, position: int, sample_id: str) -> Episode:
    """Support image ``position`` replaced by pool image ``sample_id`` (same class label)."""
    check_pool_image(images, episode, sample_id)
    ids = list(episode.support_ids)
    ids[_position(episode, position)] = sample_id
    return episode.with_support(ids, episode.support_labels)


def removed(episode: Episode, position: int) -> Episode:
    """Support image ``position`` dropped; refused for the last image of its class."""
    ids, labels = list(episode.support_ids), list(episode.support_labels)
    label = labels[_position(episode, position)]
    if labels.count(label) == 1:
        raise EpisodeError(f"class {episode.classes[label]!r} has only this support image; "
                           "add another image of the class before removing it")
    del ids[position], labels[position]
    return episode.with_support(ids, labels)


def with_support_image(images: ImageSet, episode: Episode, sample_id: str, label: int) -> Episode:
    """Pool image ``sample_id`` appended to the support set as episode label ``label``."""
    check_pool_image(images, episode, sample_id)
    return episode.with_support(list(episode.support_ids) + [sample_id], list(episode.support_labels) + [label])


def with_query_image(images: ImageSet, episode: Episode, sample_id: str, label: int) -> Episode:
    """Pool image ``sample_id`` appended to the queries with true label ``label`` (-1: unknown)."""
    check_pool_image(images, episode, sample_id)
    return episode.with_queries(list(episode.query_ids) + [sample_id], list(episode.query_labels) + [label])


def confirmed(episode: Episode, query_index: int, label: int) -> Episode:
    """Query ``query_index`` moved to the end of the support set as episode label ``label``."""
    if not 0 <= query_index < len(episode.query_ids):
        raise EpisodeError("select a query first")
    keep = [i for i in range(len(episode.query_ids)) if i != query_index]
    if not keep:
        raise EpisodeError("this would leave the episode without queries; keep at least one query")
    new = episode.with_support(list(episode.support_ids) + [episode.query_ids[query_index]],
                               list(episode.support_labels) + [label])
    return new.with_queries([episode.query_ids[i] for i in keep], [episode.query_labels[i] for i in keep])


def pool_table(images: ImageSet, episode: Episode | None, class_name: str | None = None,
               **filters: Any) -> pd.DataFrame:
    """Images not in the episode, with class and metadata; ``filters`` match metadata columns
    (``site="A"``, ``sex="female"``); a value of None or "" means any."""
    meta = images.metadata.copy()
    meta.insert(1, "class", np.asarray(images.class_names)[images.labels])
    used = set(episode.support_ids) | set(episode.query_ids) if episode is not None else set()
    mask = ~meta["sample_id"].isin(used)
    if class_name:
        mask &= meta["class"] == class_name
    for column, value in filters.items():
        if value is None or value == "":
            continue
        if column not in meta.columns:
            raise DataError(f"no metadata column {column!r}; columns: {list(meta.columns)}")
        mask &= meta[column].astype(str) == str(value)
    return meta[mask.to_numpy()].reset_index(drop=True)

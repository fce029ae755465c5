"""The workbench's episode edits as pure functions: no model, no state."""

from __future__ import annotations

import pytest

from fsl_xai.episodes import EpisodeSampler
from fsl_xai.errors import DataError, EpisodeError
from widgets import support_edits as edits


@pytest.fixture
def episode(synthetic_images):
    return EpisodeSampler(synthetic_images, 3, 2, 2, seed=0).sample(0)


def test_swap_remove_add_and_confirm(synthetic_images, episode):
    pool = edits.pool_table(synthetic_images, episode, episode.classes[0])
    new = edits.swapped(synthetic_images, episode, 0, pool.sample_id[0])
    assert new.support_ids[0] == pool.sample_id[0] and new.support_labels == episode.support_labels
    assert new.seed is None  # an edited episode is no sampler draw
    assert edits.removed(episode, 0).support_ids == episode.support_ids[1:]
    added = edits.with_support_image(synthetic_images, episode, pool.sample_id[1], 2)
    assert added.support_ids[-1] == pool.sample_id[1] and added.support_labels[-1] == 2
    confirmed = edits.confirmed(episode, 1, episode.query_labels[1])
    assert confirmed.support_ids[-1] == episode.query_ids[1]
    assert episode.query_ids[1] not in confirmed.query_ids and len(confirmed.query_ids) == len(episode.query_ids) - 1


def test_refusals_say_what_to_do(synthetic_images, episode):
    one_shot = edits.removed(episode, 0)
    with pytest.raises(EpisodeError, match="only this support image"):
        edits.removed(one_shot, one_shot.support_labels.index(episode.support_labels[0]))
    with pytest.raises(EpisodeError, match="is a query of this episode"):
        edits.swapped(synthetic_images, episode, 0, episode.query_ids[0])
    with pytest.raises(EpisodeError, match="already in the support set"):
        edits.with_support_image(synthetic_images, episode, episode.support_ids[1], 0)
    with pytest.raises(DataError, match="unknown sample ids"):
        edits.swapped(synthetic_images, episode, 0, "no-such-id")
    with pytest.raises(EpisodeError, match="does not exist"):
        edits.swapped(synthetic_images, episode, 99, edits.pool_table(synthetic_images, episode).sample_id[0])
    with pytest.raises(EpisodeError, match="not in this episode"):
        edits.episode_label(episode, "not-a-class")
    with pytest.raises(EpisodeError, match="without queries"):
        single = episode.with_queries(episode.query_ids[:1], episode.query_labels[:1])
        edits.confirmed(single, 0, 0)
    with pytest.raises(DataError, match="no metadata column"):
        edits.pool_table(synthetic_images, episode, nosuchcolumn="x")


def test_pool_excludes_the_episode_and_filters_metadata(synthetic_images, episode):
    pool = edits.pool_table(synthetic_images, episode, site="A")
    assert (pool["site"] == "A").all()
    assert not set(pool.sample_id) & (set(episode.support_ids) | set(episode.query_ids))
    assert len(edits.pool_table(synthetic_images, None)) == len(synthetic_images)

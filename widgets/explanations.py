"""Explanations of the workbench's current queries: attribution maps, quality badges, support
influence and nearest support images, computed by ``fsl_xai.explain`` on the state's fitted episode
and cached.

Reached as ``state.explanations``; ``state.explanations.prefetch`` computes the maps of the shown
episode's other queries while the kernel is idle, so a click on a query usually finds its maps
cached, and first (``prefetch.expect``) the selected query's maps after a support-set edit the
user has prepared but not made yet (a support image selected, a pool image picked), so the edit's
heatmaps come from the cache too. Arguments left out come from the state's settings (the selected query, the target and
contrast, the method's parameters). A map is cached under (model fingerprint,
episode id, query, method, parameters, target, contrast), so going back to an episode or a setting
shows its map at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from fsl_xai.episodes import Episode
from fsl_xai.errors import EpisodeError
from fsl_xai.models import FittedEpisode

from ._loop import kernel_loop
from .support_edits import episode_label

if TYPE_CHECKING:  # fsl_xai.explain (and captum) is imported when the first map is asked for
    from fsl_xai.explain import AttributionMap, Badges

    from .state import WorkbenchState


@dataclass
class ExpectedEdit:
    """A support-set edit of the episode on screen that the user has prepared but not made: its
    ``episode`` (the same queries, another support set) and ``fit``, which returns its fitted
    episode (called once, when the first map is computed: preparing an edit costs nothing on the
    click). ``shown`` is the state's result when it was prepared: once another result is on
    screen, it is stale."""

    episode: Episode
    fit: Callable[[Episode], FittedEpisode]
    shown: object
    _fitted: FittedEpisode | None = None

    @property
    def fitted(self) -> FittedEpisode:
        if self._fitted is None:
            self._fitted = self.fit(self.episode)
        return self._fitted


class Explanations:
    """The explanation side of a :class:`~widgets.state.WorkbenchState` (one per state).

    Args:
        state: the workbench state whose current episode is explained.
    """

    def __init__(self, state: WorkbenchState):
        self.state = state
        self.maps: dict[tuple, AttributionMap] = {}
        self.badge_cache: dict[tuple, Badges] = {}
        self._frozen: tuple[FittedEpisode, FittedEpisode] | None = None  # (fitted, frozen with the queries)
        self.prefetch = Prefetch(self)

    def clear(self) -> None:
        """Forget every cached map and badge (a new model or image set)."""
        self.maps.clear()
        self.badge_cache.clear()
        self.prefetch.cancel()

    # ------------------------------------------------------------------ what is explained
    def _query(self, query_index: int | None) -> int:
        qi = self.state.query_index if query_index is None else query_index
        n = len(self.state.shown()[1].query_ids)
        if not 0 <= qi < n:
            raise EpisodeError("select a query first" if qi < 0 else f"query {qi} does not exist (0..{n - 1})")
        return qi

    def fitted(self, edit: ExpectedEdit | None = None) -> FittedEpisode:
        """The fitted episode explanations use (of ``edit`` if given, else the one on screen): for a
        model that refines its prototypes with the query batch, frozen with the episode's queries (so
        an explainer's perturbed copies take no part)."""
        images, episode, fitted, _ = self.state.shown()
        if edit is not None:  # an edit keeps the queries: frozen with the same ones
            return edit.fitted.with_query_embeddings(self.state.embeddings(episode.query_indices(images)))
        if self._frozen is None or self._frozen[0] is not fitted:
            queries = self.state.embeddings(episode.query_indices(images))
            self._frozen = (fitted, fitted.with_query_embeddings(queries))
        return self._frozen[1]

    def query_tensor(self, query_index: int | None = None) -> torch.Tensor:
        """(1, C, H, W) pixels of a query (default: the selected one)."""
        return torch.from_numpy(self.state.query_image(self._query(query_index))[None].copy())

    def support_tensor(self) -> torch.Tensor:
        """(n_support, C, H, W) pixels of the support set."""
        images, episode, _, _ = self.state.shown()
        return torch.from_numpy(images.images[episode.support_indices(images)])

    def classes(self, target: Any = None, contrast: Any = None, query_index: int | None = None) -> tuple[Any, Any]:
        """The explained class and the contrast class as ``fsl_xai.explain`` takes them: "predicted"
        or an episode label; None, "runner_up" or an episode label. Defaults: the state's settings;
        "true" becomes the query's label, a class name its episode label."""
        episode = self.state.shown()[1]
        s = self.state
        target = s.target if target is None else target
        contrast = s.contrast if contrast is None else contrast
        if target == "true":
            target = episode.query_labels[self._query(query_index)]
            if target < 0:
                raise EpisodeError("this query's true class is unknown; explain the predicted class instead")
        if isinstance(target, str) and target != "predicted":
            target = episode_label(episode, target)
        if contrast == "none":
            contrast = None
        if isinstance(contrast, str) and contrast != "runner_up":
            contrast = episode_label(episode, contrast)
        return target, contrast

    def _key(self, method: str, qi: int, target: Any, contrast: Any, params: dict,
             edit: ExpectedEdit | None = None) -> tuple:
        episode = self.state.shown()[1] if edit is None else edit.episode
        return (self.state.fingerprint, episode.episode_id, qi, method, json.dumps(params, sort_keys=True, default=str),
                *self.classes(target, contrast, qi))

    def is_cached(self, method: str, query_index: int, edit: ExpectedEdit | None = None) -> bool:
        """Whether the map of ``method`` for a query (of the episode on screen, or after ``edit``),
        with the state's settings, is computed already."""
        p = dict(self.state.params.get(method, {}))
        return self._key(method, self._query(query_index), None, None, p, edit) in self.maps

    # ------------------------------------------------------------------ explanations
    def attribution(self, method: str, query_index: int | None = None, target: Any = None, contrast: Any = None,
                    params: dict | None = None, edit: ExpectedEdit | None = None) -> AttributionMap:
        """The attribution map (``fsl_xai.explain.AttributionMap``) of one query (cached) in the episode
        on screen, or in the episode after ``edit`` (which keeps the queries); raises on a failing
        method."""
        import fsl_xai.explain as xai

        qi = self._query(query_index)
        p: dict[str, Any] = dict(self.state.params.get(method, {}) if params is None else params)
        key = self._key(method, qi, target, contrast, p, edit)
        if key not in self.maps:
            t0 = time.perf_counter()
            self.maps[key] = xai.explain(self.fitted(edit), self.query_tensor(qi), method, target=key[5],
                                         contrast=key[6], seed=self.state.seed, episode_id=key[1],
                                         query_indices=[qi], **p)
            self.state.timings[f"explain:{method}"] = time.perf_counter() - t0
        return self.maps[key]

    def badges(self, method: str, query_index: int | None = None) -> Badges:
        """Quality badges (``fsl_xai.explain.Badges``) of the map shown for ``method`` (cached)."""
        from fsl_xai.explain.quality import badges as quality_badges

        qi = self._query(query_index)
        p: dict[str, Any] = dict(self.state.params.get(method, {}))
        key = self._key(method, qi, None, None, p)
        if key not in self.badge_cache:
            amap = self.attribution(method, qi)
            # the support-set checks cost two more explanations per map: they belong to the quality
            # table (notebook 03), not to a click
            self.badge_cache[key] = quality_badges(
                self.fitted(), self.query_tensor(qi)[0], method, self.support_tensor(), mask=self.state.query_mask(qi),
                target=key[5], contrast=key[6], seed=self.state.seed, attribution=amap, support=False, **p)
        return self.badge_cache[key]

    def influence(self, query_index: int | None = None) -> pd.DataFrame:
        """Support images ranked by |influence| on this query's decision (``fsl_xai.explain.support_influence``'s
        table: ``sample_id``, ``class``, ``influence`` = how much the margin drops without the image, NaN
        and last for a class's only image)."""
        import fsl_xai.explain as xai

        images, episode, _, _ = self.state.shown()
        qi = self._query(query_index)
        query = self.state.embeddings(episode.query_indices(images)[[qi]])[0]
        return xai.support_influence(self.fitted(), query, sample_ids=episode.support_ids,
                                     class_names=episode.classes).table

    def nearest_support(self, query_index: int | None = None, k: int = 5) -> pd.DataFrame:
        """The k support images nearest to the query by the model's own distance (``sample_id``,
        ``class``, ``distance``, and the most similar patches)."""
        import fsl_xai.explain as xai

        episode = self.state.shown()[1]
        return xai.nearest_support(self.fitted(), self.query_tensor(query_index)[0], k=k,
                                   support_images=self.support_tensor(), sample_ids=episode.support_ids,
                                   class_names=episode.classes)


class Prefetch:
    """Computes, while the kernel is idle, maps the user is likely to ask for next, one map per slice:

    - ``expect(edit)``: the selected query's maps for the shown methods in the episode after a
      support-set edit that is prepared on screen but not made (the support view calls it when a
      support image is selected); dropped when another result is shown (the edit was made, or
      another one) or a setting changes;
    - ``start(after)``: the maps of the shown episode's queries, in gallery (episode) order starting
      next to query ``after`` and wrapping around, so that a click on a query usually only reads the
      cache. Dropped when it is stale: a new ``start``, ``cancel``, or a change of the episode's
      result, the methods, their parameters, the target or the contrast.

    The expected edit's maps come first. A slice runs only when nothing happened for ``idle_s``
    seconds (``touch()`` marks activity: a click, a redraw) and hands the event loop back after each
    map, so pending messages (the next click) are handled between slices. Without a running event
    loop (scripts, tests) nothing is scheduled: ``step()`` computes the next map on demand.
    """

    #: seconds without activity before a slice runs
    idle_s = 0.4
    #: seconds between two slices (the event loop handles what arrived meanwhile)
    gap_s = 0.02

    def __init__(self, explanations: Explanations):
        self.explanations = explanations
        self.todo: list[tuple[int, str]] = []  # (query, method) still to compute, in order
        self.done = 0  # maps computed by this object (all plans)
        self.failed: dict[tuple[int, str], str] = {}  # of the current plan: not retried
        self._context: tuple | None = None
        self._result: object = None  # the episode result the plan is for (compared by identity)
        self.expected: ExpectedEdit | None = None
        self.expected_todo: list[str] = []  # methods whose maps after the expected edit are still to compute
        self._expected_context: tuple | None = None
        self._generation = 0
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def _now_context(self) -> tuple:
        s = self.explanations.state
        methods = tuple(s.methods)
        params = json.dumps({m: s.params.get(m, {}) for m in methods}, sort_keys=True, default=str)
        return (s.fingerprint, methods, params, repr(s.target), repr(s.contrast))

    def stale(self) -> bool:
        """Whether the plan no longer matches what is shown (or there is none)."""
        return (self._context is None or self._result is not self.explanations.state.result
                or self._context != self._now_context())

    def touch(self) -> None:
        """Mark activity now: the next slice waits until the kernel has been idle ``idle_s`` seconds."""
        self._last_activity = time.monotonic()

    def cancel(self) -> None:
        """Drop the plans (the queries' and the expected edit's) and any scheduled slice."""
        self._drop_queries()
        self.expected, self.expected_todo = None, []

    def _drop_queries(self) -> None:
        """Drop the queries' plan and any scheduled slice (a prepared edit stays planned)."""
        self._generation += 1
        self.todo, self._context = [], None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def expect(self, edit: ExpectedEdit | None, methods: list[str] | None = None) -> None:
        """Plan the selected query's maps for ``methods`` (default: the state's) in the episode after
        ``edit``, ahead of the queries' plan (None: no edit is prepared any more)."""
        self.expected, self.expected_todo = edit, []
        if edit is None:
            return
        self._expected_context = self._now_context()
        self.expected_todo = list(methods if methods is not None else self.explanations.state.methods)
        self.touch()  # the click that prepared the edit is activity: its own redraws come first
        self._schedule(self.idle_s)

    def _expected_stale(self) -> bool:
        s = self.explanations.state
        return (self.expected is None or self.expected.shown is not s.result
                or self._expected_context != self._now_context())

    def _step_expected(self) -> bool:
        """Compute the next map of the expected edit that is not cached yet; False when none is left
        (or the edit is stale: then it is dropped)."""
        if not self.expected_todo:
            return False
        if self._expected_stale():
            self.expected, self.expected_todo = None, []
            return False
        ex, edit, method = self.explanations, self.expected, self.expected_todo.pop(0)
        try:
            if not ex.is_cached(method, ex.state.query_index, edit):
                ex.attribution(method, edit=edit)
                self.done += 1
        except Exception:  # noqa: BLE001, S110 - the edit itself, once made, shows the error
            pass
        return True

    def start(self, after: int, methods: list[str] | None = None) -> None:
        """Plan the maps of every query of the shown episode but ``after`` (computed on its own click),
        in gallery order starting next to it, for ``methods`` (default: the state's); those cached are
        left out. Scheduled when an event loop runs."""
        self._drop_queries()
        s = self.explanations.state
        if s.result is None or s.episode is None:
            return
        n = len(s.shown()[1].query_ids)
        chosen = list(methods if methods is not None else s.methods)
        order = [(after + k) % n for k in range(1, n)] if 0 <= after < n else list(range(n))
        self._context, self._result = self._now_context(), s.result
        self.failed = {}
        self.todo = [(q, m) for q in order for m in chosen]
        self.touch()  # the foreground work (the maps, badges, influence of a click) ends now
        self._schedule(self.idle_s)

    def step(self) -> bool:
        """Compute the next map not cached yet: of the expected edit first, then of the queries' plan
        (nothing of a stale plan); True while more remain."""
        if self._step_expected():
            return bool(self.expected_todo or self.todo)
        if self.stale():
            self.todo = []
            return False
        ex = self.explanations
        while self.todo:
            q, m = self.todo.pop(0)
            try:
                if ex.is_cached(m, q):
                    continue
                ex.attribution(m, q)
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - the click on this query shows the error
                self.failed[(q, m)] = f"{type(exc).__name__}: {exc}"
            break
        return bool(self.todo)

    def _schedule(self, delay: float) -> None:
        loop = kernel_loop()
        if loop is None:  # no kernel loop: step() on demand
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._tick, self._generation)

    def _tick(self, generation: int) -> None:
        self._timer = None
        if generation != self._generation or not (self.todo or self.expected_todo):
            return
        wait = self.idle_s - (time.monotonic() - self._last_activity)
        if wait > 0:  # something happened lately: wait for a quiet moment
            self._schedule(wait)
            return
        if self.step():
            self._schedule(self.gap_s)

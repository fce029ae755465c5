"""How far to trust what the workbench shows: the domain guard's flags, conformal prediction sets and the
validation score of the data on screen.

``state.trust`` (a :class:`Trust`) computes these when the model, the data or the episode protocol
changes, and caches them per model and data; a query click only reads them. The guard and the
held-in evaluation are kept in module caches, so a second workbench on the same model and data
(a test, a benchmark, a re-opened session) reuses them, and in the cache folder
(``FSL_XAI_CACHE_DIR/workbench-trust``, keyed by the model's fingerprint, the data files and the
protocol), so a second page load does not recompute them either. Where they come from:
:mod:`widgets.held_in`.

In a kernel (Voila, Jupyter) what is not cached is computed after the first episode is shown, in
short steps on the kernel's event loop (``Trust.prepare(defer=True)``); until then the guard and
the validation score are "pending" and every place that shows them says "checking…" /
"computing…" instead of silently showing no flag. ``Trust.finish()`` runs the rest at once (an
export waits for it).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from fsl_xai.config import cache_dir
from fsl_xai.conformal import ConformalCalibration, add_prediction_sets, calibrate
from fsl_xai.embeddings import embed_all, embedding_fingerprint
from fsl_xai.errors import DataError, FslXaiError
from fsl_xai.evaluation import evaluate
from fsl_xai.guard import DomainGuard, GuardScores
from fsl_xai.training import torch_threads
from fsl_xai.training.validation import VALIDATION_SEED_OFFSET

from . import held_in
from ._loop import kernel_loop
from .trust_store import (
    DISK_FORMAT,
    GUARDS,
    HELD_IN,
    HeldInScore,
    read_guard,
    read_held_in,
    remember,
    write_held_in,
    write_quietly,
)
from .trust_text import (
    GUARD_CHECKING,
    GUARD_CHECKING_SHORT,
    SETS_COMPUTING,
    VALIDATION_COMPUTING,
    VALIDATION_COMPUTING_SHORT,
)

if TYPE_CHECKING:
    from fsl_xai.models import FittedEpisode

    from .state import WorkbenchState

#: held-in episodes behind the validation score and the calibration of the prediction sets
HELD_IN_EPISODES = 100
#: the prediction sets' default miss rate: sets hold the true class 90% of the time
DEFAULT_ALPHA = 0.1
#: seconds after the first episode is shown before the deferred guard and held-in work starts (the
#: page's widgets are fetched and drawn meanwhile), and between its steps (the kernel answers clicks)
DEFER_START_S = 0.5
DEFER_STEP_S = 0.02
class Trust:
    """The guard, the validation score and the prediction sets of one WorkbenchState.

    Attributes:
        guard: the domain guard for the loaded model (None when none could be fitted: ``guard_note``,
            or while it is still being fitted: ``guard_pending``).
        guard_text: what the guard was fitted on.
        validation: the held-in score of the data on screen (None: ``validation_note`` says why, or
            ``validation_pending``).
        calibration: the conformal calibration at ``alpha`` (None: ``sets_note`` says why).
        guard_pending, validation_pending: True while the deferred work (:meth:`prepare` with
            ``defer``) has not fitted the guard / run the held-in episodes yet; the notes then say so.
    """

    def __init__(self, state: WorkbenchState):
        self.state = state
        self.alpha = DEFAULT_ALPHA
        self.guard: DomainGuard | None = None
        self.guard_text = ""
        self.guard_note = ""
        self.guard_pending = False
        self.validation: HeldInScore | None = None
        self.validation_note = ""
        self.validation_pending = False
        self.calibration: ConformalCalibration | None = None
        self.sets_note = ""
        self.timings: dict[str, float] = {}
        self._held_in: pd.DataFrame | None = None
        self._held_in_where = ""
        self._protocol: tuple | None = None
        self._guard_key: tuple | None = None
        self._token = 0
        self._work: Iterator[None] | None = None
        self._work_for: tuple | None = None
        self._on_ready: Callable[[], None] | None = None

    @property
    def pending(self) -> bool:
        """Whether the guard or the held-in evaluation is still being computed (after the first paint)."""
        return self.guard_pending or self.validation_pending

    # ------------------------------------------------------------------ keys
    def _model_key(self) -> tuple:
        s = self.state
        images, model, table = s.loaded()
        # the image shape too: the same weights on another image size give embeddings of another size
        return (table.key[0] if table.key else embedding_fingerprint(model), s.dataset_name, s.split,
                held_in.training_sources(s.model_info), images.n_channels, images.image_size)

    def _protocol_base(self) -> tuple:
        """The episode protocol on screen, without the guard's threshold (known once it is fitted)."""
        s = self.state
        images = s.loaded()[0]
        classes = tuple(s.episode_classes) or tuple(images.class_names)
        return classes, min(s.n_way, len(classes)), s.n_shot, s.n_query

    def _protocol_key(self, base: tuple) -> tuple:
        # not keyed on the images on screen: images appended to them (an import) need no new episodes
        return (*self._model_key(), *base, self.guard.threshold if self.guard is not None else None,
                HELD_IN_EPISODES)

    # ------------------------------------------------------------------ when the model, data or protocol change
    def model_changed(self) -> None:
        """Forget the guard and held-in results of the previous model or data (the next
        :meth:`prepare` finds or computes them); deferred work still running for them is dropped."""
        self._token += 1
        self._work = self._work_for = None
        self._guard_key = self._protocol = None
        self.guard, self.guard_text, self.guard_note, self.guard_pending = None, "", "", False
        self._set_held_in(None, "", None)
        self.validation_pending = False

    def prepare_model(self) -> None:
        """Fit (or fetch) the domain guard of the loaded model now; on failure ``guard_note`` says why."""
        self.model_changed()
        for _ in self._guard_steps(self._model_key()):
            pass
        self.validation_pending = False  # computed by the next prepare (the protocol is unknown here)
        self._set_held_in(None, "", None)

    def prepare_protocol(self) -> None:
        """Evaluate held-in episodes for the protocol on screen now (cached): the validation score
        and the prediction sets' calibration."""
        self.prepare(defer=False)

    def prepare(self, defer: bool = False, on_ready: Callable[[], None] | None = None) -> bool:
        """Make the guard, the validation score and the calibration those of the model, data and
        protocol on screen. What is cached (in memory, or on disk under ``FSL_XAI_CACHE_DIR``) is
        applied at once. The rest is computed now, or, with ``defer`` and a running event loop (a
        kernel), in short steps on that loop after the current event (so the first episode paints
        first); meanwhile ``guard_pending`` / ``validation_pending`` are set, the notes say
        "checking" / "computing", and ``on_ready()`` is called when everything is in place.

        Returns:
            True when everything is ready now, False when work was deferred.
        """
        mkey, base = self._model_key(), self._protocol_base()
        if self._work is not None and self._work_for == (mkey, base):
            if defer and kernel_loop() is not None:
                self._on_ready = on_ready or self._on_ready
                return False  # already under way for this model, data and protocol
            self.finish()  # wanted now: the rest of that work, here
            return True
        self._token += 1
        self._work, self._work_for = None, None
        steps = self._steps(mkey, base)
        loop = kernel_loop() if defer else None
        if loop is None:
            for _ in steps:
                pass
            return True
        try:
            next(steps)  # the cheap part (caches) runs now; the first slow step waits
        except StopIteration:
            return True
        self._work, self._work_for, self._on_ready = steps, (mkey, base), on_ready
        loop.call_later(DEFER_START_S, self._advance, loop, self._token)
        return False

    def finish(self) -> bool:
        """Run any deferred work to its end now (an export waits for the guard this way).

        Returns:
            True when there was deferred work (the result on screen was then republished).
        """
        work = self._work
        if work is None:
            return False
        self._token += 1  # the scheduled steps of this work stop
        self._work = self._work_for = None
        try:
            for _ in work:
                pass
        except Exception as exc:  # noqa: BLE001 - shown on the page instead of a guard that silently lacks
            self._failed(exc)
        self._ready()
        return True

    def _advance(self, loop: asyncio.AbstractEventLoop, token: int) -> None:
        """One deferred step; the next is scheduled so that the kernel answers the page in between."""
        if token != self._token or self._work is None:
            return  # another model, data or protocol came meanwhile, or finish() ran it
        try:
            next(self._work)
        except StopIteration:
            self._work = self._work_for = None
            self._ready()
            return
        except Exception as exc:  # noqa: BLE001 - a failing step must not leave "checking..." forever
            self._work = self._work_for = None
            self._failed(exc)
            self._ready()
            return
        loop.call_later(DEFER_STEP_S, self._advance, loop, token)

    def _failed(self, exc: BaseException) -> None:
        what = f"{type(exc).__name__}: {exc}"
        if self.guard_pending:
            self.guard, self.guard_text, self.guard_pending = None, "", False
            self.guard_note = f"no domain guard: fitting it failed ({what})"
        if self.validation_pending:
            self.validation_pending = False
            self._set_held_in(None, f"the held-in evaluation failed ({what})", None)

    def _ready(self) -> None:
        callback, self._on_ready = self._on_ready, None
        if callback is not None:
            callback()

    # ------------------------------------------------------------------ the steps
    def _steps(self, mkey: tuple, base: tuple) -> Iterator[None]:
        """The guard (if the model or data changed) then the held-in evaluation (if the protocol
        changed); yields before each slow step."""
        if mkey != self._guard_key:
            yield from self._guard_steps(mkey)
        protocol = self._protocol_key(base)
        if protocol != self._protocol:
            yield from self._held_in_steps(protocol, base)

    def _guard_steps(self, key: tuple) -> Iterator[None]:
        s = self.state
        _, model, _ = s.loaded()
        entry = GUARDS.get(key)
        disk = None
        if entry is None:
            disk = self._disk_path("guard", key, "json")
            guard = read_guard(disk, key[0]) if disk is not None else None
            if guard is not None:
                entry = (guard, guard.reference_data)
        if entry is None:
            self.guard, self.guard_text, self.guard_pending = None, "", True
            self.guard_note = GUARD_CHECKING
            self._protocol = None
            # the held-in episodes count the guard's flags: they follow it
            self.validation_pending = True
            self._set_held_in(None, VALIDATION_COMPUTING, None)
            self.sets_note = SETS_COMPUTING
            yield
            t0 = time.perf_counter()
            try:
                data = held_in.guard_data(s.model_info, model, s.dataset_name, s.split)
                yield
                # embedded once per machine (the embedding cache on disk), then read back
                reference = embed_all(model, data.reference, disk_cache=True)
                yield
                fitted = DomainGuard.fit(reference, embed_all(model, data.calibration, disk_cache=True),
                                         embedding_fingerprint=key[0],
                                         reference_data=data.description, calibration_data=data.description)
                entry = (fitted, data.description)
                if disk is not None:
                    write_quietly(lambda: fitted.save(disk))
            except FslXaiError as exc:
                entry = (None, str(exc))  # not stored on disk: data may appear on this machine later
            self.timings["guard"] = time.perf_counter() - t0
        remember(GUARDS, key, entry)
        guard, text = entry
        self.guard, self.guard_pending, self._guard_key = guard, False, key
        self.guard_text, self.guard_note = (text, "") if guard is not None else ("", text)
        self._protocol = None  # the held-in evaluation counts flags with this guard

    def _held_in_steps(self, protocol: tuple, base: tuple) -> Iterator[None]:
        classes, n_way = base[0], base[1]
        entry = HELD_IN.get(protocol)
        disk = None
        if entry is None:
            disk = self._disk_path("held-in", protocol, "npz")
            entry = read_held_in(disk) if disk is not None else None
        if entry is None:
            self.validation_pending = True
            self._set_held_in(None, VALIDATION_COMPUTING, None)
            self.sets_note = SETS_COMPUTING
            yield
            t0 = time.perf_counter()
            table, where, shape = yield from self._evaluate_held_in(classes, n_way)
            entry = (table, where, shape, None if table is None else HeldInScore.of(table, where, shape, classes))
            if disk is not None and table is not None:
                write_quietly(lambda: write_held_in(disk, entry))
            self.timings["held-in"] = time.perf_counter() - t0
        remember(HELD_IN, protocol, entry)
        table, where, _, score = entry
        self._protocol = protocol
        self.validation_pending = False
        self._set_held_in(table, where, score)

    def _set_held_in(self, table: pd.DataFrame | None, where: str, score: HeldInScore | None) -> None:
        self._held_in, self._held_in_where = table, where
        self.validation = score
        if table is None:
            self.validation_note = where
            self.calibration = None
            self.sets_note = f"no prediction sets: {where}" if where else ""
            return
        self.validation_note = ""
        self.recalibrate(self.alpha)

    def _evaluate_held_in(self, classes: tuple[str, ...], n_way: int
                          ) -> Generator[None, None, tuple[pd.DataFrame | None, str, tuple[int, int, int]]]:
        s = self.state
        images, model, _ = s.loaded()
        n_shot = s.n_shot
        shape = (n_way, n_shot, s.n_query)
        try:
            held, other_split, where = held_in.held_in_images(s.dataset_name, s.split, images, classes, n_shot + 1,
                                                              model)
            counts = held.class_counts()
            n_query = min(s.n_query, min(counts.get(c, 0) for c in classes) - n_shot)
            if n_query < 1:
                raise DataError(f"{where} has too few images of some class for {n_shot}-shot episodes with queries")
            shape = (n_way, n_shot, n_query)
            yield None
            embed_all(model, held)  # batched convolutions: with every thread torch has
            yield None
            with torch_threads(1):
                result = evaluate(model, held, n_way, n_shot, n_query, HELD_IN_EPISODES, seed=VALIDATION_SEED_OFFSET,
                                  classes=list(classes), progress=False, guard=self.guard)
        except FslXaiError as exc:
            return None, f"no held-in episodes of the data on screen ({exc})", shape
        seed_note = "" if other_split else f", seed {VALIDATION_SEED_OFFSET}"
        return result.predictions, f"{where}{seed_note}", shape

    # ------------------------------------------------------------------ on disk
    def _disk_path(self, kind: str, key: tuple, suffix: str) -> Path | None:
        """Where a result for ``key`` is kept in the cache folder; None when the data behind it
        cannot be told apart from other data of the same name (then it is only kept in memory)."""
        s = self.state
        images, _, table = s.loaded()
        names = (*held_in.training_sources(s.model_info), s.dataset_name)
        files = held_in.files_signature(names)
        if files is None:
            return None
        # the held-in episodes may be drawn from the images on screen (no val split); the guard never is
        on_screen = (table.key[1] if table.key else images.fingerprint()) if kind == "held-in" else ""
        digest = hashlib.sha256(repr((DISK_FORMAT, kind, key, files, on_screen)).encode()).hexdigest()[:24]
        return cache_dir() / "workbench-trust" / f"{kind}-{digest}.{suffix}"

    def recalibrate(self, alpha: float) -> None:
        """Calibrate the prediction sets at miss rate ``alpha`` on the cached held-in episodes."""
        self.alpha = float(alpha)
        if self._held_in is None:
            return
        try:
            self.calibration = calibrate(self._held_in, self.alpha, calibration_data=self._held_in_where)
            self.sets_note = ""
        except FslXaiError as exc:
            self.calibration, self.sets_note = None, f"no prediction sets: {exc}"

    def status_html(self) -> str:
        """One short line for the page header: what is still being computed (in orange), or how
        the guard and the validation score stand."""
        if self.pending:
            parts = [GUARD_CHECKING_SHORT if self.guard_pending else "",
                     VALIDATION_COMPUTING_SHORT if self.validation_pending else ""]
            return ("<span style='color:#a60'>⏳ " + " · ".join(html.escape(p) for p in parts if p)
                    + "</span>")
        parts = []
        r = self.state.result
        if self.guard is not None:
            flagged = int(r.ood_flag.sum()) if r is not None and r.guard is not None else 0
            parts.append(html.escape(f"domain guard ready ({flagged} flagged)" if flagged else "domain guard ready"))
        elif self.guard_note:
            parts.append("<span style='color:#a60'>no domain guard</span>")
        if self.validation is not None:
            parts.append(html.escape(f"validation accuracy {self.validation.accuracy.estimate:.0%}"))
        return " · ".join(parts)

    # ------------------------------------------------------------------ per shown episode (not per click)
    def assess(self, fitted: FittedEpisode, query_embeddings: torch.Tensor) -> GuardScores | None:
        """Guard scores of the episode's queries, its support counted as known (None without a guard).
        The guard was fitted for this model's embeddings (its fingerprint is the cache key)."""
        if self.guard is None:
            return None
        with torch_threads(1):  # small products: see fsl_xai.training.torch_threads
            return self.guard.assess(query_embeddings, fitted.support_embeddings_)

    def prediction_sets(self, logits: np.ndarray, classes: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray] | None:
        """(pred_set strings "a|b", set sizes) of an episode's queries from their (n, n_way) logits."""
        if self.calibration is None:
            return None
        table = pd.DataFrame(-np.asarray(logits, dtype=np.float64), columns=[f"dist_{c}" for c in classes])
        try:
            sets = add_prediction_sets(table, self.calibration)
        except DataError as exc:
            self.sets_note = f"no prediction sets: {exc}"
            return None
        return tuple(sets["pred_set"]), sets["set_size"].to_numpy()

    # ------------------------------------------------------------------ texts
    def sets_caption(self) -> str:
        """What the prediction sets are, for the gallery."""
        c = self.calibration
        if c is None:
            return self.sets_note
        return (f"prediction sets hold the true class {1 - c.alpha:.0%} of the time (conformal, alpha {c.alpha:g}, "
                f"calibrated on {c.n_episodes} held-in episodes: {c.calibration_data})")

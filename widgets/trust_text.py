"""What the page says about how far to trust what it shows (:mod:`widgets.trust` computes it): the
header lines, the pending notes while the guard and the validation score are computed, prediction
sets in words."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from fsl_xai.conformal import set_text

from .figures import rate_text

if TYPE_CHECKING:
    from .state import WorkbenchState

#: what a flagged query's explanation is (the heatmap banner, exports)
NOT_FIT = "the explanation explains a prediction the model is not fit to make"
#: what the page says while the deferred work runs
GUARD_CHECKING = ("domain guard: checking… out-of-distribution flags are not shown until it is ready "
                  "(exports wait for it)")
GUARD_CHECKING_SHORT = "domain guard: checking…"
VALIDATION_COMPUTING = "validation score: computing… (held-in episodes of the data on screen)"
VALIDATION_COMPUTING_SHORT = "validation score: computing…"
SETS_COMPUTING = "prediction sets: calibrating on held-in episodes…"



def set_words(pred_set: str | None) -> str:
    """A prediction set in words ("lymphocyte or monocyte"), '' for none."""
    return set_text(pred_set) if pred_set else ""


def header_lines(state: WorkbenchState) -> list[str]:
    """HTML lines for the page header: the validation score of the data on screen (with n, interval
    and what it was measured on), the domain guard (what it was fitted on, or why there is none),
    and this episode's accuracy with its flagged queries. While the guard or the validation score is
    still being computed, the lines say so. (Which episode classes the model saw in training is
    ``widgets.session.classes_note``.)"""
    t = state.trust
    lines = []
    if t.validation is not None:
        lines.append(html.escape(t.validation.text()))
    elif t.validation_pending:
        lines.append(f"<span style='color:#a60'>{html.escape(VALIDATION_COMPUTING)}</span>")
    elif t.validation_note:
        lines.append(f"<span style='color:#a60'>no validation score for the data on screen: "
                     f"{html.escape(t.validation_note)}</span>")
    if t.guard is not None:
        lines.append(html.escape(f"domain guard (k={t.guard.k}, threshold {t.guard.threshold:.3f}, the "
                                 f"{t.guard.quantile:.0%} quantile of held-in images) fitted on {t.guard_text}"))
    elif t.guard_note:
        lines.append(f"<span style='color:#a60'>{html.escape(t.guard_note)}</span>")
    r = state.result
    if r is not None:
        flags = " (flags not checked yet)" if t.guard_pending else ""
        lines.append("this episode: " + html.escape(episode_accuracy_text(r) + flags))
    return lines


def episode_accuracy_text(result: Any) -> str:
    """'accuracy 94.0% (n=16, 95% CI …; 1 flagged out-of-distribution)' for the shown episode."""
    known = result.true >= 0
    return rate_text(int(result.correct[known].sum()), int(known.sum()), flagged=result.n_flagged)

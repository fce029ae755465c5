"""The rater app of a trust study (served by Voila, no code visible) and its teaching mode.

A thin view over :class:`fsl_xai.study.session.RaterSession`: it shows the current case in its
assigned condition, collects the answers, and confirms only after the store committed them.
Where the rater is comes from the store, so a closed browser or a restarted server resumes at
the first unanswered case.

Nothing on the screen identifies a case before the design reveals it: the header shows the rater's
position and the case's neutral label from the freeze (``C07``), never its sample id; the answer
options are the same buttons, in the same order, for every case; and the model's advice appears
only in the panels of the case's condition. Every widget of a panel carries the CSS class
``fsl-panel-<panel>`` (``fsl-panel-feedback`` for teaching mode's reveal) and every answer widget
``fsl-q-<question id>``, so a test can tell which part of the page is which. The key of the shown
screen stays in the kernel.

Sequential reading: a case in a condition that shows the AI first appears alone (no panel of the
AI, and the session does not even hand the AI's output to the view); once the rater confirms that
first answer (final), the same case comes back with the AI's panels (``fsl-panel-<panel>``), the
first answer recalled (``fsl-panel-first_answer``) and filled in, to keep or revise. A frozen
study with a domain guard shows its warning (``fsl-panel-guard``) on a flagged case's screens
that show the AI; a conformal prediction set is the panel ``fsl-panel-prediction_set``.
"""

from __future__ import annotations

import base64
import html
import os
import select
import time
from pathlib import Path
from urllib.parse import parse_qs

import ipywidgets as W

from fsl_xai.study.design import StudyDesign, load_design
from fsl_xai.study.session import RaterSession, handoff_wake_path
from fsl_xai.study.store import AccessDenied, AlreadyAnswered, ResponseStore, StudyStoreError

STUDY_DB_ENV = "FSL_XAI_STUDY_DB"
STUDY_FILE_ENV = "FSL_XAI_STUDY_FILE"
#: behind the gate: the private folder where the gate hands each kernel its rater's token
HANDOFF_ENV = "FSL_XAI_STUDY_HANDOFF"
#: how long a kernel started for a page waits for its token (the gate writes it as the page starts)
HANDOFF_WAIT_S = 60.0
#: how often a waiting kernel looks for its token when it cannot sleep on its wake-up FIFO (no
#: mkfifo): often for a kernel started for a page (the token comes within moments), less often once
#: it has waited a while (a preheated kernel may wait for hours)
HANDOFF_POLL_S, HANDOFF_IDLE_POLL_S, HANDOFF_BRISK_S = 0.01, 0.05, 2.0
#: with the FIFO, the gate wakes the kernel once the token file is written; the kernel still looks
#: at the file this often (a token written without a wake-up is found all the same)
HANDOFF_WAKE_CHECK_S = 0.5


def _wake_fifo(path: Path) -> int | None:
    """Open (making it) the FIFO the gate writes to once the token is there; None where FIFOs are
    not available (then the kernel polls). Opened read-write so that it has a writer of its own:
    a FIFO without one reads as at its end, and select() would never sleep."""
    try:
        os.mkfifo(path, 0o600)
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except (AttributeError, OSError):  # no mkfifo (Windows), or the folder refuses it
        path.unlink(missing_ok=True)
        return None


def _sleep_until_woken(fd: int, timeout: float) -> None:
    """Sleep on the FIFO ``fd`` up to ``timeout`` seconds; empty it when the gate wrote to it."""
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if ready:
        try:
            os.read(fd, 4096)
        except BlockingIOError:
            pass


def token_from_environment() -> str | None:
    """The rater's token.

    Behind the gate (``fsl-xai study serve``, which sets ``FSL_XAI_STUDY_HANDOFF``) the page's URL
    reaches Voila without the token: the gate checks it, binds the kernel to the page, and hands
    it to this kernel as a file named after the kernel's id in a folder only this user can read;
    the kernel reads and deletes it. While it waits the kernel sleeps on a FIFO beside that file
    (:func:`fsl_xai.study.session.handoff_wake_path`), which the gate writes to once the token is
    there, so a waiting kernel uses no CPU; without FIFOs it polls. A preheated kernel (started
    ahead into Voila's pool, before any rater asked for a page) waits for it as long as it takes;
    a kernel started for a page waits up to HANDOFF_WAIT_S (None after that: the page shows the
    refusal). Without the gate (Voila run by hand): the ``token`` query parameter of the page,
    which Voila passes to the kernel.
    """
    folder = os.environ.get(HANDOFF_ENV)
    if not folder:
        values = parse_qs(os.environ.get("QUERY_STRING", "")).get("token")
        return values[0] if values else None
    kernel_id = os.environ.get("VOILA_KERNEL_ID", "")
    if not kernel_id or os.sep in kernel_id or kernel_id.startswith("."):
        return None
    path, wake = Path(folder) / kernel_id, handoff_wake_path(folder, kernel_id)
    start = time.monotonic()
    deadline = None if os.environ.get("VOILA_PREHEAT") == "True" else start + HANDOFF_WAIT_S
    fd = _wake_fifo(wake)
    try:
        while True:
            try:
                token = path.read_text()
            except FileNotFoundError:
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    return None
                if fd is not None:
                    _sleep_until_woken(fd, HANDOFF_WAKE_CHECK_S if deadline is None
                                       else min(HANDOFF_WAKE_CHECK_S, deadline - now))
                else:
                    time.sleep(HANDOFF_POLL_S if now - start < HANDOFF_BRISK_S else HANDOFF_IDLE_POLL_S)
                continue
            path.unlink(missing_ok=True)
            return token.strip() or None
    finally:
        if fd is not None:
            os.close(fd)
            wake.unlink(missing_ok=True)


def _png(data_b64: str | None) -> bytes:
    return base64.b64decode(data_b64) if data_b64 else b""


def _set_image(image: W.Image, data_b64: str | None) -> None:
    """Show ``data_b64`` in ``image`` (hidden, and emptied, when there is none)."""
    image.value = _png(data_b64)
    image.layout.display = "" if data_b64 else "none"


def _in_panel(widget: W.Widget, panel: str) -> W.Widget:
    """Mark ``widget`` and every widget inside it as part of ``panel`` (CSS class fsl-panel-<panel>)."""
    widget.add_class(f"fsl-panel-{panel}")
    for child in getattr(widget, "children", ()):
        _in_panel(child, panel)
    return widget


def _blank(widget: W.Widget, keep: frozenset[int] = frozenset()) -> None:
    """Empty ``widget`` and everything inside it: a panel off the screen keeps nothing of a case
    (the page holds every widget's state, shown or not). Widgets whose id is in ``keep`` hold no
    case's content (a panel's fixed title) and keep it: emptying and refilling them would be two
    more messages each time the panel goes and comes back."""
    if id(widget) not in keep:
        if isinstance(widget, W.Image):
            widget.value = b""
        elif isinstance(widget, W.HTML):
            widget.value = ""
    for child in getattr(widget, "children", ()):
        _blank(child, keep)


SUBMIT_LABELS = {"single": "Submit answer", "first": "Confirm my own answer", "revised": "Submit final answer"}


def _message(css_class: str, text: str) -> str:
    colour = {"fsl-saved": "#1b7f3b", "fsl-error": "#b00020", "fsl-notice": "#8a5a00"}[css_class]
    return f"<span class='{css_class}' style='color:{colour}'>{html.escape(text)}</span>"


class RaterApp(W.VBox):
    """One rater's screen.

    The screen's widgets are built once and updated in place from case to case (the page then
    only receives new values, not new widgets): one image for the case, one answer widget per
    question and set of options, one widget per advice panel. A panel off the screen is taken out
    of its area and emptied.

    Args:
        store: the study's response store.
        design: the study design.
        token: the rater's token (from the link).
    """

    def __init__(self, store: ResponseStore, design: StudyDesign, token: str | None):
        super().__init__(layout=W.Layout(max_width="900px", padding="8px"))
        self.store, self.design = store, design
        self.header = W.HTML()
        self.progress = W.IntProgress(min=0, max=1, description="Progress", layout=W.Layout(width="60%"))
        self.case_image = W.Image(format="png", width=256, height=256)
        self.case_area = W.HBox([self.case_image])
        self.advice_area = W.VBox()
        self.inputs: dict[str, W.Widget] = {}
        self.question_area = W.VBox()
        self.status = W.HTML()
        self.submit_button = W.Button(description="Submit answer", button_style="primary", icon="check")
        self.back_button = W.Button(description="Back", icon="arrow-left")
        self.next_button = W.Button(description="Next case", icon="arrow-right", layout=W.Layout(display="none"))
        self.submit_button.on_click(lambda _: self._submit())
        self.back_button.on_click(lambda _: self._back())
        self.next_button.on_click(lambda _: self._render())
        self.add_class("fsl-rater-app")
        self._panels: dict[str, W.Widget] = {}  # panel -> its widget, built on first use
        self._tiles: list[W.VBox] = []  # the prototypes panel's reference tiles, grown on demand
        self._titles: set[int] = set()  # ids of the panels' fixed titles (no case's content: never blanked)
        self._rows: dict[tuple, tuple[W.VBox, W.Widget]] = {}  # (question, options) -> (row, answer widget)
        self.session: RaterSession | None = None
        try:
            self.session = RaterSession(store, token or "", design)  # no token: AccessDenied says what to do
        except AccessDenied as exc:
            self.children = [W.HTML(f"<h3>Access denied</h3><p>{html.escape(str(exc))}</p>")]
            return
        self.back_button.layout.display = "" if design.allow_back else "none"
        buttons = W.HBox([self.back_button, self.submit_button, self.next_button])
        self.children = [self.header, self.progress, self.case_area, self.advice_area, self.question_area,
                         buttons, self.status]
        self._render()

    # ------------------------------------------------------------------ rendering
    def _session(self) -> RaterSession:
        if self.session is None:  # the buttons are shown only with a session
            raise AccessDenied("no rater session; open the link you were given")
        return self.session

    def _render(self, status: str = "") -> None:
        """Show the session's current screen, with ``status`` (HTML) under it."""
        s = self._session()
        done, total = s.progress
        self.progress.max, self.progress.value = max(total, 1), done
        self.next_button.layout.display = "none"
        self.submit_button.disabled = False
        if s.done:
            self.header.value = (f"<h3>Thank you, {html.escape(s.rater.pseudonym)}</h3>"
                                 f"<p>All {total} cases are answered.</p>")
            _set_image(self.case_image, None)
            self._show_advice([])
            self.question_area.children, self.inputs = (), {}
            self.submit_button.layout.display = "none"
            self.back_button.layout.display = "none"
            self.status.value = status
            return
        self.item = s.current()
        shown, step = self.item["shown"], self.item["step"]
        # the position and the neutral label from the freeze: never the sample id
        label = shown.get("case_label")
        reference = f"<p class='fsl-case-label'>Reference {html.escape(str(label))}</p>" if label else ""
        steps = {"first": "<p class='fsl-step'>Your own reading first: your answer is final once you confirm "
                          "it.</p>",
                 "revised": "<p class='fsl-step'>Now with the AI's output: keep your answer or revise it.</p>"}
        self.header.value = f"<h3>Case {s.position + 1} of {total}</h3>{reference}{steps.get(step, '')}"
        _set_image(self.case_image, shown.get("image_png"))
        teaching = self.design.mode == "teaching"
        advice = [] if teaching or step == "first" else self._advice(self.item["panels"], shown)
        if step == "revised":
            advice = [self._first_answer(self.item.get("first_answers", {})), *advice]
        self._show_advice(advice)
        self.question_area.children = self._questions(shown, self.item.get("previous_answers", {}))
        self.submit_button.description = SUBMIT_LABELS[step]
        self.status.value = status  # set once: every message is one more frame before the page settles

    def _show_advice(self, shown_panels: list[W.Widget]) -> None:
        """Put ``shown_panels`` on the screen and empty every other panel."""
        keep = frozenset(self._titles)
        for widget in self._panels.values():
            if widget not in shown_panels:
                _blank(widget, keep)
        self.advice_area.children = shown_panels

    def _panel(self, name: str, text: str) -> W.HTML:
        """The panel ``name`` (one HTML widget, built once) holding ``text``."""
        widget = self._panels.get(name)
        if widget is None:
            widget = self._panels[name] = _in_panel(W.HTML(), name)
        assert isinstance(widget, W.HTML)
        widget.value = text
        return widget

    def _first_answer(self, first: dict) -> W.Widget:
        """The rater's confirmed first answer, recalled on the revised screen."""
        asked = [q for q in self.design.questions if q.id in first and first[q.id] not in (None, "")]
        parts = "; ".join(f"{html.escape(q.text or q.id.capitalize())}: {html.escape(str(first[q.id]))}"
                          for q in asked)
        return self._panel("first_answer",
                           f"<div class='fsl-first-answer'><b>Your first answer</b> (saved): {parts}</div>")

    def _heatmap(self, method: str, data_b64: str) -> W.Widget:
        if "heatmap" not in self._panels:
            self._panels["heatmap"] = _in_panel(W.VBox([W.HTML(), W.Image(format="png", width=256, height=256)]),
                                                "heatmap")
        box = self._panels["heatmap"]
        title, image = box.children
        self._titles.add(id(title))  # the study's method: the same for every case
        title.value = f"<b>Where the model looked</b> ({html.escape(method)})"
        _set_image(image, data_b64)
        return box

    def _prototypes(self, support: list[dict]) -> W.Widget:
        # the reference images by class only: their sample ids stay in the provenance
        if "prototypes" not in self._panels:
            self._panels["prototypes"] = _in_panel(W.VBox([W.HTML(), W.HBox()]), "prototypes")
        box = self._panels["prototypes"]
        title, row = box.children
        self._titles.add(id(title))
        title.value = "<b>Most similar reference cases</b>"
        while len(self._tiles) < len(support):
            self._tiles.append(_in_panel(W.VBox([W.Image(format="png", width=96, height=96), W.HTML()]),
                                         "prototypes"))
        for tile, t in zip(self._tiles, support, strict=False):
            image, caption = tile.children
            _set_image(image, t.get("image_png"))
            caption.value = f"<small>{html.escape(str(t['class']))}</small>"
        for tile in self._tiles[len(support):]:
            _blank(tile)
        row.children = self._tiles[:len(support)]
        return box

    def _advice(self, panels: list[str], shown: dict) -> list[W.Widget]:
        out: list[W.Widget] = []
        if panels and shown.get("guard_warning"):
            out.append(self._panel("guard", (
                "<div class='fsl-guard-warning' style='border:2px solid #b00020;padding:6px;color:#b00020'>"
                f"<b>Warning:</b> {html.escape(str(shown['guard_warning']))}</div>")))
        if "prediction" in panels and "prediction" in shown:
            p = shown["prediction"]
            out.append(self._panel("prediction", (
                f"<div class='fsl-advice'><b>Model suggests:</b> {html.escape(str(p['class']))} "
                f"(probability {p.get('probability', float('nan')):.2f})</div>")))
        if "prediction_set" in panels and shown.get("prediction_set"):
            ps = shown["prediction_set"]
            coverage = 1 - float(ps.get("alpha", float("nan")))
            out.append(self._panel("prediction_set", (
                f"<div class='fsl-prediction-set'><b>The model's answer set:</b> {html.escape(str(ps['text']))} "
                f"(such sets hold the true answer about {coverage:.0%} of the time)</div>")))
        if "heatmap" in panels and shown.get("heatmap_png"):
            out.append(self._heatmap(shown.get("method", ""), shown["heatmap_png"]))
        if "prototypes" in panels and shown.get("nearest_support"):
            out.append(self._prototypes(shown["nearest_support"]))
        if "badges" in panels and shown.get("badges"):
            items = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
                            for k, v in shown["badges"].items())
            out.append(self._panel("badges", f"<b>Explanation checks</b><ul>{items}</ul>"))
        return out

    def _answer_row(self, q, options: tuple[str, ...]) -> tuple[W.VBox, W.Widget]:
        """The row of question ``q`` with these answer options, built once and reused."""
        key = (q.id, q.type, options)
        if key not in self._rows:
            label = W.HTML(f"<b>{html.escape(q.text or q.id.capitalize())}</b>")
            widget: W.Widget
            if q.type in ("choice", "likert"):
                widget = W.ToggleButtons(options=list(options), value=None)
            else:
                widget = W.Textarea(placeholder="optional comment", layout=W.Layout(width="60%"))
            widget.add_class(f"fsl-q-{q.id}")
            self._rows[key] = (W.VBox([label, widget]), widget)
        return self._rows[key]

    def _questions(self, shown: dict, previous: dict) -> list[W.Widget]:
        rows = []
        self.inputs = {}
        asked = set(self.item.get("questions", [q.id for q in self.design.questions]))
        for q in self.design.questions:
            if q.id not in asked:
                continue
            if q.type == "choice":
                options = tuple(q.options or shown.get("classes", []))
            elif q.type == "likert":
                options = tuple(str(i) for i in range(1, q.scale + 1))
            else:
                options = ()
            row, widget = self._answer_row(q, options)
            answer = previous.get(q.id)
            # every case starts blank (or at the rater's previous answer to this screen)
            widget.value = str(answer) if answer is not None else (None if options else "")
            self.inputs[q.id] = widget
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ actions
    def answers(self) -> dict:
        out = {}
        for q in self.design.questions:
            if q.id not in self.inputs:  # not asked on this screen
                continue
            value = self.inputs[q.id].value
            if q.type == "likert" and value is not None:
                value = int(value)
            out[q.id] = value
        return out

    def _submit(self) -> None:
        # The button is not disabled while the answer is stored: the kernel handles one click at a
        # time, so a page would only see "disabled" and "enabled" arrive together, two messages
        # through the gate, Voila and the page for nothing. A second click is handled after this
        # one, on the screen it was given on (its key), and the store refuses what it must.
        try:
            # the key of this screen: a second tab on the same case has its own, and the store
            # refuses the later one instead of replacing a confirmed answer
            self._session().submit(self.answers(), shown_key=self.item["shown_key"])
        except AlreadyAnswered as exc:
            # nothing was stored; the session has moved on to the next unanswered case
            self._render(_message("fsl-notice", str(exc)))
            return
        except (StudyStoreError, AccessDenied) as exc:
            self.status.value = _message("fsl-error", str(exc))
            return
        # committed: only now confirm
        s = self._session()
        if self.item["step"] == "first" and not s.done and s.items[s.position] == self.item["item_id"]:
            # the same case again, now at its revised step: the AI's output comes only now
            self._render(_message("fsl-saved", "Your own answer is saved. Here is the AI's output: keep "
                                               "your answer or revise it."))
        elif self.design.mode == "teaching":
            self.status.value = _message("fsl-saved", "Answer saved.")
            self._reveal()
        else:
            self._render(_message("fsl-saved", "Answer saved."))

    def _reveal(self) -> None:
        """Teaching mode: after answering, show the truth, the model's advice and explanation."""
        shown = self.item["shown"]
        given = self.inputs[self.design.questions[0].id].value
        truth = shown.get("true_class")
        verdict = "correct" if given == truth else "not correct"
        feedback = self._panel("feedback", (
            f"<div class='fsl-feedback'><b>Your answer is {verdict}.</b> You said {html.escape(str(given))}; "
            f"the label is {html.escape(str(truth))}.</div>"))
        self._show_advice([feedback, *self._advice(
            ["prediction", "prediction_set", "heatmap", "prototypes", "badges"], shown)])
        self.submit_button.disabled = True
        self.next_button.layout.display = ""

    def _back(self) -> None:
        try:
            self._session().back()
        except StudyStoreError as exc:
            self.status.value = _message("fsl-error", str(exc))
            return
        self._render()


def class_summary(store: ResponseStore, question: str = "diagnosis"):
    """Teaching mode, instructor side: per case, how many students gave each answer and the
    share correct (with n and a 95% Wilson interval).

    Cases are named by their neutral label (``case_label``, what students saw; the instructor's
    screen may be projected) next to their sample id (``case_id``, for the instructor's records).
    """
    import pandas as pd

    from fsl_xai.intervals import wilson_interval

    rows = [r for r in store.all_answers() if r["question"] == question and r["role"] == "rater"]
    if not rows:
        return pd.DataFrame(columns=["case_label", "case_id", "answer", "count"]), pd.DataFrame()
    frame = pd.DataFrame(rows).sort_values("answer_id").groupby(["rater", "item_id"], as_index=False).last()
    truth, label = {}, {}
    for item_id, case_id in frame[["item_id", "case_id"]].drop_duplicates().itertuples(index=False):
        shown = store.item(item_id)["shown"]
        truth[item_id], label[item_id] = shown.get("true_class"), shown.get("case_label", case_id)
    frame["correct"] = frame.apply(lambda r: r["value"] == truth[r["item_id"]], axis=1)
    frame["case_label"] = frame["item_id"].map(label)
    counts = (frame.groupby(["case_label", "case_id", "value"]).size().rename("count").reset_index()
              .rename(columns={"value": "answer"}))
    per_case = frame.groupby(["case_label", "case_id"])["correct"].agg(["sum", "count"]).reset_index()
    per_case["share_correct"] = per_case["sum"] / per_case["count"]
    # each student answers a case once, independently of the others: a plain proportion (Wilson)
    low, high = wilson_interval(per_case["sum"].to_numpy(), per_case["count"].to_numpy())
    per_case["ci_low"], per_case["ci_high"] = low, high
    return counts, per_case.rename(columns={"count": "n", "sum": "n_correct"})


class InstructorDashboard(W.VBox):
    """Teaching mode: the class's answers per case, refreshed on demand."""

    def __init__(self, store: ResponseStore):
        super().__init__()
        self.store = store
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.table = W.HTML()
        self.children = [W.HTML("<h3>Class answers</h3>"), self.refresh_button, self.table]
        self.refresh()

    def refresh(self) -> None:
        _, per_case = class_summary(self.store)
        if per_case.empty:
            self.table.value = "<p>No answers yet.</p>"
            return
        rows = "".join(
            f"<tr><td>{html.escape(str(r.case_label))}</td><td>{r.n_correct}/{r.n}</td>"
            f"<td>{r.share_correct:.0%} (95% CI {r.ci_low:.0%} to {r.ci_high:.0%})</td></tr>"
            for r in per_case.itertuples())
        self.table.value = f"<table><tr><th>case</th><th>correct</th><th>share</th></tr>{rows}</table>"


def app_from_environment() -> W.Widget:
    """Build the app the way Voila serves it: study from the environment, then the rater's token
    (:func:`token_from_environment`; a preheated kernel has opened the study before it waits)."""
    db, study_file = os.environ.get(STUDY_DB_ENV), os.environ.get(STUDY_FILE_ENV)
    if not db or not study_file or not Path(db).exists():
        return W.HTML("<h3>No study is being served</h3><p>Start one with <code>fsl-xai study serve STUDY</code>.</p>")
    store = ResponseStore(db)
    design = load_design(study_file)
    token = token_from_environment()
    try:
        role = store.authenticate(token).role
    except AccessDenied:
        role = "rater"  # RaterApp shows the refusal
    if role == "instructor":
        return InstructorDashboard(store)
    return RaterApp(store, design, token)

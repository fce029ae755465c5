"""View 2: the support set by class; resample, swap, remove or add images from the pool, or add the
current query as a confirmed case. Every edit goes through the state, so every other view follows."""

from __future__ import annotations

import html

import ipywidgets as w
import numpy as np

from ._base import Card, CardRow, View, episode_colors, thumbnail, tooltip_of

ANY = "(any)"
#: seconds after an edit the pool list is refilled (the edited views reach the page and are drawn first)
POOL_REFILL_S = 0.3
# metadata columns that make no sense as pool filters
_SKIP_COLUMNS = {"sample_id", "filenames", "filename", "image_id", "lesion_id", "split", "path"}


class SupportSetView(View):
    title = "Support set"

    def __init__(self, state, **kwargs):
        super().__init__(state, **kwargs)
        self.selected_position: int | None = None
        self._pool_current = False  # the pool list shows the pool of the episode on screen
        self.header = w.HTML()
        self.header.add_class("fsl-support-header")
        self.seed = w.IntText(value=state.seed, description="seed", layout=w.Layout(width="130px"),
                              style={"description_width": "35px"})
        self.resample_button = w.Button(description="resample", icon="random", tooltip="draw a new episode (next seed)")
        self.resample_button.on_click(self.guard(lambda _: self.state.resample()))
        self.seed_button = w.Button(description="use seed", tooltip="draw the episode of this seed",
                                    layout=w.Layout(width="90px"))
        self.seed_button.on_click(self.guard(lambda _: self.state.resample(self.seed.value)))
        self.confirm_button = w.Button(description="add current query as confirmed case", icon="plus-circle",
                                       tooltip="move the selected query into the support set of its true class "
                                               "(incremental prototype update)", layout=w.Layout(width="290px"))
        self.confirm_button.on_click(self.guard(lambda _: self.state.confirm_query()))
        self.classes_box = w.VBox()
        self._class_rows: list[w.HBox] = []
        # pool
        self.pool_class = w.Dropdown(description="class", layout=w.Layout(width="220px"),
                                     style={"description_width": "40px"})
        self.pool_column = w.Dropdown(description="filter", layout=w.Layout(width="200px"),
                                      style={"description_width": "40px"})
        self.pool_value = w.Dropdown(description="=", layout=w.Layout(width="180px"),
                                     style={"description_width": "15px"})
        self.pool_list = w.Select(rows=6, layout=w.Layout(width="420px"))
        self.pool_preview = w.Image(format="png", layout=w.Layout(width="96px", height="96px"))
        self.as_class = w.Dropdown(description="as class", layout=w.Layout(width="220px"),
                                   style={"description_width": "55px"})
        self.swap_button = w.Button(description="swap with selected", icon="exchange",
                                    tooltip="replace the selected support image with this pool image")
        self.add_button = w.Button(description="add to support", icon="plus")
        self.remove_button = w.Button(description="remove selected", icon="trash")
        self.swap_button.on_click(self.guard(lambda _: self.swap()))
        self.add_button.on_click(self.guard(lambda _: self.add()))
        self.remove_button.on_click(self.guard(lambda _: self.remove()))
        self.selection_label = w.HTML("<i>no support image selected</i>")
        for widget in (self.pool_class, self.pool_value):
            widget.observe(self.guard(lambda _: self._fill_pool()), names="value")
        self.pool_column.observe(self.guard(lambda _: self._fill_values()), names="value")
        self.pool_list.observe(self.guard(self._on_pool_pick), names="value")
        self.as_class.observe(lambda _: self._sync_buttons(), names="value")
        pool = w.VBox([
            w.HTML("<b>pool</b> (images not in this episode)"),
            w.HBox([self.pool_class, self.pool_column, self.pool_value]),
            w.HBox([self.pool_list, self.pool_preview]),
            w.HBox([self.as_class, self.add_button, self.swap_button, self.remove_button]),
            self.selection_label,
        ], layout=w.Layout(border="1px solid #ddd", padding="4px", margin="4px 0"))
        self.children = [w.HBox([self.header]), w.HBox([self.resample_button, self.seed, self.seed_button,
                                                        self.confirm_button]),
                         self.classes_box, self.error_area, pool]
        state.observe(self._on_episode, names=["episode"])
        state.observe(self._on_images, names=["images"])
        self._on_images()
        self._on_episode()

    # ------------------------------------------------------------------ actions
    def select(self, position: int | None) -> None:
        """Select support image ``position`` (the target of swap and remove)."""
        self.selected_position = position
        self._render_cards()
        self._show_selection()

    def _show_selection(self) -> None:
        """The selection's label and the edit buttons (the cards show it once they are drawn)."""
        position = self.selected_position
        if position is None:
            self.selection_label.value = "<i>no support image selected</i>"
        else:
            ep = self.state.shown()[1]
            self.selection_label.value = (f"selected support image #{position}: "
                                          f"<b>{html.escape(ep.support_ids[position])}</b>"
                                          f" ({html.escape(ep.classes[ep.support_labels[position]])})")
        self._sync_buttons()

    def _edit_selected(self, edit) -> None:
        """Make ``edit(position)`` on the selected support image; the edit's redraw shows the support
        set without a selection (drawn once, not once with it and again without); a refused edit
        keeps the selection."""
        position = self.selected_position
        self.selected_position = None
        try:
            edit(position)
        except Exception:
            self.select(position)
            raise
        if self.state.error:
            self.select(position)
        else:
            self._show_selection()

    def swap(self) -> None:
        if self.selected_position is None:
            raise ValueError("select a support image first (its 'select' button), then pick a pool image")
        if not self.pool_list.value:
            raise ValueError("pick a pool image to swap in")
        self._check_pool_current()
        sample_id = self.pool_list.value
        self._edit_selected(lambda position: self.state.swap_support(position, sample_id))

    def add(self) -> None:
        if not self.pool_list.value:
            raise ValueError("pick a pool image to add")
        self._check_pool_current()
        if self.as_class.value is None:
            raise ValueError("choose the class to add the image as ('as class'), then click add to support")
        self.state.add_support(self.pool_list.value, self.as_class.value)

    def _check_pool_current(self) -> None:
        if not self._pool_current:
            raise ValueError("the pool list is being updated after the last edit; pick the pool image again")

    def _sync_buttons(self) -> None:
        """Each edit button works only once what it needs is chosen; its tooltip says what is missing."""
        # the list's pick counts once the list shows the pool of the episode on screen (it is refilled
        # POOL_REFILL_S after an edit; its old pick may be the image just swapped in)
        pick = self.pool_list.value if self._pool_current else None
        picked, cls, chosen = bool(pick), self.as_class.value, self.selected_position is not None
        self.add_button.disabled = not (picked and cls is not None)
        self.add_button.tooltip = ("pick a pool image first" if not picked else "choose 'as class' first"
                                   if cls is None else f"add the pool image to the support set as {cls}")
        self.swap_button.disabled = not (picked and chosen)
        self.swap_button.tooltip = ("select a support image (its 'select' button) and pick a pool image first"
                                    if self.swap_button.disabled else "replace the selected support image with "
                                    "this pool image")
        self.remove_button.disabled = not chosen
        self.remove_button.tooltip = ("select a support image first (its 'select' button)" if not chosen
                                      else "remove the selected support image")
        # the edit a click would make next (swap when a pool image is picked, else remove): its maps
        # are computed while the kernel is idle
        self.state.expect_edit(self.selected_position, pick or None)

    def remove(self) -> None:
        if self.selected_position is None:
            raise ValueError("select a support image first (its 'select' button)")
        self._edit_selected(self.state.remove_support)

    # ------------------------------------------------------------------ rendering
    def _on_images(self, change=None) -> None:
        s = self.state
        if s.images is None:
            return
        cols = [c for c in s.images.metadata.columns if c not in _SKIP_COLUMNS
                and 1 < s.images.metadata[c].nunique() <= 30]
        self.pool_column.options = [ANY] + cols
        self.pool_column.value = ANY

    def _on_episode(self, change=None) -> None:
        s = self.state
        if s.episode is None:
            return
        ep = s.episode
        self.seed.value = s.seed
        origin = f"seed {ep.seed}, episode {ep.index}" if ep.seed is not None else "edited"
        self.header.value = (f"<b>support set</b> · {ep.n_way}-way, {len(ep.support_ids)} images "
                             f"(min {ep.n_shot} per class) · {origin} · episode <code>{ep.episode_id}</code>")
        options = [ANY] + list(ep.classes)
        if tuple(self.pool_class.options) != tuple(options):
            self.pool_class.options = options
            self.pool_class.value = ANY
        keep = self.as_class.value
        if tuple(self.as_class.options) != tuple(ep.classes):
            self.as_class.options = list(ep.classes)
        self.as_class.value = keep if keep in ep.classes else (ep.classes[0] if ep.classes else None)
        if self.selected_position is not None and self.selected_position >= len(ep.support_ids):
            self.selected_position = None
        self._render_cards()
        # the pool list (below the support set: hundreds of labels the page redraws whole) once the
        # page has drawn the edit's views; until then its pick does not count
        self._pool_current = False
        self.defer(self._fill_pool, after_s=POOL_REFILL_S)
        self._sync_buttons()

    def _render_cards(self) -> None:
        s = self.state
        images, ep, _, _ = s.shown()
        while len(self._class_rows) < ep.n_way:  # an HBox(label, cards) per class, kept across episodes
            pick = self.guard(lambda p: self.select(None if p == self.selected_position else p))
            self._class_rows.append(w.HBox([w.HTML(), CardRow(on_pick=pick, button_width="70px")]))
        true_names = np.asarray(images.class_names)[images.labels[images.indices_of(list(ep.support_ids))]]
        colors = episode_colors(s)
        for c, name in enumerate(ep.classes):
            cards = []
            for pos, (sid, lab) in enumerate(zip(ep.support_ids, ep.support_labels, strict=True)):
                if lab != c:
                    continue
                chosen = pos == self.selected_position
                note = "" if true_names[pos] == name else f"MISLABELLED: really {true_names[pos]}"
                cards.append(Card(thumbnail(s, sid), tooltip_of(s, sid, note), "selected" if chosen else "select",
                                  border="#d62728" if note else ("#ff7f0e" if chosen else "#ddd"),
                                  button_style="warning" if chosen else "", button_tooltip=f"support #{pos}: {sid}",
                                  payload=pos))
            label, row = self._class_rows[c].children
            label.value = (f"<div style='width:110px;color:{colors[c]};font-weight:bold'>{html.escape(name)}"
                           f"<br><span style='color:#666;font-weight:normal'>{len(cards)} image(s)</span></div>")
            row.show(cards)
        self.classes_box.children = self._class_rows[:ep.n_way]

    def _fill_values(self) -> None:
        col = self.pool_column.value
        if col in (None, ANY):
            self.pool_value.options = [ANY]
        else:
            values = sorted(self.state.loaded()[0].metadata[col].astype(str).unique())
            self.pool_value.options = [ANY] + values
        self.pool_value.value = ANY
        self._fill_pool()

    def pool_table(self):
        """The pool as filtered in this view (class, metadata column = value)."""
        s = self.state
        filters = {}
        if self.pool_column.value not in (None, ANY) and self.pool_value.value not in (None, ANY):
            filters[self.pool_column.value] = self.pool_value.value
        cls = None if self.pool_class.value in (None, ANY) else self.pool_class.value
        return s.pool(cls, **filters)

    def _fill_pool(self) -> None:
        if self.state.episode is None:
            return
        self._pool_current = True
        before = self.pool_list.value
        table = self.pool_table()
        cols = [c for c in table.columns if c not in _SKIP_COLUMNS and c != "class"][:3]
        head = table.head(500)
        labels = head["sample_id"].astype(str) + " · " + head["class"].astype(str)
        if cols:  # column-wise string building: the pool is refilled on every filter change
            meta = [c + "=" + head[c].astype(str) for c in cols]
            joined = meta[0]
            for m in meta[1:]:
                joined = joined + ", " + m
            labels = labels + " · " + joined
        options = list(zip(labels.tolist(), head["sample_id"].tolist(), strict=True))
        self.pool_list.options = options
        self.pool_list.value = options[0][1] if options else None
        if self.pool_list.value == before:  # no new pick (whose observer syncs them): the buttons follow the list
            self._sync_buttons()

    def _on_pool_pick(self, change=None) -> None:
        sid = self.pool_list.value
        self._sync_buttons()
        if sid:
            self.pool_preview.value = thumbnail(self.state, sid, 96)
            images = self.state.loaded()[0]
            cls = images.class_names[images.labels[images.indices_of([sid])[0]]]
            if cls in self.as_class.options:
                self.as_class.value = cls

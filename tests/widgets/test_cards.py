"""Gallery cards and shared layout/style models: a redraw reuses the widgets already on the page, and
the project's FigureWidget carries plotly's front-end module as data for its small loader."""

from __future__ import annotations

import io

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
from ipywidgets.widgets.widget_string import HTMLStyle
from PIL import Image

from widgets._base import Card, CardRow, shared
from widgets._figurewidget import _BUNDLE, FigureWidget, plotly_module


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _models() -> int:
    return len(w.widgets.widget._instances)


def test_shared_returns_one_widget_per_set_of_values_and_replaces_closed_ones():
    a = shared(w.Layout, width="70px", height="24px")
    assert shared(w.Layout, height="24px", width="70px") is a
    assert shared(w.Layout, width="71px", height="24px") is not a
    assert shared(HTMLStyle) is not shared(w.ButtonStyle)
    a.close()
    b = shared(w.Layout, width="70px", height="24px")
    assert b is not a and b.comm is not None and b.width == "70px"


def test_card_row_reuses_its_widgets_and_hands_payloads_to_on_pick():
    picked = []
    row = CardRow(on_pick=picked.append)
    borders = ["#2ca02c", "#2ca02c", "#d62728", "#ddd"]
    row.show([Card(_png(v), f"tip {v}", f"#{v}", border=borders[v], button_style="success", payload=v)
              for v in range(4)])
    first_cards = list(row.children)
    assert [b.description for b in row.footers] == ["#0", "#1", "#2", "#3"]
    assert first_cards[2].children[0].tooltip == "tip 2" and "title=" not in first_cards[2].children[0].value
    assert first_cards[0].layout.border == "2px solid #2ca02c"
    # cards share layout and style models
    assert first_cards[0].layout is first_cards[1].layout
    assert row.footers[0].style is row.footers[1].style

    before = _models()
    row.show([Card(_png(200), "new tip", "#9", border="#d62728", button_style="danger", payload="nine"),
              Card(_png(100), "other", "#8", payload="eight")])
    assert _models() == before  # nothing new opened: cards and layouts were reused
    assert list(row.children) == first_cards[:2]
    assert row.footers[0].description == "#9" and row.footers[0].button_style == "danger"
    assert row.children[0].layout.border == "2px solid #d62728"
    assert row.children[0].children[0].tooltip == "new tip"
    # the same image with new hover text keeps its card and sends only the text
    sent_image = row.children[0].children[0].value
    row.show([Card(_png(200), "newer tip", "#9", payload="nine"), Card(_png(100), "other", "#8", payload="eight")])
    assert row.children[0].children[0].value == sent_image and row.children[0].children[0].tooltip == "newer tip"
    row.footers[1].click()
    row.footers[0].click()
    assert picked == ["eight", "nine"]  # the payloads of the cards shown now, not of the first draw

    row.show([Card(_png(v), "t", "c") for v in range(6)])
    assert len(row.children) == 6 and row.children[:4] == tuple(first_cards)


def test_card_row_without_on_pick_shows_labels():
    row = CardRow()
    row.show([Card(_png(5), "tip", "<b>+0.12</b>")])
    label = row.footers[0]
    assert isinstance(label, w.HTML) and label.value == "<b>+0.12</b>"


def test_figure_widgets_send_a_small_loader_and_share_one_copy_of_plotlys_module():
    first, second = (FigureWidget(go.Figure(go.Bar(y=[1, 2]))) for _ in range(2))
    holder = plotly_module()
    for fig in (first, second):
        state = fig.get_state()
        assert len(state["_esm"]) < 5_000 and "_plotly_module" in state["_esm"]
        assert state["_plotly_module"] == holder.model_id
        assert sum(len(v) for v in state.values() if isinstance(v, str)) < 10_000  # no 5 MB module per figure
    assert holder.get_state()["source"] == _BUNDLE.read_text(encoding="utf-8")
    assert isinstance(first, go.FigureWidget) and list(go.Figure(first).data[0].y) == [1, 2]
    old_id = holder.model_id
    holder.close()  # e.g. Widget.close_all(): the next figure brings a new holder
    third = FigureWidget()
    assert third._plotly_module == plotly_module().model_id != old_id


def test_thumbnails_and_hover_texts_follow_the_image_set_on_screen(state, synthetic_images):
    import dataclasses

    from fsl_xai.testing import tiny_model
    from widgets._base import thumbnail, tooltip_of

    sid = state.episode.support_ids[0]
    before_png, before_tip = thumbnail(state, sid), tooltip_of(state, sid, "note")
    assert before_tip.startswith(sid) and before_tip.endswith("\nnote")
    meta = synthetic_images.metadata.copy()
    meta["site"] = "elsewhere"  # the same ids, other pixels and metadata
    other = dataclasses.replace(synthetic_images, images=1.0 - synthetic_images.images, metadata=meta)
    state.load("synthetic", images=other, model=tiny_model(channels=1, size=32, width=8))
    assert state.error == "" and state.loaded()[0] is not synthetic_images
    assert thumbnail(state, sid) != before_png
    assert "site: elsewhere" in tooltip_of(state, sid) and tooltip_of(state, sid) != before_tip

"""FigureSlot: redraws in place (one widget model per slot) and recovers from a front-end that
never confirms a redraw."""

from __future__ import annotations

import plotly.graph_objects as go

from widgets._base import FigureSlot


def _bars(values, title=None, annotate=False):
    fig = go.Figure(go.Bar(y=list(values), name="bars"))
    if title:
        fig.update_layout(title=title)
    if annotate:
        fig.add_annotation(text="note", x=0, y=0)
    return fig


def test_redraws_replace_traces_and_layout_in_the_same_widget():
    seen = []
    slot = FigureSlot(_bars([1, 2, 3], title="first", annotate=True), on_figure=seen.append)
    first = slot.figure
    slot.show(go.Figure([go.Scatter(y=[5, 6], name="a"), go.Scatter(y=[7], name="b")]))
    assert slot.figure is first and slot.children == (first,)
    assert [t.type for t in first.data] == ["scatter", "scatter"]
    assert list(first.data[0].y) == [5, 6] and list(first.data[1].y) == [7]
    # layout keys the new figure does not set are cleared, not left over from the old one
    assert first.layout.title.text is None and len(first.layout.annotations) == 0
    # the synced initial state follows the redraws (a front-end connecting later starts from it)
    assert [t["type"] for t in first._widget_data] == ["scatter", "scatter"]
    assert not first._widget_layout.get("annotations")
    assert seen == [first, first]


def test_an_unconfirmed_redraw_gets_a_fresh_widget_with_the_current_figure():
    seen = []
    slot = FigureSlot(_bars([1, 2]), on_figure=seen.append)
    first = slot.figure
    slot.show(_bars([9, 8, 7], title="now"))
    assert first._layout_edit_in_process  # no front-end confirmed the relayout
    slot._check_ack(first, first._last_layout_edit_id)
    assert slot.rebuilds == 1 and slot.figure is not first and slot.children == (slot.figure,)
    assert list(slot.figure.data[0].y) == [9, 8, 7] and slot.figure.layout.title.text == "now"
    assert seen[-1] is slot.figure


def test_a_confirmed_or_superseded_redraw_is_left_alone():
    slot = FigureSlot(_bars([1]))
    fig = slot.figure
    slot.show(_bars([2]))
    old_id = fig._last_layout_edit_id
    slot.show(_bars([3]))
    slot._check_ack(fig, old_id)  # superseded by a later redraw
    assert slot.figure is fig and slot.rebuilds == 0
    fig._layout_edit_in_process = False  # what plotly sets when the front-end confirms
    slot._check_ack(fig, fig._last_layout_edit_id)
    assert slot.figure is fig and slot.rebuilds == 0

"""What a rater's screen may hold, checked the same way on widget states in Python and in the browser.

A rater's screen must not identify a case before the design reveals it:

- no sample id, file name or file stem of any image of the dataset, anywhere (text, attributes,
  comments, widget state of every field, image metadata);
- a class name only among the answer options (all classes, shown alike) or inside a panel that
  the case's condition shows (widgets marked ``fsl-panel-<panel>`` by the rater app).

Used by tests/widgets/test_rater_app.py (widget states from Python) and
tests/ui/test_study_browser.py (the DOM and the widget states the page received).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

PANEL_CLASS = "fsl-panel-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = {b"tEXt", b"iTXt", b"zTXt", b"eXIf"}
MIN_STEM_CHARS = 4  # shorter stems ("1", "ab") would match ordinary text


def identifying_strings(sample_ids: Iterable[str]) -> set[str]:
    """Every sample id, its file name and the file name without suffix (long enough to be specific)."""
    out: set[str] = set()
    for sid in sample_ids:
        sid = str(sid)
        name = PurePosixPath(sid).name
        out.update({sid, name})
        stem = PurePosixPath(name).stem
        if len(stem) >= MIN_STEM_CHARS:
            out.add(stem)
    return out


def identifiers_in(text: str | bytes, forbidden: set[str]) -> list[str]:
    """The forbidden strings found in ``text`` (bytes are searched as UTF-8)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
        return sorted(s for s in forbidden if s.encode() in data)
    return sorted(s for s in forbidden if s in text)


def class_mentions(text: str, classes: Iterable[str]) -> list[str]:
    """The class names that occur in ``text`` as words (any case)."""
    return sorted(c for c in classes if re.search(rf"(?<![A-Za-z0-9]){re.escape(c)}(?![A-Za-z0-9])", text, re.I))


def png_text_chunks(data: bytes) -> list[str]:
    """Metadata chunks (text, EXIF) of a PNG; [] for other data."""
    if not data.startswith(PNG_SIGNATURE):
        return []
    found, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind in PNG_TEXT_CHUNKS:
            found.append(kind.decode())
        at += 12 + length
    return found


def _strings(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, leaf) for every text or binary leaf of a (nested) widget state."""
    if isinstance(value, dict):
        for key, v in value.items():
            yield from _strings(v, (*path, str(key)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, (*path, str(i)))
    elif isinstance(value, (str, bytes, bytearray, memoryview)):
        yield path, value


def widget_state_problems(states: dict[str, dict[str, Any]], sample_ids: Iterable[str], classes: Iterable[str],
                          allowed_panels: Iterable[str]) -> list[str]:
    """Every way the widget states could give a case away; [] when none.

    Args:
        states: model id -> widget state (as ``Widget.get_state()`` gives it, or as the page
            received it; binary values as bytes).
        sample_ids: every sample id of the dataset (cases and references).
        classes: the class names (the answer options).
        allowed_panels: panels whose widgets may name a class (the condition's, or all of them
            when the panels present are checked per screen elsewhere).
    """
    forbidden, classes = identifying_strings(sample_ids), tuple(classes)
    allowed = {f"{PANEL_CLASS}{p}" for p in allowed_panels}
    problems = []
    for model_id, state in states.items():
        dom_classes = set(state.get("_dom_classes") or ())
        options = state.get("_options_labels")
        for path, leaf in _strings(state):
            where = f"widget {model_id} ({state.get('_model_name')}) {'.'.join(path)}"
            for s in identifiers_in(leaf, forbidden):
                problems.append(f"{where}: holds the sample id or file name {s!r}")
            if not isinstance(leaf, str):
                chunks = png_text_chunks(bytes(leaf))
                if chunks:
                    problems.append(f"{where}: the image carries metadata chunks {chunks}")
                continue
            named = class_mentions(leaf, classes)
            if not named:
                continue
            if path[0] == "_options_labels" and options is not None and sorted(options) == sorted(classes):
                continue  # the answer options: every class, alike
            if path == ("value",) and dom_classes & allowed:
                continue  # a panel the condition shows
            problems.append(f"{where}: names the class(es) {named} outside the answer options and the shown panels "
                            f"(_dom_classes {sorted(dom_classes)}): {leaf[:200]!r}")
    return problems


def python_widget_states(root: Any) -> dict[str, dict[str, Any]]:
    """model id -> state of ``root`` and every widget it holds (children, layout, style), from Python."""
    from ipywidgets import Widget

    states: dict[str, dict[str, Any]] = {}
    todo = [root]
    while todo:
        widget = todo.pop()
        if widget.model_id in states:
            continue
        states[widget.model_id] = widget.get_state()
        for name in widget.keys:
            value = getattr(widget, name, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            todo.extend(v for v in values if isinstance(v, Widget))
    return states

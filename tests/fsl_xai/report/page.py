"""Reading a report back: its numbers (``data-*`` attributes), gallery cases, images and every URL-like attribute."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from html.parser import HTMLParser

import numpy as np

#: attributes through which HTML or SVG can make a browser fetch something
URL_ATTRIBUTES = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data", "background",
                  "cite", "longdesc", "manifest", "ping", "codebase", "archive", "usemap"}


@dataclass
class Page:
    """What a report holds, parsed with the standard library's HTML parser."""

    estimates: list[dict] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)
    urls: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, attribute, value)
    tags: set[str] = field(default_factory=set)
    text: list[str] = field(default_factory=list)

    def numbers(self, key: str) -> list[dict]:
        return [e for e in self.estimates if e["data-key"] == key]

    def number(self, key: str) -> dict:
        found = self.numbers(key)
        assert found, f"no number {key!r} in the report"
        first = found[0]
        assert all(f == first for f in found), f"number {key!r} differs between places: {found}"
        return first


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.case: dict | None = None
        self.case_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        self.page.tags.add(tag)
        for name, value in a.items():
            if name in URL_ATTRIBUTES:
                self.page.urls.append((tag, name, value))
        if "estimate" in a.get("class", "").split():
            self.page.estimates.append(a)
        if tag == "div":
            if self.case is not None:
                self.case_depth += 1
            elif "case" in a.get("class", "").split():
                self.case = {"row": int(a["data-row"]), "rank": int(a["data-rank"]), "images": [], "text": []}
                self.case_depth = 1
        if tag == "img" and self.case is not None:
            self.case["images"].append((a.get("alt", ""), a.get("src", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.case is not None:
            self.case_depth -= 1
            if self.case_depth == 0:
                self.page.cases.append(self.case)
                self.case = None

    def handle_data(self, data: str) -> None:
        self.page.text.append(data)
        if self.case is not None:
            self.case["text"].append(data)


def read_page(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page


def as_float(text: str) -> float:
    return math.nan if text == "nan" else float(text)


def png(uri: str) -> np.ndarray:
    """The pixels (H, W, 3) uint8 of a ``data:image/png;base64,`` URI."""
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    with Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):]))) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))

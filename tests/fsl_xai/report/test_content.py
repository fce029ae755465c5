"""What the report shows, checked against the tables of a real audit folder (see conftest.py)."""

from __future__ import annotations

import html
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from fsl_xai.audit import read_maps
from fsl_xai.cli import main
from fsl_xai.data import load_dataset
from fsl_xai.evaluation import accuracy_interval
from fsl_xai.intervals import proportion_interval
from fsl_xai.metrics import disparity
from fsl_xai.report import load_audit, write_report
from fsl_xai.report.sections import subgroups

from .conftest import HOSTILE_CLASSES, HOSTILE_SITES, METHODS
from .page import as_float, png, read_page


def _same(shown: dict, value, low, high, n, n_episodes=None) -> None:
    """A number on the page carries exactly the table's value, interval ends, n and episodes."""
    for name, expected in (("data-value", value), ("data-low", low), ("data-high", high)):
        got = as_float(shown[name])
        if expected is None or np.isnan(float(expected)):
            assert np.isnan(got), (name, shown)
        else:
            assert got == float(expected), (name, shown, expected)
    assert int(shown["data-n"]) == int(n)
    if n_episodes is not None:
        assert int(shown["data-episodes"]) == int(n_episodes)


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_accuracy_and_per_class_numbers_are_the_tables(audit_dir):
    page, text = read_page(audit_dir.html), html.unescape(audit_dir.html)
    acc = audit_dir.json("accuracy.json")
    a = acc["accuracy"]
    _same(page.number("accuracy"), a["value"], a["low"], a["high"], a["n"], a["n_episodes"])
    assert (f"{_percent(a['value'])} (95% CI {_percent(a['low'])}\u2013{_percent(a['high'])}; "
            f"n = {a['n']} queries, {a['n_episodes']} episodes)") in re.sub(r"<[^>]+>", "", text)
    assert a["n"] == 32 and a["n_episodes"] == 4  # 4 episodes x 4 classes x 2 queries
    assert len(acc["per_class"]) == 4
    for c in acc["per_class"]:
        _same(page.number(f"class:{c['class']}"), c["value"], c["low"], c["high"], c["n"], c["n_episodes"])
    # every rate on the page says its interval and its n
    assert page.estimates
    for shown in page.estimates:
        assert {"data-value", "data-low", "data-high", "data-n"} <= shown.keys()
    assert text.count("95% CI") >= len(page.estimates)


def test_out_of_distribution_queries_are_counted(audit_dir):
    page, text = read_page(audit_dir.html), html.unescape(audit_dir.html)
    queries = audit_dir.table("queries")
    n_flagged = audit_dir.json("accuracy.json")["accuracy"]["n_flagged"]
    assert n_flagged == int(queries["ood_flag"].sum()) and 0 < n_flagged < len(queries)
    assert f"These include {n_flagged} queries the domain guard flagged" in text
    # the accuracy without them: the evaluation module's own interval on the kept queries
    kept = queries[~queries["ood_flag"]]
    expected = accuracy_interval(kept)
    _same(page.number("accuracy_unflagged"), expected.estimate, expected.low, expected.high, len(kept),
          kept["episode"].nunique())
    share = page.number("ood_share")
    assert as_float(share["data-value"]) == pytest.approx(n_flagged / len(queries))
    assert int(share["data-n"]) == len(queries)


def test_subgroups_are_the_table(audit_dir):
    page, text = read_page(audit_dir.html), html.unescape(audit_dir.html)
    table = audit_dir.table("subgroups")
    assert sorted(table["group"]) == ["A", "B"]
    for _, row in table.iterrows():
        _same(page.number(f"subgroup:site={row['group']}"), row["error_rate"], row["low"], row["high"], row["n"],
              row["n_episodes"])
        assert f"{100 * row['gap']:+.1f} pp" in text
    assert "<svg" in audit_dir.html  # the forest plots


def test_sanity_checks_count_undefined_maps(audit_dir):
    page = read_page(audit_dir.html)
    quality = audit_dir.table("quality")
    assert set(quality["method"]) == set(METHODS)
    undefined_seen = False
    for (method, check), part in quality.groupby(["method", "check"]):
        status = part["status"]
        passed = (status == "passed").to_numpy()
        shown = page.number(f"quality:{method}:{check}")
        codes = part["episode"].to_numpy()
        episodes = np.unique(codes)
        events = np.array([passed[codes == e].sum() for e in episodes], dtype=float)
        totals = np.array([(codes == e).sum() for e in episodes], dtype=float)
        expected = proportion_interval(events, totals)
        _same(shown, expected.estimate, expected.low, expected.high, len(part), len(episodes))
        # undefined maps stay in n: the share is passed over all maps, not over the defined ones
        assert as_float(shown["data-value"]) == pytest.approx(passed.sum() / len(part))
        undefined_seen |= bool((status == "undefined").any())
    assert undefined_seen, "the fixture should hold an undefined check (a degenerate map)"


def _expected_failures(queries, k=12) -> list[int]:
    wrong = [r for r in queries.itertuples() if not r.correct]
    wrong.sort(key=lambda r: (-r.confidence, -r.margin, r.row))
    return [int(r.row) for r in wrong[:k]]


def test_gallery_shows_the_most_confident_failures_in_order(audit_dir):
    page = read_page(audit_dir.html)
    queries = audit_dir.table("queries")
    expected = _expected_failures(queries)
    assert len(expected) == 12
    assert [c["row"] for c in page.cases] == expected
    assert [c["rank"] for c in page.cases] == list(range(1, 13))
    images = load_dataset("synthetic", split="test")
    for case in page.cases:
        query = queries.iloc[case["row"]]
        alts = [alt for alt, _ in case["images"]]
        assert alts == ["query image", *(f"{m} map" for m in METHODS)]
        shown = png(case["images"][0][1])
        truth = np.floor(images.images[int(query["image_index"]), 0] * 255 + 0.5)
        assert shown.shape == (64, 64, 3)
        assert np.abs(shown[..., 0].astype(float) - truth).max() <= 1  # the audited query's own image
        words = " ".join(case["text"])
        assert f"true {query['true']} \u2192 predicted {query['pred']}" in " ".join(words.split())
        assert f"confidence {query['confidence']:.3f}" in words


def test_gallery_maps_are_the_stored_maps(audit_dir):
    page = read_page(audit_dir.html)
    for m_index, method in enumerate(METHODS):
        rows, maps = read_maps(audit_dir.folder, method)
        checked = 0
        for case in page.cases:
            stored = maps[int(np.searchsorted(rows, case["row"]))].astype(np.float64)
            overlay = png(case["images"][1 + m_index][1]).astype(int)
            scale = np.percentile(np.abs(stored), 99)
            if scale == 0:
                continue
            strong_pos, strong_neg = stored > 0.5 * scale, stored < -0.5 * scale
            red_minus_blue = overlay[..., 0] - overlay[..., 2]
            assert (red_minus_blue[strong_pos] > 0).all() and (red_minus_blue[strong_neg] < 0).all()
            checked += int(strong_pos.sum() + strong_neg.sum())
        assert checked > 0


def test_provenance_and_commands_without_sample_ids(audit_dir):
    text = html.unescape(audit_dir.html)
    manifest = audit_dir.json("manifest.json")
    for value in (manifest["checkpoint"]["file"], manifest["checkpoint"]["sha256"], manifest["reproduce"],
                  manifest["report_command"], manifest["versions"]["torch"]):
        assert value in text
    assert "synthetic" in text and "4 / 2 / 2" in text
    ids = load_dataset("synthetic", split="test").sample_ids
    assert not [s for s in ids if s in audit_dir.html]


def test_no_resource_from_anywhere(audit_dir, hostile_audit):
    for built in (audit_dir, hostile_audit):
        page = read_page(built.html)
        assert page.urls, "the gallery's images should be there"
        for tag, attribute, value in page.urls:
            assert (tag, attribute) == ("img", "src") and value.startswith("data:image/png;base64,"), value[:60]
        assert not page.tags & {"script", "link", "iframe", "object", "embed", "base", "form", "audio", "video",
                                "source", "use", "image", "font"}
        assert "url(" not in built.html and "@import" not in built.html
        assert "default-src 'none'" in html.unescape(built.html)  # the page's CSP forbids fetching anything else
    assert "http://" not in audit_dir.html and "https://" not in audit_dir.html


def test_hostile_names_are_shown_as_text(hostile_audit):
    page, raw = read_page(hostile_audit.html), hostile_audit.html
    assert hostile_audit.problems == []  # images found through data_file
    for name in HOSTILE_CLASSES[:3]:
        assert name not in raw
        assert html.escape(name) in raw
    assert "<script" not in raw and "<b>bold" not in raw
    assert 'src="https://evil.example' not in raw
    assert "script" not in page.tags
    for c in hostile_audit.json("accuracy.json")["per_class"]:  # the data-key attribute round-trips the name
        _same(page.number(f"class:{c['class']}"), c["value"], c["low"], c["high"], c["n"], c["n_episodes"])
    for site in HOSTILE_SITES:
        assert page.numbers(f"subgroup:site={site}")
    assert page.cases and all(case["images"][0][0] == "query image" for case in page.cases)



def test_data_file_from_the_audit_command(hostile_audit, tmp_path):
    """Without --data-file the report reads the file named in the manifest's reproduce command."""
    assert write_report(hostile_audit.folder, tmp_path / "report.html") == []
    cases = read_page((tmp_path / "report.html").read_text(encoding="utf-8")).cases
    assert cases and all(case["images"][0][0] == "query image" for case in cases)


def test_cli_writes_the_report(audit_dir, tmp_path, capsys):
    out = tmp_path / "card.html"
    args = ["report", str(audit_dir.folder), "--out", str(out), "--gallery", "3", "--title", "Site <A> audit"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote {out}" and captured.err == ""
    page = read_page(out.read_text(encoding="utf-8"))
    assert [c["row"] for c in page.cases] == _expected_failures(audit_dir.table("queries"), 3)
    assert "<title>Site &lt;A&gt; audit</title>" in out.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.html"]  # no temporary file left
    # the same folder gives the same report, byte for byte
    write_report(audit_dir.folder, tmp_path / "again.html", gallery=3, title="Site <A> audit")
    assert (tmp_path / "again.html").read_bytes() == out.read_bytes()


def test_largest_gap_between_groups(audit_dir):
    """The worst-versus-best gap per column, as fsl_xai.metrics.disparity gives it, with its interval.

    The fixture's groups are too small to compare (fewer than 30 queries each), which the page says;
    the audit's query table stacked over itself (episodes renumbered) gives groups large enough."""
    audit = load_audit(audit_dir.folder)
    small = disparity(audit.queries, by="site")
    assert np.isnan(small["gap"])
    assert "Largest gap: not computed" in subgroups(audit)
    second = audit.queries.assign(episode=audit.queries["episode"] + audit.queries["episode"].max() + 1)
    bigger = pd.concat([audit.queries, second], ignore_index=True).assign(row=lambda t: np.arange(len(t)))
    expected = disparity(bigger, by="site")
    assert np.isfinite(expected["gap"])
    fragment = subgroups(replace(audit, queries=bigger))
    page = read_page(fragment)
    assert f'data-gap="{expected["gap"]!r}"' in fragment
    assert f'data-low="{expected["gap_ci_low"]!r}" data-high="{expected["gap_ci_high"]!r}"' in fragment
    assert f"{100 * expected['gap']:+.1f} pp" in html.unescape(fragment)
    assert f"n = {expected['worst_n']} and {expected['best_n']} queries" in html.unescape(fragment)
    assert page.numbers("subgroup:site=A")  # the stored table is still what the rows show

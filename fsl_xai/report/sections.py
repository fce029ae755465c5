"""The report's sections, each a function from the audit folder to an HTML fragment.

Rates are shown with their 95% interval, n and episodes. Rates the audit's tables already hold
(accuracy, per class, subgroups) are shown as stored; rates the report counts itself (flagged
queries, accuracy without them, sanity-check pass rates) get an episode-aware interval from
:func:`fsl_xai.intervals.proportion_interval` on per-episode counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..audit.spec import IDENTIFYING_COLUMNS
from ..intervals import MIN_EPISODES, Interval, proportion_interval
from .charts import Mark, forest, status_bar
from .folder import LoadedAudit, finite
from .markup import count, esc, estimate, key_values, number, partial, percent, table

#: metadata columns that identify a person or a file: never shown (the audit refuses to group by them)
IDENTIFYING = frozenset(IDENTIFYING_COLUMNS)


def episode_rate(events: Any, episodes: Any) -> Interval:
    """The share of true ``events`` among queries, with a cluster bootstrap interval over episodes."""
    codes, _ = pd.factorize(pd.Series(np.asarray(episodes)))
    hits = np.bincount(codes, weights=np.asarray(events, dtype=np.float64))
    return proportion_interval(hits, np.bincount(codes).astype(np.float64))


def _section(anchor: str, title: str, body: str, sub: str = "") -> str:
    note = f'<p class="sub">{esc(sub)}</p>' if sub else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{note}{body}</section>'


def _problems(audit: LoadedAudit, section: str) -> str:
    return "".join(partial(message) for where, message in audit.problems if where == section)


def overview(audit: LoadedAudit) -> str:
    """Headline tiles: accuracy, flagged queries, the largest subgroup gap, sanity-check failures."""
    acc = audit.accuracy["accuracy"]
    tiles = [("Accuracy", estimate("accuracy", acc["value"], acc["low"], acc["high"], acc["n"], acc["n_episodes"],
                                   big=True))]
    q = audit.queries
    if "ood_flag" in q.columns:
        flagged = episode_rate(q["ood_flag"].astype(bool), q["episode"])
        tiles.append(("Out-of-distribution queries", estimate("ood_share", flagged.estimate, flagged.low,
                                                              flagged.high, len(q), q["episode"].nunique(),
                                                              big=True)))
    if audit.subgroups is not None and len(audit.subgroups):
        shown = audit.subgroups[~audit.subgroups["column"].astype(str).isin(IDENTIFYING)]
        if len(shown):
            worst = shown.iloc[int(np.argmax(shown["gap"].to_numpy(dtype=np.float64)))]
            tiles.append((f"Highest group error ({worst['column']} = {worst['group']})",
                          estimate("worst_group", worst["error_rate"], worst["low"], worst["high"], worst["n"],
                                   worst["n_episodes"], big=True)))
    if audit.quality is not None and len(audit.quality):
        failed = episode_rate(audit.quality["status"] == "failed", audit.quality["episode"])
        tiles.append(("Sanity checks failed (all methods)",
                      estimate("checks_failed", failed.estimate, failed.low, failed.high, len(audit.quality),
                               audit.quality["episode"].nunique(), unit="checks", big=True)))
    body = '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="label">{esc(label)}</div>{value}</div>' for label, value in tiles) + "</div>"
    return _section("overview", "At a glance", body)


def provenance(audit: LoadedAudit) -> str:
    """Model, data, protocol, guard and software versions, from the manifest."""
    m = audit.manifest
    ckpt, info, data, proto = m["checkpoint"], m["checkpoint"].get("info") or {}, m["data"], m["protocol"]
    size = info.get("image_size") or []
    model = key_values([
        ("checkpoint", ckpt.get("file", "")), ("sha256", ckpt.get("sha256", "")),
        ("model", info.get("model", "")), ("backbone", info.get("backbone", "")),
        ("input", f"{info.get('in_channels', '?')} channel(s), {'x'.join(str(s) for s in size) or '?'} px"),
        ("trained on", info.get("dataset", "")), ("training classes", ", ".join(map(str, info.get("classes") or []))),
        ("written", info.get("created", "")), ("by fsl-xai", info.get("version", ""))])
    data_rows = [
        ("data set", data.get("name", "")), ("source", data.get("source", "")), ("split", data.get("split", "")),
        ("images", count(data.get("n_images"))), ("classes", ", ".join(map(str, data.get("classes") or [])))]
    if data.get("episode_classes"):
        data_rows.append(("episodes drawn from", ", ".join(map(str, data["episode_classes"]))))
    dataset = key_values(data_rows)
    protocol = key_values([
        ("episodes", count(proto.get("episodes"))), ("ways / shots / queries per class",
                                                     f"{proto.get('n_way')} / {proto.get('n_shot')} / "
                                                     f"{proto.get('n_query')}"),
        ("seed", proto.get("seed", "")), ("attribution methods", ", ".join(audit.methods) or "none"),
        ("subgroup columns", ", ".join(map(str, m.get("by") or [])) or "none")])
    guard = m.get("guard")
    guard_kv = (key_values([("threshold", number(guard.get("threshold"), 4)), ("source", guard.get("source", ""))])
                if isinstance(guard, dict) else '<p class="muted">No domain guard: queries were not screened.</p>')
    versions = key_values(sorted((str(k), v) for k, v in (m.get("versions") or {}).items()))
    body = (f'<div class="cols"><div><h3>Model</h3>{model}</div><div><h3>Data</h3>{dataset}</div>'
            f"<div><h3>Protocol</h3>{protocol}</div><div><h3>Domain guard</h3>{guard_kv}<h3>Software</h3>{versions}"
            "</div></div>"
            f'<p class="muted">Audit created {esc(m.get("created", "unknown"))}.</p>')
    return _section("provenance", "Provenance", body, "What was audited, on which images, with which software.")


def accuracy(audit: LoadedAudit) -> str:
    """Overall accuracy, accuracy without out-of-distribution queries, and per-class accuracy."""
    acc, q = audit.accuracy["accuracy"], audit.queries
    overall = estimate("accuracy", acc["value"], acc["low"], acc["high"], acc["n"], acc["n_episodes"])
    lines = [f'<p>Accuracy over all queries: {overall} <span class="muted">(interval: '
             f'{esc(acc.get("method", "unknown"))})</span></p>']
    n_flagged = acc.get("n_flagged")
    if "ood_flag" in q.columns:
        keep = ~q["ood_flag"].astype(bool)
        lines.append(f"<p>These include {esc(count(n_flagged))} queries the domain guard flagged as "
                     "out-of-distribution.</p>")
        if keep.any():
            clean = episode_rate(q.loc[keep, "correct"].astype(bool), q.loc[keep, "episode"])
            lines.append("<p>Accuracy without flagged queries: " + estimate(
                "accuracy_unflagged", clean.estimate, clean.low, clean.high, int(keep.sum()),
                q.loc[keep, "episode"].nunique()) + "</p>")
    elif n_flagged is not None:
        lines.append(f"<p>These include {esc(count(n_flagged))} queries flagged as out-of-distribution.</p>")
    else:
        lines.append('<p class="muted">No domain guard: out-of-distribution queries were not flagged.</p>')
    per_class = audit.accuracy["per_class"]
    rows = [[esc(c["class"]), estimate(f"class:{c['class']}", c["value"], c["low"], c["high"], c["n"],
                                        c["n_episodes"])] for c in per_class]
    marks = [Mark(str(c["class"]), _f(c["value"]), _f(c["low"]), _f(c["high"]), int(c["n"]),
                  flagged=(finite(c["n_episodes"]) or 0) < MIN_EPISODES) for c in per_class]
    body = ("".join(lines) + "<h3>Per class (true class of the query)</h3>" + table(["class", "accuracy"], rows)
            + forest(marks, _f(acc["value"]), "overall", "Accuracy per class with 95% intervals"))
    return _section("accuracy", "Accuracy", body, "Pooled over queries; 95% intervals resample whole episodes.")


def _f(value: Any) -> float:
    x = finite(value)
    return float("nan") if x is None else x


def _unreliable(row: pd.Series) -> bool:
    """A group whose interval is flagged: the audit's own flags when it wrote them, else few episodes."""
    flags = [bool(row[c]) for c in ("too_small", "few_episodes") if c in row.index]
    return any(flags) if flags else (finite(row["n_episodes"]) or 0) < MIN_EPISODES


def _largest_gap(audit: LoadedAudit, column: str) -> str:
    """The gap between the worst and the best group of a column, bootstrapped over episodes
    (:func:`fsl_xai.metrics.disparity`, on the query table's copy of the column)."""
    if column not in audit.queries.columns:
        return partial(f"{column} is not a column of the query table, so the largest gap is not computed")
    from ..metrics import disparity

    d = disparity(audit.queries, by=column, seed=int(audit.manifest["protocol"].get("seed") or 0))
    if finite(d["gap"]) is None:
        return (f'<p class="muted">Largest gap: not computed ({esc(d["note"] or "fewer than two groups large enough")}'
                ").</p>")
    low, high = finite(d["gap_ci_low"]), finite(d["gap_ci_high"])
    ci = f"95% CI {100 * low:+.1f} to {100 * high:+.1f} pp" if low is not None and high is not None else \
        "95% CI undefined"
    flag = (" The interval excludes 0." if d["flagged"] else "") + (f" Note: {d['note']}." if d["note"] else "")
    return (f'<p class="disparity" data-key="{esc(f"disparity:{column}")}" data-gap="{d["gap"]!r}" '
            f'data-low="{d["gap_ci_low"]!r}" data-high="{d["gap_ci_high"]!r}">Largest gap: <b>{esc(d["worst_group"])}'
            f"</b> vs <b>{esc(d['best_group'])}</b>: <b>{100 * d['gap']:+.1f} pp</b> <span class=\"ci\">"
            f"({esc(ci)}; n = {count(d['worst_n'])} and {count(d['best_n'])} queries; {esc(d['ci_method'])})</span>."
            f"{esc(flag)}</p>")


def _gap_text(row: pd.Series) -> str:
    """The gap in percentage points, with its interval when the table holds one (gap_low, gap_high)."""
    gap = finite(row["gap"])
    if gap is None:
        return "n/a"
    low, high = (finite(row[c]) if c in row.index else None for c in ("gap_low", "gap_high"))
    ci = f" (95% CI {100 * low:+.1f} to {100 * high:+.1f} pp)" if low is not None and high is not None else ""
    return f"{100 * gap:+.1f} pp{ci}"


def subgroups(audit: LoadedAudit) -> str:
    """Error rate per group of each ``--by`` column, with the gap to the overall error rate."""
    if not audit.manifest.get("by"):
        return _section("subgroups", "Subgroups", '<p class="muted">The audit was run without --by: no subgroup '
                                                  "table.</p>")
    body = [_problems(audit, "subgroups")]
    table_ = audit.subgroups
    overall = 1 - _f(audit.accuracy["accuracy"]["value"])
    if table_ is not None:
        for column, rows in table_.groupby("column", sort=False):
            if str(column) in IDENTIFYING:
                body.append(partial(f"the column {column} identifies images or people and is not shown"))
                continue
            cells, marks = [], []
            for _, r in rows.iterrows():
                few = _unreliable(r)
                note = str(r["note"]) if "note" in r.index and str(r["note"]) not in ("", "nan", "None") else (
                    f"fewer than {MIN_EPISODES} episodes: the interval is unreliable" if few else "")
                cells.append([esc(r["group"]), estimate(f"subgroup:{column}={r['group']}", r["error_rate"], r["low"],
                                                        r["high"], r["n"], r["n_episodes"]),
                              esc(_gap_text(r)), esc(note)])
                marks.append(Mark(str(r["group"]), _f(r["error_rate"]), _f(r["low"]), _f(r["high"]), int(r["n"]), few))
            body.append(f"<h3>{esc(column)}</h3>" + table(["group", "error rate", "gap to overall", "note"], cells)
                        + forest(marks, overall, f"overall {percent(overall)}", f"Error rate by {column}")
                        + _largest_gap(audit, str(column)))
    return _section("subgroups", "Subgroups and populations", "".join(body),
                    "Error rate per group with its 95% interval (resampling episodes); gap = group error rate minus "
                    "the overall error rate, in percentage points.")


def quality(audit: LoadedAudit) -> str:
    """Sanity checks of the explanations: passed / failed / undefined per method and check."""
    if not audit.manifest.get("quality"):
        return _section("quality", "Explanation sanity checks", '<p class="muted">The audit was run without '
                                                               "--quality: no sanity checks.</p>")
    body = [_problems(audit, "quality")]
    q = audit.quality
    if q is not None:
        order = {m: i for i, m in enumerate(audit.methods)}
        rows = []
        groups = sorted(q.groupby(["method", "check"], sort=False), key=lambda g: (order.get(str(g[0][0]), 1e9),
                                                                                      str(g[0][0]), str(g[0][1])))
        for (method, check), part in groups:
            status = part["status"].astype(str)
            passed, failed = int((status == "passed").sum()), int((status == "failed").sum())
            undefined = int((status == "undefined").sum())
            rate = episode_rate(status == "passed", part["episode"])
            rows.append([esc(method), esc(check), f'<span class="status-passed">{passed}</span>',
                         f'<span class="status-failed">{failed}</span>',
                         f'<span class="status-undefined">{undefined}</span>', esc(count(len(part))),
                         estimate(f"quality:{method}:{check}", rate.estimate, rate.low, rate.high, len(part),
                                  part["episode"].nunique(), unit="maps"),
                         status_bar(passed, failed, undefined)])
        body.append(table(["method", "check", "passed", "failed", "undefined", "n", "passed share", ""], rows,
                          numeric=(2, 3, 4, 5)))
    return _section("quality", "Explanation sanity checks", "".join(body),
                    "One check per query map. Undefined (a flat or empty map) is counted, never passed.")


def reproduce(audit: LoadedAudit) -> str:
    """The commands that rebuild the audit folder and this report."""
    m = audit.manifest
    body = (f"<h3>Audit</h3><pre><code>{esc(m.get('reproduce', ''))}</code></pre>"
            f"<h3>Report</h3><pre><code>{esc(m.get('report_command', ''))}</code></pre>")
    return _section("reproduce", "Reproduce", body, "The same command and seed give the same tables and maps.")


__all__ = ["IDENTIFYING", "accuracy", "episode_rate", "overview", "provenance", "quality", "reproduce", "subgroups"]

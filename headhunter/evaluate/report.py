"""A self-contained ``report.html``: a prompts × settings grid (images linked relatively), a bar chart per metric with
95% intervals (inline SVG), the summary table, per-category tables when the prompts carry categories, and the
commands that regenerate the run."""

from __future__ import annotations

import html
import math
from typing import Sequence

__all__ = ["render_report"]


def _bar_chart(metric: str, rows: Sequence[dict], width: int = 520, caption: str = "mean, 95% bootstrap interval") -> str:
    finite = [r for r in rows if math.isfinite(r["mean"])]
    if not finite:
        return f"<p>{html.escape(metric)}: no finite values</p>"
    low = min(0.0, min(r["ci_low"] for r in finite))
    high = max(0.0, max(r["ci_high"] for r in finite))  # bars start at 0, so 0 must be on the axis
    span = (high - low) or 1.0
    bar_h, gap, label_w = 22, 8, 190
    height = len(rows) * (bar_h + gap) + 30
    scale = (width - label_w - 70) / span
    parts = [f'<svg class="chart" width="{width}" height="{height}" role="img" aria-label="{html.escape(metric)}">',
             f'<text x="0" y="14" font-weight="bold">{html.escape(metric)} ({html.escape(caption)})</text>']
    zero = label_w + (0 - low) * scale
    parts.append(f'<line x1="{zero:.1f}" y1="20" x2="{zero:.1f}" y2="{height - 4}" stroke="#999"/>')
    for i, r in enumerate(rows):
        y = 24 + i * (bar_h + gap)
        parts.append(f'<text x="0" y="{y + 15}">{html.escape(r["setting"])}</text>')
        if not math.isfinite(r["mean"]):
            continue
        x0 = label_w + (0 - low) * scale
        x1 = label_w + (r["mean"] - low) * scale
        parts.append(f'<rect x="{min(x0, x1):.1f}" y="{y}" width="{abs(x1 - x0):.1f}" height="{bar_h}" fill="#5b8def"/>')
        lo, hi = label_w + (r["ci_low"] - low) * scale, label_w + (r["ci_high"] - low) * scale
        mid = y + bar_h / 2
        parts.append(f'<line x1="{lo:.1f}" y1="{mid}" x2="{hi:.1f}" y2="{mid}" stroke="black"/>'
                     f'<line x1="{lo:.1f}" y1="{y + 4}" x2="{lo:.1f}" y2="{y + bar_h - 4}" stroke="black"/>'
                     f'<line x1="{hi:.1f}" y1="{y + 4}" x2="{hi:.1f}" y2="{y + bar_h - 4}" stroke="black"/>')
        parts.append(f'<text x="{max(x1, hi) + 6:.1f}" y="{y + 15}">{r["mean"]:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _category_tables(rows: Sequence[dict], settings: Sequence, metrics: Sequence[str], categories: Sequence[str],
                     baseline: str | None) -> str:
    """Per metric, a categories × settings table: mean and 95% interval, and with a baseline the paired difference
    to it (interval over the category's prompts) and the win rate."""
    if not categories:
        return ""
    cell = {(r["setting"], r["metric"], r["category"]): r for r in rows}
    parts = ["<h2>By category</h2>"]
    for metric in metrics:
        head = "".join(f"<th>{html.escape(s.name)}</th>" for s in settings)
        body = []
        for category in categories:
            cells = []
            for s in settings:
                r = cell.get((s.name, metric, category))
                if r is None or not math.isfinite(r["mean"]):
                    cells.append("<td>—</td>")
                    continue
                text = f"{r['mean']:.4g} <small>[{r['ci_low']:.4g}, {r['ci_high']:.4g}], n {r['n']}</small>"
                if baseline is not None and "diff_mean" in r and math.isfinite(r["diff_mean"]):
                    text += (f"<br><small>− {html.escape(baseline)}: {r['diff_mean']:+.4g} [{r['diff_ci_low']:.4g}, "
                             f"{r['diff_ci_high']:.4g}], wins {r['win_rate']:.0%}</small>")
                cells.append(f"<td>{text}</td>")
            body.append(f"<tr><th>{html.escape(category)}</th>{''.join(cells)}</tr>")
        parts.append(f'<table class="by-category" data-metric="{html.escape(metric)}"><caption>{html.escape(metric)}'
                     f" by category (mean, 95% bootstrap interval)</caption><tr><th>category</th>{head}</tr>"
                     f"{''.join(body)}</table>")
    return "\n".join(parts)


def render_report(
    title: str,
    settings: Sequence,
    items: Sequence[dict],
    summary: Sequence[dict],
    metrics: Sequence[str],
    commands: Sequence[str],
    latest: Sequence[str] = (),
    baseline: str | None = None,
    categories: Sequence[str] = (),
) -> str:
    """``items``: one dict per image (setting, prompt, seed, image path relative to the report, metric values).
    ``commands`` made the images shown; ``latest`` is the invocation that wrote this report (shown when it differs,
    e.g. when it only added a metric). With ``baseline``, ``summary`` rows carry paired differences to it. With
    ``categories``, ``summary`` also holds one row per category (its ``category``; the overall rows say ``all``) and
    the report breaks every metric, and every difference, down by category."""
    by_category = [r for r in summary if r.get("category") not in (None, "all")]
    summary = [r for r in summary if r.get("category") in (None, "all")]
    category_of: dict[tuple, str] = {}  # (prompt, seed) -> category, in the items' order
    for item in items:
        category_of.setdefault((item["prompt"], item["seed"]), item.get("category") or "")
    keys = list(category_of)
    by_key = {(i["setting"], i["prompt"], i["seed"]): i for i in items}
    head = "".join(f"<th>{html.escape(s.name)}<br><small>{html.escape(s.describe())}</small></th>" for s in settings)
    body = []
    for prompt, seed in keys:
        cells = []
        for s in settings:
            item = by_key.get((s.name, prompt, seed))
            if item is None:
                cells.append("<td>—</td>")
                continue
            scores = "<br>".join(f"{html.escape(m)}: {item[m]:.4g}" for m in metrics)
            shown = item.get("video") or item["image"]  # a video shows as its animated WebP
            cells.append(f'<td><img src="{html.escape(shown)}" alt="{html.escape(s.name)}"><br><small>{scores}</small></td>')
        category = category_of[(prompt, seed)]
        label = f"seed {seed}" + (f" · {html.escape(category)}" if category else "")
        body.append(f"<tr><th>{html.escape(prompt)}<br><small>{label}</small></th>{''.join(cells)}</tr>")
    charts = "".join(_bar_chart(m, [r for r in summary if r["metric"] == m]) for m in metrics)
    compare_head = ""
    if baseline is not None:
        caption = f"difference to {baseline}, 95% bootstrap interval over prompts"
        charts += "".join(
            _bar_chart(m, [{"setting": r["setting"], "mean": r["diff_mean"], "ci_low": r["diff_ci_low"],
                            "ci_high": r["diff_ci_high"]} for r in summary if r["metric"] == m and "diff_mean" in r],
                       caption=caption)
            for m in metrics)
        compare_head = f"<th>− {html.escape(baseline)}</th><th>95% interval (prompts)</th><th>win rate</th>"

    def compare_cells(r: dict) -> str:
        if baseline is None:
            return ""
        if "diff_mean" not in r:
            return "<td colspan=3>baseline</td>"
        return (f"<td>{r['diff_mean']:+.5g}</td><td>[{r['diff_ci_low']:.5g}, {r['diff_ci_high']:.5g}]</td>"
                f"<td>{r['win_rate']:.0%} of {r['pairs']}</td>")

    table = "".join(
        f"<tr><td>{html.escape(r['setting'])}</td><td>{html.escape(r['metric'])}</td><td>{r['n']}</td>"
        f"<td>{r['mean']:.5g}</td><td>[{r['ci_low']:.5g}, {r['ci_high']:.5g}]</td>{compare_cells(r)}</tr>"
        for r in summary)
    category_tables = _category_tables(by_category, settings, metrics, categories, baseline)
    lines = list(commands) or ["(made from Python)"]
    extra = [c for c in latest if c not in commands]
    if extra:
        lines += ["", "# this report was last written by:", *extra]
    command_text = html.escape("\n".join(lines))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 6px; vertical-align: top; }}
.grid img {{ width: 160px; height: auto; image-rendering: pixelated; display: block; }}
.chart {{ display: block; margin: 12px 0 24px; font-size: 13px; }}
table.by-category {{ margin: 12px 0 20px; }} caption {{ text-align: left; font-weight: bold; padding: 4px 0; }}
pre {{ background: #f5f5f5; padding: 12px; white-space: pre-wrap; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p id="image-status">checking images…</p>
<h2>Metrics</h2>
{charts}
<table><tr><th>setting</th><th>metric</th><th>n</th><th>mean</th><th>95% bootstrap interval</th>{compare_head}</tr>{table}</table>
{category_tables}
<h2>Images</h2>
<table class="grid"><tr><th>prompt</th>{head}</tr>{''.join(body)}</table>
<h2>Regenerate</h2>
<pre>{command_text}</pre>
<p>Every PNG also carries its full generation settings in its <code>headhunter</code> metadata.</p>
<script>
window.addEventListener("load", function () {{
  var images = Array.from(document.images);
  var broken = images.filter(function (img) {{ return !(img.complete && img.naturalWidth > 0); }});
  var status = document.getElementById("image-status");
  status.textContent = (images.length - broken.length) + " of " + images.length + " images loaded";
  status.dataset.loaded = images.length - broken.length;
  status.dataset.total = images.length;
}});
</script>
</body></html>
"""

"""The head picker: a layers × heads grid of cells drawn as HTML, and the edits a click makes to a head set.

Every cell carries its name (``title="L13H17"``, the hover tooltip) and its coordinates; a click on a cell toggles the
head, a click on a row label toggles the whole layer. Selected cells are shaded by their softness u (pale: u near 0,
full orange: u = 1), so heads with their own ``@u`` stand out.
"""

from __future__ import annotations

import html

from headhunter.heads import Head, HeadLayout, HeadSet

__all__ = ["PICKER_CSS", "PICKER_JS", "picker_html", "toggle_head", "toggle_layer"]

# Sent once with the page: one delegated listener on the component survives every re-render of its cells.
PICKER_JS = """
element.addEventListener('click', (event) => {
  const target = event.target.closest('[data-layer]');
  if (!target) return;
  const head = target.dataset.head;
  trigger('click', {layer: Number(target.dataset.layer), head: head === undefined ? null : Number(head)});
});
"""

PICKER_CSS = """
.hh-picker { font: 12px/1.2 var(--font-mono, monospace); }
.hh-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 2px 0 6px; color: var(--body-text-color-subdued); }
.hh-legend i { display: inline-block; width: 12px; height: 12px; vertical-align: -2px; margin-right: 4px;
  border: 1px solid #a0aabe; }
.hh-error { color: #b91c1c; font-weight: 600; margin: 0 0 6px; }
.hh-hint { color: var(--body-text-color-subdued); font-weight: 600; margin: 0 0 6px; }
.hh-scroll { max-height: 440px; width: fit-content; max-width: 100%; overflow: auto; border: 1px solid var(--border-color-primary); }
.hh-grid { border-collapse: separate; border-spacing: 2px; margin: 0; width: auto; border: none; }
.hh-grid th { border: none; position: sticky; background: var(--block-background-fill); color: var(--body-text-color);
  font-weight: 600; padding: 0 3px; z-index: 1; }
.hh-grid thead th { top: 0; text-align: center; font-size: 10px; }
.hh-grid tbody th { left: 0; text-align: right; cursor: pointer; white-space: nowrap; }
.hh-grid tbody th:hover { text-decoration: underline; }
.hh-grid td { width: 24px; min-width: 24px; height: 20px; padding: 0; cursor: pointer; border: 1px solid #a0aabe;
  background: #e8ecf4; }
.hh-grid tr.single td { background: #cdd2de; }
.hh-grid td.on { border-color: #9a3412; }
.hh-grid td:hover { outline: 2px solid #1d4ed8; }
"""

_DOUBLE, _SINGLE = "#e8ecf4", "#cdd2de"


def _shade(u: float) -> str:
    """Orange whose strength follows the softness: u = 1 is full orange, u = 0 still visibly picked."""
    alpha = 0.3 + 0.7 * min(max(u, 0.0), 1.0)
    return f"rgba(249, 115, 22, {alpha:.2f})"


def picker_html(layout: HeadLayout, heads: HeadSet, default_softness: float = 1.0, error: str | None = None) -> str:
    """The grid for ``heads`` (already validated against ``layout``); ``error`` is shown above it."""
    chosen = heads.softness_map(layout, default_softness) if heads else {}
    two_stacks = layout.num_double_layers > 0  # FLUX.1, Chroma: double-stream layers, then single-stream ones
    legend = [f"<span><i style='background:{_shade(1.0)}'></i>picked (u = 1)</span>",
              f"<span><i style='background:{_shade(0.0)}'></i>picked, u = 0 (shade = softness)</span>"]
    if two_stacks:
        last = layout.num_double_layers - 1
        legend += [f"<span><i style='background:{_DOUBLE}'></i>double-stream L0–L{last}</span>",
                   f"<span><i style='background:{_SINGLE}'></i>single-stream L{last + 1}–L{layout.num_layers - 1}</span>"]
    legend.append("<span>click a row label for the whole layer</span>")
    rows = []
    for layer in range(layout.num_layers):
        kind = "single" if two_stacks and layer >= layout.num_double_layers else "double"
        cells = []
        for head in range(layout.num_heads):
            u = chosen.get((layer, head))
            if u is None:
                cells.append(f'<td data-layer="{layer}" data-head="{head}" title="L{layer}H{head}"></td>')
            else:
                cells.append(f'<td class="on" data-layer="{layer}" data-head="{head}" title="L{layer}H{head} @ u={u:g}"'
                             f' style="background:{_shade(u)}"></td>')
        rows.append(f'<tr class="{kind}"><th data-layer="{layer}" title="L{layer}: toggle the whole layer">L{layer}</th>'
                    f'{"".join(cells)}</tr>')
    header = "".join(f"<th>H{head}</th>" for head in range(layout.num_heads))
    problem = f'<div class="hh-error" role="alert">{html.escape(error)}</div>' if error else ""
    if not error and not heads:
        problem = '<div class="hh-hint">no heads: guided = unguided — click cells, or use a preset</div>'

    return (f'<div class="hh-picker">{problem}<div class="hh-legend">{"".join(legend)}</div>'
            f'<div class="hh-scroll"><table class="hh-grid"><thead><tr><th></th>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div></div>')


def toggle_head(layout: HeadLayout, heads: HeadSet, layer: int, head: int) -> HeadSet:
    """``heads`` with one head switched. A head inside a whole-layer entry (``L1``) splits that entry: the layer's
    other heads stay, with the layer's softness."""
    entries = list(heads)
    whole = next((h for h in entries if h.layer == layer and h.head is None), None)
    if whole is not None:
        at = entries.index(whole)
        rest = [Head(layer, other, whole.softness) for other in range(layout.num_heads) if other != head]
        return HeadSet(entries[:at] + rest + entries[at + 1:])
    if (layer, head) in heads:
        return HeadSet(h for h in entries if (h.layer, h.head) != (layer, head))
    return HeadSet([*entries, Head(layer, head)])


def toggle_layer(layout: HeadLayout, heads: HeadSet, layer: int) -> HeadSet:
    """``heads`` with layer ``layer`` switched as a whole: off when every head of it is picked, else ``L{layer}``
    in place of its single heads."""
    in_layer = {h.head for h in heads if h.layer == layer}
    others = [h for h in heads if h.layer != layer]
    if None in in_layer or in_layer >= set(range(layout.num_heads)):
        return HeadSet(others)
    return HeadSet([*others, Head(layer, None)])

"""Small server-drawn SVG charts (no JavaScript)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup


def spark(values: Sequence[float], width: int = 160, height: int = 32, color: str = "#2563eb") -> Markup:
    """A line of `values` (oldest first) scaled to the box, with the last value's dot; an empty
    box when there is nothing to draw yet."""
    pts = list(values)
    box = f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
    if len(pts) < 2:
        return Markup(box + f'<line x1="0" y1="{height - 1}" x2="{width}" y2="{height - 1}" stroke="#ddd"/></svg>')
    top = max(max(pts), 1e-9)
    step = (width - 4) / (len(pts) - 1)
    coords = [(2 + i * step, height - 2 - (v / top) * (height - 4)) for i, v in enumerate(pts)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    x, y = coords[-1]
    return Markup(f'{box}<title>max {top:.3g}</title>'
                  f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}"/>'
                  f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{color}"/></svg>')

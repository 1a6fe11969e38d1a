"""Point labels that keep apart: :func:`place_labels` puts each label at the nearest of a ring of
candidate spots around its point (right, above, below, left, at growing distances) where it overlaps
no label placed before it, no marker and no drawn line, and draws a thin leader line to a label that
had to go further than the first rings.

Everything is measured on the rendered figure (``fig.canvas.draw()``, then each text's
``get_window_extent``), so the placement holds for the fonts and the DPI the figure is saved with.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

PAD = 1.5  # pixels kept free around a label
MARKER = 4.0  # half-size (pixels) of the box a marker or a piece of line occupies
GAPS = (4.0, 8.0, 13.0, 19.0, 26.0, 34.0, 44.0, 56.0)  # candidate distances from the point (pixels)
LEADER = 13.0  # labels at least this far from their point get a leader line


def _along(line: np.ndarray, every: float = MARKER) -> np.ndarray:
    """Points every ``every`` pixels along a polyline (display coordinates)."""
    out = [line[:1]]
    for p, q in itertools.pairwise(line):
        n = max(int(np.hypot(*(q - p)) // every), 1)
        out.append(p + (q - p) * (np.arange(1, n + 1)[:, None] / n))
    return np.vstack(out)


def _candidates(w: float, h: float) -> list[tuple[float, float, float]]:
    """(gap, x, y) of the lower-left corner of a w x h box around a point at (0, 0), nearest first."""
    out = []
    for g in GAPS:
        out += [(g, g, -h / 2), (g, g, g / 2), (g, g, -h - g / 2), (g, -w / 2, g), (g, -w / 2, -h - g),
                (g, -w - g, -h / 2), (g, -w - g, g / 2), (g, -w - g, -h - g / 2)]  # fmt: skip
    return out


def _clashes(box: np.ndarray, boxes: list[np.ndarray], blocked: np.ndarray, frame: np.ndarray) -> float:
    """How badly ``box`` (x0, y0, x1, y1) is placed: labels and blocked points it covers, and whether it
    leaves the frame (0: a free spot)."""
    bad = float(box[0] < frame[0] or box[1] < frame[1] or box[2] > frame[2] or box[3] > frame[3]) * 100
    for b in boxes:
        if min(box[2], b[2]) > max(box[0], b[0]) and min(box[3], b[3]) > max(box[1], b[1]):
            bad += 10
    inside = (
        (blocked[:, 0] + MARKER > box[0]) & (blocked[:, 0] - MARKER < box[2])
        & (blocked[:, 1] + MARKER > box[1]) & (blocked[:, 1] - MARKER < box[3])
    )  # fmt: skip
    return bad + float(inside.sum())


def place_labels(
    ax: Any,
    xs: Sequence[float],
    ys: Sequence[float],
    texts: Sequence[str],
    obstacles: Sequence[tuple[float, float]] = (),
    lines: Sequence[tuple[Sequence[float], Sequence[float]]] = (),
    **text_kw: Any,
) -> list[Any]:
    """Label each point (``xs``, ``ys`` in data coordinates) with its text, keeping the labels apart,
    off the points, off the ``obstacles`` (other markers) and off the polylines ``lines`` ((xs, ys)
    each), all in data coordinates. Returns the annotations."""
    from matplotlib.text import Text

    fig = ax.figure
    anns = [
        ax.annotate(t, (x, y), xytext=(0, 0), textcoords="offset points", **text_kw)
        for x, y, t in zip(xs, ys, texts, strict=True)
    ]
    if not anns:
        return anns
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform(np.column_stack([xs, ys]).astype(float))
    # each label's box relative to its point, as drawn at offset 0
    rel = [np.array(Text.get_window_extent(a, renderer).extents) - np.tile(p, 2) for a, p in zip(anns, pts, strict=True)]
    others = ax.transData.transform(np.array(obstacles, dtype=float).reshape(-1, 2))
    along = [_along(ax.transData.transform(np.column_stack([lx, ly]).astype(float))) for lx, ly in lines if len(lx) > 1]
    blocked = np.vstack([pts, others, *along])
    frame = np.array(ax.get_window_extent(renderer).extents, dtype=float)
    placed: list[np.ndarray] = []
    px_to_pt = 72.0 / fig.dpi
    for ann, p, r in zip(anns, pts, rel, strict=True):
        w, h = r[2] - r[0], r[3] - r[1]
        best: tuple[float, int, np.ndarray, float] | None = None  # (clashes, rank, box, gap)
        for i, (gap, cx, cy) in enumerate(_candidates(w, h)):
            box = np.array([p[0] + cx, p[1] + cy, p[0] + cx + w, p[1] + cy + h])
            score = _clashes(box + np.array([-PAD, -PAD, PAD, PAD]), placed, blocked, frame)
            if best is None or score < best[0]:
                best = (score, i, box, gap)
            if score == 0:
                break
        assert best is not None
        _, _, box, gap_used = best
        placed.append(box)
        dx, dy = box[0] - (p[0] + r[0]), box[1] - (p[1] + r[1])  # the move of the box from offset 0
        ann.xyann = (dx * px_to_pt, dy * px_to_pt)
        if gap_used >= LEADER:  # far from its point: a leader line to the box's nearest point
            ex, ey = min(max(p[0], box[0]), box[2]), min(max(p[1], box[1]), box[3])
            line = ax.transData.inverted().transform([p, [ex, ey]])
            ax.plot(line[:, 0], line[:, 1], c="darkgrey", lw=0.7, zorder=1)
    return anns

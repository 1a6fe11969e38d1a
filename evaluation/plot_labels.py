"""Point labels that keep apart: :func:`place_labels` annotates points and then moves the labels, in
display space, until no two overlap and none covers a marker (a small repulsion in the manner of
adjustText), drawing a thin leader line to each label that had to move away from its point.

Everything is measured on the rendered figure (``fig.canvas.draw()``, then each text's
``get_window_extent``), so the placement holds for the fonts and the DPI the figure is saved with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PAD = 2.0  # pixels kept free around a label
MARKER = 4.0  # half-size (pixels) of the box a marker occupies


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """How far box ``a`` (x0, y0, x1, y1) reaches into box ``b`` along x and y (<= 0: apart)."""
    return min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])


def _push(boxes: np.ndarray, obstacles: np.ndarray, frame: np.ndarray, steps: int) -> np.ndarray:
    """Offsets (n, 2) in pixels that move the ``boxes`` apart, off the ``obstacles`` and into ``frame``."""
    n = len(boxes)
    shift = np.zeros((n, 2))
    for _ in range(steps):
        cur = boxes + np.hstack([shift, shift])
        move = np.zeros((n, 2))
        for i in range(n):
            for j in range(i + 1, n):
                ox, oy = _overlap(cur[i], cur[j])
                if ox > 0 and oy > 0:  # apart along y (labels are wide): the upper one goes up
                    d = (oy / 2 + 0.5) * (1 if (cur[i, 1] + cur[i, 3]) >= (cur[j, 1] + cur[j, 3]) else -1)
                    move[i, 1] += d
                    move[j, 1] -= d
            for ob in obstacles:
                ox, oy = _overlap(cur[i], ob)
                if ox > 0 and oy > 0:
                    up = (cur[i, 1] + cur[i, 3]) >= (ob[1] + ob[3])
                    move[i, 1] += (oy + 0.5) * (1 if up else -1) / 2
        # inside the frame (the axes)
        cur = boxes + np.hstack([shift + move, shift + move])
        move[:, 0] += np.maximum(frame[0] - cur[:, 0], 0) - np.maximum(cur[:, 2] - frame[2], 0)
        move[:, 1] += np.maximum(frame[1] - cur[:, 1], 0) - np.maximum(cur[:, 3] - frame[3], 0)
        if not np.abs(move).max(initial=0.0) > 0.05:
            break
        shift += move
    return shift


def place_labels(
    ax: Any,
    xs: Sequence[float],
    ys: Sequence[float],
    texts: Sequence[str],
    obstacles: Sequence[tuple[float, float]] = (),
    steps: int = 300,
    **text_kw: Any,
) -> list[Any]:
    """Label each point (``xs``, ``ys`` in data coordinates) with its text, then move the labels apart
    (also off the ``obstacles``: other markers, in data coordinates, and off the points themselves).
    Returns the annotations."""
    fig = ax.figure
    anns = [
        ax.annotate(t, (x, y), xytext=(4, 2), textcoords="offset points", **text_kw)
        for x, y, t in zip(xs, ys, texts, strict=True)
    ]
    if not anns:
        return anns
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = np.array([Text.get_window_extent(a, renderer).extents for a in anns], dtype=float)
    boxes += np.array([-PAD, -PAD, PAD, PAD])
    pts = ax.transData.transform(np.array([*zip(xs, ys, strict=True), *obstacles], dtype=float).reshape(-1, 2))
    markers = np.hstack([pts - MARKER, pts + MARKER])
    frame = np.array(ax.get_window_extent(renderer).extents, dtype=float)
    shift = _push(boxes, markers, frame, steps)
    px_to_pt = 72.0 / fig.dpi
    for ann, (dx, dy), (px, py), box in zip(anns, shift, pts, boxes + np.hstack([shift, shift]), strict=False):
        ox, oy = ann.xyann
        ann.xyann = (ox + dx * px_to_pt, oy + dy * px_to_pt)
        if abs(dx) + abs(dy) > 6:  # moved away from its point: a leader line to the label's nearer edge
            ey = box[1] + PAD if py < box[1] else box[3] - PAD if py > box[3] else py
            ex = min(max(px, box[0] + PAD), box[2] - PAD)
            line = ax.transData.inverted().transform([[px, py], [ex, ey]])
            ax.plot(line[:, 0], line[:, 1], c="lightgrey", lw=0.6, zorder=1)
    return anns

"""Point labels that never overlap. Variants cluster (an INT8 twin sits next to its FP32 network;
a cached stage shows up in several pipelines), and labels written at a fixed offset land on each
other. Each label here tries spots around its point, nearest first, and takes the first whose
box, measured by the renderer, meets no label placed before, no point and stays inside the axes;
a label moved away from its point gets a thin leader line."""

from __future__ import annotations

import math

from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

GID = "point-label"
RADII_PT = (6, 11, 17, 24, 32, 42, 54, 68, 84, 102, 124)
DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
LEADER_FROM_PT = 17  # nearer than this, a label plainly belongs to its point
MARKER_PX = 6  # half the side of the box a point's marker is kept clear within
GAP_PX = 1.5  # boxes closer than this count as touching


def text_box(label: Text, renderer) -> Bbox:
    """The text's own box in pixels (an annotation's extent would include its leader line)."""
    if isinstance(label, Annotation):
        label.update_positions(renderer)  # from its offset to pixels, as drawing does
    return Text.get_window_extent(label, renderer)


def place_labels(ax, points: list[tuple[float, float]], texts: list[str],
                 renderer, fontsize: str = "small") -> list[Annotation]:
    """One label per point, none overlapping another label or any point; the axes' limits and
    position must be final (call after the layout)."""
    pixels = ax.transData.transform(points) if points else []
    markers = [Bbox.from_extents(x - MARKER_PX, y - MARKER_PX, x + MARKER_PX, y + MARKER_PX)
               for x, y in pixels]
    frame = ax.get_window_extent(renderer)
    placed: list[Bbox] = []
    labels = []
    for point, text in zip(points, texts, strict=True):
        label = (_first_fit(ax, point, text, renderer, fontsize, placed, markers, frame)
                 or _first_fit(ax, point, text, renderer, fontsize, placed, [], None))
        if label is None:  # nowhere free even outside the axes: keep it, on top of the others
            label = _annotate(ax, point, text, (RADII_PT[0], RADII_PT[0]), fontsize)
        placed.append(text_box(label, renderer))
        labels.append(label)
    return labels


def _first_fit(ax, point, text, renderer, fontsize, placed, markers, frame) -> Annotation | None:
    for radius in RADII_PT:
        for dx, dy in DIRECTIONS:
            norm = math.hypot(dx, dy)
            label = _annotate(ax, point, text, (dx / norm * radius, dy / norm * radius),
                              fontsize)
            box = text_box(label, renderer).padded(GAP_PX)
            inside = frame is None or (frame.x0 <= box.x0 and box.x1 <= frame.x1
                                       and frame.y0 <= box.y0 and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(b) for b in (*placed, *markers)):
                return label
            label.remove()
    return None


def _annotate(ax, point, text: str, offset: tuple[float, float], fontsize: str) -> Annotation:
    dx, dy = offset
    leader = (dict(arrowstyle="-", color="#8a8a8a", linewidth=0.6, shrinkA=0, shrinkB=4)
              if math.hypot(dx, dy) >= LEADER_FROM_PT else None)
    return ax.annotate(text, point, xytext=offset, textcoords="offset points",
                       ha="left" if dx > 0 else "right" if dx < 0 else "center",
                       va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                       fontsize=fontsize, fontweight="bold", gid=GID, arrowprops=leader,
                       zorder=4)

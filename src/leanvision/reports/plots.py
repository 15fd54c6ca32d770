"""The report's figures as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot: no global
figure state, no display needed)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

WIDTH_IN = 10.5  # at 100 dpi just under the page's 1100px column, so images are not scaled up
DPI = 100
FRONT_COLOUR, OTHER_COLOUR = "#d62728", "#7f7f7f"
KEY_WIDTH = 0.75  # the Pareto key's share of the width of one chart
KEY_CHARS = 40  # a longer name is cut in the key (the variants table has it whole)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, layout: bool = True) -> bytes:
    if layout:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def training_curves(history: list[dict[str, Any]]) -> bytes:
    """Loss (train / val / EMA val), top-1 (train / val / EMA val) and learning rate per epoch."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(WIDTH_IN, 3.3)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    marker = "o" if len(epochs) <= 30 else None
    for ax, keys, name in (
            (loss_ax, ("train_loss", "val_loss", "ema_val_loss"), "loss"),
            (acc_ax, ("train_top1", "val_top1", "ema_val_top1"), "top-1"),
            (lr_ax, ("lr",), "learning rate")):
        for key in keys:
            values = [_finite(h.get(key)) for h in history]
            if any(v is not None for v in values):
                ys = [np.nan if v is None else v for v in values]
                label = key.replace("_loss", "").replace("_top1", "").replace("_", " ")
                ax.plot(epochs, ys, marker=marker, markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax is not lr_ax and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    lrs = [v for h in history if (v := _finite(h.get("lr"))) and v > 0]
    if lrs and max(lrs) / min(lrs) > 20:
        lr_ax.set_yscale("log")
    return _png(fig)


def confusion_matrix(confusion: list[list[int]], classes: list[str]) -> bytes:
    """Rows are true classes, coloured by the share of each row (recall), labelled with counts
    while the cells are big enough to read."""
    matrix = np.asarray(confusion, dtype=np.float64)
    n = len(classes)
    side = min(7.5, max(3.6, 0.42 * n + 2.0))
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    if n <= 30:
        ax.set_xticks(range(n), labels=classes, rotation=90 if n > 6 else 0,
                      fontsize="small" if n <= 15 else "x-small")
        ax.set_yticks(range(n), labels=classes, fontsize="small" if n <= 15 else "x-small")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize="small",
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _png(fig)


def reliability_diagram(bins: dict[str, list[float]], ece: float | None) -> bytes:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), and how many
    predictions fall in each bin."""
    fig = _figure(WIDTH_IN * 0.8, 3.4)
    diag_ax, hist_ax = fig.subplots(1, 2)
    lower, upper = np.asarray(bins["lower"]), np.asarray(bins["upper"])
    centres, width = (lower + upper) / 2, upper - lower
    accuracy = np.nan_to_num(np.asarray(bins["accuracy"], dtype=np.float64))
    confidence = np.asarray(bins["confidence"], dtype=np.float64)
    filled = np.asarray(bins["count"]) > 0
    diag_ax.bar(centres[filled], accuracy[filled], width=width[filled], edgecolor="#1f4e79",
                color="#5b9bd5", label="accuracy")
    gap = np.where(filled, confidence - accuracy, 0)
    diag_ax.bar(centres[filled], gap[filled], bottom=accuracy[filled], width=width[filled],
                color="#d62728", alpha=0.3, label="gap to confidence")
    diag_ax.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="perfect")
    diag_ax.set_xlim(0, 1)
    diag_ax.set_ylim(0, 1)
    diag_ax.set_xlabel("confidence")
    diag_ax.set_ylabel("accuracy")
    ece_text = f"ECE {ece:.4f}" if ece is not None and math.isfinite(ece) else "ECE —"
    diag_ax.set_title(f"reliability · {ece_text}", fontsize="medium")
    diag_ax.legend(fontsize="small", loc="upper left")
    hist_ax.bar(centres, bins["count"], width=width, color="#7f7f7f")
    hist_ax.set_xlim(0, 1)
    hist_ax.set_xlabel("confidence")
    hist_ax.set_ylabel("predictions")
    hist_ax.set_title("confidence histogram", fontsize="medium")
    return _png(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which (cost, accuracy) points no other point beats: as cheap or cheaper and as accurate or
    more, strictly better in one."""
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any(c <= cost and a >= acc and (c < cost or a > acc)
                        for j, (c, a) in enumerate(points) if j != i)
        front.append(not dominated)
    return front


def pareto_charts(names: list[str], accuracy: list[float | None],
                  axes: list[tuple[str, list[float | None]]], accuracy_label: str,
                  errors: list[tuple[float, float] | None] | None = None) -> bytes:
    """One chart per cost axis (latency, size): accuracy against cost, the Pareto-optimal
    variants filled in red and joined by the front's staircase; each point carries its
    variant's number, and the key beside the charts names them (see draw_pareto)."""
    return _png(draw_pareto(names, accuracy, axes, accuracy_label, errors), layout=False)


def draw_pareto(names: list[str], accuracy: list[float | None],
                axes: list[tuple[str, list[float | None]]], accuracy_label: str,
                errors: list[tuple[float, float] | None] | None = None):
    """The figure of pareto_charts, laid out, its point labels placed (labels.py: no two
    overlap, wherever the variants cluster). `errors`: per variant None or how far its error
    bar reaches below and above its accuracy."""
    from .labels import place_labels

    rows = max(len(names), 8)
    fig = _figure(WIDTH_IN, max(4.0, 0.2 * rows + 1.2))
    grid = fig.add_gridspec(1, len(axes) + 1, width_ratios=[1.0] * len(axes) + [KEY_WIDTH])
    panels = [fig.add_subplot(grid[0, i]) for i in range(len(axes))]
    placements = []
    for ax, (label, costs) in zip(panels, axes, strict=True):
        keep = [i for i in range(len(names)) if costs[i] is not None and accuracy[i] is not None]
        points = [(float(costs[i]), float(accuracy[i])) for i in keep]
        front = pareto_front(points)
        for (x, y), on_front in zip(points, front, strict=True):
            ax.scatter([x], [y], s=50, zorder=3, color=FRONT_COLOUR if on_front else "white",
                       edgecolors=FRONT_COLOUR if on_front else OTHER_COLOUR, linewidths=1.5)
        for (x, y), i in zip(points, keep, strict=True):
            if errors and errors[i] is not None:  # an accuracy stays within 0..1
                below, above = min(errors[i][0], y), min(errors[i][1], max(0.0, 1.0 - y))
                ax.errorbar([x], [y], yerr=[[below], [above]], fmt="none",
                            ecolor=OTHER_COLOUR, elinewidth=1, capsize=3, zorder=2)
        staircase = sorted(p for p, f in zip(points, front, strict=True) if f)
        if len(staircase) > 1:
            ax.step([p[0] for p in staircase], [p[1] for p in staircase], where="post",
                    color=FRONT_COLOUR, alpha=0.6, zorder=2)
        xs = [p[0] for p in points]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.margins(x=0.3, y=0.25)
        ax.set_xlabel(label)
        ax.set_ylabel(accuracy_label)
        ax.grid(alpha=0.3)
        placements.append((ax, points, [str(i + 1) for i in keep]))
    _key(fig.add_subplot(grid[0, len(axes)]), names)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ax, points, numbers in placements:
        ax.set_xlim(ax.get_xlim())  # the labels are placed against these limits
        ax.set_ylim(ax.get_ylim())
        place_labels(ax, points, numbers, renderer)
    return fig


def _key(ax, names: list[str]) -> None:
    """The variants by number, and what the markers mean."""
    ax.axis("off")
    size = 9 if len(names) <= 16 else 7 if len(names) <= 30 else 5.5
    lines = [f"{i}  {_short(name, KEY_CHARS)}" for i, name in enumerate(names, 1)]
    ax.text(0.0, 1.0, "\n".join(lines), transform=ax.transAxes, va="top", ha="left",
            fontsize=size, linespacing=1.5)
    ax.scatter([], [], color=FRONT_COLOUR, label="Pareto-optimal")
    ax.scatter([], [], color="white", edgecolors=OTHER_COLOUR, label="dominated")
    ax.legend(fontsize="small", loc="lower left", frameon=False)


def _short(name: str, limit: int = 28) -> str:
    """Names in the key stay inside the figure; the table beside it has the full names."""
    return name if len(name) <= limit else name[:limit - 1] + "…"


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None

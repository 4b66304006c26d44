"""Figures of run comparisons that need no torch: the dendrogram and the tube-width bands.

They live apart from :mod:`lightning_manifold.analysis` (which imports torch) so that the
command line's figure worker (:mod:`lightning_manifold._figure_worker`) can draw them in a
second process that never imports torch. :mod:`lightning_manifold.analysis` re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lightning_manifold._optional import LazyModule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported by the first figure
plots = LazyModule("lightning_manifold.plots")

__all__ = ["dendrogram_figure", "linkage_matrix", "new_figure", "tube_bands_figure"]


def new_figure(figsize: tuple[float, float], dpi: float = 100.0) -> Figure:
    """A matplotlib Figure on an Agg canvas (no pyplot, nothing to close), constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def linkage_matrix(D: np.ndarray, method: str = "average") -> np.ndarray:
    """SciPy hierarchical clustering (``linkage``, ``method`` = average by default) of the
    condensed form of the (R, R) distance matrix ``D``; (R - 1, 4) linkage matrix."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1] or D.shape[0] < 2:
        raise ValueError(f"`D` must be a square (R, R) matrix with R >= 2, got shape {D.shape}")
    condensed = squareform(0.5 * (D + D.T), checks=False)
    return linkage(condensed, method=method)


def dendrogram_figure(
    D: np.ndarray,
    names: Sequence[str],
    groups: Sequence[str] | None = None,
    *,
    method: str = "average",
    dpi: float = 100.0,
) -> tuple[Figure, list[str]]:
    """Dendrogram of the trajectory distances (thesis fig. 2.6a), leaves labelled by run and
    coloured by configuration group, with a key of the groups.

    Returns:
        The figure and the leaf labels from top to bottom.
    """
    from matplotlib.patches import Patch
    from scipy.cluster.hierarchy import dendrogram

    Z = linkage_matrix(D, method)
    r = len(names)
    fig = new_figure((7.5, 1.4 + 0.32 * r), dpi)
    ax = fig.add_subplot(1, 1, 1)
    info = dendrogram(
        Z, labels=list(names), orientation="left", ax=ax, color_threshold=0.0,
        above_threshold_color="0.25", leaf_font_size=8,
    )  # fmt: skip
    if groups is not None:
        colors = plots.group_colors(groups)
        by_name = dict(zip(names, groups))
        for label in ax.get_yticklabels():
            label.set_color(colors[by_name[label.get_text()]])
        if len(colors) < len(names):
            handles = [Patch(color=c, label=g) for g, c in colors.items()]
            fig.legend(handles=handles, loc="outside right upper", title="group", fontsize=8)
    ax.set_xlabel("trajectory distance (eq. 2.2.5, mean d_B at equal progress)")
    ax.set_title(f"Training trajectories, {method}-linkage clustering")
    ax.spines[["top", "right", "left"]].set_visible(False)
    leaves = list(reversed(info["ivl"]))  # orientation="left" draws the first leaf at the bottom
    return fig, leaves


def tube_bands_figure(
    bands: Mapping[str, Mapping[str, np.ndarray]], *, dpi: float = 100.0
) -> Figure | None:
    """Tube width against progress, one band per group (min..max over its runs, mean as a
    line), legend outside the axes. ``bands``: ``TubeWidths.bands()``. None when empty."""
    if not bands:
        return None
    colors = plots.group_colors(list(bands))
    fig = new_figure((7.5, 4.0), dpi)
    ax = fig.add_subplot(1, 1, 1)
    for group, b in bands.items():
        c = colors[group]
        ax.fill_between(b["progress"], b["low"], b["high"], color=c, alpha=0.25, linewidth=0)
        ax.plot(b["progress"], b["mean"], color=c, label=group, linewidth=1.5)
    ax.set_xlabel("progress")
    ax.set_ylabel("tube width (d_B to the group's mean model)")
    ax.set_title("Tube width across seeds (§2.5.4.1): mean line, min-max band")
    fig.legend(loc="outside right upper", fontsize=8, title="group")
    ax.spines[["top", "right"]].set_visible(False)
    return fig

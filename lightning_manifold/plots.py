"""Figures of the information-geometric map from a :class:`~lightning_manifold.frame.ManifoldFrame`.

Static figures use matplotlib's object-oriented API on the Agg canvas (no pyplot, no GUI, nothing
left open in pyplot's figure manager); the interactive 3D view uses plotly (optional extra).

Public figures (thesis chapter 2 numbering):

* :func:`manifold_figure` -- top-3 InPCA coordinates (eq. 2.2.6): 3D view and the three pairwise
  views (figs. 2.1, 2.2). Reference models coloured by run, the live run coloured by progress,
  ignorance P0, truth P* and the ignorance->truth geodesic (eq. 2.2.3) marked; axes with a
  negative eigenvalue are labelled *time-like*.
* :func:`spectrum_figure` -- |eigenvalues| on a log scale, time-like ones in red, with the
  explained stress (eq. 2.2.8) of the top 1, 3 and 10 dimensions (fig. 2.1b).
* :func:`progress_figure` -- progress (eq. 2.2.4) against optimizer step, this run and the
  reference runs (fig. 2.8).
* :func:`diagnostics_figure` -- distance to the geodesic against progress (fig. 2.17) and distance
  to the reference runs against progress (when a reference is available).
* :func:`summary_figure` -- all of the above in one picture.
* :func:`manifold_plotly` / :func:`write_html` -- interactive 3D with hover (step, progress,
  error, run) and a self-contained HTML report (plotly.js inline, summary PNG embedded).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, Normalize, to_hex, to_rgba_array
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

from lightning_manifold._optional import require
from lightning_manifold.frame import ManifoldFrame

__all__ = [
    "LIVE_LABEL",
    "axis_label",
    "check_frame",
    "diagnostics_figure",
    "embedding_dims",
    "explained_stress",
    "figure_to_array",
    "figure_to_png",
    "group_colors",
    "has_reference_distance",
    "manifold_figure",
    "manifold_plotly",
    "plain_log_labels",
    "progress_figure",
    "ref_groups",
    "run_colors",
    "spectrum_figure",
    "summary_figure",
    "write_html",
]

LIVE_LABEL = "this run"
PROGRESS_CMAP = "viridis"
SPACE_LIKE_COLOR = "#1f77b4"
TIME_LIKE_COLOR = "#d62728"
MAX_LEGEND_RUNS = 20
"""Up to this many runs (or groups) are named one by one in the legends; more are collapsed."""
# The same marker for the same thing in the PNG and the HTML (plotly 3D has no star):
# truth a red diamond, ignorance a black circle, the latest point a red ring.
TRUTH_MARKER = {"matplotlib": "D", "plotly": "diamond"}
IGNORANCE_MARKER = {"matplotlib": "o", "plotly": "circle"}
LATEST_MARKER = {"matplotlib": "o", "plotly": "circle-open"}
_STRESS_DIMS = (1, 3, 10)
_RC = {
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "legend.fontsize": 8.0,
    "figure.titlesize": 12.0,
}
_EIG_RTOL = 1e-9
_TICK_SIZE = 8.0
_TICK_SIZE_3D = 7.0

Container = Figure | SubFigure


# --------------------------------------------------------------------------------------------
# frame helpers


def _shape_error(name: str, expected: str, got: tuple[int, ...]) -> ValueError:
    return ValueError(f"`{name}` must have shape {expected}, got {got}")


def check_frame(frame: ManifoldFrame) -> None:
    """Check the array shapes of ``frame`` against each other.

    Raises:
        TypeError: if ``frame`` is not a ManifoldFrame.
        ValueError: naming the field, the expected and the actual shape.
    """
    if not isinstance(frame, ManifoldFrame):
        raise TypeError(f"`frame` must be a ManifoldFrame, got {type(frame).__name__}")
    live = np.asarray(frame.live_coords)
    if live.ndim != 2:
        raise _shape_error("live_coords", "(t, k)", live.shape)
    t = live.shape[0]
    for name in (
        "live_steps",
        "live_progress",
        "live_error",
        "live_geodesic_distance",
        "live_reference_distance",
    ):
        shape = np.shape(getattr(frame, name))
        if shape != (t,):
            raise _shape_error(name, f"(t,) = ({t},)", shape)
    ref = np.asarray(frame.ref_coords)
    if ref.ndim != 2:
        raise _shape_error("ref_coords", "(m, k)", ref.shape)
    m = ref.shape[0]
    for name in ("ref_run", "ref_progress", "ref_steps"):
        shape = np.shape(getattr(frame, name))
        if shape != (m,):
            raise _shape_error(name, f"(m,) = ({m},)", shape)
    rgd = np.shape(frame.ref_geodesic_distance)
    if rgd not in ((m,), (0,)):
        raise _shape_error("ref_geodesic_distance", f"(m,) = ({m},) or (0,)", rgd)
    if m and (np.min(frame.ref_run) < 0 or np.max(frame.ref_run) >= len(frame.ref_run_names)):
        raise ValueError(
            f"`ref_run` must index `ref_run_names` (0..{len(frame.ref_run_names) - 1}), "
            f"got values in [{np.min(frame.ref_run)}, {np.max(frame.ref_run)}]"
        )
    for name in ("ignorance", "truth"):
        shape = np.shape(getattr(frame, name))
        if len(shape) != 1:
            raise _shape_error(name, "(k,)", shape)
    geo = np.shape(frame.geodesic)
    if len(geo) != 2:
        raise _shape_error("geodesic", "(g, k)", geo)
    if np.ndim(frame.eigenvalues) != 1:
        raise _shape_error("eigenvalues", "(k_all,)", np.shape(frame.eigenvalues))


def embedding_dims(frame: ManifoldFrame) -> int:
    """Number of coordinates every non-empty array of ``frame`` has (0 if nothing is embedded)."""
    dims = [
        np.shape(a)[1]
        for a in (frame.live_coords, frame.ref_coords, frame.geodesic)
        if np.ndim(a) == 2 and np.shape(a)[0] > 0
    ]
    dims += [np.size(a) for a in (frame.ignorance, frame.truth) if np.size(a) > 0]
    return int(min(dims)) if dims else 0


def axis_label(frame: ManifoldFrame, i: int) -> str:
    """``"PC<i+1>"``, with ``" (time-like)"`` when eigenvalue ``i`` is negative (eq. 2.2.6)."""
    eig = np.asarray(frame.eigenvalues)
    time_like = i < eig.size and eig[i] < 0
    return f"PC{i + 1} (time-like)" if time_like else f"PC{i + 1}"


def explained_stress(eigenvalues: np.ndarray, d: int, total_stress: float | None = None) -> float:
    """Explained stress of the top ``d`` dimensions, eq. 2.2.8.

    ``1 - sqrt(sum_{k>d} lambda_k^2 / sum_k lambda_k^2)`` with ``eigenvalues`` (k_all,) sorted by
    |lambda| descending; ``total_stress`` is the full sum of squares (defaults to the sum over the
    given eigenvalues).
    """
    lam2 = np.asarray(eigenvalues, dtype=np.float64) ** 2
    total = float(lam2.sum()) if total_stress is None else float(total_stress)
    if not np.isfinite(total) or total <= 0:
        return float("nan")
    rest = max(total - float(lam2[:d].sum()), 0.0)
    return float(1.0 - np.sqrt(rest / total))


def has_reference_distance(frame: ManifoldFrame) -> bool:
    """Whether the live run has any finite distance to the reference runs."""
    return bool(np.isfinite(np.asarray(frame.live_reference_distance, dtype=float)).any())


def run_colors(n: int) -> list[str]:
    """``n`` distinct hex colours for reference runs (tab10, tab20, then a sampled colormap)."""
    if n <= 10:
        cmap: Colormap = matplotlib.colormaps["tab10"]
        return [to_hex(cmap(i)) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [to_hex(cmap(i)) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [to_hex(cmap(x)) for x in np.linspace(0.05, 0.95, n)]


def ref_groups(frame: ManifoldFrame) -> list[str] | None:
    """The configuration group of each reference run, when the frame carries them
    (``frame.ref_run_groups``, set by ``analysis.embedding_frame``) and some group holds
    two runs or more; else None (runs are coloured one by one)."""
    groups = getattr(frame, "ref_run_groups", None)
    if not groups or len(groups) != len(frame.ref_run_names):
        return None
    groups = [str(g) for g in groups]
    return groups if len(set(groups)) < len(groups) else None


def _ref_keys(frame: ManifoldFrame) -> list[tuple[str, str]]:
    """(label, colour) of each legend entry for the reference runs: one per group when
    groups exist, else one per run; collapsed to one entry beyond ``MAX_LEGEND_RUNS``."""
    runs = _ref_runs(frame)
    groups = ref_groups(frame)
    if groups is not None:
        keys = list(dict.fromkeys((groups[r], color) for r, _, color, _ in runs))
    else:
        keys = [(name, color) for _, name, color, _ in runs]
    if len(keys) > MAX_LEGEND_RUNS:
        what = "groups" if groups is not None else "runs"
        return [(f"reference ({len(keys)} {what})", keys[0][1])]
    return keys


def group_colors(groups: Sequence[str]) -> dict[str, str]:
    """One colour per distinct group (configuration), in order of first appearance."""
    uniq = list(dict.fromkeys(str(g) for g in groups))
    return dict(zip(uniq, run_colors(len(uniq))))


def _live_order(frame: ManifoldFrame) -> np.ndarray:
    return np.argsort(np.asarray(frame.live_steps), kind="stable")


def _ref_runs(frame: ManifoldFrame) -> list[tuple[int, str, str, np.ndarray]]:
    """(index, name, colour, row indices sorted by step) of each reference run with models."""
    if np.shape(frame.ref_coords)[0] == 0:
        return []
    groups = ref_groups(frame)
    if groups is not None:
        by_group = group_colors(groups)
        colors = [by_group[g] for g in groups]
    else:
        colors = run_colors(len(frame.ref_run_names))
    runs = []
    ref_run = np.asarray(frame.ref_run)
    steps = np.asarray(frame.ref_steps)
    for r, name in enumerate(frame.ref_run_names):
        rows = np.flatnonzero(ref_run == r)
        if rows.size:
            runs.append((r, name, colors[r], rows[np.argsort(steps[rows], kind="stable")]))
    return runs


# --------------------------------------------------------------------------------------------
# rendering helpers


def _new_figure(
    figsize: tuple[float, float], dpi: float, layout: str | None = "constrained"
) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of ``fig`` drawn on an Agg canvas."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def figure_to_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig`` at its own dpi (one draw; ``savefig`` would lay out and draw twice)."""
    from PIL import Image  # a dependency of matplotlib

    buf = io.BytesIO()
    Image.fromarray(figure_to_array(fig)).save(buf, format="png")
    return buf.getvalue()


def _style_2d(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=_TICK_SIZE)
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "linear":
            axis.set_major_locator(MaxNLocator(5))


def _style_3d(ax: Any) -> None:
    ax.view_init(elev=22, azim=-58)
    ax.set_box_aspect(None, zoom=0.82)  # keep tick and axis labels inside the axes' box
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(3))
        axis.pane.set_facecolor((0.97, 0.97, 0.97, 1.0))
        axis.pane.set_edgecolor("0.85")
    ax.tick_params(labelsize=_TICK_SIZE_3D, pad=0)


def _message(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# the manifold (figs. 2.1, 2.2)

# a view is a tuple of coordinate indices; -1 stands for progress (used when only PC1 exists)
View = tuple[int, ...]
_PROGRESS_AXIS = -1


def _views(dims: int) -> tuple[View | None, list[View]]:
    """The 3D view (or None) and the 2D views for ``dims`` embedding dimensions."""
    if dims >= 3:
        return (0, 1, 2), [(0, 1), (0, 2), (1, 2)]
    if dims == 2:
        return None, [(0, 1)]
    if dims == 1:
        return None, [(0, _PROGRESS_AXIS)]
    return None, []


def _columns(points: np.ndarray, progress: np.ndarray, view: View) -> list[np.ndarray]:
    points = np.asarray(points, dtype=float).reshape(len(progress), -1)
    return [progress if d == _PROGRESS_AXIS else points[:, d] for d in view]


def _view_label(frame: ManifoldFrame, d: int) -> str:
    return "progress" if d == _PROGRESS_AXIS else axis_label(frame, d)


def _short_label(d: int) -> str:
    return "progress" if d == _PROGRESS_AXIS else f"PC{d + 1}"


def _draw_manifold(
    ax: Any, frame: ManifoldFrame, view: View, cmap: Colormap, norm: Normalize
) -> None:
    """Draw reference cloud, geodesic, live trajectory and P0/P* on ``ax`` (2D or 3D)."""
    is3d = len(view) == 3
    extra: dict[str, Any] = {"depthshade": False} if is3d else {}
    runs = _ref_runs(frame)
    alpha = 0.6 if len(runs) <= 10 else 0.4  # many runs: a quieter cloud behind the live run
    if is3d:
        # 3D sorts artists by depth: one artist per run keeps P0 and P* in front of the cloud
        for _, name, color, rows in runs:
            cols = _columns(frame.ref_coords[rows], np.asarray(frame.ref_progress)[rows], view)
            ax.plot(*cols, color=color, linewidth=0.7, alpha=alpha / 2, zorder=1)
            ax.scatter(*cols, s=12, color=color, alpha=alpha, linewidths=0, label=name, **extra)
    elif runs:
        # 2D: one line collection and one scatter for all runs (not two artists per run): with
        # 20 runs, per-artist layout and drawing dominated the figure's time.
        per_run = [
            np.column_stack(
                _columns(frame.ref_coords[rows], np.asarray(frame.ref_progress)[rows], view)
            )
            for _, _, _, rows in runs
        ]
        colors = to_rgba_array([color for _, _, color, _ in runs])
        ax.add_collection(
            LineCollection(per_run, colors=colors, linewidths=0.7, alpha=alpha / 2, zorder=1)
        )
        point_colors = np.repeat(colors, [len(x) for x in per_run], axis=0)
        ax.scatter(*np.concatenate(per_run).T, s=12, c=point_colors, alpha=alpha, linewidths=0)

    geo = np.asarray(frame.geodesic, dtype=float)
    if geo.shape[0]:
        cols = _columns(geo, np.linspace(0.0, 1.0, geo.shape[0]), view)
        ax.plot(*cols, color="black", linewidth=1.4, zorder=3)

    order = _live_order(frame)
    live = np.asarray(frame.live_coords, dtype=float)[order]
    prog = np.asarray(frame.live_progress, dtype=float)[order]
    ok = np.isfinite(live).all(axis=1) & np.isfinite(prog)
    live, prog = live[ok], prog[ok]
    if live.shape[0]:
        cols = _columns(live, prog, view)
        ax.plot(*cols, color="0.15", linewidth=1.1, zorder=4)
        ax.scatter(
            *cols,
            c=prog,
            cmap=cmap,
            norm=norm,
            s=24,
            edgecolors="black",
            linewidths=0.5,
            zorder=5,
            **extra,
        )
        last = [c[-1:] for c in cols]
        ax.scatter(
            *last,
            c=prog[-1:],
            cmap=cmap,
            norm=norm,
            s=110,
            edgecolors=TIME_LIKE_COLOR,
            linewidths=2.0,
            zorder=6,
            **extra,
        )

    for point, p, style in (
        (
            frame.ignorance,
            0.0,
            {"marker": IGNORANCE_MARKER["matplotlib"], "s": 50, "color": "black"},
        ),
        (
            frame.truth,
            1.0,
            {"marker": TRUTH_MARKER["matplotlib"], "s": 70, "color": TIME_LIKE_COLOR},
        ),
    ):
        point = np.asarray(point, dtype=float)
        if point.size and np.isfinite(point).all():
            cols = _columns(point[None, :], np.array([p]), view)
            ax.scatter(*cols, edgecolors="white", linewidths=0.8, zorder=7, **style, **extra)

    labels = [_view_label(frame, d) for d in view]
    if is3d:
        # long "(time-like)" labels on two lines so they stay inside the 3D axes' box
        labels = [lab.replace(" (", "\n(") for lab in labels]
        ax.set_xlabel(labels[0], fontsize=7, labelpad=-2, linespacing=1.0)
        ax.set_ylabel(labels[1], fontsize=7, labelpad=-1, linespacing=1.0)
        ax.zaxis.set_rotate_label(False)
        ax.set_zlabel(labels[2], fontsize=7, labelpad=-1, linespacing=1.0, rotation=90)
        _style_3d(ax)
    else:
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        _style_2d(ax)


def _manifold_handles(frame: ManifoldFrame) -> list[Any]:
    """Legend entries shared by every manifold view."""
    handles: list[Any] = [
        Line2D([], [], ls="", marker="o", ms=5, color=color, alpha=0.8, label=label)
        for label, color in _ref_keys(frame)
    ]
    if np.shape(frame.live_coords)[0]:
        handles.append(
            Line2D(
                [],
                [],
                color="0.15",
                lw=1.1,
                marker="o",
                ms=5,
                mec="black",
                mew=0.5,
                mfc=matplotlib.colormaps[PROGRESS_CMAP](0.6),
                label=LIVE_LABEL,
            )
        )
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                ms=8,
                mfc="none",
                mec=TIME_LIKE_COLOR,
                mew=2.0,
                label=f"latest (step {int(np.max(frame.live_steps))})",
            )
        )
    if np.shape(frame.geodesic)[0]:
        handles.append(Line2D([], [], color="black", lw=1.4, label="geodesic P₀ → P*"))
    ignorance = np.asarray(frame.ignorance, dtype=float)
    if ignorance.size and np.isfinite(ignorance).all():
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                ms=6,
                color="black",
                mec="white",
                label="ignorance P₀",
            )
        )
    truth = np.asarray(frame.truth, dtype=float)
    if truth.size and np.isfinite(truth).all():
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker=TRUTH_MARKER["matplotlib"],
                ms=7,
                color=TIME_LIKE_COLOR,
                mec="white",
                label="truth P*",
            )
        )
    return handles


def _progress_colorbar(container: Container, axes: Sequence[Axes], cax: Axes | None = None) -> None:
    sm = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=matplotlib.colormaps[PROGRESS_CMAP])
    if cax is None:
        cbar = container.colorbar(sm, ax=list(axes), shrink=0.85, aspect=25, pad=0.02)
    else:
        cbar = container.colorbar(sm, cax=cax)
    cbar.set_label(f"progress ({LIVE_LABEL})")
    cbar.ax.tick_params(labelsize=_TICK_SIZE)


@dataclass
class _Box:
    """A row of panels placed by hand, in figure fractions (the summary figure's fixed layout:
    constrained layout measured every text twice and took about 40% of the figure's time)."""

    left: float
    bottom: float
    right: float
    top: float
    wspace: float
    legend_top: float = 0.0  # figure legend: upper centre at this height
    colorbar: tuple[float, float, float, float] | None = None  # [x, y, w, h] of the colour bar


def _draw_manifold_panels(
    container: Container,
    frame: ManifoldFrame,
    *,
    grid: tuple[int, int] | None = None,
    legend_cols: int = 10,
    box: _Box | None = None,
) -> list[Axes]:
    """Fill ``container`` with the 3D and pairwise views, a colour bar and a legend (below the
    views; placed by ``box`` when given, else by the container's layout engine)."""
    dims = embedding_dims(frame)
    view3d, views2d = _views(dims)
    n = int(view3d is not None) + len(views2d)
    if n == 0:
        ax = container.add_subplot(1, 1, 1)
        _message(ax, "no coordinates yet")
        ax.set_title("InPCA manifold")
        return [ax]
    if grid is not None and grid[0] * grid[1] >= n:
        gs = container.add_gridspec(*grid)
        slots = [gs[i // grid[1], i % grid[1]] for i in range(n)]
    else:
        ratios = [1.3] + [1.0] * (n - 1) if view3d is not None else [1.0] * n
        place = {} if box is None else {
            "left": box.left, "bottom": box.bottom, "right": box.right, "top": box.top,
            "wspace": box.wspace,
        }  # fmt: skip
        gs = container.add_gridspec(1, n, width_ratios=ratios, **place)
        slots = [gs[0, i] for i in range(n)]
    cmap = matplotlib.colormaps[PROGRESS_CMAP]
    norm = Normalize(0.0, 1.0)
    axes: list[Axes] = []
    if view3d is not None:
        ax3 = container.add_subplot(slots[0], projection="3d")
        _draw_manifold(ax3, frame, view3d, cmap, norm)
        stress = explained_stress(frame.eigenvalues, 3, frame.total_stress)
        ax3.set_title(f"top-3 InPCA (explained stress {stress:.2f})", pad=0)
        axes.append(ax3)
    for view in views2d:
        ax = container.add_subplot(slots[len(axes)])
        _draw_manifold(ax, frame, view, cmap, norm)
        ax.set_title(f"{_short_label(view[0])} vs {_short_label(view[1])}")
        axes.append(ax)
    if np.shape(frame.live_coords)[0]:  # colour means progress only on the live run
        cax = None
        if box is not None and box.colorbar is not None:
            cax = container.add_axes(box.colorbar)
        _progress_colorbar(container, axes, cax)
    handles = _manifold_handles(frame)
    where: dict[str, Any] = {"loc": "outside lower center"}
    if box is not None:
        where = {"loc": "upper center", "bbox_to_anchor": (0.5, box.legend_top)}
    container.legend(
        handles=handles, ncols=max(1, min(len(handles), legend_cols)), frameon=False, **where
    )
    return axes


def _suptitle(frame: ManifoldFrame, what: str) -> str:
    head = f"{frame.title} · " if frame.title else ""
    return f"{head}{what} · probe '{frame.probe}' · step {frame.step}"


def manifold_figure(
    frame: ManifoldFrame, *, dpi: float = 100.0, figsize: tuple[float, float] | None = None
) -> Figure:
    """The top-3 InPCA map: 3D view and the three pairwise views (thesis figs. 2.1, 2.2).

    Reference models are coloured by run, the live trajectory by progress (colour bar), the newest
    live point ringed in red; ignorance P0, truth P* and the geodesic between them are marked.
    With two dimensions only PC1 vs PC2 is drawn, with one PC1 vs progress.

    Args:
        frame: the data.
        dpi: resolution of the returned figure.
        figsize: inches (default (9, 7.8) for four views, smaller for fewer).

    Returns:
        A matplotlib Figure (not registered with pyplot; nothing to close).
    """
    check_frame(frame)
    dims = embedding_dims(frame)
    if figsize is None:
        figsize = (9.0, 7.8) if dims >= 3 else (6.0, 5.0)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(figsize, dpi)
        _draw_manifold_panels(fig, frame, grid=(2, 2), legend_cols=int(figsize[0] * 0.55))
        fig.suptitle(_suptitle(frame, "InPCA manifold"))
    return fig


# --------------------------------------------------------------------------------------------
# spectrum (fig. 2.1b)


def _stress_text(frame: ManifoldFrame) -> str:
    eig = np.asarray(frame.eigenvalues, dtype=float)
    dims = [d for d in _STRESS_DIMS if d <= eig.size]
    if not dims:
        return "explained stress: n/a"
    values = [explained_stress(eig, d, frame.total_stress) for d in dims]
    head = "/".join(str(d) for d in dims)
    return f"explained stress, top {head}: " + " / ".join(f"{v:.2f}" for v in values)


def _draw_spectrum(ax: Axes, frame: ManifoldFrame, max_components: int = 40) -> None:
    eig = np.asarray(frame.eigenvalues, dtype=float)[:max_components]
    ax.set_title(f"InPCA spectrum\n{_stress_text(frame)}")
    ax.set_xlabel("component (sorted by |eigenvalue|)")
    ax.set_ylabel("|eigenvalue|")
    _style_2d(ax)
    finite = np.abs(eig[np.isfinite(eig)])
    floor = _EIG_RTOL * finite.max() if finite.size else 0.0  # below: numerically zero
    ok = np.isfinite(eig) & (np.abs(eig) > floor)
    if not ok.any():
        _message(ax, "no eigenvalues")
        return
    idx = np.arange(1, eig.size + 1)[ok]
    colors = np.where(eig[ok] < 0, TIME_LIKE_COLOR, SPACE_LIKE_COLOR)
    ax.bar(idx, np.abs(eig[ok]), color=colors, width=0.8)
    ax.set_yscale("log")
    plain_log_labels(ax.yaxis)
    ax.xaxis.set_major_locator(MaxNLocator(8, integer=True, steps=[1, 2, 5, 10]))
    ax.legend(
        handles=[
            Patch(color=SPACE_LIKE_COLOR, label="space-like (λ > 0)"),
            Patch(color=TIME_LIKE_COLOR, label="time-like (λ < 0)"),
        ],
        loc="upper right",
    )


def spectrum_figure(
    frame: ManifoldFrame,
    *,
    max_components: int = 40,
    dpi: float = 100.0,
    figsize: tuple[float, float] = (6.4, 4.2),
) -> Figure:
    """|InPCA eigenvalues| (log scale), time-like in red, explained stress (eq. 2.2.8) in the title.

    Args:
        frame: the data; uses ``eigenvalues`` (k_all,) and ``total_stress``.
        max_components: number of bars drawn at most.
        dpi: resolution.
        figsize: inches.
    """
    check_frame(frame)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(figsize, dpi)
        _draw_spectrum(fig.add_subplot(1, 1, 1), frame, max_components)
    return fig


# --------------------------------------------------------------------------------------------
# progress (fig. 2.8), distance to geodesic (fig. 2.17), distance to reference


def _run_legend(ax: Axes, frame: ManifoldFrame, *, loc: str = "best") -> None:
    handles: list[Any] = [
        Line2D([], [], color=color, lw=1.2, label=label) for label, color in _ref_keys(frame)
    ]
    if np.shape(frame.live_coords)[0] or np.size(frame.live_steps):
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                lw=1.8,
                marker="o",
                ms=4,
                mec="black",
                mew=0.4,
                mfc=matplotlib.colormaps[PROGRESS_CMAP](0.6),
                label=LIVE_LABEL,
            )
        )
    if handles:
        ax.legend(handles=handles, loc=loc)


def _set_step_scale(ax: Axes, steps: np.ndarray) -> None:
    """Log x axis when steps span two decades or more; ``symlog`` keeps step 0 visible."""
    steps = np.asarray(steps, dtype=float)
    pos = steps[np.isfinite(steps) & (steps > 0)]
    if pos.size and pos.max() / pos.min() >= 100.0:
        if (steps[np.isfinite(steps)] <= 0).any():
            ax.set_xscale("symlog", linthresh=float(pos.min()), linscale=0.4)
        else:
            ax.set_xscale("log")
        plain_log_labels(ax.xaxis)


def _plain_number(x: float, _pos: Any = None) -> str:
    return f"{x:g}".replace("-", "\N{MINUS SIGN}")


def plain_log_labels(axis: Any) -> None:
    """Tick labels of a log or symlog axis as plain text (1, 10, 100, 1e+04) rather than
    mathtext powers: the first mathtext label builds its parser, about 0.3 s per process."""
    if axis.get_scale() == "log":
        axis.set_major_formatter(LogFormatter())
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    else:
        axis.set_major_formatter(FuncFormatter(_plain_number))


def _draw_live_curve(ax: Axes, x: np.ndarray, y: np.ndarray, progress: np.ndarray) -> None:
    """The live run: a black line, points coloured by progress, the newest ringed in red."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, progress = x[ok], y[ok], progress[ok]
    if x.size:
        ax.plot(x, y, color="black", lw=1.8, zorder=5)
        ax.scatter(
            x,
            y,
            c=np.nan_to_num(progress),
            cmap=PROGRESS_CMAP,
            norm=Normalize(0.0, 1.0),
            s=16,
            edgecolors="black",
            linewidths=0.4,
            zorder=5.5,
        )
        ax.plot(
            x[-1:],
            y[-1:],
            ls="",
            marker="o",
            ms=8,
            mfc="none",
            mec=TIME_LIKE_COLOR,
            mew=2.0,
            zorder=6,
        )


def _draw_progress(ax: Axes, frame: ManifoldFrame, legend: bool = True) -> None:
    ref_steps = np.asarray(frame.ref_steps, dtype=float)
    ref_prog = np.asarray(frame.ref_progress, dtype=float)
    for _, _, color, rows in _ref_runs(frame):
        ax.plot(ref_steps[rows], ref_prog[rows], color=color, lw=1.1, alpha=0.85)
    order = _live_order(frame)
    live_steps = np.asarray(frame.live_steps, dtype=float)[order]
    live_prog = np.asarray(frame.live_progress, dtype=float)[order]
    _draw_live_curve(ax, live_steps, live_prog, live_prog)
    _set_step_scale(ax, np.concatenate([live_steps, ref_steps]))
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Progress toward truth")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("progress")
    _style_2d(ax)
    if legend:
        _run_legend(ax, frame, loc="lower right")


def _draw_geodesic_distance(ax: Axes, frame: ManifoldFrame, legend: bool = True) -> None:
    ref_dist = np.asarray(frame.ref_geodesic_distance, dtype=float)
    ref_prog = np.asarray(frame.ref_progress, dtype=float)
    if ref_dist.shape == ref_prog.shape and ref_dist.size:
        for _, _, color, rows in _ref_runs(frame):
            rows = rows[np.argsort(ref_prog[rows], kind="stable")]
            ax.plot(ref_prog[rows], ref_dist[rows], color=color, lw=1.1, alpha=0.85)
    order = _live_order(frame)
    live_prog = np.asarray(frame.live_progress, dtype=float)[order]
    _draw_live_curve(
        ax, live_prog, np.asarray(frame.live_geodesic_distance, dtype=float)[order], live_prog
    )
    ax.set_xlim(-0.02, 1.02)
    ax.set_title("Distance to the P₀ → P* geodesic")
    ax.set_xlabel("progress")
    ax.set_ylabel("distance to geodesic")
    _style_2d(ax)
    if legend and ref_dist.size:
        _run_legend(ax, frame)


def _draw_reference_distance(ax: Axes, frame: ManifoldFrame) -> None:
    ax.set_title("Distance to the reference runs")
    ax.set_xlabel("progress")
    ax.set_ylabel("distance to nearest reference")
    _style_2d(ax)
    if not has_reference_distance(frame):
        _message(ax, "no reference runs")
        return
    order = _live_order(frame)
    live_prog = np.asarray(frame.live_progress, dtype=float)[order]
    _draw_live_curve(
        ax, live_prog, np.asarray(frame.live_reference_distance, dtype=float)[order], live_prog
    )
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(bottom=0.0)


def progress_figure(
    frame: ManifoldFrame, *, dpi: float = 100.0, figsize: tuple[float, float] = (6.4, 4.2)
) -> Figure:
    """Progress (eq. 2.2.4) against optimizer step for this run and the reference runs (fig. 2.8).

    The x axis is logarithmic (symlog when step 0 is present) when steps span two decades.
    """
    check_frame(frame)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(figsize, dpi)
        _draw_progress(fig.add_subplot(1, 1, 1), frame)
    return fig


def diagnostics_figure(
    frame: ManifoldFrame, *, dpi: float = 100.0, figsize: tuple[float, float] | None = None
) -> Figure:
    """Distance to the ignorance->truth geodesic against progress (fig. 2.17) and, when a
    reference is available, the distance to the nearest reference run against progress."""
    check_frame(frame)
    with_ref = has_reference_distance(frame)
    if figsize is None:
        figsize = (10.0, 4.0) if with_ref else (6.0, 4.0)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(figsize, dpi)
        _draw_geodesic_distance(fig.add_subplot(1, 1 + with_ref, 1), frame)
        if with_ref:
            _draw_reference_distance(fig.add_subplot(1, 2, 2), frame)
    return fig


def _row_box(
    figsize: tuple[float, float],
    n: int,
    ratios: Sequence[float],
    bottom: float,
    top: float,
    *,
    left: float = 0.7,
    right: float = 0.2,
    gap: float = 0.8,
) -> _Box:
    """A row of ``n`` panels between ``bottom`` and ``top`` (inches from the figure's bottom),
    ``left``/``right`` margins and ``gap`` between panels in inches (room for tick labels and
    an axis label at the fonts of ``_RC``)."""
    w, h = figsize
    mean_width = (w - left - right - (n - 1) * gap) * sum(ratios) / len(ratios) / sum(ratios)
    return _Box(
        left=left / w, bottom=bottom / h, right=1 - right / w, top=top / h,
        wspace=gap / max(mean_width, 1e-3),
    )  # fmt: skip


def summary_figure(
    frame: ManifoldFrame, *, dpi: float = 100.0, figsize: tuple[float, float] = (16.0, 9.0)
) -> Figure:
    """Everything in one picture: the manifold views on top with the key to every panel below
    them; spectrum, progress against step, distance to the geodesic and to the reference runs
    in the bottom row.

    The layout is fixed (margins in inches, the key's height from its number of rows), not
    constrained: the figure draws in about half the time at the same look.
    """
    check_frame(frame)
    w, h = figsize
    live = bool(np.shape(frame.live_coords)[0])
    handles = _manifold_handles(frame)
    legend_cols = max(1, min(len(handles), int(w * 0.62)))
    legend_rows = math.ceil(len(handles) / legend_cols)
    panels: list[Callable[[Axes, ManifoldFrame], None]] = [
        _draw_spectrum,
        lambda ax, f: _draw_progress(ax, f, legend=False),  # the key above names every run
        lambda ax, f: _draw_geodesic_distance(ax, f, legend=False),
    ]
    if has_reference_distance(frame):
        panels.append(_draw_reference_distance)
    # heights in inches from the top: suptitle, panel titles, top row, its tick and axis
    # labels, the key, the bottom row's two-line titles, the bottom row, its labels
    top_top = h - 0.62
    legend_h = 0.06 + 0.21 * legend_rows
    bottom_bottom = 0.55
    free = top_top - 0.5 - legend_h - 0.62 - bottom_bottom  # both rows' plot heights
    top_bottom = top_top - 0.53 * free
    legend_top = top_bottom - 0.5
    bottom_top = legend_top - legend_h - 0.62
    with matplotlib.rc_context(_RC):
        fig = _new_figure(figsize, dpi, layout=None)
        box = _row_box(figsize, 4, [1.3, 1, 1, 1], top_bottom, top_top,
                       left=0.55, right=1.05 if live else 0.2)  # fmt: skip
        box.legend_top = legend_top / h
        if live:
            box.colorbar = (1 - 0.8 / w, top_bottom / h, 0.12 / w, (top_top - top_bottom) / h)
        _draw_manifold_panels(fig, frame, legend_cols=legend_cols, box=box)
        ratios = [1.35] + [1.0] * (len(panels) - 1)
        row = _row_box(figsize, len(panels), ratios, bottom_bottom, bottom_top)
        gs = fig.add_gridspec(
            1, len(panels), width_ratios=ratios, left=row.left, right=row.right,
            bottom=row.bottom, top=row.top, wspace=row.wspace,
        )  # fmt: skip
        for i, draw in enumerate(panels):
            draw(fig.add_subplot(gs[0, i]), frame)
        fig.suptitle(_suptitle(frame, "training on the InPCA manifold"), y=1 - 0.12 / h)
    return fig


# --------------------------------------------------------------------------------------------
# plotly: interactive 3D and a self-contained HTML report


def _plotly_columns(points: np.ndarray, progress: np.ndarray, view: View) -> dict[str, Any]:
    return dict(zip("xyz", (c.tolist() for c in _columns(points, progress, view))))


def manifold_plotly(frame: ManifoldFrame) -> Any:
    """Interactive top-3 InPCA map (plotly ``Figure``), hover showing run, step, progress, error.

    Falls back to a 2D PC1-PC2 (or PC1-progress) scatter with fewer than three dimensions.

    Raises:
        ModuleNotFoundError: naming the ``plotly`` extra when plotly is not installed.
    """
    go = require("plotly.graph_objects", "plotly")
    check_frame(frame)
    dims = embedding_dims(frame)
    view3d, views2d = _views(dims)
    view = view3d if view3d is not None else (views2d[0] if views2d else None)
    trace = go.Scatter3d if view3d is not None else go.Scatter
    fig = go.Figure()
    if view is None:
        fig.update_layout(title="no coordinates yet")
        return fig

    groups = ref_groups(frame)
    shown: set[str] = set()
    for r, name, color, rows in _ref_runs(frame):
        key = groups[r] if groups is not None else name
        steps = np.asarray(frame.ref_steps)[rows]
        prog = np.asarray(frame.ref_progress, dtype=float)[rows]
        fig.add_trace(
            trace(
                **_plotly_columns(np.asarray(frame.ref_coords)[rows], prog, view),
                mode="markers",
                name=key,
                legendgroup=key,
                showlegend=key not in shown,
                marker={"size": 3 if view3d else 5, "color": color, "opacity": 0.55},
                customdata=np.c_[steps, prog].tolist(),
                hovertemplate=f"<b>{html.escape(name)}</b><br>step %{{customdata[0]:.0f}}"
                "<br>progress %{customdata[1]:.3f}<extra></extra>",
            )
        )
        shown.add(key)
    geo = np.asarray(frame.geodesic, dtype=float)
    if geo.shape[0]:
        fig.add_trace(
            trace(
                **_plotly_columns(geo, np.linspace(0, 1, geo.shape[0]), view),
                mode="lines",
                name="geodesic P0→P*",
                line={"color": "black", "width": 4 if view3d else 2},
                hoverinfo="skip",
            )
        )
    order = _live_order(frame)
    live = np.asarray(frame.live_coords, dtype=float)[order]
    if live.shape[0]:
        prog = np.asarray(frame.live_progress, dtype=float)[order]
        custom = np.c_[
            np.asarray(frame.live_steps)[order], prog, np.asarray(frame.live_error, float)[order]
        ]
        hover = (
            f"<b>{LIVE_LABEL}</b><br>step %{{customdata[0]:.0f}}<br>progress %{{customdata[1]:.3f}}"
            "<br>error %{customdata[2]:.3f}<extra></extra>"
        )
        fig.add_trace(
            trace(
                **_plotly_columns(live, prog, view),
                mode="lines+markers",
                name=LIVE_LABEL,
                line={"color": "#555555", "width": 3 if view3d else 1.5},
                marker={
                    "size": 4 if view3d else 7,
                    "color": np.nan_to_num(prog).tolist(),
                    "colorscale": "Viridis",
                    "cmin": 0.0,
                    "cmax": 1.0,
                    "colorbar": {
                        "title": {"text": "progress"},
                        "thickness": 14,
                        "len": 0.7,
                        "x": -0.02,  # left: the legend is on the right
                        "xanchor": "right",
                    },
                    "line": {"color": "black", "width": 0.5},
                },
                customdata=custom.tolist(),
                hovertemplate=hover,
            )
        )
        fig.add_trace(
            trace(
                **_plotly_columns(live[-1:], prog[-1:], view),
                mode="markers",
                name=f"latest (step {int(custom[-1, 0])})",
                marker={
                    "size": 9 if view3d else 14,
                    "color": TIME_LIKE_COLOR,
                    "symbol": LATEST_MARKER["plotly"],
                    "line": {"color": TIME_LIKE_COLOR, "width": 3},
                },
                customdata=custom[-1:].tolist(),
                hovertemplate=hover,
            )
        )
    for point, p, name, color, symbol in (
        (frame.ignorance, 0.0, "ignorance P0", "black", IGNORANCE_MARKER["plotly"]),
        (frame.truth, 1.0, "truth P*", TIME_LIKE_COLOR, TRUTH_MARKER["plotly"]),
    ):
        point = np.asarray(point, dtype=float)
        if point.size and np.isfinite(point).all():
            fig.add_trace(
                trace(
                    **_plotly_columns(point[None, :], np.array([p]), view),
                    mode="markers",
                    name=name,
                    marker={"size": 7 if view3d else 12, "color": color, "symbol": symbol},
                    hovertemplate=f"<b>{name}</b><extra></extra>",
                )
            )
    labels = [_view_label(frame, d) for d in view]
    title = _suptitle(frame, "InPCA manifold")
    if view3d is not None:
        fig.update_layout(
            scene={"xaxis_title": labels[0], "yaxis_title": labels[1], "zaxis_title": labels[2]}
        )
    else:
        fig.update_layout(xaxis_title=labels[0], yaxis_title=labels[1])
    fig.update_layout(
        title={"text": title},
        template="plotly_white",
        # a vertical legend outside the scene, so 20 runs do not squeeze it
        legend={"itemsizing": "constant", "x": 1.02, "xanchor": "left", "y": 1.0},
        margin={"l": 70, "r": 10, "t": 50, "b": 10},
        height=650,
    )
    return fig


def write_html(
    frame: ManifoldFrame, path: str | Path, *, dpi: float = 100.0, summary_png: bytes | None = None
) -> Path:
    """Write a self-contained HTML report: the interactive 3D map (plotly.js inline, no CDN, works
    offline) followed by the summary figure embedded as a base64 PNG.

    Args:
        frame: the data.
        path: output ``.html`` file (parent directories are created).
        dpi: resolution of the embedded summary PNG.
        summary_png: already rendered summary PNG bytes to embed (rendered here when ``None``).

    Returns:
        The path written.

    Raises:
        ModuleNotFoundError: naming the ``plotly`` extra when plotly is not installed.
    """
    fig = manifold_plotly(frame)
    if summary_png is None:
        summary_png = figure_to_png(summary_figure(frame, dpi=dpi))
    title = html.escape(_suptitle(frame, "InPCA manifold"))
    body = fig.to_html(full_html=False, include_plotlyjs=True, config={"displaylogo": False})
    image = base64.b64encode(summary_png).decode("ascii")
    doc = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{title}</title>\n"
        "<style>body{font-family:sans-serif;margin:1em 2em;color:#222}"
        "img{max-width:100%;height:auto}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n<h2>Interactive 3D map</h2>\n{body}\n"
        f"<h2>Summary</h2>\n<img alt='manifold summary' src='data:image/png;base64,{image}'>\n"
        "</body>\n</html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path

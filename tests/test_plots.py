"""Figures from a small synthetic ManifoldFrame: content, labels, layout, edge cases, HTML."""

from __future__ import annotations

import base64
import dataclasses
import re
import sys
from collections.abc import Callable

import numpy as np
import pytest
from _frames import make_frame
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from lightning_manifold import plots
from lightning_manifold.frame import ManifoldFrame

DPI = 40  # small figures keep the tests fast; layout checks use the default dpi


@pytest.fixture(scope="module")
def frame() -> ManifoldFrame:
    return make_frame()


@pytest.fixture(scope="module")
def frame_noref() -> ManifoldFrame:
    return make_frame(with_reference=False, title="")


def _all_axes(fig: Figure) -> list:
    return list(fig.get_axes())


def _texts(fig: Figure) -> dict[str, list[str]]:
    """Titles, axis labels, legend entries and suptitles of every axes/subfigure of ``fig``."""
    out: dict[str, list[str]] = {
        "title": [],
        "xlabel": [],
        "ylabel": [],
        "zlabel": [],
        "legend": [],
    }
    for ax in _all_axes(fig):
        out["title"].append(ax.get_title())
        out["xlabel"].append(ax.get_xlabel())
        out["ylabel"].append(ax.get_ylabel())
        if hasattr(ax, "get_zlabel"):
            out["zlabel"].append(ax.get_zlabel())
        if ax.get_legend() is not None:
            out["legend"] += [t.get_text() for t in ax.get_legend().get_texts()]
    figs = [fig, *fig.subfigs]
    out["suptitle"] = [f._suptitle.get_text() for f in figs if f._suptitle is not None]
    for f in figs:
        for leg in f.legends:
            out["legend"] += [t.get_text() for t in leg.get_texts()]
    return out


def _has(texts: list[str], fragment: str) -> bool:
    return any(fragment in t for t in texts)


def _assert_not_blank(fig: Figure) -> None:
    rgb = plots.figure_to_array(fig).astype(float)
    assert rgb.std() > 20.0, f"figure looks blank (pixel std {rgb.std():.1f})"
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 40
    assert coloured.mean() > 0.001, "no coloured data drawn"


EXPECTED: dict[str, tuple[Callable[..., Figure], dict[str, list[str]]]] = {
    "manifold": (
        plots.manifold_figure,
        {
            "title": ["top-3 InPCA", "PC1 vs PC2", "PC1 vs PC3", "PC2 vs PC3"],
            "xlabel": ["PC1", "PC2"],
            "ylabel": ["PC2", "PC3", "progress (this run)"],
            "legend": ["ignorance", "truth", "geodesic", "this run", "latest", "baseline-0"],
            "suptitle": ["InPCA manifold"],
        },
    ),
    "spectrum": (
        plots.spectrum_figure,
        {
            "title": ["InPCA spectrum", "explained stress"],
            "xlabel": ["component"],
            "ylabel": ["|eigenvalue|"],
            "legend": ["space-like", "time-like"],
        },
    ),
    "progress": (
        plots.progress_figure,
        {
            "title": ["Progress toward truth"],
            "xlabel": ["optimizer step"],
            "ylabel": ["progress"],
            "legend": ["this run", "baseline-1"],
        },
    ),
    "diagnostics": (
        plots.diagnostics_figure,
        {
            "title": ["geodesic", "Distance to the reference runs"],
            "xlabel": ["progress"],
            "ylabel": ["distance to geodesic", "distance to nearest reference"],
        },
    ),
    "summary": (
        plots.summary_figure,
        {
            "title": ["top-3 InPCA", "PC2 vs PC3", "InPCA spectrum", "Progress toward truth"],
            "xlabel": ["optimizer step", "component", "PC1"],
            "ylabel": ["|eigenvalue|", "progress", "distance to geodesic"],
            "legend": ["truth", "space-like", "this run"],
            "suptitle": ["training on the InPCA manifold"],
        },
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_figure_renders_with_titles_and_labels(frame: ManifoldFrame, name: str) -> None:
    make, expected = EXPECTED[name]
    fig = make(frame, dpi=DPI)
    assert isinstance(fig, Figure)
    _assert_not_blank(fig)
    texts = _texts(fig)
    for role, fragments in expected.items():
        for fragment in fragments:
            assert _has(texts[role], fragment), (
                f"{name}: no {role} containing {fragment!r}: {texts}"
            )


def test_figures_are_not_left_in_pyplot(frame: ManifoldFrame) -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    plots.spectrum_figure(frame, dpi=DPI)
    plots.manifold_figure(frame, dpi=DPI)
    assert plt.get_fignums() == before


def test_manifold_has_progress_colorbar_and_3d(frame: ManifoldFrame) -> None:
    fig = plots.manifold_figure(frame, dpi=DPI)
    names = [ax.name for ax in fig.axes]
    assert names.count("3d") == 1
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1
    assert "progress" in colorbars[0].get_ylabel()
    ax3 = next(ax for ax in fig.axes if ax.name == "3d")
    for axis in (ax3.xaxis, ax3.yaxis, ax3.zaxis):  # readable 3D ticks: few of them
        assert len(axis.get_major_locator()()) <= 5


def _independent_explained_stress(eig: np.ndarray, d: int, total: float) -> float:
    rest = total
    for k in range(min(d, len(eig))):
        rest -= eig[k] ** 2
    return 1.0 - np.sqrt(max(rest, 0.0) / total)


def test_explained_stress_matches_eq_2_2_8(frame: ManifoldFrame) -> None:
    eig = np.asarray(frame.eigenvalues)
    for d in (1, 2, 3, 10, len(eig)):
        got = plots.explained_stress(eig, d, frame.total_stress)
        assert got == pytest.approx(_independent_explained_stress(eig, d, frame.total_stress))
    assert plots.explained_stress(eig, len(eig), None) == pytest.approx(1.0)
    title = plots.spectrum_figure(frame, dpi=DPI).axes[0].get_title()
    shown = [float(x) for x in re.findall(r"\d\.\d\d", title)]
    expected = [_independent_explained_stress(eig, d, frame.total_stress) for d in (1, 3, 10)]
    assert shown == pytest.approx(expected, abs=0.006)


def test_spectrum_colours_time_like_bars(frame: ManifoldFrame) -> None:
    eig = np.asarray(frame.eigenvalues, dtype=float).copy()
    eig[1] = -abs(eig[1])
    fig = plots.spectrum_figure(dataclasses.replace(frame, eigenvalues=eig), dpi=DPI)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    colours = [tuple(np.round(p.get_facecolor()[:3], 3)) for p in ax.patches]
    red = tuple(np.round(np.array(plots.matplotlib.colors.to_rgb(plots.TIME_LIKE_COLOR)), 3))
    assert colours[1] == red
    assert colours[0] != red
    heights = [p.get_height() for p in ax.patches]
    assert heights[1] == pytest.approx(abs(eig[1]))


def test_time_like_axis_labels(frame: ManifoldFrame) -> None:
    eig = np.asarray(frame.eigenvalues, dtype=float).copy()
    eig[:3] = np.abs(eig[:3])
    positive = dataclasses.replace(frame, eigenvalues=eig)
    texts = _texts(plots.manifold_figure(positive, dpi=DPI))
    assert not _has(texts["xlabel"] + texts["ylabel"] + texts["zlabel"], "time-like")

    eig[1] = -eig[1]
    flipped = dataclasses.replace(frame, eigenvalues=eig)
    assert plots.axis_label(flipped, 1) == "PC2 (time-like)"
    assert plots.axis_label(flipped, 0) == "PC1"
    fig = plots.manifold_figure(flipped, dpi=DPI)
    texts = _texts(fig)
    assert "PC2 (time-like)" in texts["ylabel"]  # PC1 vs PC2
    assert "PC2 (time-like)" in texts["xlabel"]  # PC2 vs PC3
    assert _has(texts["ylabel"], "time-like")  # the 3D view labels it too (on two lines)
    pair = next(ax for ax in fig.axes if ax.get_title() == "PC1 vs PC2")
    assert pair.get_xlabel() == "PC1"


def _text_boxes(fig: Figure) -> list[tuple[str, Bbox]]:
    """Window extents of every title, axis label, legend and 2D tick label in ``fig``."""
    renderer = fig.canvas.get_renderer()
    boxes: list[tuple[str, Bbox]] = []

    def add(what: str, artist) -> None:
        if artist is not None and artist.get_visible() and getattr(artist, "get_text", str)():
            boxes.append((what, artist.get_window_extent(renderer)))

    for f in [fig, *fig.subfigs]:
        add("suptitle", f._suptitle)
        for leg in f.legends:
            boxes.append(("figure legend", leg.get_window_extent(renderer)))
    for i, ax in enumerate(fig.axes):
        add(f"axes {i} title", ax.title)
        add(f"axes {i} xlabel", ax.xaxis.label)
        add(f"axes {i} ylabel", ax.yaxis.label)
        if ax.name == "3d":
            add(f"axes {i} zlabel", ax.zaxis.label)
        else:
            for axis in (ax.xaxis, ax.yaxis):
                lo, hi = sorted(axis.get_view_interval())
                tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
                for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
                    if lo - tol <= loc <= hi + tol:  # drawn ticks only
                        add(f"axes {i} tick {t.get_text()}", t)
    return boxes


@pytest.mark.parametrize("name", ["summary", "manifold", "diagnostics", "spectrum", "progress"])
@pytest.mark.parametrize("with_reference", [True, False])
def test_no_overlapping_text_at_default_size(name: str, with_reference: bool) -> None:
    frame = make_frame(with_reference=with_reference)
    eig = np.asarray(frame.eigenvalues, dtype=float).copy()
    eig[2] = -abs(eig[2])  # long "(time-like)" labels are the hardest case
    frame = dataclasses.replace(frame, eigenvalues=eig)
    fig = EXPECTED[name][0](frame)  # default size and dpi
    FigureCanvasAgg(fig).draw()
    boxes = _text_boxes(fig)
    assert any(w == "suptitle" for w, _ in boxes) or name not in ("summary", "manifold")
    overlaps = []
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            (wa, ba), (wb, bb) = boxes[a], boxes[b]
            if ba.shrunk(0.98, 0.9).overlaps(bb.shrunk(0.98, 0.9)):
                overlaps.append((wa, wb))
    assert not overlaps, f"{name}: overlapping text {overlaps[:5]}"
    width, height = fig.canvas.get_width_height()
    for what, box in boxes:  # nothing cut off at the figure border
        assert min(box.x0, box.y0) >= -1, what
        assert box.x1 <= width + 1, what
        assert box.y1 <= height + 1, what


def test_progress_axis_is_log_when_steps_span_decades(frame: ManifoldFrame) -> None:
    ax = plots.progress_figure(frame, dpi=DPI).axes[0]
    assert ax.get_xscale() == "symlog"  # step 0 is in the data and stays visible
    assert ax.get_xlim()[0] <= 0.0

    no_zero = dataclasses.replace(
        frame, live_steps=frame.live_steps + 1, ref_steps=frame.ref_steps + 1
    )
    assert plots.progress_figure(no_zero, dpi=DPI).axes[0].get_xscale() == "log"

    t = len(frame.live_steps)
    narrow = dataclasses.replace(
        frame, live_steps=np.arange(10, 10 + t), ref_steps=np.full(len(frame.ref_steps), 15)
    )
    assert plots.progress_figure(narrow, dpi=DPI).axes[0].get_xscale() == "linear"


def test_progress_draws_every_run(frame: ManifoldFrame) -> None:
    ax = plots.progress_figure(frame, dpi=DPI).axes[0]
    ys = [line.get_ydata() for line in ax.get_lines()]
    live = np.asarray(frame.live_progress)[np.argsort(frame.live_steps)]
    assert any(len(y) == len(live) and np.allclose(y, live) for y in ys)
    for r in range(len(frame.ref_run_names)):
        mask = frame.ref_run == r
        ref = np.asarray(frame.ref_progress)[mask][np.argsort(frame.ref_steps[mask])]
        assert any(len(y) == len(ref) and np.allclose(y, ref) for y in ys), r


def test_without_reference(frame_noref: ManifoldFrame) -> None:
    figs = {name: make(frame_noref, dpi=DPI) for name, (make, _) in EXPECTED.items()}
    for name, fig in figs.items():
        _assert_not_blank(fig)
        assert not _has(_texts(fig)["legend"], "baseline"), name
    assert len(figs["diagnostics"].axes) == 1
    assert not _has(_texts(figs["summary"])["title"], "reference runs")


@pytest.mark.parametrize(("k", "n_views"), [(2, 1), (1, 1), (3, 4), (5, 4)])
def test_fewer_dimensions(k: int, n_views: int) -> None:
    frame = make_frame(k=k, n_ref_runs=2)
    fig = plots.manifold_figure(frame, dpi=DPI)
    views = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(views) == n_views
    _assert_not_blank(fig)
    if k == 1:
        assert views[0].get_xlabel() == "PC1"
        assert views[0].get_ylabel() == "progress"
    plots.summary_figure(frame, dpi=DPI)
    plotly_fig = plots.manifold_plotly(frame)
    assert {t.type for t in plotly_fig.data} == ({"scatter3d"} if k >= 3 else {"scatter"})


def _without_live_run(frame: ManifoldFrame, **changes: object) -> ManifoldFrame:
    """``frame`` with no live snapshot (and any other ``changes``)."""
    k = frame.live_coords.shape[1]
    return dataclasses.replace(
        frame,
        live_coords=np.zeros((0, k)),
        live_steps=np.zeros(0, dtype=np.int64),
        live_progress=np.zeros(0),
        live_error=np.zeros(0),
        live_geodesic_distance=np.zeros(0),
        live_reference_distance=np.zeros(0),
        **changes,
    )


def test_empty_live_run_and_nan_truth(frame: ManifoldFrame) -> None:
    empty = _without_live_run(frame, truth=np.full(frame.live_coords.shape[1], np.nan))
    for name, (make, _) in EXPECTED.items():
        texts = _texts(make(empty, dpi=DPI))
        assert not _has(texts["legend"], "truth"), name
        assert not _has(texts["legend"], "latest"), name
    plots.manifold_plotly(empty)


def test_nothing_embedded() -> None:
    frame = make_frame()
    nothing = dataclasses.replace(
        frame,
        live_coords=np.zeros((len(frame.live_steps), 0)),
        ref_coords=np.zeros((len(frame.ref_steps), 0)),
        ignorance=np.zeros(0),
        truth=np.zeros(0),
        geodesic=np.zeros((0, 0)),
    )
    fig = plots.manifold_figure(nothing, dpi=DPI)
    assert any("no coordinates" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_check_frame_names_the_field(frame: ManifoldFrame) -> None:
    bad = dataclasses.replace(frame, live_steps=frame.live_steps[:-1])
    with pytest.raises(
        ValueError, match=r"`live_steps` must have shape \(t,\) = \(12,\), got \(11,\)"
    ):
        plots.manifold_figure(bad)
    bad = dataclasses.replace(frame, ref_run=np.full(len(frame.ref_run), 7))
    with pytest.raises(ValueError, match="`ref_run` must index `ref_run_names`"):
        plots.progress_figure(bad)
    bad = dataclasses.replace(frame, ref_geodesic_distance=np.zeros(3))
    with pytest.raises(ValueError, match="`ref_geodesic_distance`"):
        plots.diagnostics_figure(bad)
    with pytest.raises(TypeError, match="`frame` must be a ManifoldFrame"):
        plots.spectrum_figure({"probe": "train"})  # type: ignore[arg-type]


def test_twenty_reference_runs_are_named_and_more_collapse_in_legend() -> None:
    frame = make_frame(n_ref_runs=20, snapshots_per_run=3, n_live=5)
    texts = _texts(plots.manifold_figure(frame, dpi=DPI))
    assert _has(texts["legend"], "baseline-3")
    assert _has(texts["legend"], "baseline-19")
    assert len(set(plots.run_colors(20))) == 20
    frame = make_frame(n_ref_runs=25, snapshots_per_run=3, n_live=5)
    texts = _texts(plots.manifold_figure(frame, dpi=DPI))
    assert _has(texts["legend"], "reference (25 runs)")
    assert not _has(texts["legend"], "baseline-3")


def test_runs_with_groups_are_coloured_and_keyed_by_group() -> None:
    frame = _without_live_run(make_frame(n_ref_runs=6, snapshots_per_run=3, n_live=5))
    frame.ref_run_groups = ["sgd", "sgd", "sgd", "adam", "adam", "adam"]
    fig = plots.manifold_figure(frame, dpi=DPI)
    texts = _texts(fig)
    assert _has(texts["legend"], "sgd")
    assert _has(texts["legend"], "adam")
    assert not _has(texts["legend"], "baseline-1")
    colors = {name: color for _, name, color, _ in plots._ref_runs(frame)}
    assert len({colors[f"baseline-{i}"] for i in range(3)}) == 1
    assert colors["baseline-0"] != colors["baseline-3"]
    # no live run: colour does not mean progress, so no colour bar
    assert not [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_png_and_html_use_the_same_markers(frame: ManifoldFrame) -> None:
    pytest.importorskip("plotly")
    fig = plots.manifold_plotly(frame)
    by_name = {t.name: t for t in fig.data}
    assert by_name["truth P*"].marker.symbol == plots.TRUTH_MARKER["plotly"] == "diamond"
    latest = next(t for t in fig.data if t.name.startswith("latest"))
    assert latest.marker.symbol == plots.LATEST_MARKER["plotly"] == "circle-open"
    assert plots.TRUTH_MARKER["matplotlib"] == "D"  # a diamond in the PNG too
    handles = plots._manifold_handles(frame)
    truth = next(h for h in handles if "truth" in h.get_label())
    assert truth.get_marker() == "D"


def test_manifold_plotly_hover(frame: ManifoldFrame) -> None:
    eig = np.asarray(frame.eigenvalues, dtype=float).copy()
    eig[2] = -abs(eig[2])
    fig = plots.manifold_plotly(dataclasses.replace(frame, eigenvalues=eig))
    names = [t.name for t in fig.data]
    for expected in ("this run", "geodesic P0→P*", "ignorance P0", "truth P*", "baseline-0"):
        assert expected in names
    assert fig.layout.scene.zaxis.title.text == "PC3 (time-like)"
    assert fig.layout.scene.xaxis.title.text == "PC1"
    live = fig.data[names.index("this run")]
    for word in ("step", "progress", "error"):
        assert word in live.hovertemplate
    order = np.argsort(frame.live_steps)
    custom = np.asarray(live.customdata, dtype=float)
    np.testing.assert_allclose(custom[:, 0], frame.live_steps[order])
    np.testing.assert_allclose(custom[:, 1], frame.live_progress[order])
    np.testing.assert_allclose(custom[:, 2], frame.live_error[order])
    np.testing.assert_allclose(live.x, frame.live_coords[order, 0])
    np.testing.assert_allclose(live.z, frame.live_coords[order, 2])
    assert live.marker.colorbar.title.text == "progress"
    ref = fig.data[names.index("baseline-0")]
    assert "step" in ref.hovertemplate
    assert "progress" in ref.hovertemplate
    assert len(ref.x) == int(np.sum(frame.ref_run == 0))


def test_write_html_is_self_contained(frame: ManifoldFrame, tmp_path) -> None:
    path = plots.write_html(frame, tmp_path / "sub" / "report.html", dpi=DPI)
    text = path.read_text(encoding="utf-8")
    assert len(text) > 1_000_000  # plotly.js is inline
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # no external script, no CDN
    assert "Plotly.newPlot" in text
    match = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert match is not None
    assert base64.b64decode(match.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "this run" in text


def test_plotly_missing_gives_one_clear_message(
    frame: ManifoldFrame, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    message = "plotly is needed for interactive 3D plots: pip install 'lightning-manifold[plotly]'"
    with pytest.raises(ModuleNotFoundError, match=re.escape(message)):
        plots.manifold_plotly(frame)
    with pytest.raises(ImportError, match=re.escape(message)):
        plots.write_html(frame, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
    plots.summary_figure(frame, dpi=DPI)  # matplotlib figures do not need plotly

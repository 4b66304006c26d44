"""Command line: embed, compare, reference, report and inspect stored training trajectories.

``lightning-manifold`` (console script) and ``python -m lightning_manifold`` run :func:`main`::

    lightning-manifold embed runs/ -o out/             # joint InPCA map, PNG + HTML + CSV
    lightning-manifold compare runs/ -o out/           # trajectory distances, dendrogram, tubes
    lightning-manifold reference runs/baseline -o ref.npz
    lightning-manifold report runs/ -o report.html     # one self-contained page
    lightning-manifold inspect runs/                   # what the stores hold

A ``RUN_DIR`` is a trajectory store (``<root>/<run>/<probe>``), a run directory holding one
store per probe, or any directory above them (every store below it is used). All runs must be
recorded on the same probe (same labels and number of classes); ``--probe`` picks one when
several are present (default: ``train`` if there, else the only one).

Errors a user can fix (a path that does not exist, no store, mismatched probes, empty stores,
a bad option value) exit with code 2 and one line on stderr, without a traceback.

The building blocks are public functions, so scripts (``examples/compare_runs.py``) get exactly
what the command line computes: :func:`resolve_stores`, :func:`run_names`, :func:`run_groups`,
:func:`load_trajectories`, :func:`embed_stores`, :func:`embedding_frame`,
:func:`coordinate_rows`, :func:`trajectory_distance_matrix`, :func:`linkage_matrix`,
:func:`dendrogram_figure`, :func:`tube_width_rows`, :func:`compare_stores`,
:func:`report_html`, :func:`snapshots_from_store`, :func:`run_frame`, :func:`write_figures`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import html
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lightning_manifold import functional as F
from lightning_manifold import plots
from lightning_manifold._optional import is_available
from lightning_manifold.embedding import ReferenceEmbedding
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.snapshot import Snapshot
from lightning_manifold.store import TrajectoryStore, list_stores, load_stores

__all__ = [
    "EXIT_USAGE",
    "Comparison",
    "Trajectory",
    "build_parser",
    "compare_stores",
    "coordinate_rows",
    "dendrogram_figure",
    "embed_stores",
    "embedding_frame",
    "explained_stress_summary",
    "inspect_path",
    "linkage_matrix",
    "load_trajectories",
    "main",
    "report_html",
    "resolve_stores",
    "run_frame",
    "run_groups",
    "run_names",
    "snapshots_from_store",
    "top_split",
    "trajectory_distance_matrix",
    "tube_width_rows",
    "write_csv",
    "write_figures",
]

PROG = "lightning-manifold"
EXIT_USAGE = 2
"""Exit code for errors the user can fix (bad path, mismatched probes, empty store, ...)."""

STRESS_DIMS = (1, 3, 10)
DEFAULT_PROBE = "train"
SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?\d+$")
"""Default grouping: the run name minus a trailing ``seed<k>`` (``mlp1-seed3`` -> ``mlp1``)."""

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# small utilities


def _progress_bar(iterable: Iterable[_T], *, desc: str, total: int | None = None) -> Iterator[_T]:
    """``tqdm`` on stderr when it is a terminal, the plain iterable otherwise."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with lightning
        yield from iterable
        return
    disable = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    yield from tqdm(iterable, desc=desc, total=total, disable=disable, leave=False)


def _new_figure(figsize: tuple[float, float], dpi: float = 100.0) -> Figure:
    """A matplotlib Figure on an Agg canvas (no pyplot, nothing to close)."""
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Write ``rows`` under ``header`` to ``path`` (parents created); floats with full precision.

    ``None`` and non-finite floats are written as empty cells.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def cell(v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, (float, np.floating)):
            return repr(float(v)) if math.isfinite(v) else ""
        if isinstance(v, np.integer):
            return int(v)
        return v

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(header))
        for row in rows:
            writer.writerow([cell(v) for v in row])
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


# --------------------------------------------------------------------------------------------
# finding the runs


def _stores_below(path: Path) -> list[TrajectoryStore]:
    """Every store at or below ``path``; a one-line error for a missing path or no store."""
    if not path.exists():
        raise FileNotFoundError(f"RUN_DIR '{path}' does not exist")
    if not path.is_dir():
        raise ValueError(
            f"RUN_DIR '{path}' must be a directory (a trajectory store or a directory above "
            "stores), got a file"
        )
    stores = list_stores(path)
    if not stores:
        raise ValueError(f"no trajectory store (manifest.json) found at or below RUN_DIR '{path}'")
    return stores


def resolve_stores(
    paths: Sequence[str | os.PathLike[str]], probe: str | None = None, *, require_valid: int = 1
) -> list[TrajectoryStore]:
    """The stores of one probe found at or below ``paths``, checked to be comparable.

    Args:
        paths: store directories, run directories or roots holding several runs.
        probe: probe name to keep; default ``"train"`` when present, else the only probe found.
        require_valid: minimum number of valid snapshots every store must hold.

    Returns:
        The stores, in the order found (paths in the given order, sorted below each path),
        without duplicates.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no store, a probe that is absent or ambiguous, stores recorded on
            different probes (labels or C differ), or a store with fewer than ``require_valid``
            valid snapshots.
    """
    if not paths:
        raise ValueError("RUN_DIR: give at least one run directory")
    found: list[TrajectoryStore] = []
    seen: set[Path] = set()
    for p in paths:
        for store in _stores_below(Path(p)):
            key = store.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(store)
    names = sorted({s.probe_name for s in found})
    if probe is None:
        if len(names) == 1:
            probe = names[0]
        elif DEFAULT_PROBE in names:
            probe = DEFAULT_PROBE
        else:
            raise ValueError(f"the runs hold several probes {names}: choose one with --probe")
    stores = [s for s in found if s.probe_name == probe]
    if not stores:
        raise ValueError(f"--probe {probe!r}: no store of that probe; the runs hold {names}")
    for store in stores:
        valid = int(store.valid.sum())
        if valid < require_valid:
            raise ValueError(
                f"store '{store.path}' holds {valid} valid snapshot(s) ({len(store)} in all); "
                f"at least {require_valid} needed"
            )
    try:
        return load_stores(stores)
    except ValueError as err:
        raise ValueError(f"mismatched probes: {err}") from err


def run_names(stores: Sequence[TrajectoryStore]) -> list[str]:
    """One unique display name per store: its ``run_name``, prefixed by parent directories
    where two stores share a run name (e.g. ``sweepA/version_0`` and ``sweepB/version_0``)."""
    names = [s.run_name for s in stores]
    depth = 1
    parts = [s.path.resolve().parts for s in stores]
    while len(set(names)) < len(names) and depth < 10:
        depth += 1
        counts = {n: names.count(n) for n in names}
        names = ["/".join(p[-1 - depth : -1]) if counts[n] > 1 else n for n, p in zip(names, parts)]
    if len(set(names)) < len(names):  # identical paths cannot happen; be safe anyway
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def run_groups(
    stores: Sequence[TrajectoryStore], names: Sequence[str], group_by: str | None = None
) -> list[str]:
    """The configuration group of each run (seeds of one configuration share a group).

    Args:
        stores: the runs.
        names: their display names (:func:`run_names`).
        group_by: a regular expression searched in each name; the group is its first capture
            group if it has one, else the matched text; a name it does not match is a group of
            its own. Default: the store's ``meta["config"]`` when recorded, else the name with a
            trailing ``seed<k>`` removed.

    Raises:
        ValueError: ``group_by`` is not a valid regular expression.
    """
    if group_by is not None:
        try:
            pattern = re.compile(group_by)
        except re.error as err:
            raise ValueError(
                f"--group-by {group_by!r} is not a valid regular expression: {err}"
            ) from err
        groups = []
        for name in names:
            m = pattern.search(name)
            if m is None:
                groups.append(name)
            else:
                groups.append(
                    m.group(1) if pattern.groups and m.group(1) is not None else m.group(0)
                )
        return groups
    groups = []
    for store, name in zip(stores, names):
        config = store.meta.get("config")
        groups.append(str(config) if config else (SEED_SUFFIX.sub("", name) or name))
    return groups


def snapshots_from_store(store: TrajectoryStore) -> Iterator[Snapshot]:
    """Replay a stored run as :class:`~lightning_manifold.snapshot.Snapshot` s (valid and
    invalid, in order), e.g. to feed an :class:`~lightning_manifold.online.OnlineManifold` after
    training. Log-probabilities are (N, C) float tensors on the CPU."""
    labels = torch.from_numpy(store.labels)
    for rec in store.records:
        lp = np.array(store.snapshot(rec["index"]))
        yield Snapshot(
            probe=store.probe_name,
            step=int(rec["step"]),
            epoch=int(rec["epoch"]),
            log_probs=torch.from_numpy(lp),
            labels=labels,
            wall_time=float(rec["wall_time"]),
            valid=bool(rec["valid"]),
            metrics=dict(rec["metrics"]),
        )


def run_frame(
    store: TrajectoryStore,
    *,
    reference: ReferenceEmbedding | str | os.PathLike[str] | None = None,
    n_components: int = 3,
    title: str = "",
) -> ManifoldFrame:
    """One run as the *live* run of a :class:`ManifoldFrame`: its snapshots replayed through an
    :class:`~lightning_manifold.online.OnlineManifold` (a self-embedding with ignorance, the
    geodesic and truth; or projected onto ``reference``, eq. 2.2.9). This is the picture the
    callback draws during training, rebuilt from the store afterwards.
    """
    from lightning_manifold.online import OnlineManifold  # imports Lightning: only when needed

    online = OnlineManifold(
        store.labels,
        store.num_classes,
        reference=reference,
        n_components=n_components,
        probe=store.probe_name,
    )
    for snapshot in snapshots_from_store(store):
        online.update(snapshot)
    return online.frame(title=title or store.run_name)


def write_figures(
    frame: ManifoldFrame,
    out_dir: str | os.PathLike[str],
    *,
    stem: str = "manifold",
    dpi: float = 100.0,
) -> dict[str, Path]:
    """Write ``<stem>.png`` (:func:`plots.summary_figure`) and, when plotly is installed,
    ``<stem>.html`` (:func:`plots.write_html`, self-contained) into ``out_dir``.

    Returns:
        ``{"png": path, "html": path}`` (no ``"html"`` without plotly).
    """
    out = Path(out_dir)
    png = plots.figure_to_png(plots.summary_figure(frame, dpi=dpi))
    written = {"png": _write_bytes(out / f"{stem}.png", png)}
    if is_available("plotly"):
        written["html"] = plots.write_html(frame, out / f"{stem}.html", summary_png=png)
    return written


# --------------------------------------------------------------------------------------------
# embedding


def embed_stores(
    stores: Sequence[TrajectoryStore],
    names: Sequence[str] | None = None,
    *,
    n_components: int = 10,
    max_models: int | None = None,
    landmarks: bool = True,
    meta: dict[str, Any] | None = None,
) -> ReferenceEmbedding:
    """Joint InPCA (eq. 2.2.6) of every valid snapshot of every run (and, with ``landmarks``,
    ignorance, the ignorance->truth geodesic and truth). Thin wrapper of
    :meth:`ReferenceEmbedding.fit`, which also serves as a reference for later runs.

    Args:
        stores: the runs (same probe).
        names: display names (default :func:`run_names`).
        n_components: k, the number of components kept (at most the number of points).
        max_models: keep at most this many models, evenly subsampled within each run.
        landmarks: embed P0, the geodesic and P* as points of the map.
        meta: JSON-able metadata saved with the embedding.
    """
    names = list(names) if names is not None else run_names(stores)
    return ReferenceEmbedding.fit(
        list(stores),
        run_names=names,
        n_components=n_components,  # clipped to the number of points by fit
        max_models=max_models,
        landmarks=landmarks,
        meta=meta,
    )


def explained_stress_summary(
    ref: ReferenceEmbedding, dims: Sequence[int] = STRESS_DIMS
) -> dict[int, float]:
    """Explained stress (eq. 2.2.8) of the top ``d`` components for each ``d`` in ``dims``
    (``d`` beyond the kept components is clipped to them)."""
    k = ref.n_components
    return {d: ref.explained_stress(min(d, k)) for d in dims}


def embedding_frame(
    ref: ReferenceEmbedding, *, n_components: int = 3, title: str = ""
) -> ManifoldFrame:
    """The runs of ``ref`` as a :class:`ManifoldFrame` (each run a coloured reference run),
    with their distances to the ignorance->truth geodesic for the diagnostics panel."""
    frame = ref.to_frame(n_components, title=title or f"{ref.num_runs} run(s)")
    frame.ref_geodesic_distance = ref.model_geodesic_distance.detach().to("cpu").numpy()
    return frame


def coordinate_rows(ref: ReferenceEmbedding, probe: str = "") -> tuple[list[str], list[list[Any]]]:
    """One row per embedded model: ``run, probe, step, progress, error, distance_to_geodesic,
    pc1..pck`` (landmarks are not rows; their coordinates are in the JSON summary)."""
    cpu = lambda t: t.detach().to("cpu").numpy()  # noqa: E731
    k = ref.n_components
    header = [
        "run", "probe", "step", "progress", "error", "distance_to_geodesic",
        *[f"pc{i + 1}" for i in range(k)],
    ]  # fmt: skip
    coords = cpu(ref.coords)[: ref.num_models]
    runs, steps = cpu(ref.model_run), cpu(ref.model_step)
    prog, err, gdist = (
        cpu(ref.model_progress),
        cpu(ref.model_error),
        cpu(ref.model_geodesic_distance),
    )
    rows = [
        [ref.run_names[int(runs[i])], probe or ref.probe_name, int(steps[i]), float(prog[i]),
         float(err[i]), float(gdist[i]), *[float(v) for v in coords[i]]]
        for i in range(ref.num_models)
    ]  # fmt: skip
    return header, rows


def _embedding_summary(ref: ReferenceEmbedding) -> dict[str, Any]:
    cpu = lambda t: t.detach().to("cpu").numpy().tolist()  # noqa: E731
    return {
        "probe": ref.probe_name,
        "runs": ref.run_names,
        "num_models": ref.num_models,
        "num_samples": ref.num_samples,
        "num_classes": ref.num_classes,
        "n_components": ref.n_components,
        "landmarks": ref.has_landmarks,
        "eigenvalues": cpu(ref.eigenvalues),
        "time_like": cpu(ref.time_like),
        "total_stress": ref.total_stress,
        "explained_stress": {str(d): v for d, v in explained_stress_summary(ref).items()},
        "ignorance": cpu(ref.ignorance_coords),
        "truth": cpu(ref.truth_coords),
    }


# --------------------------------------------------------------------------------------------
# comparing trajectories


@dataclass
class Trajectory:
    """One run's valid snapshots as probabilities, with their progress (eq. 2.2.4).

    Attributes:
        name: display name.
        group: configuration group.
        steps: (T,) optimizer steps.
        probs: (T, N, C) float64 probabilities.
        progress: (T,) float64 progress.
    """

    name: str
    group: str
    steps: np.ndarray
    probs: Tensor
    progress: Tensor

    @property
    def progress_range(self) -> tuple[float, float]:
        """(lowest, highest) progress the run visited."""
        return float(self.progress.min()), float(self.progress.max())


def load_trajectories(
    stores: Sequence[TrajectoryStore], names: Sequence[str], groups: Sequence[str]
) -> list[Trajectory]:
    """Read every run's valid snapshots and compute their progress (``F.progress_from_log_probs``).

    Raises:
        ValueError: a run with fewer than 2 valid snapshots (a trajectory needs two).
    """
    out = []
    for store, name, group in _progress_bar(
        list(zip(stores, names, groups)), desc="loading runs", total=len(stores)
    ):
        lp = torch.from_numpy(np.asarray(store.log_probs(valid_only=True), dtype=np.float64))
        if lp.shape[0] < 2:
            raise ValueError(
                f"store '{store.path}' holds {lp.shape[0]} valid snapshot(s); comparing "
                "trajectories needs at least 2 per run"
            )
        labels = torch.from_numpy(store.labels)
        progress = F.progress_from_log_probs(lp, labels).reshape(-1).to(torch.float64)
        steps = store.steps[store.valid]
        out.append(Trajectory(name, group, steps, lp.exp(), progress))
    return out


def trajectory_distance_matrix(
    trajectories: Sequence[Trajectory], *, n_points: int = 100
) -> np.ndarray:
    """(R, R) symmetric matrix of ``F.trajectory_distance`` (eq. 2.2.5) between every pair of
    runs, each re-indexed by progress over the range both visited.

    Raises:
        ValueError: two runs share no progress range.
    """
    r = len(trajectories)
    D = np.zeros((r, r))
    pairs = list(itertools.combinations(range(r), 2))
    for i, j in _progress_bar(pairs, desc="trajectory distances", total=len(pairs)):
        u, v = trajectories[i], trajectories[j]
        try:
            d = F.trajectory_distance(u.probs, u.progress, v.probs, v.progress, n_points=n_points)
        except ValueError as err:
            raise ValueError(f"runs {u.name!r} and {v.name!r}: {err}") from err
        D[i, j] = D[j, i] = float(d)
    return D


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


def top_split(Z: np.ndarray, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The two clusters joined by the last merge of linkage ``Z`` (the dendrogram's top split)."""
    from scipy.cluster.hierarchy import to_tree

    root = to_tree(np.asarray(Z))
    left = [names[i] for i in root.get_left().pre_order()]
    right = [names[i] for i in root.get_right().pre_order()]
    return left, right


def dendrogram_figure(
    D: np.ndarray,
    names: Sequence[str],
    groups: Sequence[str] | None = None,
    *,
    method: str = "average",
    dpi: float = 100.0,
) -> tuple[Figure, list[str]]:
    """Dendrogram of the trajectory distances (thesis fig. 2.6a), leaves labelled by run and
    coloured by configuration group.

    Returns:
        The figure and the leaf labels from top to bottom.
    """
    from scipy.cluster.hierarchy import dendrogram

    Z = linkage_matrix(D, method)
    r = len(names)
    fig = _new_figure((7.5, 1.2 + 0.32 * r), dpi)
    ax = fig.add_subplot(1, 1, 1)
    info = dendrogram(
        Z, labels=list(names), orientation="left", ax=ax, color_threshold=0.0,
        above_threshold_color="0.25", leaf_font_size=8,
    )  # fmt: skip
    if groups is not None:
        colors = dict(zip(dict.fromkeys(groups), plots.run_colors(len(set(groups)))))
        by_name = dict(zip(names, groups))
        for label in ax.get_yticklabels():
            label.set_color(colors[by_name[label.get_text()]])
    ax.set_xlabel("trajectory distance (eq. 2.2.5, mean d_B at equal progress)")
    ax.set_title(f"Training trajectories, {method}-linkage clustering")
    ax.spines[["top", "right", "left"]].set_visible(False)
    leaves = list(reversed(info["ivl"]))  # orientation="left" draws the first leaf at the bottom
    return fig, leaves


def tube_width_rows(
    trajectories: Sequence[Trajectory], *, n_points: int = 50
) -> tuple[list[str], list[list[Any]]]:
    """Tube widths (thesis §2.5.4.1) of each group of two or more runs, via ``F.tube_width``.

    Each run of a group is re-indexed (``F.reindex_by_progress``) on a common grid of
    ``n_points`` progress values spanning the range every run of the group visited.

    Returns:
        Header ``group, run, progress, tube_width`` and one row per (run, progress value).
    """
    header = ["group", "run", "progress", "tube_width"]
    rows: list[list[Any]] = []
    groups: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        groups.setdefault(t.group, []).append(t)
    for group, members in groups.items():
        if len(members) < 2:
            continue
        lo = max(t.progress_range[0] for t in members)
        hi = min(t.progress_range[1] for t in members)
        if hi <= lo:
            continue
        grid = torch.linspace(lo, hi, n_points, dtype=torch.float64)
        stacked = torch.stack(
            [F.reindex_by_progress(t.probs, t.progress, grid)[0] for t in members]
        )
        widths = F.tube_width(stacked).to(torch.float64).numpy()  # (R, S)
        for t, w in zip(members, widths):
            rows += [[group, t.name, float(s), float(x)] for s, x in zip(grid.tolist(), w)]
    return header, rows


@dataclass
class Comparison:
    """Everything ``compare`` computes.

    Attributes:
        names: run names (R).
        groups: their configuration groups (R).
        distances: (R, R) trajectory distances (eq. 2.2.5).
        linkage: (R - 1, 4) average-linkage matrix.
        leaves: dendrogram leaves, top to bottom.
        tube_header, tube_rows: the tube-width table (:func:`tube_width_rows`).
        figure: the dendrogram figure.
    """

    names: list[str]
    groups: list[str]
    distances: np.ndarray
    linkage: np.ndarray
    leaves: list[str]
    tube_header: list[str]
    tube_rows: list[list[Any]]
    figure: Figure = field(repr=False)

    @property
    def top_split(self) -> tuple[list[str], list[str]]:
        """The two clusters of the dendrogram's top split."""
        return top_split(self.linkage, self.names)

    def mean_tube_width(self) -> dict[str, float]:
        """Mean tube width of each group that has one."""
        out: dict[str, list[float]] = {}
        for group, _, _, w in self.tube_rows:
            if math.isfinite(w):
                out.setdefault(group, []).append(w)
        return {g: float(np.mean(v)) for g, v in out.items()}

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``trajectory_distances.csv``, ``dendrogram.png``, ``dendrogram.json`` and
        ``tube_widths.csv`` into ``out_dir``; returns ``{kind: path}``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "distances": write_csv(
                out / "trajectory_distances.csv",
                ["run", *self.names],
                [[n, *row] for n, row in zip(self.names, self.distances.tolist())],
            ),
            "dendrogram": _write_bytes(out / "dendrogram.png", plots.figure_to_png(self.figure)),
            "tube_widths": write_csv(out / "tube_widths.csv", self.tube_header, self.tube_rows),
        }
        left, right = self.top_split
        summary = {
            "runs": self.names,
            "groups": self.groups,
            "method": "average",
            "leaves": self.leaves,
            "linkage": self.linkage.tolist(),
            "top_split": [left, right],
            "mean_tube_width": self.mean_tube_width(),
        }
        paths["summary"] = out / "dendrogram.json"
        paths["summary"].write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return paths


def compare_stores(
    stores: Sequence[TrajectoryStore],
    *,
    names: Sequence[str] | None = None,
    group_by: str | None = None,
    n_points: int = 100,
    tube_points: int = 50,
) -> Comparison:
    """Pairwise trajectory distances, their dendrogram and the tube widths of each group.

    Args:
        stores: the runs (same probe, at least 2, each with at least 2 valid snapshots).
        names: display names (default :func:`run_names`).
        group_by: grouping of seeds, see :func:`run_groups`.
        n_points: progress values of the integral of eq. 2.2.5.
        tube_points: progress values of the tube widths.

    Raises:
        ValueError: fewer than 2 runs, or runs that cannot be compared.
    """
    if len(stores) < 2:
        raise ValueError(f"compare needs at least 2 runs, got {len(stores)}")
    names = list(names) if names is not None else run_names(stores)
    groups = run_groups(stores, names, group_by)
    trajectories = load_trajectories(stores, names, groups)
    D = trajectory_distance_matrix(trajectories, n_points=n_points)
    Z = linkage_matrix(D)
    fig, leaves = dendrogram_figure(D, names, groups)
    header, rows = tube_width_rows(trajectories, n_points=tube_points)
    return Comparison(names, groups, D, Z, leaves, header, rows, fig)


def _tube_figure(comparison: Comparison) -> Figure | None:
    """Tube width against progress, mean over the runs of each group (None without groups)."""
    series: dict[str, dict[float, list[float]]] = {}
    for group, _, s, w in comparison.tube_rows:
        series.setdefault(group, {}).setdefault(s, []).append(w)
    if not series:
        return None
    fig = _new_figure((6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for color, (group, values) in zip(plots.run_colors(len(series)), series.items()):
        s = np.array(sorted(values))
        ax.plot(s, [np.mean(values[x]) for x in s], color=color, label=group)
    ax.set_xlabel("progress")
    ax.set_ylabel("tube width (mean d_B to the mean model)")
    ax.set_title("Tube width across seeds (§2.5.4.1)")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# --------------------------------------------------------------------------------------------
# report


def _png_tag(fig: Figure, alt: str) -> str:
    data = base64.b64encode(plots.figure_to_png(fig)).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _run_table(
    stores: Sequence[TrajectoryStore], names: Sequence[str], groups: Sequence[str]
) -> str:
    head = (
        "<tr><th>run</th><th>group</th><th>snapshots (valid)</th><th>steps</th>"
        "<th>final progress</th><th>final error</th><th>store</th></tr>"
    )
    body = []
    for store, name, group in zip(stores, names, groups):
        valid = store.valid
        steps = store.steps[valid]
        lp = torch.from_numpy(np.asarray(store.log_probs(valid_only=True)[-1], dtype=np.float64))
        labels = torch.from_numpy(store.labels)
        prog = float(F.progress_from_log_probs(lp, labels))
        err = float((lp.argmax(-1) != labels).to(torch.float64).mean())
        cells = [
            name, group, f"{len(store)} ({int(valid.sum())})", f"{steps[0]}–{steps[-1]}",
            f"{prog:.3f}", f"{err:.3f}", str(store.path),
        ]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table>\n{head}\n" + "\n".join(body) + "\n</table>"


def report_html(
    stores: Sequence[TrajectoryStore],
    *,
    group_by: str | None = None,
    n_components: int = 10,
    max_models: int | None = None,
    n_points: int = 100,
    title: str = "lightning-manifold report",
) -> str:
    """One self-contained HTML page: a table of runs, the joint InPCA map (interactive with
    plotly.js inline when plotly is installed, plus static views), the spectrum with the
    explained stress, progress curves, the distance to the geodesic, and, with two runs or
    more, the dendrogram of trajectory distances and the tube widths. No external resources.
    """
    names = run_names(stores)
    groups = run_groups(stores, names, group_by)
    ref = embed_stores(stores, names, n_components=n_components, max_models=max_models)
    frame = embedding_frame(ref, title=f"{len(stores)} run(s)")
    stress = explained_stress_summary(ref)
    sections: list[str] = []
    sections.append("<h2>Runs</h2>\n" + _run_table(stores, names, groups))
    manifold = "<h2>Manifold (joint InPCA, eq. 2.2.6)</h2>\n"
    if is_available("plotly"):
        fig = plots.manifold_plotly(frame)
        manifold += fig.to_html(
            full_html=False, include_plotlyjs=True, config={"displaylogo": False}
        )
    else:
        manifold += "<p>(install plotly for the interactive 3D view)</p>"
    manifold += "\n" + _png_tag(plots.manifold_figure(frame), "manifold views")
    sections.append(manifold)
    stress_text = ", ".join(f"top {d}: {v:.1%}" for d, v in stress.items())
    sections.append(
        "<h2>Spectrum</h2>\n"
        f"<p>Explained stress (eq. 2.2.8) {html.escape(stress_text)}. Time-like axes "
        "(negative eigenvalues) in red.</p>\n" + _png_tag(plots.spectrum_figure(frame), "spectrum")
    )
    sections.append(
        "<h2>Progress</h2>\n" + _png_tag(plots.progress_figure(frame), "progress curves") + "\n"
        + _png_tag(plots.diagnostics_figure(frame), "distance to the geodesic")
    )  # fmt: skip
    if len(stores) >= 2:
        comparison = compare_stores(stores, names=names, group_by=group_by, n_points=n_points)
        left, right = comparison.top_split
        split = f"{{{', '.join(left)}}} | {{{', '.join(right)}}}"
        dendro = (
            "<h2>Trajectory distances</h2>\n<p>Average-linkage clustering of the distances "
            "between whole trajectories at equal progress (eq. 2.2.5; thesis fig. 2.6a). "
            f"Top split: {html.escape(split)}.</p>\n" + _png_tag(comparison.figure, "dendrogram")
        )
        tube = _tube_figure(comparison)
        if tube is not None:
            dendro += "\n" + _png_tag(tube, "tube widths")
        sections.append(dendro)
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    probe = html.escape(ref.probe_name)
    style = (
        "body{font-family:sans-serif;margin:1em 2em;color:#222}img{max-width:100%;height:auto}"
        "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{len(stores)} run(s) on probe '{probe}' "
        f"(N={ref.num_samples}, C={ref.num_classes}), generated {created}.</p>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------
# inspect


def _store_info(store: TrajectoryStore) -> dict[str, Any]:
    valid = store.valid
    info: dict[str, Any] = {
        "kind": "store",
        "path": str(store.path),
        "run": store.run_name,
        "probe": store.probe_name,
        "num_samples": store.num_samples,
        "num_classes": store.num_classes,
        "dtype": str(store.dtype),
        "snapshots": len(store),
        "valid": int(valid.sum()),
        "steps": [int(store.steps[0]), int(store.steps[-1])] if len(store) else [],
        "metrics": store.metric_names,
        "meta": store.meta,
    }
    if valid.any():
        last = store.records[int(np.flatnonzero(valid)[-1])]["metrics"]
        info["last"] = {k: last[k] for k in ("progress", "error") if k in last}
    return info


def _reference_info(path: Path) -> dict[str, Any]:
    ref = ReferenceEmbedding.load(path)
    return {
        "kind": "reference",
        "path": str(path),
        "probe": ref.probe_name,
        "runs": ref.run_names,
        "num_samples": ref.num_samples,
        "num_classes": ref.num_classes,
        "num_models": ref.num_models,
        "num_points": ref.num_points,
        "landmarks": ref.has_landmarks,
        "n_components": ref.n_components,
        "eigenvalues": ref.eigenvalues.detach().to("cpu").numpy().tolist(),
        "explained_stress": {str(d): v for d, v in explained_stress_summary(ref).items()},
        "meta": ref.meta,
    }


def inspect_path(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Describe a reference ``.npz`` or every store at or below a directory.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a file that is not a reference embedding, or a directory without stores.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"PATH '{p}' does not exist")
    if p.is_file():
        try:
            return [_reference_info(p)]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"PATH '{p}' is not a reference embedding (.npz from `reference`): {err}"
            ) from err
    return [_store_info(s) for s in _stores_below(p)]


def _format_info(info: dict[str, Any]) -> str:
    if info["kind"] == "reference":
        stress = ", ".join(f"top {d}: {v:.1%}" for d, v in info["explained_stress"].items())
        eig = ", ".join(f"{v:.4g}" for v in info["eigenvalues"][:10])
        lines = [
            f"reference {info['path']}",
            f"  probe {info['probe']!r}: N={info['num_samples']} C={info['num_classes']}",
            f"  runs ({len(info['runs'])}): {', '.join(info['runs'])}",
            f"  models: {info['num_models']}, points: {info['num_points']} "
            f"(landmarks: {'yes' if info['landmarks'] else 'no'}), "
            f"components: {info['n_components']}",
            f"  eigenvalues: {eig}",
            f"  explained stress: {stress}",
        ]
    else:
        steps = "-" if not info["steps"] else f"{info['steps'][0]}..{info['steps'][1]}"
        last = ", ".join(f"{k}={v:.4g}" for k, v in info.get("last", {}).items())
        lines = [
            f"store {info['path']}",
            f"  run {info['run']!r}, probe {info['probe']!r}: N={info['num_samples']} "
            f"C={info['num_classes']} ({info['dtype']})",
            f"  snapshots: {info['snapshots']} ({info['valid']} valid), steps {steps}",
        ]
        if last:
            lines.append(f"  last valid: {last}")
        if info["metrics"]:
            lines.append(f"  metrics: {', '.join(info['metrics'])}")
    if info.get("meta"):
        lines.append(f"  meta: {json.dumps(info['meta'], sort_keys=True)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# subcommands


def _cmd_embed(args: argparse.Namespace) -> int:
    stores = resolve_stores(args.run_dirs, args.probe)
    names = run_names(stores)
    ref = embed_stores(
        stores, names, n_components=args.components, max_models=args.max_models,
        landmarks=not args.no_landmarks,
    )  # fmt: skip
    out = Path(args.out_dir)
    frame = embedding_frame(ref, title=f"{len(stores)} run(s)")
    written = write_figures(frame, out, stem="embedding", dpi=args.dpi)
    if "html" not in written:
        print(f"{PROG}: plotly is not installed; skipping the interactive HTML", file=sys.stderr)
    header, rows = coordinate_rows(ref)
    written["coordinates"] = write_csv(out / "coordinates.csv", header, rows)
    written["summary"] = out / "embedding.json"
    written["summary"].write_text(json.dumps(_embedding_summary(ref), indent=1), encoding="utf-8")
    stress = explained_stress_summary(ref)
    print(
        f"embedded {ref.num_models} models of {len(stores)} run(s) on probe "
        f"{ref.probe_name!r}; explained stress "
        + ", ".join(f"top {d}: {v:.1%}" for d, v in stress.items())
    )
    for kind, path in written.items():
        print(f"  {kind:12s} {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    stores = resolve_stores(args.run_dirs, args.probe, require_valid=2)
    comparison = compare_stores(
        stores, group_by=args.group_by, n_points=args.points, tube_points=args.tube_points
    )
    written = comparison.write(args.out_dir)
    left, right = comparison.top_split
    print(f"compared {len(stores)} runs; dendrogram top split:")
    print(f"  {{{', '.join(left)}}}\n  {{{', '.join(right)}}}")
    for group, width in comparison.mean_tube_width().items():
        print(f"  mean tube width of {group!r}: {width:.4g}")
    for kind, path in written.items():
        print(f"  {kind:12s} {path}")
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    stores = resolve_stores(args.run_dirs, args.probe)
    meta = {"created_by": f"{PROG} reference", "stores": [str(s.path) for s in stores]}
    ref = embed_stores(
        stores, n_components=args.components, max_models=args.max_models,
        landmarks=not args.no_landmarks, meta=meta,
    )  # fmt: skip
    path = ref.save(args.output)
    stress = explained_stress_summary(ref)
    print(
        f"reference of {ref.num_models} models from {ref.num_runs} run(s), "
        f"{ref.n_components} components -> {path}"
    )
    print("  explained stress " + ", ".join(f"top {d}: {v:.1%}" for d, v in stress.items()))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    stores = resolve_stores(args.run_dirs, args.probe, require_valid=2)
    page = report_html(
        stores, group_by=args.group_by, n_components=args.components,
        max_models=args.max_models, n_points=args.points, title=args.title,
    )  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"report of {len(stores)} run(s) -> {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    infos = inspect_path(args.path)
    if args.json:
        print(json.dumps(infos, indent=1))
    else:
        print("\n".join(_format_info(i) for i in infos))
    return 0


# --------------------------------------------------------------------------------------------
# parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _at_least_two(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2, got {value}")
    return value


def _add_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR",
        help="a trajectory store (<root>/<run>/<probe>), a run directory, or a directory "
        "above several runs (every store below it is used)",
    )  # fmt: skip
    p.add_argument(
        "--probe", default=None, metavar="NAME",
        help="probe to use when the runs hold several (default: 'train' if present, else the "
        "only probe)",
    )  # fmt: skip


def _add_embedding(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--components", type=_positive_int, default=10, metavar="K",
        help="number of InPCA components kept (default: 10)",
    )  # fmt: skip
    p.add_argument(
        "--max-models", type=_at_least_two, default=None, metavar="M",
        help="embed at most M models, evenly subsampled within each run (default: all)",
    )  # fmt: skip


def _add_grouping(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--group-by", default=None, metavar="REGEX",
        help="regular expression searched in each run name; runs with the same match (or "
        "first capture group) are seeds of one configuration, for the tube widths (default: "
        "the store's meta['config'], else the run name without a trailing 'seed<k>')",
    )  # fmt: skip
    p.add_argument(
        "--points", type=_at_least_two, default=100, metavar="S",
        help="progress values used for the trajectory distance integral (default: 100)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-manifold`` argument parser (subcommands embed, compare, reference,
    report, inspect)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Place stored training trajectories on the information-geometric map of "
        "Mao et al. (PNAS 2024): joint InPCA embeddings, trajectory distances at equal "
        "progress, reference embeddings and reports. Stores are written by ManifoldCallback.",
        epilog="Errors about paths or inputs exit with code 2. "
        "See `lightning-manifold <command> --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "embed", help="joint InPCA of stored runs -> figures (PNG, HTML) and a coordinates CSV",
        description="Embed every valid snapshot of the runs (plus ignorance, the ignorance->"
        "truth geodesic and truth) with InPCA (eq. 2.2.6). Writes embedding.png (summary "
        "figure), embedding.html (interactive 3D, needs plotly), coordinates.csv (one row per "
        "snapshot: run, probe, step, progress, error, distance_to_geodesic, pc1..pcK) and "
        "embedding.json (eigenvalues, explained stress).",
    )  # fmt: skip
    _add_runs(p)
    _add_embedding(p)
    p.add_argument(
        "-o", "--out-dir", default="manifold_embed", metavar="DIR",
        help="output directory (default: ./manifold_embed)",
    )  # fmt: skip
    p.add_argument(
        "--no-landmarks", action="store_true",
        help="do not embed ignorance, the geodesic and truth as points (they are still drawn, "
        "projected onto the map)",
    )  # fmt: skip
    p.add_argument("--dpi", type=float, default=100.0, help="resolution of the PNG (default: 100)")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser(
        "compare", help="trajectory distances at equal progress, dendrogram, tube widths",
        description="Re-index every trajectory by progress (eq. 2.2.4), compute the distance "
        "between every pair of runs (eq. 2.2.5), cluster them (average linkage; thesis fig. "
        "2.6a) and measure the tube width across seeds of each configuration (§2.5.4.1). "
        "Writes trajectory_distances.csv, dendrogram.png, dendrogram.json (leaves, linkage, "
        "top split) and tube_widths.csv.",
    )  # fmt: skip
    _add_runs(p)
    _add_grouping(p)
    p.add_argument(
        "--tube-points", type=_at_least_two, default=50, metavar="S",
        help="progress values of the tube widths (default: 50)",
    )  # fmt: skip
    p.add_argument(
        "-o", "--out-dir", default="manifold_compare", metavar="DIR",
        help="output directory (default: ./manifold_compare)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "reference", help="build a reference embedding (.npz) for later runs",
        description="Fit an InPCA embedding of the runs and save it as one .npz file (no "
        "pickle). Pass it to later runs (ManifoldCallback / OnlineManifold reference=) to "
        "project them onto the same map and compare them at equal progress.",
    )  # fmt: skip
    _add_runs(p)
    _add_embedding(p)
    p.add_argument("-o", "--output", required=True, metavar="REF.npz", help="file to write")
    p.add_argument(
        "--no-landmarks", action="store_true",
        help="do not embed ignorance, the geodesic and truth as points of the map",
    )  # fmt: skip
    p.set_defaults(func=_cmd_reference)

    p = sub.add_parser(
        "report", help="one self-contained HTML page of the runs",
        description="Write one HTML file with a table of runs, the joint InPCA map "
        "(interactive when plotly is installed; plotly.js is inlined, no CDN), the spectrum, "
        "progress curves, the distance to the geodesic, the dendrogram of trajectory distances "
        "and the tube widths. Images are embedded; the file works offline.",
    )  # fmt: skip
    _add_runs(p)
    _add_embedding(p)
    _add_grouping(p)
    p.add_argument(
        "-o", "--output", default="manifold_report.html", metavar="REPORT.html",
        help="file to write (default: ./manifold_report.html)",
    )  # fmt: skip
    p.add_argument("--title", default="lightning-manifold report", help="title of the page")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "inspect", help="what a store, a directory of runs or a reference holds",
        description="Describe every trajectory store at or below PATH (run, probe, N, C, "
        "snapshots, valid count, steps, metrics, metadata), or a reference embedding .npz "
        "(runs, models, components, eigenvalues, explained stress).",
    )  # fmt: skip
    p.add_argument("path", metavar="PATH", help="a store, a directory of runs, or a .npz reference")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_inspect)
    return parser


def _version() -> str:
    from lightning_manifold import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, or 2 for errors the user can fix).

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{PROG} {args.command}: error: {_one_line(str(message))}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

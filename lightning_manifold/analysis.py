"""Comparing runs: the library behind ``lightning-manifold``, the report and the examples.

Everything the command line computes is here as plain functions and small tables, so a
notebook gets the same answers::

    from lightning_manifold import analysis

    runs = analysis.load_runs("runs/")             # a directory, stores, or (T, N, C) arrays
    dist = runs.distances()                        # (R, R) at equal progress, eq. 2.2.5
    dist.clusters(3)                               # cluster of each run at any cut
    dist.group_summary().to_dict()                 # within- vs between-group distances
    runs.tube_widths().bands()                     # tube width across seeds, per group
    ref = runs.embedding(n_components=10)          # joint InPCA, eq. 2.2.6
    analysis.explained_stress_table(runs, (1, 3, 10), ref).to_dict()
    fig = analysis.dendrogram_figure(dist.matrix, dist.names, dist.groups)

Tables are dataclasses of numpy arrays with ``to_dict()`` and ``to_pandas()`` (when pandas is
installed). Figures are matplotlib ``Figure`` objects on the Agg canvas (no pyplot); show one
in a notebook by evaluating it, save it with ``fig.savefig``.

Re-indexing by progress uses the *first crossing* rule of
:mod:`lightning_manifold.functional.trajectory` for runs whose progress is not monotone.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from lightning_manifold import functional as F
from lightning_manifold._optional import LazyModule, is_available
from lightning_manifold._runs import stores_below as _stores_below
from lightning_manifold.analysis_figures import dendrogram_figure, linkage_matrix, tube_bands_figure
from lightning_manifold.analysis_figures import new_figure as _new_figure
from lightning_manifold.embedding import ReferenceEmbedding, as_log_probs
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.functional import trajectory as TR
from lightning_manifold.snapshot import Snapshot
from lightning_manifold.store import TrajectoryStore, load_stores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported by the first figure, not by tables and numbers (`--no-figures`)
plots = LazyModule("lightning_manifold.plots")

__all__ = [
    "Comparison",
    "DistanceTable",
    "FourPointEmbedding",
    "GroupCurve",
    "GroupSummary",
    "JointEmbedding",
    "Runs",
    "SpeedCurves",
    "StressTable",
    "SubsetEmbedding",
    "Trajectory",
    "TubeWidths",
    "clusters",
    "compare_stores",
    "coordinate_rows",
    "dendrogram_figure",
    "embed_stores",
    "embedding_frame",
    "embedding_summary",
    "explained_stress_summary",
    "explained_stress_table",
    "four_point_embedding",
    "group_summary",
    "joint_embedding",
    "joint_embedding_figure",
    "linkage_matrix",
    "load_runs",
    "load_trajectories",
    "normalised_group_distance",
    "relative_speed",
    "relative_speed_figure",
    "report_html",
    "resolve_stores",
    "riemann_lengths",
    "run_frame",
    "run_groups",
    "run_names",
    "snapshots_from_store",
    "subset_embedding",
    "top_split",
    "trajectory_distance_matrix",
    "tube_figure",
    "tube_widths",
    "write_csv",
    "write_figures",
]

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


# --------------------------------------------------------------------------------------------
# finding the runs


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
    ref: ReferenceEmbedding,
    *,
    n_components: int = 3,
    title: str = "",
    groups: Sequence[str] | None = None,
) -> ManifoldFrame:
    """The runs of ``ref`` as a :class:`ManifoldFrame` (each run a coloured reference run),
    with their distances to the ignorance->truth geodesic for the diagnostics panel. With
    ``groups`` (one per run), runs are coloured and keyed by configuration group."""
    frame = ref.to_frame(n_components, title=title or f"{ref.num_runs} run(s)")
    frame.ref_geodesic_distance = ref.model_geodesic_distance.detach().to("cpu").numpy()
    if groups is not None:
        if len(groups) != ref.num_runs:
            raise ValueError(
                f"`groups` must hold one group per run ({ref.num_runs}), got {len(groups)}"
            )
        frame.ref_run_groups = [str(g) for g in groups]  # type: ignore[attr-defined]
    return frame


def coordinate_rows(
    ref: ReferenceEmbedding, probe: str = "", *, n_components: int | None = None
) -> tuple[list[str], list[list[Any]]]:
    """One row per embedded model: ``run, probe, step, progress, error, distance_to_geodesic,
    pc1..pck`` with k = ``n_components`` (default: every kept axis; landmarks are not rows,
    their coordinates are in the JSON summary)."""
    cpu = lambda t: t.detach().to("cpu").numpy()  # noqa: E731
    k = ref.n_components if n_components is None else min(n_components, ref.n_components)
    header = [
        "run", "probe", "step", "progress", "error", "distance_to_geodesic",
        *[f"pc{i + 1}" for i in range(k)],
    ]  # fmt: skip
    coords = cpu(ref.coords)[: ref.num_models, :k]
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


def embedding_summary(
    ref: ReferenceEmbedding, stress: StressTable | None = None, *, n_components: int | None = None
) -> dict[str, Any]:
    """JSON-able summary of an embedding: sizes, the top ``n_components`` eigenvalues (default
    all kept), explained stress (with ``stress``: models alone and with landmarks at each of
    its k), landmark coordinates."""
    k = ref.n_components if n_components is None else min(n_components, ref.n_components)
    cpu = lambda t: t.detach().to("cpu").numpy().tolist()  # noqa: E731
    out: dict[str, Any] = {
        "probe": ref.probe_name,
        "runs": ref.run_names,
        "num_models": ref.num_models,
        "num_samples": ref.num_samples,
        "num_classes": ref.num_classes,
        "n_components": k,
        "landmarks": ref.has_landmarks,
        "eigenvalues": cpu(ref.eigenvalues[:k]),
        "time_like": cpu(ref.time_like[:k]),
        "total_stress": ref.total_stress,
        "explained_stress": {str(d): v for d, v in explained_stress_summary(ref).items()},
        "ignorance": cpu(ref.ignorance_coords[:k]),
        "truth": cpu(ref.truth_coords[:k]),
    }
    if stress is not None:
        as_dict = lambda v: {str(int(k)): float(x) for k, x in zip(stress.k, v)}  # noqa: E731
        out["explained_stress_models"] = as_dict(stress.models)
        out["explained_stress_with_landmarks"] = as_dict(stress.with_landmarks)
    return out


# --------------------------------------------------------------------------------------------
# comparing trajectories


@dataclass
class Trajectory:
    """One run's valid snapshots, with their progress (eq. 2.2.4).

    Attributes:
        name: display name.
        group: configuration group.
        steps: (T,) optimizer steps.
        log_probs: (T, N, C) float64 log-probabilities.
        progress: (T,) float64 progress.
    """

    name: str
    group: str
    steps: np.ndarray
    log_probs: Tensor
    progress: Tensor

    @cached_property
    def probs(self) -> Tensor:
        """(T, N, C) float64 probabilities."""
        return self.log_probs.exp()

    @property
    def progress_range(self) -> tuple[float, float]:
        """(lowest, highest) progress the run visited."""
        return float(self.progress.min()), float(self.progress.max())

    @property
    def error(self) -> np.ndarray:
        """(T,) fraction of probe samples misclassified (argmax != label) -- needs labels, so
        this is set by :func:`load_trajectories`."""
        return self._error

    _error: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)


def _trajectory(
    name: str,
    group: str,
    lp: Tensor,
    labels: Tensor,
    steps: np.ndarray,
    where: str,
    progress: Tensor | None = None,
) -> Trajectory:
    if lp.shape[0] < 2:
        raise ValueError(
            f"{where} holds {lp.shape[0]} valid snapshot(s); comparing trajectories needs at "
            "least 2 per run"
        )
    if progress is None:
        progress = F.progress_from_log_probs(lp, labels)
    progress = progress.reshape(-1).to(torch.float64)
    error = (lp.argmax(-1) != labels).to(torch.float64).mean(-1).numpy()
    return Trajectory(name, group, np.asarray(steps), lp, progress, _error=error)


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
        labels = torch.from_numpy(store.labels)
        steps = store.steps[store.valid]
        out.append(_trajectory(name, group, lp, labels, steps, f"store '{store.path}'"))
    return out


def _index(t: Trajectory, index: str) -> Tensor:
    if index == "progress":
        return t.progress
    if index == "error":  # 1 - error rises from chance towards 1 like progress
        return torch.from_numpy(1.0 - np.asarray(t.error, dtype=np.float64))
    raise ValueError(f"`index` must be 'progress' or 'error', got {index!r}")


def trajectory_distance_matrix(
    trajectories: Sequence[Trajectory], *, n_points: int = 100, index: str = "progress"
) -> np.ndarray:
    """(R, R) symmetric matrix of trajectory distances (eq. 2.2.5) between every pair of runs,
    each re-indexed once by progress (``functional.trajectory.trajectory_distances``: batched
    GEMMs on a fixed progress grid; entry (u, v) equals ``F.trajectory_distance`` of u and v).

    ``index="error"`` re-indexes by ``1 - error`` (the probe accuracy) instead of progress:
    runs are then compared at equal error.

    Raises:
        ValueError: two runs share no progress (or accuracy) range (named).
    """
    try:
        D = TR.trajectory_distances(
            [t.probs for t in trajectories],
            [_index(t, index) for t in trajectories],
            n_points=n_points,
        )
    except ValueError as err:
        m = re.match(r"runs (\d+) and (\d+) (.*)", str(err))
        if m is None:
            raise
        i, j = int(m.group(1)), int(m.group(2))
        raise ValueError(
            f"runs {trajectories[i].name!r} and {trajectories[j].name!r} {m.group(3)}"
        ) from err
    return D.to("cpu").numpy()


def top_split(Z: np.ndarray, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The two clusters joined by the last merge of linkage ``Z`` (the dendrogram's top split)."""
    from scipy.cluster.hierarchy import to_tree

    root = to_tree(np.asarray(Z))
    left = [names[i] for i in root.get_left().pre_order()]
    right = [names[i] for i in root.get_right().pre_order()]
    return left, right


def clusters(D: np.ndarray, k: int, method: str = "average") -> np.ndarray:
    """Cut the ``method``-linkage dendrogram of ``D`` into at most ``k`` clusters.

    Args:
        D: (R, R) distances.
        k: number of clusters, 1 <= k <= R.

    Returns:
        (R,) int cluster label of each run, 1..k, numbered in order of first appearance.
    """
    from scipy.cluster.hierarchy import fcluster

    r = np.asarray(D).shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= r:
        raise ValueError(f"`k` (--clusters) must be an integer in [1, {r}], got {k!r}")
    if r == 1:
        return np.ones(1, dtype=np.int64)
    raw = fcluster(linkage_matrix(D, method), int(k), criterion="maxclust")
    order = {c: i + 1 for i, c in enumerate(dict.fromkeys(raw.tolist()))}
    return np.array([order[c] for c in raw.tolist()], dtype=np.int64)


class _Table:
    """Mixin of the result tables: ``to_dict()`` (numpy arrays) and ``to_pandas()``."""

    def to_dict(self) -> dict[str, np.ndarray]:
        """The columns as a dict of equally long numpy arrays."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                f"pandas is needed for {type(self).__name__}.to_pandas(): pip install pandas "
                "(or use to_dict(), plain numpy arrays)"
            ) from None
        return pd.DataFrame(self.to_dict())


@dataclass
class GroupSummary(_Table):
    """Within-group against between-group trajectory distances, one row per group.

    Attributes:
        group: (G,) group names.
        runs: (G,) number of runs in each group.
        within: (G,) mean distance between two runs of the group (NaN for one run).
        between: (G,) mean distance from a run of the group to a run of another group (NaN
            with one group).
        ratio: (G,) within / between (small: the group is a tight, separate cluster).
    """

    group: np.ndarray
    runs: np.ndarray
    within: np.ndarray
    between: np.ndarray
    ratio: np.ndarray

    def overall(self) -> dict[str, float]:
        """Mean within-group and between-group distance over all pairs of runs."""
        return dict(self._overall)

    _overall: dict[str, float] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in super().to_dict().items() if not k.startswith("_")}


def group_summary(D: np.ndarray, groups: Sequence[Any]) -> GroupSummary:
    """Within-group vs between-group distances of an (R, R) matrix for labels ``groups``
    (configuration groups, or cluster labels from :func:`clusters`)."""
    D = np.asarray(D, dtype=np.float64)
    g = np.asarray([str(x) for x in groups])
    if D.shape != (g.size, g.size):
        raise ValueError(f"`groups` must have one label per run ({D.shape[0]}), got {g.size}")
    off = ~np.eye(g.size, dtype=bool)
    same = g[:, None] == g[None, :]
    names = list(dict.fromkeys(g.tolist()))
    rows = []
    for name in names:
        member = g == name
        w = D[np.ix_(member, member)][off[np.ix_(member, member)]]
        b = D[np.ix_(member, ~member)].ravel()
        within = float(w.mean()) if w.size else math.nan
        between = float(b.mean()) if b.size else math.nan
        rows.append((name, int(member.sum()), within, between))

    def mean(mask: np.ndarray) -> float:
        return float(D[mask].mean()) if mask.any() else math.nan

    col = list(zip(*rows))
    within, between = np.array(col[2]), np.array(col[3])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = within / between
    return GroupSummary(
        np.array(col[0]), np.array(col[1]), within, between, ratio,
        _overall={"within": mean(same & off), "between": mean(~same)},
    )  # fmt: skip


@dataclass
class DistanceTable:
    """Trajectory distances between runs (eq. 2.2.5).

    Attributes:
        names: (R,) run names.
        groups: (R,) configuration groups.
        matrix: (R, R) distances.
    """

    names: list[str]
    groups: list[str]
    matrix: np.ndarray

    def linkage(self, method: str = "average") -> np.ndarray:
        """(R - 1, 4) linkage matrix (:func:`linkage_matrix`)."""
        return linkage_matrix(self.matrix, method)

    def clusters(self, k: int, method: str = "average") -> dict[str, int]:
        """Cluster label (1..k) of each run at the cut of the dendrogram into k clusters."""
        return dict(zip(self.names, clusters(self.matrix, k, method).tolist()))

    @property
    def top_split(self) -> tuple[list[str], list[str]]:
        """The two clusters of the dendrogram's top split."""
        return top_split(self.linkage(), self.names)

    def group_summary(self, labels: Sequence[Any] | None = None) -> GroupSummary:
        """Within vs between distances of the configuration groups (or of ``labels``)."""
        return group_summary(self.matrix, self.groups if labels is None else labels)

    def to_dict(self) -> dict[str, np.ndarray]:
        """``{"run": (R,), "group": (R,), <name>: (R,) column of distances, ...}``."""
        out = {"run": np.array(self.names), "group": np.array(self.groups)}
        out.update({n: self.matrix[:, i] for i, n in enumerate(self.names)})
        return out

    def to_pandas(self) -> Any:
        """The (R, R) matrix as a ``pandas.DataFrame`` indexed by run name (needs pandas)."""
        _Table.to_pandas(self)  # the same clear message without pandas
        import pandas as pd

        return pd.DataFrame(self.matrix, index=self.names, columns=self.names)


@dataclass
class TubeWidths(_Table):
    """Tube widths (thesis §2.5.4.1): the distance of each run of a group to the group's mean
    model at equal progress, one row per (run, progress value).

    Attributes:
        group, run: (n,) names; progress: (n,); width: (n,) d_B to the mean model.
    """

    group: np.ndarray
    run: np.ndarray
    progress: np.ndarray
    width: np.ndarray

    def bands(self) -> dict[str, dict[str, np.ndarray]]:
        """Per group: ``progress`` (S,), ``mean``, ``low`` and ``high`` (min and max over the
        group's runs) of the tube width."""
        out = {}
        for g in dict.fromkeys(self.group.tolist()):
            sel = self.group == g
            s = np.unique(self.progress[sel])
            w = np.array([self.width[sel & (self.progress == x)] for x in s])  # (S, R)
            out[g] = {"progress": s, "mean": w.mean(1), "low": w.min(1), "high": w.max(1)}
        return out

    def mean_by_group(self) -> dict[str, float]:
        """Mean tube width of each group (finite values)."""
        ok = np.isfinite(self.width)
        return {
            g: float(self.width[ok & (self.group == g)].mean())
            for g in dict.fromkeys(self.group.tolist())
            if (ok & (self.group == g)).any()
        }


def tube_widths(trajectories: Sequence[Trajectory], *, n_points: int = 50) -> TubeWidths:
    """Tube widths of each group of two or more runs (``F.tube_width``), each run re-indexed
    (``F.reindex_by_progress``) on ``n_points`` progress values spanning the range every run of
    the group visited."""
    cols: dict[str, list[Any]] = {"group": [], "run": [], "progress": [], "width": []}
    by_group: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_group.setdefault(t.group, []).append(t)
    for group, members in by_group.items():
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
            cols["group"] += [group] * n_points
            cols["run"] += [t.name] * n_points
            cols["progress"] += grid.tolist()
            cols["width"] += w.tolist()
    return TubeWidths(
        np.array(cols["group"], dtype=str), np.array(cols["run"], dtype=str),
        np.array(cols["progress"], dtype=np.float64), np.array(cols["width"], dtype=np.float64),
    )  # fmt: skip


def tube_width_rows(
    trajectories: Sequence[Trajectory], *, n_points: int = 50
) -> tuple[list[str], list[list[Any]]]:
    """:func:`tube_widths` as a CSV header ``group, run, progress, tube_width`` and rows."""
    t = tube_widths(trajectories, n_points=n_points)
    rows = [[g, r, float(s), float(w)] for g, r, s, w in zip(t.group, t.run, t.progress, t.width)]
    return ["group", "run", "progress", "tube_width"], rows


def tube_figure(tubes: TubeWidths, *, dpi: float = 100.0) -> Figure | None:
    """Tube width against progress, one band per group (min..max over its runs, mean as a
    line), legend outside the axes. None when no group has two runs."""
    return tube_bands_figure(tubes.bands(), dpi=dpi)


def _steps_at_progress(t: Trajectory, grid: np.ndarray) -> np.ndarray:
    """Optimizer step at which ``t`` first reaches each progress value (linear in step within
    the first crossing segment, the rule of ``reindex_by_progress``); NaN where never."""
    s = t.progress.numpy()
    steps = t.steps.astype(np.float64)
    lo, hi = np.minimum(s[:-1], s[1:]), np.maximum(s[:-1], s[1:])
    covers = (grid[:, None] >= lo[None]) & (grid[:, None] <= hi[None])
    k = covers.argmax(1)
    span = s[k + 1] - s[k]
    alpha = np.divide(grid - s[k], span, out=np.zeros_like(grid), where=span != 0)
    out = steps[k] + alpha * (steps[k + 1] - steps[k])
    out[~covers.any(1)] = np.nan
    return out


@dataclass
class SpeedCurves(_Table):
    """Relative speed as a curve over progress: for each run and progress value, the step at
    which the run first reached it, the reference run's step, and their ratio (> 1: slower).

    Attributes:
        run: (n,); progress: (n,); step: (n,); reference_step: (n,); ratio: (n,).
        reference: name of the reference run.
    """

    run: np.ndarray
    progress: np.ndarray
    step: np.ndarray
    reference_step: np.ndarray
    ratio: np.ndarray
    reference: str = ""

    def to_dict(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in super().to_dict().items() if k != "reference"}


def relative_speed(
    trajectories: Sequence[Trajectory], reference: str | int = 0, *, n_points: int = 50
) -> SpeedCurves:
    """Steps each run needs to reach each progress value, relative to a reference run, as a
    curve over progress (a single ratio hides that it changes along training).

    Args:
        trajectories: the runs.
        reference: name or index of the reference run.
        n_points: progress values between the lowest and highest progress the reference run
            visited (values where the reference's step is 0 are left out: no ratio there).
    """
    names = [t.name for t in trajectories]
    i = names.index(reference) if isinstance(reference, str) else int(reference)
    ref = trajectories[i]
    lo, hi = ref.progress_range
    grid = np.linspace(lo, hi, n_points)
    ref_steps = _steps_at_progress(ref, grid)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("run", "progress", "step", "ref", "r")}
    for t in trajectories:
        if t is ref:
            continue
        st = _steps_at_progress(t, grid)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(ref_steps > 0, st / ref_steps, np.nan)
        cols["run"].append(np.full(n_points, t.name))
        cols["progress"].append(grid)
        cols["step"].append(st)
        cols["ref"].append(ref_steps)
        cols["r"].append(ratio)
    cat = lambda k: np.concatenate(cols[k]) if cols[k] else np.zeros(0)  # noqa: E731
    return SpeedCurves(
        cat("run").astype(str), cat("progress"), cat("step"), cat("ref"), cat("r"), ref.name
    )


def relative_speed_figure(
    speed: SpeedCurves, groups: dict[str, str] | None = None, *, dpi: float = 100.0
) -> Figure:
    """Steps needed relative to the reference run against progress (log scale), one line per
    run, coloured by group when ``groups`` (run -> group) is given; legend outside the axes."""
    fig = _new_figure((7.5, 4.0), dpi)
    ax = fig.add_subplot(1, 1, 1)
    runs = list(dict.fromkeys(speed.run.tolist()))
    if groups:
        colors = plots.group_colors([groups[r] for r in runs])
        color = {r: colors[groups[r]] for r in runs}
    else:
        color = dict(zip(runs, plots.run_colors(len(runs))))
    labelled: set[str] = set()
    for r in runs:
        sel = (speed.run == r) & np.isfinite(speed.ratio) & (speed.ratio > 0)
        label = groups[r] if groups else r
        ax.plot(speed.progress[sel], speed.ratio[sel], color=color[r], linewidth=1.2,
                label=None if label in labelled else label)  # fmt: skip
        labelled.add(label)
    ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    plots.plain_log_labels(ax.yaxis)
    ax.set_xlabel("progress")
    ax.set_ylabel(f"steps needed / steps of {speed.reference}")
    ax.set_title(f"Relative speed against {speed.reference} along training")
    if runs:
        fig.legend(loc="outside right upper", fontsize=8, title="group" if groups else "run")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def riemann_lengths(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Riemann length of each run's path through its snapshots (``riemann_length``)."""
    return {t.name: float(F.riemann_length(t.probs)) for t in trajectories}


@dataclass
class GroupCurve(_Table):
    """A quantity along progress. Attributes: progress (S,), value (S,)."""

    progress: np.ndarray
    value: np.ndarray


def normalised_group_distance(
    trajectories: Sequence[Trajectory], group_a: str, group_b: str, *, n_points: int = 50
) -> GroupCurve:
    """Thesis Remark 3.3.3: at each progress s,
    ``2 d_B(mean_a(s), mean_b(s)) / Σ_{k=a,b} max_runs d_B(run(s), mean_k(s))``,
    the distance between the groups' mean trajectories (arithmetic mean of the runs re-indexed
    by progress) over the average of their tube radii. Below 1 the two tubes intersect.

    The progress values span the range every run of both groups visited.

    Raises:
        ValueError: a group with fewer than 2 runs, or no shared progress range.
    """
    members = {g: [t for t in trajectories if t.group == g] for g in (group_a, group_b)}
    for g, ms in members.items():
        if len(ms) < 2:
            raise ValueError(f"group {g!r} needs at least 2 runs for a tube radius, got {len(ms)}")
    everyone = members[group_a] + members[group_b]
    lo = max(t.progress_range[0] for t in everyone)
    hi = min(t.progress_range[1] for t in everyone)
    if hi <= lo:
        raise ValueError(f"the runs of {group_a!r} and {group_b!r} share no progress range")
    grid = torch.linspace(lo, hi, n_points, dtype=torch.float64)
    means, radii = [], []
    for g in (group_a, group_b):
        X = torch.stack([F.reindex_by_progress(t.probs, t.progress, grid)[0] for t in members[g]])
        means.append(X.mean(0))  # (S, N, C) arithmetic mean model, as in F.tube_width
        radii.append(F.tube_width(X).amax(0))  # (S,) the farthest run from the mean
    d = -F.bhattacharyya_coefficients(means[0], means[1]).log().mean(-1)  # (S,)
    value = 2 * d / (radii[0] + radii[1])
    return GroupCurve(grid.numpy(), value.to(torch.float64).numpy())


@dataclass
class Comparison:
    """Everything ``compare`` computes.

    Attributes:
        names: run names (R).
        groups: their configuration groups (R).
        distances: (R, R) trajectory distances (eq. 2.2.5).
        linkage: (R - 1, 4) average-linkage matrix.
        leaves: dendrogram leaves, top to bottom.
        tubes: the tube widths (:func:`tube_widths`).
        figure: the dendrogram figure (None when figures were not asked for).
    """

    names: list[str]
    groups: list[str]
    distances: np.ndarray
    linkage: np.ndarray
    leaves: list[str]
    tubes: TubeWidths
    figure: Figure | None = field(default=None, repr=False)

    @property
    def table(self) -> DistanceTable:
        """The distances as a :class:`DistanceTable`."""
        return DistanceTable(self.names, self.groups, self.distances)

    @property
    def tube_header(self) -> list[str]:
        """CSV header of :attr:`tube_rows`."""
        return ["group", "run", "progress", "tube_width"]

    @property
    def tube_rows(self) -> list[list[Any]]:
        """One row per (run, progress value): group, run, progress, tube width."""
        t = self.tubes
        return [
            [g, r, float(s), float(w)] for g, r, s, w in zip(t.group, t.run, t.progress, t.width)
        ]

    @property
    def top_split(self) -> tuple[list[str], list[str]]:
        """The two clusters of the dendrogram's top split."""
        return top_split(self.linkage, self.names)

    def clusters(self, k: int) -> dict[str, int]:
        """Cluster (1..k) of each run at the cut into k clusters."""
        return self.table.clusters(k)

    def group_summary(self) -> GroupSummary:
        """Within- vs between-group distances of the configuration groups."""
        return self.table.group_summary()

    def mean_tube_width(self) -> dict[str, float]:
        """Mean tube width of each group that has one."""
        return self.tubes.mean_by_group()

    def write(
        self, out_dir: str | os.PathLike[str], *, n_clusters: int | None = None
    ) -> dict[str, Path]:
        """Write ``trajectory_distances.csv``, ``dendrogram.json``, ``tube_widths.csv``,
        ``groups.csv`` (within/between summary) and, with figures, ``dendrogram.png`` and
        ``tube_widths.png`` into ``out_dir``; returns ``{kind: path}``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "distances": write_csv(
                out / "trajectory_distances.csv",
                ["run", *self.names],
                [[n, *row] for n, row in zip(self.names, self.distances.tolist())],
            ),
            "tube_widths": write_csv(out / "tube_widths.csv", self.tube_header, self.tube_rows),
        }
        summary = self.group_summary()
        paths["groups"] = write_csv(
            out / "groups.csv",
            ["group", "runs", "within", "between", "ratio"],
            zip(*(summary.to_dict()[k] for k in ("group", "runs", "within", "between", "ratio"))),
        )
        if self.figure is not None:
            paths["dendrogram"] = _write_bytes(
                out / "dendrogram.png", plots.figure_to_png(self.figure)
            )
            tube = tube_figure(self.tubes)
            if tube is not None:
                paths["tube_figure"] = _write_bytes(
                    out / "tube_widths.png", plots.figure_to_png(tube)
                )
        left, right = self.top_split
        info: dict[str, Any] = {
            "runs": self.names,
            "groups": self.groups,
            "method": "average",
            "leaves": self.leaves,
            "linkage": self.linkage.tolist(),
            "top_split": [left, right],
            "mean_tube_width": self.mean_tube_width(),
            "within_between": summary.overall(),
        }
        if n_clusters is not None:
            info["clusters"] = self.clusters(n_clusters)
        paths["summary"] = out / "dendrogram.json"
        paths["summary"].write_text(json.dumps(info, indent=1), encoding="utf-8")
        return paths


def compare_stores(
    stores: Sequence[TrajectoryStore],
    *,
    names: Sequence[str] | None = None,
    group_by: str | None = None,
    n_points: int = 100,
    tube_points: int = 50,
    figures: bool = True,
    trajectories: Sequence[Trajectory] | None = None,
    on_distances: Callable[[np.ndarray, list[str], list[str]], Any] | None = None,
) -> Comparison:
    """Pairwise trajectory distances, their dendrogram and the tube widths of each group.

    Args:
        stores: the runs (same probe, at least 2, each with at least 2 valid snapshots).
        names: display names (default :func:`run_names`).
        group_by: grouping of seeds, see :func:`run_groups`.
        n_points: progress values of the integral of eq. 2.2.5.
        tube_points: progress values of the tube widths.
        figures: draw the dendrogram figure.
        trajectories: the runs already loaded (:func:`load_trajectories`), to skip reading.
        on_distances: called with the (R, R) distances, the names and the groups as soon as
            the distances are known, before the tube widths (the command line hands the
            dendrogram to its figure worker there).

    Raises:
        ValueError: fewer than 2 runs, or runs that cannot be compared.
    """
    if len(stores) < 2:
        raise ValueError(f"compare needs at least 2 runs, got {len(stores)}")
    names = list(names) if names is not None else run_names(stores)
    groups = run_groups(stores, names, group_by)
    if trajectories is None:
        trajectories = load_trajectories(stores, names, groups)
    return _compare(list(trajectories), n_points=n_points, tube_points=tube_points,
                    figures=figures, on_distances=on_distances)  # fmt: skip


def _compare(
    trajectories: list[Trajectory],
    *,
    n_points: int,
    tube_points: int,
    figures: bool,
    on_distances: Callable[[np.ndarray, list[str], list[str]], Any] | None = None,
) -> Comparison:
    names = [t.name for t in trajectories]
    groups = [t.group for t in trajectories]
    D = trajectory_distance_matrix(trajectories, n_points=n_points)
    if on_distances is not None:
        on_distances(D, names, groups)
    Z = linkage_matrix(D)
    if figures:
        fig, leaves = dendrogram_figure(D, names, groups)
    else:
        from scipy.cluster.hierarchy import dendrogram

        fig, leaves = None, list(reversed(dendrogram(Z, labels=names, no_plot=True)["ivl"]))
    tubes = tube_widths(trajectories, n_points=tube_points)
    return Comparison(names, groups, D, Z, leaves, tubes, fig)


# --------------------------------------------------------------------------------------------
# the notebook API


@dataclass
class StressTable(_Table):
    """Explained stress (eq. 2.2.8) of the top k axes, for the models alone and for the map
    with the landmarks (ignorance, the ignorance->truth geodesic, truth) embedded too.

    Attributes:
        k: (K,) numbers of axes.
        models: (K,) explained stress of the InPCA of the models alone.
        with_landmarks: (K,) explained stress of the map with the landmarks (NaN when the map
            has none).
    """

    k: np.ndarray
    models: np.ndarray
    with_landmarks: np.ndarray


def _stress(eigenvalues: Tensor, total: float, ks: Sequence[int]) -> np.ndarray:
    kept = eigenvalues.numel()
    return np.array(
        [float(F.explained_stress(eigenvalues, min(k, kept), total)) for k in ks], dtype=float
    )


def explained_stress_table(
    source: Runs | Sequence[TrajectoryStore],
    ks: Sequence[int],
    ref: ReferenceEmbedding | None = None,
    *,
    n_geodesic: int = 16,
) -> StressTable:
    """Explained stress (eq. 2.2.8) at every ``k`` in ``ks``, models alone and with landmarks.

    One Bhattacharyya matrix of the models and the landmarks (ignorance, ``n_geodesic``
    interior points of the ignorance->truth geodesic, truth; as :meth:`ReferenceEmbedding.fit`
    embeds them) gives both spectra: the models' block alone, and the whole matrix. Each keeps
    ``max(ks)`` axes; the total stress is over every eigenvalue, so the fraction is exact for
    any k (a k above the number of points is clipped to it).

    Args:
        source: the runs (a :class:`Runs` or the stores).
        ks: numbers of axes.
        ref: the map already fitted on ``source``: its eigenvalues are reused where they
            suffice, its d_B matrix (``fit_distances``) when it has one, and the models it
            embedded (``max_models``) are the ones used.
        n_geodesic: interior geodesic points (default: those of ``ref``, else 16).
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"`ks` (--stress-at) must be positive integers, got {ks}")
    fitted = None if ref is None else ref.fit_distances
    if fitted is not None and ref is not None and ref.has_landmarks:
        # the map's own matrix is this one: models first, then the same landmarks
        D, m = fitted.to(torch.float64), ref.num_models
    else:
        D, m = _stress_matrix(source, ref, n_geodesic, fitted)

    def stress(M: Tensor) -> np.ndarray:
        res = F.inpca(M, n_components=min(max(ks), M.shape[0]))
        return _stress(res.eigenvalues, float(res.total_stress), ks)

    models = stress(D[:m, :m])
    if ref is not None and ref.has_landmarks and min(max(ks), ref.num_points) <= ref.n_components:
        with_landmarks = _stress(ref.eigenvalues, ref.total_stress, ks)
    else:
        with_landmarks = stress(D)
    return StressTable(np.array(ks), models, with_landmarks)


def _stress_matrix(
    source: Runs | Sequence[TrajectoryStore],
    ref: ReferenceEmbedding | None,
    n_geodesic: int,
    fitted: Tensor | None,
) -> tuple[Tensor, int]:
    """The d_B matrix of the models and the landmarks of :func:`explained_stress_table`, and
    the number of models; ``fitted``: the models' block already computed (a map without
    landmarks), so only the landmark rows are new."""
    if isinstance(source, Runs):
        per_run = [(t.log_probs, np.asarray(t.steps)) for t in source.trajectories]
        labels, num_classes = torch.as_tensor(source.labels), source.num_classes
    else:
        per_run = [
            (torch.from_numpy(np.asarray(s.log_probs(valid_only=True), dtype=np.float64)),
             s.steps[s.valid])
            for s in source
        ]  # fmt: skip
        labels, num_classes = torch.from_numpy(source[0].labels), source[0].num_classes
    lp = torch.cat([x for x, _ in per_run])
    if ref is not None:
        n_geodesic = ref.geodesic_alphas.numel() - 2
        if ref.num_models < lp.shape[0]:  # max_models subsampled the map
            lp = lp[_model_subset([s for _, s in per_run], ref)]
    m = lp.shape[0]
    alphas = torch.linspace(0.0, 1.0, n_geodesic + 2, dtype=torch.float64)[1:-1]
    from lightning_manifold.embedding import geodesic_log_probs

    lp_land = torch.cat([torch.full_like(lp[:1], -math.log(num_classes)),
                         geodesic_log_probs(labels, num_classes, alphas).to(lp)])  # fmt: skip
    D = torch.zeros((m + n_geodesic + 2, m + n_geodesic + 2), dtype=torch.float64)
    if fitted is not None and fitted.shape == (m, m):
        D[:m, :m] = fitted.to(device="cpu", dtype=torch.float64)
    else:
        D[:m, :m] = F.bhattacharyya_from_log_probs(lp).to(torch.float64)
    D[m:-1, :m] = F.bhattacharyya_from_log_probs(lp_land, lp).to(torch.float64)
    D[m:-1, m:-1] = F.bhattacharyya_from_log_probs(lp_land).to(torch.float64)
    d_truth = F.distance_to_truth_from_log_probs(torch.cat([lp, lp_land]), labels)
    D[-1, :-1] = d_truth.to(torch.float64).reshape(-1)
    D = torch.tril(D, -1)
    return D + D.T, m  # symmetric by construction, zero diagonal


def _model_subset(steps_per_run: Sequence[np.ndarray], ref: ReferenceEmbedding) -> np.ndarray:
    """Indices (into the concatenated runs) of the models ``ref`` embedded."""
    idx, offset = [], 0
    for r, steps in enumerate(steps_per_run):
        kept = ref.model_step[ref.model_run == r].to("cpu").numpy()
        idx.append(offset + np.flatnonzero(np.isin(steps, kept)))
        offset += len(steps)
    return np.concatenate(idx)


@dataclass
class Runs:
    """Several runs on one probe, loaded for comparison (:func:`load_runs`).

    Attributes:
        trajectories: one :class:`Trajectory` per run (valid snapshots, progress).
        labels: (N,) probe labels; num_classes: C; probe: probe name.
        stores: the stores they were read from (None for arrays).
    """

    trajectories: list[Trajectory]
    labels: np.ndarray
    num_classes: int
    probe: str = DEFAULT_PROBE
    stores: list[TrajectoryStore] | None = None

    @property
    def names(self) -> list[str]:
        """Run names."""
        return [t.name for t in self.trajectories]

    @property
    def groups(self) -> list[str]:
        """Configuration group of each run."""
        return [t.group for t in self.trajectories]

    def __len__(self) -> int:
        return len(self.trajectories)

    @classmethod
    def from_stores(cls, stores: Sequence[TrajectoryStore], *, group_by: str | None = None) -> Runs:
        """Read the valid snapshots of comparable stores (same probe)."""
        stores = list(stores)
        names = run_names(stores)
        trajs = load_trajectories(stores, names, run_groups(stores, names, group_by))
        first = stores[0]
        return cls(trajs, first.labels, first.num_classes, first.probe_name, stores)

    def embedding(
        self, n_components: int = 10, *, landmarks: bool = True, max_models: int | None = None
    ) -> ReferenceEmbedding:
        """Joint InPCA (eq. 2.2.6) of every model of every run (and, with ``landmarks``,
        ignorance, the geodesic and truth): a :class:`ReferenceEmbedding`."""
        return ReferenceEmbedding.fit(
            [t.log_probs for t in self.trajectories],
            labels=self.labels,
            steps=[t.steps for t in self.trajectories],
            run_names=self.names,
            n_components=n_components,
            landmarks=landmarks,
            max_models=max_models,
            probe_name=self.probe,
        )

    def distances(self, n_points: int = 100, *, index: str = "progress") -> DistanceTable:
        """Trajectory distances at equal progress (eq. 2.2.5) between every pair of runs
        (``index="error"``: at equal probe error instead)."""
        D = trajectory_distance_matrix(self.trajectories, n_points=n_points, index=index)
        return DistanceTable(self.names, self.groups, D)

    def normalised_distance(self, group_a: str, group_b: str, n_points: int = 50) -> GroupCurve:
        """Distance between the mean trajectories of two groups over the average tube radius,
        along progress (thesis Remark 3.3.3; :func:`normalised_group_distance`)."""
        return normalised_group_distance(self.trajectories, group_a, group_b, n_points=n_points)

    def tube_widths(self, n_points: int = 50) -> TubeWidths:
        """Tube widths of each group of two or more runs (§2.5.4.1)."""
        return tube_widths(self.trajectories, n_points=n_points)

    def relative_speed(self, reference: str | int = 0, n_points: int = 50) -> SpeedCurves:
        """Steps needed relative to ``reference`` as curves over progress."""
        return relative_speed(self.trajectories, reference, n_points=n_points)

    def riemann_lengths(self) -> dict[str, float]:
        """Riemann length of each run (``functional.riemann_length``)."""
        return riemann_lengths(self.trajectories)

    def compare(
        self, n_points: int = 100, tube_points: int = 50, figures: bool = True
    ) -> Comparison:
        """Everything ``lightning-manifold compare`` computes (needs 2 runs or more)."""
        if len(self) < 2:
            raise ValueError(f"compare needs at least 2 runs, got {len(self)}")
        return _compare(self.trajectories, n_points=n_points, tube_points=tube_points,
                        figures=figures)  # fmt: skip


def load_runs(
    source: str | os.PathLike[str] | Sequence[Any],
    *,
    probe: str | None = None,
    group_by: str | None = None,
    labels: Any = None,
    names: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    steps: Sequence[Any] | None = None,
) -> Runs:
    """Load runs to compare, from a directory, stores, or arrays.

    Args:
        source: a directory (a store, a run, or a root above several runs), a list of
            directories or :class:`TrajectoryStore` s, or a list of (T, N, C) arrays of
            log-probabilities (or probabilities), one per run.
        probe: probe to use when the stores hold several (default ``train`` if present).
        group_by: grouping of seeds (:func:`run_groups`).
        labels: (N,) int labels; required for arrays.
        names: run names for arrays (default ``run0, run1, ...``).
        groups: configuration group of each array run (default: :func:`run_groups` rule).
        steps: one (T,) array of steps per array run (default ``0..T-1``).

    Raises:
        FileNotFoundError, ValueError: a bad path, no or mismatched stores, bad arrays.
    """
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    items = list(source)
    if not items:
        raise ValueError("`source`: give at least one run directory, store or array")
    if all(isinstance(x, (str, os.PathLike, TrajectoryStore)) for x in items):
        paths = [x.path if isinstance(x, TrajectoryStore) else x for x in items]
        stores = resolve_stores(paths, probe, require_valid=2)
        return Runs.from_stores(stores, group_by=group_by)
    if labels is None:
        raise ValueError("`labels`: the (N,) probe labels are required with array runs")
    y = torch.as_tensor(np.asarray(labels)).to(torch.int64)
    arrays = [as_log_probs(x, f"source[{i}]").to(torch.float64) for i, x in enumerate(items)]
    for i, lp in enumerate(arrays):
        if lp.ndim != 3 or lp.shape[1:] != arrays[0].shape[1:] or lp.shape[1] != y.numel():
            raise ValueError(
                f"`source[{i}]` must be a (T, N={y.numel()}, C) array like `source[0]` "
                f"{tuple(arrays[0].shape)}, got {tuple(lp.shape)}"
            )
    names = list(names) if names is not None else [f"run{i}" for i in range(len(arrays))]
    if len(names) != len(arrays) or len(set(names)) != len(names):
        raise ValueError(f"`names` must be {len(arrays)} unique names, got {names}")
    if groups is None:
        groups = [SEED_SUFFIX.sub("", n) or n for n in names]
    if steps is None:
        steps = [np.arange(lp.shape[0]) for lp in arrays]
    trajs = [
        _trajectory(n, g, lp, y, np.asarray(s), f"`source[{i}]`")
        for i, (n, g, lp, s) in enumerate(zip(names, groups, arrays, steps))
    ]
    return Runs(trajs, y.numpy(), int(arrays[0].shape[-1]), DEFAULT_PROBE, None)


# --------------------------------------------------------------------------------------------
# report


def _png_tag(fig: Figure, alt: str) -> str:
    data = base64.b64encode(plots.figure_to_png(fig)).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _run_table(
    stores: Sequence[TrajectoryStore],
    names: Sequence[str],
    groups: Sequence[str],
    trajectories: Sequence[Trajectory] | None = None,
) -> str:
    head = (
        "<tr><th>run</th><th>group</th><th>snapshots (valid)</th><th>steps</th>"
        "<th>final progress</th><th>final error</th><th>store</th></tr>"
    )
    body = []
    for i, (store, name, group) in enumerate(zip(stores, names, groups)):
        valid = store.valid
        steps = store.steps[valid]
        if trajectories is not None:  # already loaded and projected
            prog, err = float(trajectories[i].progress[-1]), float(trajectories[i].error[-1])
        else:
            lp = torch.from_numpy(np.asarray(store.log_probs(valid_only=True)[-1], np.float64))
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
    stress_at: Sequence[int] = STRESS_DIMS,
) -> str:
    """One self-contained HTML page: a table of runs, the joint InPCA map (interactive with
    plotly.js inline when plotly is installed, plus static views), the spectrum with the
    explained stress (models alone and with landmarks), progress curves, the distance to the
    geodesic, and, with two runs or more, the dendrogram of trajectory distances, the
    within/between-group summary, the tube widths and the relative speed along training.
    A section that cannot be drawn says why. No external resources.
    """
    names = run_names(stores)
    groups = run_groups(stores, names, group_by)
    n_components = max(n_components, max(stress_at))
    comparable = [s for s in stores if int(s.valid.sum()) >= 2]
    trajectories: list[Trajectory] | None = None
    if len(stores) >= 2 and len(comparable) == len(stores):
        # read every store once, and project every model once: the map's progress (eq.
        # 2.2.4) is the comparison's, so the trajectories take it from the map
        lps = [torch.from_numpy(np.asarray(s.log_probs(valid_only=True), dtype=np.float64))
               for s in _progress_bar(stores, desc="loading runs", total=len(stores))]  # fmt: skip
        steps = [s.steps[s.valid] for s in stores]
        labels = torch.from_numpy(stores[0].labels)
        ref = ReferenceEmbedding.fit(
            lps, labels=labels, steps=steps, run_names=names, n_components=n_components,
            max_models=max_models, probe_name=stores[0].probe_name,
        )  # fmt: skip
        whole = ref.num_models == sum(lp.shape[0] for lp in lps)  # else max_models subsampled
        trajectories = [
            _trajectory(name, group, lp, labels, st, f"store '{s.path}'",
                        ref.model_progress[ref.model_run == r] if whole else None)
            for r, (s, name, group, lp, st) in enumerate(zip(stores, names, groups, lps, steps))
        ]  # fmt: skip
    else:
        ref = embed_stores(stores, names, n_components=n_components, max_models=max_models)
    frame = embedding_frame(ref, title=f"{len(stores)} run(s)", groups=groups)
    stress = explained_stress_table(stores, stress_at, ref)
    sections: list[str] = []
    sections.append("<h2>Runs</h2>\n" + _run_table(stores, names, groups, trajectories))
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
    rows = "".join(
        f"<tr><td>{k}</td><td>{m:.1%}</td><td>{w:.1%}</td></tr>"
        for k, m, w in zip(stress.k, stress.models, stress.with_landmarks)
    )
    sections.append(
        "<h2>Spectrum</h2>\n<p>Explained stress (eq. 2.2.8) of the top k axes, for the InPCA of "
        "the models alone and for the map above, which also embeds ignorance, the geodesic and "
        "truth. Time-like axes (negative eigenvalues) in red.</p>\n<table><tr><th>k</th>"
        f"<th>models alone</th><th>with landmarks</th></tr>{rows}</table>\n"
        + _png_tag(plots.spectrum_figure(frame), "spectrum")
    )
    sections.append(
        "<h2>Progress</h2>\n" + _png_tag(plots.progress_figure(frame), "progress curves") + "\n"
        + _png_tag(plots.diagnostics_figure(frame), "distance to the geodesic")
    )  # fmt: skip
    if trajectories is not None:
        comparison = _compare(trajectories, n_points=n_points, tube_points=50, figures=True)
        left, right = comparison.top_split
        split = f"{{{', '.join(left)}}} | {{{', '.join(right)}}}"
        overall = comparison.group_summary().overall()
        dendro = (
            "<h2>Trajectory distances</h2>\n<p>Average-linkage clustering of the distances "
            "between whole trajectories at equal progress (eq. 2.2.5; thesis fig. 2.6a). "
            f"Top split: {html.escape(split)}. Mean distance within a group "
            f"{overall['within']:.4g}, between groups {overall['between']:.4g}.</p>\n"
            + _png_tag(comparison.figure, "dendrogram")
        )
        tube = tube_figure(comparison.tubes)
        if tube is not None:
            dendro += "\n" + _png_tag(tube, "tube widths")
        else:
            dendro += "\n<p>No tube widths: no configuration group holds two runs or more.</p>"
        speed = relative_speed(trajectories, 0)
        dendro += "\n" + _png_tag(
            relative_speed_figure(speed, dict(zip(names, groups))), "relative speed"
        )
        sections.append(dendro)
    else:
        why = (
            f"this report holds {len(stores)} run"
            if len(stores) < 2
            else "runs with fewer than 2 valid snapshots: "
            + ", ".join(n for s, n in zip(stores, names) if int(s.valid.sum()) < 2)
        )
        sections.append(
            "<h2>Trajectory distances</h2>\n<p>Not shown: comparing trajectories (distances at "
            "equal progress, dendrogram, tube widths, relative speed) needs at least 2 runs "
            f"with 2 valid snapshots each; {html.escape(why)}.</p>"
        )
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


# the thesis' train/test, 4-point and sample-subset embeddings (eqs. 2.3.1, 2.4.1, §2.5.3.3);
# imported last because that module builds on Runs and load_runs above
from lightning_manifold.analysis_embeddings import (  # noqa: E402
    FourPointEmbedding,
    JointEmbedding,
    SubsetEmbedding,
    four_point_embedding,
    joint_embedding,
    joint_embedding_figure,
    subset_embedding,
)

"""The thesis' other embeddings of finished runs: train/test, 4-point frame, sample subsets.

Three analyses of thesis ch. 2 that check how faithful an InPCA map is, on runs loaded with
:func:`lightning_manifold.analysis.load_runs`; all are re-exported from
:mod:`lightning_manifold.analysis`::

    from lightning_manifold import analysis

    joint = analysis.joint_embedding("runs/")               # train InPCA + test models, eq. 2.3.1
    joint.explained.to_dict()                               # eq. 2.4.2 for train, test, test alone
    four = analysis.four_point_embedding(analysis.load_runs("runs/"))  # eq. 2.4.1 frame
    four.rmsd, four.explained_four_point                    # Kabsch-Umeyama RMSD to the InPCA
    sub = analysis.subset_embedding("runs/", sizes=(10, 50))   # InPCA from n samples, §2.5.3.3
    sub.table.to_pandas()

Every model of every run (valid snapshots) is one point; m models in all. The quality measure
throughout is the explained pairwise distance (eq. 2.4.2) of the top k axes with their
Minkowski signature.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lightning_manifold import functional as F
from lightning_manifold.analysis import DEFAULT_PROBE, Runs, _new_figure, _Table, load_runs, plots
from lightning_manifold.functional.inpca import InPCAResult
from lightning_manifold.store import TrajectoryStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FourPointEmbedding",
    "FourPointExplained",
    "JointEmbedding",
    "JointExplained",
    "SubsetEmbedding",
    "SubsetExplained",
    "four_point_embedding",
    "joint_embedding",
    "joint_embedding_figure",
    "subset_embedding",
]

#: numbers of axes at which the explained pairwise distance is reported by default
EXPLAINED_DIMS = (1, 3, 10)
#: default subset sizes of §2.5.3.3 (those below the probe's N are used)
SUBSET_SIZES = (10, 50, 500)
#: axes whose |λ| is below this fraction of the largest are null (eq. 2.2.9 divides by them)
_NULL_AXIS = 1e-12

Source = Runs | str | os.PathLike[str] | Sequence[Any]


# --------------------------------------------------------------------------------------------
# shared pieces


def _as_runs(source: Source, probe: str | None, name: str) -> Runs:
    """``source`` itself when it is a :class:`Runs`, else ``load_runs(source, probe=probe)``."""
    if isinstance(source, Runs):
        return source
    if isinstance(source, (str, os.PathLike, TrajectoryStore)) or (
        isinstance(source, Sequence)
        and all(isinstance(x, (str, os.PathLike, TrajectoryStore)) for x in source)
    ):
        return load_runs(source, probe=probe)
    raise TypeError(
        f"`{name}` must be a Runs (analysis.load_runs), a directory or a list of stores, got "
        f"{type(source).__name__}"
    )


@dataclass
class _Models:
    """Every valid snapshot of every run, concatenated in run order."""

    log_probs: Tensor  # (m, N, C) float64
    run: np.ndarray  # (m,) run index
    step: np.ndarray  # (m,) optimizer step
    progress: Tensor  # (m,) float64


def _models(runs: Runs) -> _Models:
    ts = runs.trajectories
    return _Models(
        torch.cat([t.log_probs.to(torch.float64) for t in ts]),
        np.concatenate([np.full(len(t.steps), i, dtype=np.int64) for i, t in enumerate(ts)]),
        np.concatenate([np.asarray(t.steps, dtype=np.int64) for t in ts]),
        torch.cat([t.progress.to(torch.float64).reshape(-1) for t in ts]),
    )


def _check_ks(ks: Sequence[int]) -> list[int]:
    ok = all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in ks)
    if not ks or not ok:
        raise ValueError(f"`ks` must be positive integers (numbers of axes), got {list(ks)}")
    return [int(k) for k in ks]


def _fit(D: Tensor, k: int) -> InPCAResult:
    """InPCA (eq. 2.2.6) with at most k axes and none of them null, so eq. 2.2.9 can place
    models: the centred matrix of m models has rank at most m - 1."""
    m = D.shape[0]
    if m < 3:
        raise ValueError(f"an embedding to place models into needs at least 3 models, got {m}")
    res = F.inpca(D, n_components=min(k, m - 1))
    if not float(res.eigenvalues.abs().max()) > 0:
        raise ValueError(f"the {m} models are identical (all distances 0): nothing to embed")
    return F.nonzero_components(res, tolerance=_NULL_AXIS)


def _explained(D: Tensor, X: Tensor, signs: Tensor, ks: Sequence[int]) -> np.ndarray:
    """Explained pairwise distance (eq. 2.4.2) of the top k columns of X, for each k in ks
    (a k beyond the columns is clipped to them)."""
    return np.array(
        [
            float(F.explained_pairwise_distance(D, X[:, : min(k, X.shape[1])], signs[:k]))
            for k in ks
        ],
        dtype=np.float64,
    )


def _coordinate_columns(prefix: str, X: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    A = np.asarray(X.detach().to("cpu").numpy() if isinstance(X, Tensor) else X)
    return {f"{prefix}{i + 1}": A[:, i] for i in range(A.shape[1])}


def _np(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu").numpy()


# --------------------------------------------------------------------------------------------
# joint train/test embedding (eq. 2.3.1)


@dataclass
class JointExplained(_Table):
    """Explained pairwise distance (eq. 2.4.2) of the joint train/test embedding at k axes.

    Attributes:
        k: (K,) numbers of axes.
        train: (K,) train models in the train InPCA (eq. 2.2.6).
        test: (K,) test models placed into the train InPCA by eq. 2.3.1, against the test
            distances: the joint embedding's quality.
        test_alone: (K,) test models in their own InPCA, for comparison (the thesis reports
            0.52 joint against 0.56 alone at k = 10 on CIFAR-10).
    """

    k: np.ndarray
    train: np.ndarray
    test: np.ndarray
    test_alone: np.ndarray


@dataclass
class JointEmbedding(_Table):
    """Train-probe InPCA of every model, with the test-probe models of the same weights placed
    into it (thesis §2.3, eq. 2.3.1; fig. 2.5a). m models, k axes.

    Attributes:
        names: (R,) run names; model_run: (m,) run index of each model; model_step: (m,) step.
        train_coords: (m, k) train models in the train InPCA.
        test_coords: (m, k) the same models on the test probe, placed by eq. 2.3.1.
        eigenvalues: (k,) eigenvalues of the train InPCA (negative: time-like).
        explained: :class:`JointExplained`.
    """

    names: list[str]
    model_run: np.ndarray
    model_step: np.ndarray
    train_coords: np.ndarray
    test_coords: np.ndarray
    eigenvalues: np.ndarray
    explained: JointExplained

    @property
    def signs(self) -> np.ndarray:
        """(k,) +1 space-like, -1 time-like axes."""
        return np.where(self.eigenvalues < 0, -1.0, 1.0)

    def to_dict(self) -> dict[str, np.ndarray]:
        """One row per model: ``run, step, train_pc1..k, test_pc1..k``."""
        return {
            "run": np.asarray(self.names)[self.model_run],
            "step": self.model_step,
            **_coordinate_columns("train_pc", self.train_coords),
            **_coordinate_columns("test_pc", self.test_coords),
        }


def _paired_runs(train: Runs, test: Runs) -> Runs:
    """``test`` reordered to the runs of ``train``, checked to hold the same models."""
    if sorted(train.names) != sorted(test.names):
        raise ValueError(
            f"`train` and `test` must hold the same runs, got {train.names} and {test.names}"
        )
    by_name = {t.name: t for t in test.trajectories}
    ordered = [by_name[n] for n in train.names]
    for a, b in zip(train.trajectories, ordered):
        if len(a.steps) != len(b.steps) or not np.array_equal(a.steps, b.steps):
            raise ValueError(
                f"run '{a.name}': the train and test probes must hold the same models (eq. 2.3.1 "
                f"pairs them), got {len(a.steps)} train snapshots at steps "
                f"{np.asarray(a.steps).tolist()[:8]}... and {len(b.steps)} test snapshots at "
                f"steps {np.asarray(b.steps).tolist()[:8]}..."
            )
    return Runs(ordered, test.labels, test.num_classes, test.probe, None)


def joint_embedding(
    train: Source,
    test: Source | None = None,
    *,
    ks: Sequence[int] = EXPLAINED_DIMS,
    train_probe: str = DEFAULT_PROBE,
    test_probe: str = "test",
) -> JointEmbedding:
    """Joint train/test embedding (thesis §2.3, eq. 2.3.1).

    An InPCA (eq. 2.2.6) of the m train-probe models D (m, m); the test-probe models of the
    same weights are placed into it from their test distances D' (m, m) by eq. 2.3.1,
    ``W'_uv = -D'_uv / 2 + (r_u + r_v - g) / 2`` with r the row means and g the mean of the
    *train* D, ``X' = W' U / (sign(λ) sqrt|λ|)`` (``F.project_paired``). The thesis' conditions:
    the same models on both probes (checked), and the train centring term standing in for the
    test one (self-averaging; the explained distances tell how well it does).

    Args:
        train: the runs on the train probe (a :class:`Runs`), or a directory / list of stores
            holding both probes.
        test: the same runs on the test probe; default: ``train`` loaded with ``test_probe``
            (only when ``train`` is a directory or stores).
        ks: numbers of axes at which eq. 2.4.2 is reported; the embedding keeps max(ks) axes
            (at most m - 1; a larger k reports the value at all of them).
        train_probe, test_probe: probe names used when loading from directories or stores.

    Returns:
        :class:`JointEmbedding`.

    Raises:
        ValueError: the two probes hold different runs or different snapshots of a run,
            fewer than 3 models, bad ``ks``.
    """
    ks = _check_ks(ks)
    if test is None:
        if isinstance(train, Runs):
            raise ValueError("`test`: give the test-probe runs when `train` is a Runs")
        test = train
    tr = _as_runs(train, train_probe, "train")
    te = _paired_runs(tr, _as_runs(test, test_probe, "test"))
    a, b = _models(tr), _models(te)
    D = F.bhattacharyya_from_log_probs(a.log_probs)
    D_test = F.bhattacharyya_from_log_probs(b.log_probs)
    res = _fit(D, max(ks))
    X_test = F.project_paired(
        D_test, res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors
    )
    alone = _fit(D_test, max(ks))
    explained = JointExplained(
        np.array(ks),
        _explained(D, res.coords, res.signs, ks),
        _explained(D_test, X_test, res.signs, ks),
        _explained(D_test, alone.coords, alone.signs, ks),
    )
    return JointEmbedding(
        tr.names, a.run, a.step, _np(res.coords), _np(X_test), _np(res.eigenvalues), explained
    )


def joint_embedding_figure(
    joint: JointEmbedding, *, axes: tuple[int, int] = (0, 1), dpi: float = 100.0
) -> Figure:
    """The joint train/test map (thesis fig. 2.5a) and its explained pairwise distances.

    Left: two InPCA axes, each run a colour, its train models as a solid line and its test
    models (placed by eq. 2.3.1) as a translucent dashed line with hollow markers. Right:
    eq. 2.4.2 against k for the train models, the placed test models and the test models
    embedded alone.

    Args:
        joint: :func:`joint_embedding`'s result.
        axes: the two 0-based axes to draw.
        dpi: resolution.

    Raises:
        ValueError: an axis the embedding does not have.
    """
    k = joint.train_coords.shape[1]
    if len(axes) != 2 or not all(0 <= int(a) < k for a in axes):
        raise ValueError(f"`axes` must be two axes in [0, {k - 1}], got {axes!r}")
    a, b = (int(v) for v in axes)
    fig = _new_figure((12.0, 4.6), dpi)
    ax, ax_e = fig.subplots(1, 2, width_ratios=(1.6, 1.0))
    colors = plots.run_colors(len(joint.names))
    for r, (name, color) in enumerate(zip(joint.names, colors)):
        rows = np.flatnonzero(joint.model_run == r)
        rows = rows[np.argsort(joint.model_step[rows], kind="stable")]
        tr, te = joint.train_coords[rows], joint.test_coords[rows]
        ax.plot(tr[:, a], tr[:, b], "-o", color=color, ms=3.5, lw=1.2, label=name)
        ax.plot(te[:, a], te[:, b], "--o", color=color, ms=3.5, lw=1.0, alpha=0.45, mfc="none")

    def label(i: int) -> str:
        return f"PC{i + 1}" + (" (time-like)" if joint.eigenvalues[i] < 0 else "")

    ax.set_xlabel(label(a))
    ax.set_ylabel(label(b))
    ax.set_title("train (solid) and test (dashed, eq. 2.3.1) models")
    if len(joint.names) <= plots.MAX_LEGEND_RUNS:
        ax.legend(
            fontsize=7, title="run", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1),
            ncols=1 if len(joint.names) <= 12 else 2,
        )  # fmt: skip
    e = joint.explained
    for values, name, style in (
        (e.train, "train", "-o"),
        (e.test, "test, placed (eq. 2.3.1)", "--s"),
        (e.test_alone, "test, own InPCA", ":^"),
    ):
        ax_e.plot(e.k, values, style, label=name)
    ax_e.set_xscale("log")
    ax_e.set_xticks(e.k, [str(int(v)) for v in e.k])
    ax_e.set_xlabel("k (axes)")
    ax_e.set_ylabel("explained pairwise distance (eq. 2.4.2)")
    ax_e.legend(fontsize=8)
    ax_e.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# 4-point basis (eq. 2.4.1)


@dataclass
class FourPointExplained(_Table):
    """Explained pairwise distance (eq. 2.4.2) of the full InPCA of the models at k axes, to
    set beside the 4-point frame's (``FourPointEmbedding.explained_four_point``).

    Attributes:
        k: (K,) numbers of axes.
        inpca: (K,) the InPCA of all m models (eq. 2.2.6) with k axes.
    """

    k: np.ndarray
    inpca: np.ndarray


@dataclass
class FourPointEmbedding(_Table):
    """Every model placed in the frame of [P0, P_s1, P_s2, P*] (thesis §2.4, eq. 2.4.1,
    figs. 2.9-2.10), compared with the full InPCA of the same m models. The frame has
    k4 <= 3 axes.

    Attributes:
        names, model_run, model_step: runs, and the run and step of each model.
        model_progress: (m,) progress (eq. 2.2.4) of each model.
        levels: (2,) s1, s2; sigma: σ of eq. 2.4.1; basis_weight: (2,) its normaliser Z
            (near 0: no model near that level, P_s is the nearest model's).
        basis_distances: (4, 4) d_B among [P0, P_s1, P_s2, P*].
        basis_coords: (4, k4) their coordinates; eigenvalues: (k4,) of the frame.
        coords: (m, k4) the models placed by eq. 2.2.9.
        inpca_coords: (m, k4) the top k4 axes of the full InPCA; inpca_eigenvalues: (k4,).
        aligned: (m, k4) ``coords`` moved onto ``inpca_coords`` by Kabsch-Umeyama
            (translation, rotation, sign flips; space-like and time-like axes separately when
            the two signatures agree).
        rmsd: root-mean-square deviation of ``aligned`` from ``inpca_coords``.
        same_signature: whether the frame and the InPCA agree on which axes are time-like.
        explained_four_point: eq. 2.4.2 of the frame (all k4 axes).
        explained: :class:`FourPointExplained` of the full InPCA.
    """

    names: list[str]
    model_run: np.ndarray
    model_step: np.ndarray
    model_progress: np.ndarray
    levels: np.ndarray
    sigma: float
    basis_weight: np.ndarray
    basis_distances: np.ndarray
    basis_coords: np.ndarray
    eigenvalues: np.ndarray
    coords: np.ndarray
    inpca_coords: np.ndarray
    inpca_eigenvalues: np.ndarray
    aligned: np.ndarray
    rmsd: float
    same_signature: bool
    explained_four_point: float
    explained: FourPointExplained

    def to_dict(self) -> dict[str, np.ndarray]:
        """One row per model: ``run, step, progress, pc1..k4`` (frame), ``aligned1..k4``,
        ``inpca1..k4``."""
        return {
            "run": np.asarray(self.names)[self.model_run],
            "step": self.model_step,
            "progress": self.model_progress,
            **_coordinate_columns("pc", self.coords),
            **_coordinate_columns("aligned", self.aligned),
            **_coordinate_columns("inpca", self.inpca_coords),
        }


def four_point_embedding(
    runs: Source,
    *,
    levels: tuple[float, float] = (0.3, 0.7),
    sigma: float = F.BASIS_WIDTH,
    ks: Sequence[int] = EXPLAINED_DIMS,
    probe: str | None = None,
) -> FourPointEmbedding:
    """The 4-point basis embedding of a set of runs and its fidelity (thesis §2.4).

    P_s1, P_s2 are the progress-weighted averages (eq. 2.4.1) of all m models; the InPCA of
    [P0, P_s1, P_s2, P*] is the frame and every model is placed by eq. 2.2.9
    (``F.four_point_coordinates``). The frame is aligned onto the top k4 axes of the full
    InPCA of the models by Kabsch-Umeyama (``F.procrustes_align``) and the RMSD reported; the
    explained pairwise distance (eq. 2.4.2) is given for the frame and for the full InPCA at
    each k in ``ks``.

    Args:
        runs: a :class:`Runs`, a directory or a list of stores.
        levels: (s1, s2) progress levels in [0, 1] (thesis: s1 = 1 - s2 = 0.2 or 0.3).
        sigma: σ of eq. 2.4.1 (thesis: 0.05).
        ks: numbers of axes of the full InPCA to report.
        probe: probe name when loading from directories or stores.

    Returns:
        :class:`FourPointEmbedding`.

    Raises:
        ValueError: bad ``levels``, ``sigma`` or ``ks``; fewer than 3 models.
    """
    ks = _check_ks(ks)
    r = _as_runs(runs, probe, "runs")
    mod = _models(r)
    four = F.four_point_coordinates(
        mod.log_probs, mod.progress, torch.as_tensor(r.labels), levels, sigma
    )
    frame = four.basis.embedding
    k4 = frame.eigenvalues.numel()
    D = F.bhattacharyya_from_log_probs(mod.log_probs)
    full = _fit(D, max([*ks, k4]))
    target = full.coords[:, :k4]
    same = target.shape[1] == k4 and bool((full.signs[:k4] == frame.signs).all())
    al = F.procrustes_align(four.coords, target, signs=frame.signs if same else None)
    return FourPointEmbedding(
        names=r.names,
        model_run=mod.run,
        model_step=mod.step,
        model_progress=_np(mod.progress),
        levels=np.asarray(levels, dtype=np.float64),
        sigma=float(sigma),
        basis_weight=_np(four.weight),
        basis_distances=_np(four.basis.distances),
        basis_coords=_np(frame.coords),
        eigenvalues=_np(frame.eigenvalues),
        coords=_np(four.coords),
        inpca_coords=_np(target),
        inpca_eigenvalues=_np(full.eigenvalues[:k4]),
        aligned=_np(al.aligned),
        rmsd=float(al.rmsd),
        same_signature=same,
        explained_four_point=float(F.explained_pairwise_distance(D, four.coords, frame.signs)),
        explained=FourPointExplained(np.array(ks), _explained(D, full.coords, full.signs, ks)),
    )


# --------------------------------------------------------------------------------------------
# embedding from a subset of the samples (§2.5.3.3)


@dataclass
class SubsetExplained(_Table):
    """Explained pairwise distance (eq. 2.4.2), against the d_B on all N samples, of the
    embedding built from n samples, one row per (n, k); n = N is the full embedding.

    Attributes:
        num_samples: (S,) n; k: (S,) number of axes; explained: (S,) eq. 2.4.2.
    """

    num_samples: np.ndarray
    k: np.ndarray
    explained: np.ndarray


@dataclass
class SubsetEmbedding:
    """InPCA built from d_B on random subsets of the probe samples, with the models' distances
    on all N samples placed into it by eq. 2.3.1 (thesis §2.5.3.3, figs. 2.5b, 2.13, 2.14).

    Attributes:
        names, model_run, model_step: runs, and the run and step of each of the m models.
        num_samples: N, the probe's sample count.
        seed: seed of the (nested) subsets.
        samples: {n: (n,) sample indices}.
        coords: {n: (m, k) all-sample models placed into the n-sample InPCA}; n = N is the
            full InPCA.
        eigenvalues: {n: (k,) eigenvalues of the n-sample InPCA}.
        table: :class:`SubsetExplained`.
    """

    names: list[str]
    model_run: np.ndarray
    model_step: np.ndarray
    num_samples: int
    seed: int
    samples: dict[int, np.ndarray]
    coords: dict[int, np.ndarray]
    eigenvalues: dict[int, np.ndarray]
    table: SubsetExplained

    def to_dict(self) -> dict[str, np.ndarray]:
        """The table's columns (``num_samples, k, explained``)."""
        return self.table.to_dict()

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame`` (needs pandas)."""
        return self.table.to_pandas()


def subset_embedding(
    runs: Source,
    sizes: Sequence[int] | None = None,
    *,
    ks: Sequence[int] = EXPLAINED_DIMS,
    seed: int = 0,
    probe: str | None = None,
) -> SubsetEmbedding:
    """Embeddings from a subset of the samples and their explained pairwise distance (§2.5.3.3).

    For each n: d_B (eq. 2.2.2) of the m models on n samples drawn at random
    (``F.sample_subset``: nested, seeded), its InPCA (eq. 2.2.6), the all-sample distance
    matrix D placed into it by eq. 2.3.1 (``F.project_paired``: the same models measured on
    all samples), and eq. 2.4.2 of the top k axes against D. The full embedding (n = N) is
    always reported too.

    Args:
        runs: a :class:`Runs`, a directory or a list of stores.
        sizes: subset sizes n, each in [1, N]; default those of 10, 50, 500 below N.
        ks: numbers of axes; each embedding keeps max(ks) (at most m - 1).
        seed: seed of the sample subsets.
        probe: probe name when loading from directories or stores.

    Returns:
        :class:`SubsetEmbedding`.

    Raises:
        ValueError: a size is not an integer in [1, N]; bad ``ks``; fewer than 3 models.
    """
    ks = _check_ks(ks)
    r = _as_runs(runs, probe, "runs")
    mod = _models(r)
    N = mod.log_probs.shape[1]
    if sizes is None:
        sizes = [n for n in SUBSET_SIZES if n < N]
    ns: list[int] = []
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= N:
            raise ValueError(
                f"`sizes` must be integers in [1, N] with N = {N} probe samples, got {n!r}"
            )
        if int(n) not in ns and int(n) != N:
            ns.append(int(n))
    D = F.bhattacharyya_from_log_probs(mod.log_probs)
    samples, coords, eigenvalues = {}, {}, {}
    rows: list[tuple[int, int, float]] = []
    for n in [*ns, N]:
        idx = F.sample_subset(N, n, seed=seed)
        D_n = D if n == N else F.bhattacharyya_from_log_probs(mod.log_probs[:, idx])
        res = _fit(D_n, max(ks))
        X = F.project_paired(D, res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors)
        samples[n], coords[n], eigenvalues[n] = _np(idx), _np(X), _np(res.eigenvalues)
        rows += [(n, k, e) for k, e in zip(ks, _explained(D, X, res.signs, ks))]
    cols = list(zip(*rows))
    table = SubsetExplained(
        np.array(cols[0], dtype=np.int64),
        np.array(cols[1], dtype=np.int64),
        np.array(cols[2], dtype=np.float64),
    )
    return SubsetEmbedding(
        r.names, mod.run, mod.step, N, int(seed), samples, coords, eigenvalues, table
    )

"""Per-snapshot geometry of a live run: where it is on the map, how far along, how far off.

:class:`OnlineManifold` turns each :class:`~lightning_manifold.snapshot.Snapshot` into an
:class:`OnlineResult` (coordinates, progress, distances, off-manifold residual, comparison with
reference runs at equal progress) and keeps what a figure needs (:meth:`OnlineManifold.frame`).

With a :class:`~lightning_manifold.embedding.ReferenceEmbedding` every snapshot is projected
into the fixed reference map (eq. 2.2.9). Without one, the run is drawn in the thesis' fixed
4-point frame (§2.4, eq. 2.4.1): an InPCA of ignorance, truth and the run's progress-weighted
averages P_s1, P_s2, into which every snapshot is placed from its four distances. Memory and
work per snapshot are bounded whatever the number of snapshots (O(N * C) state, O(T * k)
coordinates).

Example::

    online = OnlineManifold(probe.labels, probe.num_classes, reference="baseline.npz")
    result = online.update(snapshot)          # None for an invalid (diverged) snapshot
    logger.log_metrics({f"manifold/train/{k}": v for k, v in result.scalars().items()}, step)
    figure = plot_manifold(online.frame())
"""

from __future__ import annotations

import collections
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from lightning_manifold import functional as F
from lightning_manifold.embedding import ReferenceEmbedding
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.functional.basis import _four_point_distances
from lightning_manifold.functional.distances import _few_pair_distances
from lightning_manifold.functional.prediction import _as_tensor, as_log_probs
from lightning_manifold.snapshot import Snapshot

__all__ = ["RESULTS_KEPT", "OnlineManifold", "OnlineResult"]

_NAN = math.nan
#: :attr:`OnlineManifold.results` keeps this many latest results (about 1 KB each), so memory
#: stays bounded however many snapshots a run places.
RESULTS_KEPT = 4096


@dataclass(frozen=True)
class OnlineResult:
    """The geometry of one snapshot (k displayed components, C classes).

    Attributes:
        probe, step, epoch: identify the snapshot.
        coords: (k,) coordinates on the map (eq. 2.2.9, or the aligned self-embedding).
        time_like: (k,) bool, axes with a negative eigenvalue (eq. 2.2.6).
        progress: projection onto the ignorance->truth geodesic (eq. 2.2.4).
        distance_to_ignorance, distance_to_truth: d_B to P0 and P* (eq. 2.2.2).
        distance_to_geodesic: d_G to the geodesic at ``progress`` (eq. 2.2.4's minimum).
        error: probe error (argmax differs from the label).
        residual: 1 - explained pairwise distance (eq. 2.4.2) of this point's row: the fraction
            of its distances to the embedded points that the top-k coordinates miss.
        per_class_progress: (C,) progress on each class's samples (thesis fig. 3.2a; NaN for a
            class absent from the probe).
        reference_distance: d_B to the nearest reference run at equal progress (integrand of
            eq. 2.2.5); NaN without a reference or when no run reached this progress.
        reference_run: name of that nearest run (None when undefined).
        reference_step: the step at which that run reached the same progress (interpolated).
        relative_speed: ``step / reference_step`` (0.5: this run gets there in half the steps).
        alignment_rmsd: RMSD of the Procrustes alignment of the refitted self-embedding onto the
            previous frame (NaN with a reference, on the first frame and between refits).
        off_manifold: residual or reference distance above the user's threshold.
        valid: always True (invalid snapshots give no result).
    """

    probe: str
    step: int
    epoch: int
    coords: np.ndarray
    time_like: np.ndarray
    progress: float
    distance_to_ignorance: float
    distance_to_truth: float
    distance_to_geodesic: float
    error: float
    residual: float
    per_class_progress: np.ndarray
    reference_distance: float = _NAN
    reference_run: str | None = None
    reference_step: float = _NAN
    relative_speed: float = _NAN
    alignment_rmsd: float = _NAN
    off_manifold: bool = False
    valid: bool = True

    def scalars(self) -> dict[str, float]:
        """Flat scalars to log (the callback prefixes ``manifold/<probe>/``).

        Keys: ``progress``, ``distance_to_ignorance``, ``distance_to_truth``,
        ``distance_to_geodesic``, ``pc1..pck``, ``residual``, ``reference_distance``,
        ``reference_step``, ``relative_speed``, ``alignment_rmsd``, ``off_manifold`` (0/1),
        ``progress_class_<c>``. A key whose value is undefined at this snapshot (NaN: no
        reference, a progress no reference run reached, step 0, the first self-embedding frame,
        a class absent from the probe) is left out.
        """
        out: dict[str, float] = {
            "progress": self.progress,
            "distance_to_ignorance": self.distance_to_ignorance,
            "distance_to_truth": self.distance_to_truth,
            "distance_to_geodesic": self.distance_to_geodesic,
        }
        for i, v in enumerate(self.coords.tolist()):
            out[f"pc{i + 1}"] = v
        out["residual"] = self.residual
        out["reference_distance"] = self.reference_distance
        out["reference_step"] = self.reference_step
        out["relative_speed"] = self.relative_speed
        out["alignment_rmsd"] = self.alignment_rmsd
        out["off_manifold"] = float(self.off_manifold)
        for c, v in enumerate(self.per_class_progress.tolist()):
            out[f"progress_class_{c}"] = v
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def _row_residual(d: Any, x: Any, X: Any, signs: Any) -> Any:
    """1 - explained pairwise distance (eq. 2.4.2) restricted to one point's row (0-dim).

    Args:
        d: (m,) d_B of the point to the embedded points.
        x: (k,) its coordinates; X: (m, k) the embedded points' coordinates.
        signs: (k,) signs of the eigenvalues (Minkowski metric, eq. 2.2.7).

    All float64 tensors, or all numpy arrays (a capture on the CPU).

    Returns:
        0-dim (NaN when every distance is 0); a tensor is left on the device so the caller
        moves it to the host together with the other scalars.
    """
    xp = torch if isinstance(d, Tensor) else np
    d2 = ((x[None, :] - X) ** 2 * signs).sum(-1)  # squared Minkowski distances (eq. 2.2.7)
    total = d.sum()
    return xp.abs(d - d2).sum() / xp.where(total > 0, total, math.nan)


#: per-snapshot scalars that the callback may already have computed at capture
_GEOMETRY_KEYS = (
    "progress",
    "distance_to_geodesic",
    "distance_to_ignorance",
    "distance_to_truth",
    "error",
)


class _Columns:
    """Append-only float64 rows of a fixed width, amortised O(1) per row, O(T * width) memory."""

    def __init__(self, width: int) -> None:
        self._data = np.empty((64, width), dtype=np.float64)
        self.n = 0

    def append(self, row: list[float]) -> None:
        if self.n == self._data.shape[0]:
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self.n] = row
        self.n += 1

    @property
    def array(self) -> np.ndarray:
        """(T, width) view of the rows so far."""
        return self._data[: self.n]

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)


# --------------------------------------------------------------------------- the live frame

#: P_s stops accumulating (is fixed) once the run's progress has passed s by this many sigma:
#: the Gaussian weight of later models is then below exp(-4.5) = 1.1% of the peak
_FIX_AFTER_SIGMA = 3.0
#: before that, the frame is refitted each time the run's highest progress crosses a multiple
#: of this (at most 1 / this + 2 refits in a run)
_REFIT_PROGRESS_STEP = 0.1
#: a level's running P_s replaces the geodesic stand-in once the run is within this many sigma
_USE_AFTER_SIGMA = 2.0
# A snapshot more than ~7σ from a level (Gaussian weight below this) is not added to its sum:
# a run reaches the level (weights ~0.1 and up) before the sum is used, so even 10^5 skipped
# snapshots change the average P_s by less than 1e-6 of itself.
_NEGLIGIBLE_WEIGHT = 1e-12
# On the CPU snapshots are placed with numpy (a capture is a few dozen small operations, each
# several times cheaper than in torch); the tests also run the torch code accelerators use.
_PLACE_ON_HOST = True


@dataclass
class _Fit:
    """One 4-point InPCA frame (thesis §2.4) and what placing a model in it needs."""

    basis_log_probs: Tensor  # (2, N, C) float64 log-probabilities of P_s1, P_s2
    basis_sqrt: Tensor  # (2, N, C) float64 sqrt-probabilities of P_s1, P_s2
    embedding: F.InPCAResult  # axes sorted by |lambda|, oriented ignorance -> truth
    coords: Tensor  # (4, k) [P0, P_s1, P_s2, P*], zero-padded to k
    signs: Tensor  # (k,) Minkowski signature of the k displayed axes (+1 for padding)
    geodesic: Tensor  # (g + 2, k) points of the ignorance -> truth geodesic
    host: _HostPlacement | None = None  # the same frame in numpy, for captures on the CPU

    def place(self, d: Tensor, k: int) -> Tensor:
        """(q, 4) distances to [P0, P_s1, P_s2, P*] -> (q, k) coordinates (eq. 2.2.9)."""
        e = self.embedding
        x = F.project_from_stats(d, e.row_means, e.grand_mean, e.eigenvalues, e.eigenvectors)
        return _pad(x.to(torch.float64), k)


@dataclass(frozen=True)
class _HostPlacement:
    """A CPU fit as numpy arrays: a snapshot is placed in a few dozen microseconds.

    Eq. 2.2.9 is affine in the distances: ``x = offset + d @ linear``, both read off
    :meth:`_Fit.place` itself (at d = 0 and at the unit vectors) when the frame is fitted.
    """

    basis_sqrt: np.ndarray  # (2, N, C)
    offset: np.ndarray  # (k,)
    linear: np.ndarray  # (4, k)
    coords: np.ndarray  # (4, k)
    signs: np.ndarray  # (k,)
    time_like: np.ndarray  # (k,) bool

    @classmethod
    def of(cls, fit: _Fit, k: int) -> _HostPlacement:
        unit = torch.cat([torch.zeros(1, 4), torch.eye(4)]).to(fit.coords)
        at = fit.place(unit, k).numpy()
        return cls(
            basis_sqrt=fit.basis_sqrt.numpy(),
            offset=at[0],
            linear=at[1:] - at[0],
            coords=fit.coords.numpy(),
            signs=fit.signs.numpy(),
            time_like=fit.signs.numpy() < 0,
        )


def _pad(x: Tensor, k: int) -> Tensor:
    """(q, j) -> (q, k): the frame has at most 3 non-null axes."""
    if x.shape[1] >= k:
        return x[:, :k]
    return torch.cat([x, x.new_zeros((x.shape[0], k - x.shape[1]))], dim=1)


class _FourPointFrame:
    """The run's live frame: InPCA of [P0, P_s1, P_s2, P*] (eq. 2.4.1), bounded state.

    P_s (eq. 2.4.1) is kept as running sums ``Σ w(s_P) P`` and ``Σ w(s_P)`` over the snapshots:
    O(N * C) memory whatever the number of snapshots. While the run is still far below a level
    s (highest progress < s - 2σ), the geodesic point at progress s (eq. 2.2.3, whose progress
    is s exactly) stands in for P_s, so the frame is defined from the first snapshot on. Then
    the run's own running P_s is used; it is fixed once the run has passed s + 3σ. The frame is
    refitted only when a level is fixed or the run's highest progress crosses a multiple of 0.1
    while a basis point is still moving: at most 12 refits in a run, none once both are fixed.
    At a refit the coordinates kept so far are moved onto the new frame by a Kabsch-Umeyama
    alignment of the basis points (rotation and sign flips per signature block, and a
    translation; thesis §2.4). The drawn axes are always the current frame's eigen-axes, sorted
    by |lambda|.
    """

    def __init__(
        self,
        labels: Tensor,
        num_classes: int,
        *,
        n_components: int,
        levels: tuple[float, float],
        sigma: float,
        n_geodesic: int,
    ) -> None:
        f64 = torch.float64
        n, c = labels.shape[0], num_classes
        self.labels = labels
        self.num_classes = c
        self.k = n_components
        self.levels = levels
        self.sigma = sigma
        self.geodesic_alphas = torch.linspace(0.0, 1.0, n_geodesic + 2, dtype=f64)
        # eq. 2.4.1 numerators and normalisers, until both basis points are fixed
        self._sums: Tensor | None = torch.zeros((2, n, c), dtype=f64, device=labels.device)
        self._weights = [0.0, 0.0]
        self.fixed = [False, False]  # P_s no longer accumulates
        self._settled = [False, False]  # fixed, and the current fit uses the fixed P_s
        self.max_progress = -math.inf
        self._milestone = -1
        self.refits = 0
        self._stand_ins = F.geodesic_log_probs(labels, c, torch.tensor(levels, dtype=f64)).to(
            labels.device
        )
        self.fit = self._fit(self._stand_ins)
        self.coords = _Columns(n_components)  # (T, k) coordinates of the snapshots

    @property
    def nbytes(self) -> int:
        """Bytes of tensor/array state: O(N * C) plus O(T * k)."""
        f = self.fit
        sums = 0 if self._sums is None else self._sums.numel() * 8
        return sums + (f.basis_log_probs.numel() + f.basis_sqrt.numel()) * 8 + self.coords.nbytes

    def _fit(self, basis_log_probs: Tensor) -> _Fit:
        k = self.k
        basis = F.four_point_basis(basis_log_probs, self.labels, n_components=min(k, 3))
        e = basis.embedding
        signs = _pad(e.signs.to(torch.float64).reshape(1, -1), k).reshape(-1)
        signs = torch.where(signs == 0, 1.0, signs)
        fit = _Fit(
            basis_log_probs=basis_log_probs,
            basis_sqrt=torch.exp(0.5 * basis_log_probs),
            embedding=e,
            coords=_pad(e.coords.to(torch.float64), k),
            signs=signs,
            geodesic=torch.zeros(0),
        )
        interior = F.geodesic_log_probs(self.labels, self.num_classes, self.geodesic_alphas[1:-1])
        inner = fit.place(self._distances(interior, fit), k)
        fit.geodesic = torch.cat([fit.coords[:1], inner, fit.coords[3:]])
        if fit.coords.device.type == "cpu" and _PLACE_ON_HOST:
            fit.host = _HostPlacement.of(fit, k)
        return fit

    def _accumulate(self, root: Tensor | np.ndarray, progress: float) -> bool:
        """Add one snapshot ((N, C) float64 sqrt-probabilities, a tensor or on the CPU an
        array) to the running sums of eq. 2.4.1; True when a refit is due."""
        self.max_progress = max(self.max_progress, progress)
        if self._sums is None:
            return False
        p = None
        newly_fixed = False
        for j, s in enumerate(self.levels):
            if self.fixed[j]:
                continue
            w = math.exp(-((progress - s) ** 2) / (2 * self.sigma**2))
            if w > _NEGLIGIBLE_WEIGHT:
                p = torch.as_tensor(root * root) if p is None else p
                self._sums[j].add_(p, alpha=w)
                self._weights[j] += w
            if self.max_progress >= s + _FIX_AFTER_SIGMA * self.sigma and self._weights[j] > 0:
                self.fixed[j] = newly_fixed = True
        milestone = math.floor(self.max_progress / _REFIT_PROGRESS_STEP)
        crossed = milestone > self._milestone
        self._milestone = max(self._milestone, milestone)
        moving = any(
            not self._settled[j] and self._uses_average(j) for j in range(len(self.levels))
        )
        return newly_fixed or (crossed and moving)

    def _uses_average(self, j: int) -> bool:
        """Whether level j's basis point is the run's own P_s (else the geodesic stand-in)."""
        near = self.max_progress >= self.levels[j] - _USE_AFTER_SIGMA * self.sigma
        return self._weights[j] > 0 and (self.fixed[j] or near)

    def _refit(self) -> float:
        """Refit on the current basis points, move the kept coordinates onto it; the RMSD."""
        assert self._sums is not None
        old = self.fit
        basis = self._stand_ins.clone()
        for j in range(2):
            if self._uses_average(j):
                mean = self._sums[j] / self._weights[j]  # eq. 2.4.1
                basis[j] = torch.log(mean / mean.sum(-1, keepdim=True))
        self._settled = list(self.fixed)
        if all(self.fixed):
            self._sums = None  # both basis points fixed: the sums are no longer needed
        new = self._fit(basis)
        self.refits += 1
        # the same distributions in both frames: P0, P*, and the old and new P_s1, P_s2
        both = torch.cat([old.basis_log_probs, new.basis_log_probs])
        src = torch.cat([old.coords[[0, 3]], old.place(self._distances(both, old), self.k)])
        dst = torch.cat([new.coords[[0, 3]], new.place(self._distances(both, new), self.k)])
        same_signature = bool((old.signs == new.signs).all())
        al = F.procrustes_align(src, dst, signs=new.signs if same_signature else None)
        if self.coords.n:
            X = torch.from_numpy(self.coords.array).to(src)
            moved = (X - src.mean(0)) @ al.rotation + dst.mean(0)
            self.coords.array[:] = moved.detach().to("cpu").numpy()
        self.fit = new
        return float(al.rmsd)

    def _distances(self, log_probs: Tensor, fit: _Fit) -> Tensor:
        """(q, 4) d_B of (q, N, C) log-probabilities to ``fit``'s basis points."""
        return _four_point_distances(log_probs, fit.basis_log_probs, self.labels)

    def add(
        self, log_probs: Tensor, progress: float, d_ignorance: float, d_truth: float
    ) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray, float]:
        """Place one (N, C) snapshot; (k,) coordinates, 0-dim residual, alignment RMSD.

        ``d_ignorance`` and ``d_truth`` are its d_B to P0 and P* (already known at capture).
        On the CPU the coordinates and the residual are numpy arrays.
        """
        if self.fit.host is not None:
            root = np.exp(0.5 * log_probs.detach().to(torch.float64).numpy())
        else:
            root = torch.exp(0.5 * log_probs.to(torch.float64))
        rmsd = self._refit() if self._accumulate(root, progress) else _NAN
        fit = self.fit
        if fit.host is not None:
            h = fit.host
            middle = _few_pair_distances(root[None], h.basis_sqrt)[0]
            d = np.array([d_ignorance, middle[0], middle[1], d_truth])
            x = h.offset + d @ h.linear
            return x, _row_residual(d, x, h.coords, h.signs), rmsd
        middle = _few_pair_distances(root[None], fit.basis_sqrt)[0]
        ends = torch.tensor([d_ignorance, d_truth], dtype=torch.float64, device=middle.device)
        d = torch.cat([ends[:1], middle, ends[1:]])
        x = fit.place(d.reshape(1, 4), self.k)[0]
        return x, _row_residual(d, x, fit.coords, fit.signs), rmsd


# --------------------------------------------------------------------------- the module


class OnlineManifold:
    """Place each snapshot of a live run on the manifold and compare it with reference runs.

    Args:
        labels: (N,) int labels of the probe.
        num_classes: C.
        reference: a :class:`ReferenceEmbedding`, the path of a saved one, or None for the live
            4-point frame of the run (thesis §2.4). A reference built on another probe is refused.
        n_components: k, coordinates reported and drawn (at most the reference's k; at most 3
            for the 4-point frame, which spans three dimensions).
        residual_threshold: flag ``off_manifold`` when ``residual`` exceeds it.
        distance_threshold: flag ``off_manifold`` when ``reference_distance`` exceeds it.
        refit_every: ignored since the live frame is the fixed 4-point frame (kept so that
            existing calls keep working; still validated).
        self_embedding_max_models: ignored likewise (kept and validated for compatibility).
        n_geodesic: interior points of the ignorance->truth geodesic drawn in the live frame.
        dtype: unused by the 4-point frame (its state is float64); kept for compatibility.
        probe: probe name, for results, frames and messages.
        device: where state lives; default the reference's device, or the first snapshot's.
        basis_progress: (s1, s2), the progress levels of the basis points P_s1, P_s2 of the
            live frame (eq. 2.4.1; the thesis uses s1 = 1 - s2 = 0.2 or 0.3).
        basis_width: σ of the Gaussian progress weighting of eq. 2.4.1 (thesis: 0.05).
        class_progress: compute progress per class (fig. 3.2a); off for probes whose classes
            are tokens of a vocabulary.

    Raises:
        ValueError: bad arguments or an incompatible reference.
        TypeError: ``reference`` of an unsupported type.

    Without a reference, the live frame is an InPCA of four points (eq. 2.4.1): ignorance P0,
    truth P* and the run's progress-weighted averages P_s1, P_s2; every snapshot is placed from
    its four distances by eq. 2.2.9. The state is O(N * C) (two running sums) plus O(T * k)
    coordinates, and the work per snapshot is O(N * C), whatever the number of snapshots. While
    the run is far below a level s, the geodesic point at progress s stands in for P_s; the
    run's own running P_s replaces it from progress s - 2σ on and is fixed after s + 3σ. The
    frame is refitted only when a basis point is fixed or the highest progress crosses a
    multiple of 0.1 (at most 12 refits in a run), and the coordinates so far are then moved onto
    the new frame by a Kabsch-Umeyama alignment of the basis points (``alignment_rmsd``).

    Invalid snapshots (``snapshot.valid`` False, or NaN/+inf log-probabilities) are skipped:
    :meth:`update` returns None for them (and warns once for NaN outputs flagged valid).
    Progress, distances to ignorance/truth/geodesic, the error and the per-class progress already
    present in ``snapshot.metrics`` (as computed by the callback at capture) are reused.

    Scalars per snapshot (:meth:`OnlineResult.scalars`): ``progress``,
    ``distance_to_ignorance``, ``distance_to_truth``, ``distance_to_geodesic``, ``pc1..pck``,
    ``residual``, ``off_manifold``, ``progress_class_<c>``; with a reference
    ``reference_distance``, ``reference_step``, ``relative_speed``; without one
    ``alignment_rmsd`` (at the snapshots where the frame is refitted).

    Example::

        >>> import torch
        >>> y = torch.arange(60) % 3
        >>> online = OnlineManifold(y, 3)                  # live 4-point frame
        >>> lp = torch.log_softmax(torch.randn(60, 3), -1)
        >>> result = online.update(Snapshot("train", 0, 0, lp, y, 0.0))
        >>> sorted(result.scalars())[:3]
        ['distance_to_geodesic', 'distance_to_ignorance', 'distance_to_truth']
    """

    def __init__(
        self,
        labels: Any,
        num_classes: int,
        *,
        reference: ReferenceEmbedding | str | os.PathLike | None = None,
        n_components: int = 3,
        residual_threshold: float | None = None,
        distance_threshold: float | None = None,
        refit_every: int = 1,
        self_embedding_max_models: int = 300,
        n_geodesic: int = 16,
        dtype: torch.dtype = torch.float32,
        probe: str = "",
        device: torch.device | str | None = None,
        basis_progress: tuple[float, float] = (0.3, 0.7),
        basis_width: float = F.BASIS_WIDTH,
        class_progress: bool = True,
    ) -> None:
        labels_t = _as_tensor(labels, "labels")
        if labels_t.ndim != 1 or labels_t.is_floating_point():
            raise ValueError(
                "`labels` must be a 1-D integer array (N,), "
                f"got shape {tuple(labels_t.shape)} of {labels_t.dtype}"
            )
        labels_t = labels_t.to(torch.int64)
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        if labels_t.numel() == 0 or int(labels_t.min()) < 0 or int(labels_t.max()) >= num_classes:
            raise ValueError(
                f"`labels` must be non-empty ints in [0, {num_classes}), got range "
                f"[{int(labels_t.min()) if labels_t.numel() else '-'}, "
                f"{int(labels_t.max()) if labels_t.numel() else '-'}]"
            )
        if n_components < 1:
            raise ValueError(f"`n_components` must be >= 1, got {n_components}")
        for name, v in (
            ("residual_threshold", residual_threshold),
            ("distance_threshold", distance_threshold),
        ):
            if v is not None and not (v >= 0):
                raise ValueError(f"`{name}` must be >= 0 or None, got {v}")
        if refit_every < 1:
            raise ValueError(f"`refit_every` must be >= 1, got {refit_every}")
        if self_embedding_max_models < 2:
            raise ValueError(
                f"`self_embedding_max_models` must be >= 2, got {self_embedding_max_models}"
            )
        if n_geodesic < 0:
            raise ValueError(f"`n_geodesic` must be >= 0, got {n_geodesic}")
        levels = tuple(float(v) for v in basis_progress)
        if len(levels) != 2 or not 0 < levels[0] < levels[1] < 1:
            raise ValueError(
                f"`basis_progress` must be two levels 0 < s1 < s2 < 1, got {basis_progress!r}"
            )
        if not basis_width > 0:
            raise ValueError(f"`basis_width` must be > 0, got {basis_width}")
        if isinstance(reference, (str, os.PathLike)):
            reference = ReferenceEmbedding.load(reference, labels=labels_t, num_classes=num_classes)
        elif isinstance(reference, ReferenceEmbedding):
            reference.check_compatible(labels_t, num_classes)
        elif reference is not None:
            raise TypeError(
                "`reference` must be a ReferenceEmbedding, a path or None, "
                f"got {type(reference).__name__}"
            )
        if reference is not None and n_components > reference.n_components:
            raise ValueError(
                f"`n_components` must be <= the reference's {reference.n_components}, "
                f"got {n_components}"
            )
        if reference is None and n_components > 3:
            raise ValueError(
                "`n_components` must be <= 3 without a reference (the live frame is an InPCA "
                f"of 4 points, thesis §2.4), got {n_components}"
            )
        if device is not None:
            device = torch.device(device)
            reference = reference.to(device) if reference is not None else None
        elif reference is not None:
            device = reference.device
        self.reference: ReferenceEmbedding | None = reference
        self.labels = labels_t
        self.num_classes = int(num_classes)
        self.n_components = int(n_components)
        self.residual_threshold = residual_threshold
        self.distance_threshold = distance_threshold
        self.refit_every = int(refit_every)
        self.self_embedding_max_models = int(self_embedding_max_models)
        self.n_geodesic = int(n_geodesic)
        self.dtype = dtype
        self.probe = probe
        self.basis_progress = levels
        self.basis_width = float(basis_width)
        self._device: torch.device | None = device
        self._labels_dev: Tensor | None = None
        self._classes: F.ClassWeights | None = None
        self._present: list[int] = []
        self._self: _FourPointFrame | None = None
        self._results: collections.deque[OnlineResult] = collections.deque(maxlen=RESULTS_KEPT)
        self._placed = 0
        self._coords = _Columns(self.n_components)  # reference mode: projected coordinates
        # steps, progress, error, distance to the geodesic, reference distance
        self._live = _Columns(5)
        self._warned: set[str] = set()
        self.class_progress = bool(class_progress)
        if device is not None:
            self._bind(device)

    def _bind(self, device: torch.device) -> None:
        """Per-probe constants on the state's device (labels, per-class sample layout)."""
        self._device = device
        self._labels_dev = self.labels.to(device)
        if self.class_progress:  # else no per-class progress (e.g. tokens of a vocabulary)
            self._classes = F.class_weights(self._labels_dev, self.num_classes)
            self._present = list(self._classes.present)

    # ------------------------------------------------------------------ public state

    @property
    def results(self) -> list[OnlineResult]:
        """Results of the valid snapshots so far, in order: the latest :data:`RESULTS_KEPT`
        (a long run's earlier ones are in its store, its logs and :meth:`frame`)."""
        return list(self._results)

    @property
    def device(self) -> torch.device | None:
        """Device of the state (None until the first snapshot without a reference)."""
        return self._device

    @property
    def state_nbytes(self) -> int:
        """Bytes held in arrays by the placement state (not ``results``): O(N * C + T * k)."""
        frame = 0 if self._self is None else self._self.nbytes
        return frame + self._coords.nbytes + self._live.nbytes

    def __len__(self) -> int:
        """The number of valid snapshots placed so far."""
        return self._placed

    # ------------------------------------------------------------------ update

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def update(self, snapshot: Snapshot, *, trusted: bool = False) -> OnlineResult | None:
        """Place one snapshot; None if it is invalid (skipped, nothing recorded).

        Args:
            snapshot: its ``log_probs`` are (N, C) log-probabilities of the model on the probe.
            trusted: the snapshot comes from :class:`~lightning_manifold.ManifoldCallback`:
                finite (N, C) float log-probabilities of this probe, ``valid`` set from them,
                metrics computed at capture. The checks of shape and values are skipped.

        Returns:
            The snapshot's :class:`OnlineResult`, or None for an invalid snapshot.

        Raises:
            ValueError: ``snapshot.log_probs`` of the wrong shape.
        """
        if not snapshot.valid:
            return None
        n, c = self.labels.shape[0], self.num_classes
        if trusted:
            lp = snapshot.log_probs
        else:
            lp = as_log_probs(snapshot.log_probs, "snapshot.log_probs")
            if tuple(lp.shape) != (n, c):
                raise ValueError(
                    "`snapshot.log_probs` must have shape (N, C) = "
                    f"({n}, {c}), got {tuple(lp.shape)}"
                )
            if bool(torch.isnan(lp).any()) or bool((lp == math.inf).any()):
                self._warn_once(
                    "nan",
                    f"OnlineManifold({self.probe!r}): snapshot at step {snapshot.step} has "
                    "NaN/inf log-probabilities (a diverged model?); it is skipped.",
                )
                return None
        if self._device is None:
            self._bind(lp.device)
        labels = self._labels_dev
        assert labels is not None
        if lp.device != self._device:
            lp = lp.to(self._device)

        geometry = self._geometry(lp, labels, snapshot.metrics)
        progress = geometry["progress"]
        step = int(snapshot.step)
        if self.reference is not None:
            extra, device_values = self._update_reference(lp, progress, step)
        else:
            extra, device_values = self._update_self(lp, geometry)
        # one transfer to the host for the coordinates and the residual
        if isinstance(device_values[0], np.ndarray):
            values = np.concatenate([np.reshape(v, -1) for v in device_values]).tolist()
        else:
            values = torch.cat([v.reshape(-1).to(torch.float64) for v in device_values]).tolist()
        k = self.n_components
        coords, residual = values[:k], values[k]
        (self._coords if self.reference is not None else self._self.coords).append(coords)  # type: ignore[union-attr]
        off = self._off_manifold(residual, extra.get("reference_distance", _NAN), step)
        result = OnlineResult(
            probe=self.probe or snapshot.probe,
            step=step,
            epoch=int(snapshot.epoch),
            coords=np.asarray(coords, dtype=np.float64),
            residual=residual,
            off_manifold=off,
            **{key: geometry[key] for key in _GEOMETRY_KEYS},
            per_class_progress=geometry["per_class_progress"],
            **extra,
        )
        self._results.append(result)
        self._placed += 1
        self._live.append(
            [
                float(step),
                result.progress,
                result.error,
                result.distance_to_geodesic,
                result.reference_distance,
            ]
        )
        return result

    def _geometry(self, lp: Tensor, labels: Tensor, known: dict[str, Any]) -> dict[str, Any]:
        """Progress, d_G to the geodesic (eq. 2.2.4), d_B to P0 and P* (eq. 2.2.2), the error
        and the per-class progress. Values in ``known`` (``Snapshot.metrics``) are reused: the
        first five when all are there and finite, the per-class progress when every class
        present in the probe has its ``progress_class_<c>`` (an absent class has no key)."""
        base = [known.get(key) for key in _GEOMETRY_KEYS]
        classes = [known.get(f"progress_class_{c}") for c in self._present]
        finite = lambda vs: all(isinstance(v, (int, float)) and math.isfinite(v) for v in vs)  # noqa: E731
        per_class = np.full(self.num_classes, _NAN)
        if finite(base) and finite(classes):
            per_class[self._present] = classes
            out: dict[str, Any] = dict(zip(_GEOMETRY_KEYS, map(float, base)))  # type: ignore[arg-type]
        else:
            g = F.prediction_geometry(lp, labels, classes=self._classes, check=False)
            scalars = torch.stack([getattr(g, key).reshape(()) for key in _GEOMETRY_KEYS])
            host = torch.cat([scalars, g.per_class_progress.to(torch.float64)]).tolist()
            per_class[:] = host[len(_GEOMETRY_KEYS) :]
            reuse = finite(base)
            out = dict(zip(_GEOMETRY_KEYS, map(float, base if reuse else host)))  # type: ignore[arg-type]
        out["per_class_progress"] = per_class
        return out

    def replay(self, store: Any) -> int:
        """Feed the valid snapshots of a ``TrajectoryStore`` in order (e.g. after a resume).

        Returns:
            The number of snapshots fed.
        """
        valid = np.asarray(store.valid, dtype=bool)
        steps, epochs = np.asarray(store.steps)[valid], np.asarray(store.epochs)[valid]
        labels = torch.as_tensor(np.asarray(store.labels))
        fed = 0
        for lp, step, epoch in zip(store.log_probs(valid_only=True), steps, epochs):
            snap = Snapshot(
                self.probe, int(step), int(epoch), torch.from_numpy(np.array(lp)), labels, 0.0
            )
            fed += self.update(snap) is not None
        return fed

    def _update_reference(
        self, lp: Tensor, progress: float, step: int
    ) -> tuple[dict[str, Any], list[Tensor]]:
        ref = self.reference
        assert ref is not None
        k = self.n_components
        d = ref.distances(lp)
        x = ref.project_distances(d)[:k]
        signs = torch.sign(ref.eigenvalues[:k])
        residual = _row_residual(d, x, ref.coords[:, :k], signs)
        out: dict[str, Any] = {"time_like": (ref.eigenvalues[:k] < 0).detach().to("cpu").numpy()}
        nearest = ref.nearest_run(lp, progress, distances=d)
        if nearest is not None:
            run, distance = nearest
            ref_step = ref.step_at_progress(run, progress)
            out["reference_distance"] = distance
            out["reference_run"] = ref.run_names[run]
            out["reference_step"] = ref_step
            out["relative_speed"] = step / ref_step if ref_step > 0 else _NAN
        return out, [x, residual]

    def _update_self(
        self, lp: Tensor, geometry: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Any]]:
        if self._self is None:
            assert self._labels_dev is not None
            self._self = _FourPointFrame(
                self._labels_dev,
                self.num_classes,
                n_components=self.n_components,
                levels=self.basis_progress,
                sigma=self.basis_width,
                n_geodesic=self.n_geodesic,
            )
        x, residual, rmsd = self._self.add(
            lp,
            geometry["progress"],
            geometry["distance_to_ignorance"],
            geometry["distance_to_truth"],
        )
        fit = self._self.fit
        time_like = fit.host.time_like if fit.host else (fit.signs < 0).detach().to("cpu").numpy()
        return {"time_like": time_like, "alignment_rmsd": rmsd}, [x, residual]

    def _off_manifold(self, residual: float, distance: float, step: int) -> bool:
        reasons = []
        if self.residual_threshold is not None and residual > self.residual_threshold:
            reasons.append(
                f"residual {residual:.4g} > residual_threshold {self.residual_threshold:g}"
            )
        if self.distance_threshold is not None and distance > self.distance_threshold:
            reasons.append(
                f"reference_distance {distance:.4g} > "
                f"distance_threshold {self.distance_threshold:g}"
            )
        if reasons:
            self._warn_once(
                "off",
                f"OnlineManifold({self.probe!r}): the model at step {step} is off the manifold: "
                + "; ".join(reasons)
                + ". Logged as off_manifold=1; this warning is not repeated.",
            )
        return bool(reasons)

    # ------------------------------------------------------------------ frame

    def frame(self, title: str = "") -> ManifoldFrame:
        """Everything a manifold figure needs, as numpy arrays (see :class:`ManifoldFrame`).

        With a reference: the reference cloud, its landmarks and the live projections. Without:
        the live 4-point frame (the snapshots so far, ignorance, truth and the geodesic). In
        every frame ``eigenvalues`` are sorted by |lambda| and axis i is the eigen-axis of
        eigenvalue i, so ``frame.time_like[:k]`` labels the drawn axes.

        Raises:
            RuntimeError: no valid snapshot yet and no reference.
        """
        k = self.n_components
        cpu = lambda t: t.detach().to("cpu").numpy()  # noqa: E731
        cols = self._live.array
        live = {
            "live_steps": cols[:, 0].astype(np.int64),
            "live_progress": cols[:, 1].copy(),
            "live_error": cols[:, 2].copy(),
            "live_geodesic_distance": cols[:, 3].copy(),
            "live_reference_distance": cols[:, 4].copy(),
        }
        step = int(cols[-1, 0]) if len(cols) else 0
        name = title or " ".join(x for x in (self.probe, f"step {step}") if x)
        if self.reference is not None:
            frame = self.reference.to_frame(k, title=name)
            frame.live_coords = self._coords.array.copy()
            for key, v in live.items():
                setattr(frame, key, v)
            frame.step = step
            frame.probe = self.probe or frame.probe
            return frame
        emb = self._self
        if emb is None or not emb.coords.n:
            raise RuntimeError(
                "OnlineManifold.frame(): no valid snapshot yet and no reference to draw"
            )
        fit = emb.fit
        coords = cpu(fit.coords)
        return ManifoldFrame(
            probe=self.probe,
            step=step,
            live_coords=emb.coords.array.copy(),
            eigenvalues=cpu(fit.embedding.eigenvalues.to(torch.float64)),
            total_stress=float(fit.embedding.total_stress),
            ignorance=coords[0],
            truth=coords[3],
            geodesic=cpu(fit.geodesic),
            ref_coords=np.zeros((0, k)),
            title=name,
            **live,
        )

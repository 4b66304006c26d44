"""Per-snapshot geometry of a live run: where it is on the map, how far along, how far off.

:class:`OnlineManifold` turns each :class:`~lightning_manifold.snapshot.Snapshot` into an
:class:`OnlineResult` (coordinates, progress, distances, off-manifold residual, comparison with
reference runs at equal progress) and keeps what a figure needs (:meth:`OnlineManifold.frame`).

With a :class:`~lightning_manifold.embedding.ReferenceEmbedding` every snapshot is projected
into the fixed reference map (eq. 2.2.9). Without one, the run embeds itself: an InPCA of the
snapshots so far plus ignorance, truth and points along the geodesic between them, refitted as
snapshots arrive and rotated onto the previous frame (Kabsch with sign flips, thesis §2.4) so
axes do not jump between logged plots.

Example::

    online = OnlineManifold(probe.labels, probe.num_classes, reference="baseline.npz")
    result = online.update(snapshot)          # None for an invalid (diverged) snapshot
    logger.log_metrics({f"manifold/train/{k}": v for k, v in result.scalars().items()}, step)
    figure = plot_manifold(online.frame())
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from lightning_manifold import functional as F
from lightning_manifold.embedding import (
    ReferenceEmbedding,
    _as_tensor,
    _subsample_indices,
    as_log_probs,
    distances_to_points,
    geodesic_log_probs,
    nonzero_components,
    sqrt_probs,
)
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.snapshot import Snapshot

__all__ = ["OnlineManifold", "OnlineResult"]

_NAN = math.nan


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


def _row_residual(d: Tensor, x: Tensor, X: Tensor, signs: Tensor) -> float:
    """1 - explained pairwise distance (eq. 2.4.2) restricted to one point's row.

    Args:
        d: (m,) d_B of the point to the embedded points.
        x: (k,) its coordinates; X: (m, k) the embedded points' coordinates.
        signs: (k,) signs of the eigenvalues (Minkowski metric, eq. 2.2.7).
    """
    d2 = F.minkowski_sq_distance(x.reshape(1, -1), X, signs=signs).reshape(-1).to(d.dtype)
    total = d.sum()
    return float((d - d2).abs().sum() / total) if float(total) > 0 else _NAN


#: per-snapshot scalars that the callback may already have computed at capture
_GEOMETRY_KEYS = (
    "progress",
    "distance_to_geodesic",
    "distance_to_ignorance",
    "distance_to_truth",
    "error",
)


def _geometry(lp: Tensor, labels: Tensor, known: dict[str, float]) -> dict[str, float]:
    """Progress, d_G to the geodesic (eq. 2.2.4), d_B to P0 and P* (eq. 2.2.2) and the error.

    Reuses ``known`` (``Snapshot.metrics``) when it holds all of them, finite.
    """
    if all(isinstance(known.get(k), (int, float)) for k in _GEOMETRY_KEYS) and all(
        math.isfinite(float(known[k])) for k in _GEOMETRY_KEYS
    ):
        return {k: float(known[k]) for k in _GEOMETRY_KEYS}
    projection = F.geodesic_projection_from_log_probs(lp, labels)
    return {
        "progress": float(projection.progress),
        "distance_to_geodesic": float(projection.distance),
        "distance_to_ignorance": float(F.distance_to_ignorance_from_log_probs(lp)),
        "distance_to_truth": float(F.distance_to_truth_from_log_probs(lp, labels)),
        "error": float((lp.argmax(-1) != labels).to(torch.float64).mean()),
    }


# --------------------------------------------------------------------------- self-embedding


@dataclass
class _Fit:
    """One InPCA fit of the self-embedding (indices into the point list, eq. 2.2.6)."""

    index: Tensor  # (f,) points used for the fit
    raw: Tensor  # (f, k) their unaligned coordinates
    row_means: Tensor
    grand_mean: Tensor
    eigenvalues: Tensor  # (kk,) kk >= k for the spectrum
    eigenvectors: Tensor  # (f, kk)
    total_stress: float
    rotation: Tensor = field(default_factory=lambda: torch.zeros(0))  # (k, k)
    shift: Tensor = field(default_factory=lambda: torch.zeros(0))  # (k,)


class _SelfEmbedding:
    """Live InPCA of [ignorance, g geodesic points, truth, snapshot_0 ... snapshot_{T-1}].

    The pairwise d_B matrix grows by one row/column per snapshot (d_B of the new snapshot to
    every earlier point); the InPCA is refitted every ``refit_every`` snapshots on the landmarks
    plus at most ``max_models`` evenly spaced snapshots (the rest are projected, eq. 2.2.9), and
    each refit is aligned onto the previous frame with ``F.procrustes_align``.
    """

    def __init__(
        self,
        labels: Tensor,
        num_classes: int,
        *,
        n_components: int,
        n_geodesic: int,
        max_models: int,
        refit_every: int,
        dtype: torch.dtype,
    ) -> None:
        f64 = torch.float64
        self.labels = labels
        self.k = n_components
        self.max_models = max_models
        self.refit_every = refit_every
        self.dtype = dtype
        self.num_landmarks = n_geodesic + 2  # L: ignorance, interior, truth
        n, c = labels.shape[0], num_classes
        alphas = torch.linspace(0.0, 1.0, n_geodesic + 2, dtype=f64)
        self.alphas = alphas
        lp_land = torch.cat(
            [
                torch.full((1, n, c), -math.log(c), dtype=f64, device=labels.device),
                geodesic_log_probs(labels, c, alphas[1:-1]).to(labels.device),
            ]
        )
        L = self.num_landmarks
        cap = L + 16
        self._S = torch.empty((cap, n, c), dtype=dtype, device=labels.device)
        self._S[: L - 1] = sqrt_probs(lp_land, dtype)
        self._num_sqrt = L - 1
        self._D = torch.zeros((cap, cap), dtype=f64, device=labels.device)
        d_land = F.bhattacharyya_from_log_probs(lp_land).to(f64)
        d_truth = F.distance_to_truth_from_log_probs(lp_land, labels).to(f64).reshape(-1)
        self._D[: L - 1, : L - 1] = 0.5 * (d_land + d_land.T)
        self._D[: L - 1, L - 1] = d_truth
        self._D[L - 1, : L - 1] = d_truth
        self._D[torch.arange(L), torch.arange(L)] = 0.0
        self.n = L  # points so far
        self.fit: _Fit | None = None
        self.display_signs = torch.ones(n_components, dtype=f64, device=labels.device)
        self.display_eigenvalues = torch.zeros(n_components, dtype=f64, device=labels.device)
        self.aligned = torch.zeros((0, n_components), dtype=f64, device=labels.device)

    @property
    def num_snapshots(self) -> int:
        return self.n - self.num_landmarks

    @property
    def D(self) -> Tensor:
        """(L + T, L + T) pairwise d_B of all points so far."""
        return self._D[: self.n, : self.n]

    def _grow(self) -> None:
        cap = self._D.shape[0]
        if self.n < cap and self._num_sqrt < self._S.shape[0]:
            return
        new = cap + max(16, cap // 2)
        D = torch.zeros((new, new), dtype=self._D.dtype, device=self._D.device)
        D[:cap, :cap] = self._D
        S = torch.empty((new, *self._S.shape[1:]), dtype=self._S.dtype, device=self._S.device)
        S[: self._num_sqrt] = self._S[: self._num_sqrt]
        self._D, self._S = D, S

    def add(self, log_probs: Tensor) -> tuple[Tensor, float, float]:
        """Add one (N, C) snapshot; return its aligned (k,) coordinates, residual and RMSD."""
        L = self.num_landmarks
        d = distances_to_points(
            log_probs.unsqueeze(0), self._S[: self._num_sqrt], self.labels, self.dtype
        )[0]
        # sqrt rows: [ignorance, interior, snapshots]; D: [ignorance, interior, truth, snapshots]
        row = torch.cat([d[: L - 1], d[-1:], d[L - 1 : -1]])
        self._grow()
        i = self.n
        self._D[i, :i] = row
        self._D[:i, i] = row
        self._S[self._num_sqrt] = sqrt_probs(log_probs, self.dtype)
        self._num_sqrt += 1
        self.n += 1
        refit = self.fit is None or (self.num_snapshots - 1) % self.refit_every == 0
        rmsd = self._refit() if refit else _NAN
        assert self.fit is not None
        raw = self._project(self._D[i : i + 1, self.fit.index])
        if not refit:
            self.aligned = torch.cat([self.aligned, raw @ self.fit.rotation + self.fit.shift])
        raw = raw[0]
        signs = torch.sign(self.fit.eigenvalues[: self.k])
        residual = _row_residual(self._D[i, self.fit.index], raw, self.fit.raw, signs)
        return self.aligned[i], residual, rmsd

    def _project(self, d: Tensor) -> Tensor:
        """(q, f) distances to the fit points -> (q, k) unaligned coordinates (eq. 2.2.9)."""
        assert self.fit is not None
        x = F.project_from_stats(
            d,
            self.fit.row_means,
            self.fit.grand_mean,
            self.fit.eigenvalues,
            self.fit.eigenvectors,
        ).to(torch.float64)
        return self._pad(x[:, : self.k])

    def _pad(self, x: Tensor) -> Tensor:
        if x.shape[1] >= self.k:
            return x[:, : self.k]
        return torch.cat([x, x.new_zeros((x.shape[0], self.k - x.shape[1]))], dim=1)

    def _refit(self) -> float:
        L, n, k = self.num_landmarks, self.n, self.k
        snaps = torch.from_numpy(_subsample_indices(n - L, self.max_models)).to(self._D.device) + L
        index = torch.cat([torch.arange(L, device=self._D.device), snaps])
        D = self._D[: self.n, : self.n]
        res = F.inpca(D[index][:, index], n_components=min(max(k, 10), index.numel()))
        res = nonzero_components(res)
        fit = _Fit(
            index=index,
            raw=self._pad(res.coords.to(torch.float64)),
            row_means=res.row_means.to(torch.float64),
            grand_mean=res.grand_mean.to(torch.float64),
            eigenvalues=res.eigenvalues.to(torch.float64),
            eigenvectors=res.eigenvectors.to(torch.float64),
            total_stress=float(res.total_stress),
        )
        self.fit = fit
        X = torch.empty((n, k), dtype=torch.float64, device=D.device)
        X[index] = fit.raw
        rest = torch.ones(n, dtype=torch.bool, device=D.device)
        rest[index] = False
        if bool(rest.any()):
            X[rest] = self._project(D[rest][:, index])
        prev = self.aligned
        new_signs = torch.where(fit.eigenvalues[:k] < 0, -1.0, 1.0).to(X.dtype)
        if prev.shape[0] == 0:
            # first frame: orient every axis so that truth - ignorance >= 0
            flips = torch.where(X[L - 1] - X[0] < 0, -1.0, 1.0).to(X.dtype)
            fit.rotation, fit.shift = torch.diag(flips), X.new_zeros(k)
            self.display_signs = new_signs
            self.display_eigenvalues = fit.eigenvalues[:k].clone()
            rmsd = _NAN
        else:
            rmsd = self._align(fit, X[: prev.shape[0]], prev, new_signs)
        self.aligned = X @ fit.rotation + fit.shift
        return rmsd

    def _align(self, fit: _Fit, X: Tensor, target: Tensor, new_signs: Tensor) -> float:
        """Rotate the new frame onto the previous one (Kabsch with sign flips, thesis §2.4).

        Space-like axes are matched to the previous frame's space-like display axes and
        time-like to time-like (a rotation mixing them is not an isometry), so two axes that
        swap their |eigenvalue| order between refits keep their place on the plot. If the
        number of time-like axes among the top k changed, the new signature is used as is.
        Sets ``fit.rotation``/``fit.shift``, the display signature and eigenvalue order;
        returns the RMSD.
        """
        old = self.display_signs
        if int((old < 0).sum()) != int((new_signs < 0).sum()):
            old = new_signs
        k = self.k
        rotation = X.new_zeros((k, k))
        shift = X.new_zeros(k)
        display = fit.eigenvalues[:k].clone()
        sq = 0.0
        for sign in (1.0, -1.0):
            src = (new_signs == sign).nonzero().reshape(-1)
            dst = (old == sign).nonzero().reshape(-1)
            if src.numel() == 0:
                continue
            al = F.procrustes_align(X[:, src], target[:, dst])
            r = al.rotation.to(X.dtype)
            rotation[src[:, None], dst[None, :]] = r
            shift[dst] = (al.aligned.to(X.dtype) - X[:, src] @ r).mean(0)
            sq += float(al.rmsd) ** 2
            # display column dst[j] shows mostly new axis src[i]: list its eigenvalue there
            rows, cols = linear_sum_assignment(-r.abs().detach().to("cpu").numpy())
            display[dst[cols]] = fit.eigenvalues[src[rows]]
        fit.rotation, fit.shift = rotation, shift
        self.display_signs = old
        self.display_eigenvalues = display
        return math.sqrt(sq)


# --------------------------------------------------------------------------- the module


class OnlineManifold:
    """Place each snapshot of a live run on the manifold and compare it with reference runs.

    Args:
        labels: (N,) int labels of the probe.
        num_classes: C.
        reference: a :class:`ReferenceEmbedding`, the path of a saved one, or None for a live
            self-embedding of the run. A reference built on another probe is refused.
        n_components: k, coordinates reported and drawn (at most the reference's k; at most
            ``n_geodesic + 3`` for the self-embedding).
        residual_threshold: flag ``off_manifold`` when ``residual`` exceeds it.
        distance_threshold: flag ``off_manifold`` when ``reference_distance`` exceeds it.
        refit_every: refit the self-embedding every this many snapshots (projected in between).
        self_embedding_max_models: fit the self-embedding on at most this many evenly spaced
            snapshots and project the others (bounds the cost of a refit).
        n_geodesic: interior geodesic points used as self-embedding landmarks.
        dtype: storage dtype of the self-embedding's sqrt-probabilities (float32 halves memory).
        probe: probe name, for results, frames and messages.
        device: where state lives; default the reference's device, or the first snapshot's.

    Raises:
        ValueError: bad arguments or an incompatible reference.
        TypeError: ``reference`` of an unsupported type.

    Invalid snapshots (``snapshot.valid`` False, or NaN/+inf log-probabilities) are skipped:
    :meth:`update` returns None for them (and warns once for NaN outputs flagged valid).
    Progress, distances to ignorance/truth/geodesic and the error already present in
    ``snapshot.metrics`` (as computed by the callback at capture) are reused.
    The self-embedding keeps every snapshot's sqrt-probabilities in memory
    (T * N * C * 4 bytes in float32) to add one row of d_B per snapshot.

    Scalars per snapshot (:meth:`OnlineResult.scalars`): ``progress``,
    ``distance_to_ignorance``, ``distance_to_truth``, ``distance_to_geodesic``, ``pc1..pck``,
    ``residual``, ``off_manifold``, ``progress_class_<c>``; with a reference
    ``reference_distance``, ``reference_step``, ``relative_speed``; without one
    ``alignment_rmsd`` (from the second refit on).

    Example::

        >>> import torch
        >>> y = torch.arange(60) % 3
        >>> online = OnlineManifold(y, 3)                  # live self-embedding
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
        if reference is None and n_components > n_geodesic + 3:
            raise ValueError(
                f"`n_components` must be <= n_geodesic + 3 = {n_geodesic + 3} without a reference, "
                f"got {n_components}"
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
        self._device: torch.device | None = device
        self._labels_dev: Tensor | None = None if device is None else labels_t.to(device)
        self._self: _SelfEmbedding | None = None
        self._results: list[OnlineResult] = []
        self._coords: list[Tensor] = []  # reference mode: (k,) projected coordinates
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ public state

    @property
    def results(self) -> list[OnlineResult]:
        """Results of every valid snapshot so far, in order."""
        return list(self._results)

    @property
    def device(self) -> torch.device | None:
        """Device of the state (None until the first snapshot without a reference)."""
        return self._device

    def __len__(self) -> int:
        return len(self._results)

    # ------------------------------------------------------------------ update

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def update(self, snapshot: Snapshot) -> OnlineResult | None:
        """Place one snapshot; None if it is invalid (skipped, nothing recorded).

        Args:
            snapshot: its ``log_probs`` are (N, C) log-probabilities of the model on the probe.

        Returns:
            The snapshot's :class:`OnlineResult`, or None for an invalid snapshot.

        Raises:
            ValueError: ``snapshot.log_probs`` of the wrong shape.
        """
        if not snapshot.valid:
            return None
        lp = as_log_probs(snapshot.log_probs, "snapshot.log_probs")
        n, c = self.labels.shape[0], self.num_classes
        if tuple(lp.shape) != (n, c):
            raise ValueError(
                f"`snapshot.log_probs` must have shape (N, C) = ({n}, {c}), got {tuple(lp.shape)}"
            )
        if bool(torch.isnan(lp).any()) or bool((lp == math.inf).any()):
            self._warn_once(
                "nan",
                f"OnlineManifold({self.probe!r}): snapshot at step {snapshot.step} has NaN/inf "
                "log-probabilities (a diverged model?); it is skipped.",
            )
            return None
        if self._device is None:
            self._device = lp.device
        if self._labels_dev is None:
            self._labels_dev = self.labels.to(self._device)
        lp = lp.to(device=self._device, dtype=torch.float64)
        labels = self._labels_dev

        common: dict[str, Any] = {
            "probe": self.probe or snapshot.probe,
            "step": int(snapshot.step),
            "epoch": int(snapshot.epoch),
            **_geometry(lp, labels, snapshot.metrics),
            "per_class_progress": F.per_class_progress_from_log_probs(lp, labels)
            .reshape(c)
            .detach()
            .to("cpu", torch.float64)
            .numpy(),
        }
        progress = common["progress"]
        if self.reference is not None:
            extra = self._update_reference(lp, progress, int(snapshot.step))
        else:
            extra = self._update_self(lp)
        off = self._off_manifold(
            extra["residual"], extra.get("reference_distance", _NAN), snapshot.step
        )
        result = OnlineResult(**common, **extra, off_manifold=off)
        self._results.append(result)
        return result

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

    def _update_reference(self, lp: Tensor, progress: float, step: int) -> dict[str, Any]:
        ref = self.reference
        assert ref is not None
        k = self.n_components
        d = ref.distances(lp)
        x = ref.project_distances(d)[:k]
        signs = torch.sign(ref.eigenvalues[:k])
        residual = _row_residual(d, x, ref.coords[:, :k], signs)
        self._coords.append(x)
        out: dict[str, Any] = {
            "coords": x.detach().to("cpu").numpy(),
            "time_like": (ref.eigenvalues[:k] < 0).detach().to("cpu").numpy(),
            "residual": residual,
        }
        nearest = ref.nearest_run(lp, progress, distances=d)
        if nearest is not None:
            run, distance = nearest
            ref_step = ref.step_at_progress(run, progress)
            out["reference_distance"] = distance
            out["reference_run"] = ref.run_names[run]
            out["reference_step"] = ref_step
            out["relative_speed"] = step / ref_step if ref_step > 0 else _NAN
        return out

    def _update_self(self, lp: Tensor) -> dict[str, Any]:
        if self._self is None:
            assert self._labels_dev is not None
            self._self = _SelfEmbedding(
                self._labels_dev,
                self.num_classes,
                n_components=self.n_components,
                n_geodesic=self.n_geodesic,
                max_models=self.self_embedding_max_models,
                refit_every=self.refit_every,
                dtype=self.dtype,
            )
        x, residual, rmsd = self._self.add(lp)
        fit = self._self.fit
        assert fit is not None
        return {
            "coords": x.detach().to("cpu").numpy(),
            "time_like": (self._self.display_signs < 0).detach().to("cpu").numpy(),
            "residual": residual,
            "alignment_rmsd": rmsd,
        }

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
        the current aligned self-embedding (live coordinates of every snapshot so far are
        re-expressed in the newest frame). In the self-embedding the first k ``eigenvalues``
        are listed in display-axis order (the eigenvalue of the new axis each aligned column
        shows), so ``frame.time_like[:k]`` labels the drawn axes; the rest are sorted by |λ|.

        Raises:
            RuntimeError: no valid snapshot yet and no reference.
        """
        k = self.n_components
        cpu = lambda t: t.detach().to("cpu").numpy()  # noqa: E731
        res = self._results
        live = {
            "live_steps": np.array([r.step for r in res], dtype=np.int64),
            "live_progress": np.array([r.progress for r in res], dtype=np.float64),
            "live_error": np.array([r.error for r in res], dtype=np.float64),
            "live_geodesic_distance": np.array(
                [r.distance_to_geodesic for r in res], dtype=np.float64
            ),
            "live_reference_distance": np.array(
                [r.reference_distance for r in res], dtype=np.float64
            ),
        }
        step = res[-1].step if res else 0
        name = title or " ".join(x for x in (self.probe, f"step {step}") if x)
        if self.reference is not None:
            frame = self.reference.to_frame(k, title=name)
            frame.live_coords = cpu(torch.stack(self._coords)) if self._coords else np.zeros((0, k))
            for key, v in live.items():
                setattr(frame, key, v)
            frame.step = step
            frame.probe = self.probe or frame.probe
            return frame
        emb = self._self
        if emb is None or emb.fit is None:
            raise RuntimeError(
                "OnlineManifold.frame(): no valid snapshot yet and no reference to draw"
            )
        L = emb.num_landmarks
        aligned = cpu(emb.aligned)
        return ManifoldFrame(
            probe=self.probe,
            step=step,
            live_coords=aligned[L:],
            eigenvalues=cpu(torch.cat([emb.display_eigenvalues, emb.fit.eigenvalues[k:]])),
            total_stress=emb.fit.total_stress,
            ignorance=aligned[0],
            truth=aligned[L - 1],
            geodesic=aligned[:L],
            ref_coords=np.zeros((0, k)),
            title=name,
            **live,
        )

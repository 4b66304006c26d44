"""Reference embeddings: an InPCA map of finished runs into which new models are projected.

A :class:`ReferenceEmbedding` is fitted once on one or more stored runs (thesis §2.2: pairwise
Bhattacharyya distances, eq. 2.2.2, double-centred and eigen-decomposed, eq. 2.2.6) and keeps
what is needed to place any later model on the same map (eq. 2.2.9) and to compare it with the
reference trajectories at equal progress (the integrand of eq. 2.2.5). It is saved as one
self-describing ``.npz`` file (arrays plus a JSON metadata string, no pickle).

Points of the embedding, in this order (m of them)::

    [reference models (M)] + [ignorance P0, g points along the P0 -> P* geodesic, truth P*]

the landmarks only when ``landmarks=True``. Without landmarks the ignorance, geodesic and
truth coordinates are still available: they are projected with eq. 2.2.9.

Example::

    ref = ReferenceEmbedding.fit([store_a, store_b], n_components=10)
    ref.save("baseline.npz")
    ref = ReferenceEmbedding.load("baseline.npz", labels=probe.labels)
    coords = ref.project(log_probs)        # (N, C) -> (k,) ; (q, N, C) -> (q, k)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor

from lightning_manifold import functional as F
from lightning_manifold._files import SafeNpz
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.functional._checks import check_log_probabilities

# re-exported: these helpers lived here before moving to ``functional/prediction.py``
from lightning_manifold.functional.prediction import (
    _as_tensor,
    _subsample_indices,
    as_log_probs,
    distances_to_points,
    geodesic_log_probs,
    nonzero_components,
    sqrt_probs,
    step_at_progress,
)

__all__ = ["FORMAT_VERSION", "ReferenceEmbedding"]

FORMAT_NAME = "lightning-manifold/reference-embedding"
FORMAT_VERSION = 1

#: kinds of embedded points (``ReferenceEmbedding.point_kind``)
MODEL, IGNORANCE, GEODESIC, TRUTH = 0, 1, 2, 3

#: the tensors saved by ``save`` (besides the JSON metadata)
_TENSOR_FIELDS = (
    "labels",
    "sqrt_probs",
    "point_kind",
    "row_means",
    "grand_mean",
    "eigenvalues",
    "eigenvectors",
    "coords",
    "model_run",
    "model_step",
    "model_progress",
    "model_error",
    "model_geodesic_distance",
    "ignorance_coords",
    "truth_coords",
    "geodesic_coords",
    "geodesic_alphas",
    "grid",
    "grid_sqrt",
    "grid_valid",
)

ArrayLike: TypeAlias = "Tensor | np.ndarray"
PathLike: TypeAlias = "str | os.PathLike[str]"


# --------------------------------------------------------------------------- helpers


def _sample_major(t: Tensor) -> Tensor:
    """The same (m, N, C) values, stored (N, C, m)-contiguous.

    ``F.bhattacharyya_from_sqrt(one_model, t)`` works on the (N, C, m) layout of its second
    argument; storing the reference that way saves a copy of all m models on every update.
    """
    if t.ndim != 3 or t.permute(1, 2, 0).is_contiguous():
        return t
    return t.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def _probs_from_sqrt(s: Tensor) -> Tensor:
    """(N, C) stored sqrt-probabilities -> float64 probabilities renormalised to sum to 1."""
    p = s.to(torch.float64) ** 2
    return p / p.sum(-1, keepdim=True)


@dataclass
class _Run:
    log_probs: Tensor  # (T, N, C)
    steps: np.ndarray  # (T,)
    name: str


def _is_store(x: Any) -> bool:
    return hasattr(x, "log_probs") and hasattr(x, "labels") and hasattr(x, "steps")


def _store_run(store: Any) -> tuple[_Run, np.ndarray, int, str]:
    lp = torch.from_numpy(np.array(store.log_probs(valid_only=True)))  # (T, N, C), one copy
    steps = np.asarray(store.steps)
    valid = getattr(store, "valid", None)
    if valid is not None and len(np.asarray(valid)) == len(steps):
        steps = steps[np.asarray(valid, dtype=bool)]
    run = _Run(lp, steps.astype(np.int64), str(store.run_name))
    return run, np.asarray(store.labels), int(store.num_classes), str(store.probe_name)


def _label_diff(expected: np.ndarray, got: np.ndarray) -> str | None:
    """Describe how two label vectors differ (None when equal)."""
    if expected.shape != got.shape:
        return f"N: expected {expected.shape[0]} samples, got {got.shape[0]}"
    diff = np.flatnonzero(expected != got)
    if diff.size == 0:
        return None
    i = int(diff[0])
    return (
        f"labels: {diff.size} of {expected.shape[0]} labels differ "
        f"(first at index {i}: expected {int(expected[i])}, got {int(got[i])})"
    )


def _progress_grids(
    log_probs: Sequence[Tensor],
    progress: Sequence[Tensor],
    n_grid: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Each run re-indexed by progress on its own grid: (R, S) grid, (R, S, N, C) ``dtype``
    sqrt-probabilities (floored at its smallest normal) and (R, S) coverage.

    Args:
        log_probs: R (T_r, N, C) log-probabilities (any float dtype; used as float64).
        progress: R (T_r,) float64 progress of those models (eq. 2.2.4).
    """
    f64 = torch.float64
    R = len(log_probs)
    grid = torch.empty((R, n_grid), dtype=f64, device=device)
    grid_sqrt = torch.empty((R, n_grid, *log_probs[0].shape[1:]), dtype=dtype, device=device)
    grid_valid = torch.zeros((R, n_grid), dtype=torch.bool, device=device)
    for r, (lp, prog) in enumerate(zip(log_probs, progress)):
        grid[r] = torch.linspace(float(prog[0]), float(prog.max()), n_grid, dtype=f64)
        P = torch.exp(lp.to(device=device, dtype=f64))
        probs, valid = F.reindex_by_progress(P, prog, grid[r])
        grid_sqrt[r] = torch.sqrt(probs.to(f64)).to(dtype).clamp_min(torch.finfo(dtype).tiny)
        grid_valid[r] = valid.to(device=device, dtype=torch.bool)
    return grid, grid_sqrt, grid_valid


# --------------------------------------------------------------------------- the class


class ReferenceEmbedding:
    """An InPCA embedding (eq. 2.2.6) of reference runs, with what is needed to project new models.

    Build it with :meth:`fit`, :meth:`from_store`, :meth:`from_run` or :meth:`load`; the
    constructor takes the fitted arrays and is meant for those.

    Attributes (m embedded points, M reference models, k components, R runs, S grid points,
    g + 2 geodesic points including both ends):
        labels: (N,) int64 probe labels.
        num_classes: C.
        sqrt_probs: (m - 1 or M, N, C) floored sqrt-probabilities of every embedded point but
            truth (storage dtype, float32 by default).
        point_kind: (m,) int64, MODEL=0, IGNORANCE=1, GEODESIC=2, TRUTH=3.
        row_means: (m,) float64 row means of D (centring of eq. 2.2.9).
        grand_mean: 0-dim float64 mean of D.
        eigenvalues: (k,) float64, sorted by |lambda| descending, signs kept (time-like < 0).
        eigenvectors: (m, k) float64.
        coords: (m, k) float64 coordinates of the embedded points.
        total_stress: sum of all squared eigenvalues of W (denominator of eq. 2.2.8).
        model_run, model_step: (M,) int64 run index and optimizer step of each model.
        model_progress, model_error, model_geodesic_distance: (M,) float64.
        run_names: R names.
        ignorance_coords, truth_coords: (k,); geodesic_coords: (g + 2, k) at ``geodesic_alphas``.
        grid: (R, S) progress grid of each run, evenly spaced from its first snapshot's
            progress to the highest progress it reached; grid_sqrt: (R, S, N, C)
            sqrt-probabilities of each run re-indexed by progress on its grid (geodesic
            interpolation between snapshots, thesis text at eq. 2.2.5); grid_valid: (R, S) bool.
        probe_name: name of the probe the runs were recorded on.
        meta: free-form JSON-able metadata.
        fit_distances: (m, m) float64 d_B matrix (eq. 2.2.2) of the embedded points that
            :meth:`fit` eigen-decomposed, so callers need not compute it again; None for a
            reference read with :meth:`load` or moved with :meth:`to` (it is not saved).

    Axes are oriented so that truth minus ignorance is non-negative on every axis.
    """

    def __init__(
        self,
        *,
        labels: Tensor,
        num_classes: int,
        sqrt_probs: Tensor,
        point_kind: Tensor,
        row_means: Tensor,
        grand_mean: Tensor,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
        coords: Tensor,
        total_stress: float,
        model_run: Tensor,
        model_step: Tensor,
        model_progress: Tensor,
        model_error: Tensor,
        model_geodesic_distance: Tensor,
        run_names: list[str],
        ignorance_coords: Tensor,
        truth_coords: Tensor,
        geodesic_coords: Tensor,
        geodesic_alphas: Tensor,
        grid: Tensor | None,
        grid_sqrt: Tensor | None,
        grid_valid: Tensor | None,
        probe_name: str = "",
        meta: dict[str, Any] | None = None,
        _grid_maker: Callable[[], tuple[Tensor, Tensor, Tensor]] | None = None,
    ) -> None:
        self.labels = labels
        self.num_classes = int(num_classes)
        self.sqrt_probs = _sample_major(sqrt_probs)
        self.point_kind = point_kind
        self.row_means = row_means
        self.grand_mean = grand_mean
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.coords = coords
        self.total_stress = float(total_stress)
        self.model_run = model_run
        self.model_step = model_step
        self.model_progress = model_progress
        self.model_error = model_error
        self.model_geodesic_distance = model_geodesic_distance
        self.run_names = list(run_names)
        self.ignorance_coords = ignorance_coords
        self.truth_coords = truth_coords
        self.geodesic_coords = geodesic_coords
        self.geodesic_alphas = geodesic_alphas
        self._grids: tuple[Tensor, Tensor, Tensor] | None = None
        self._grid_maker: Callable[[], tuple[Tensor, Tensor, Tensor]] | None = None
        if grid is None or grid_sqrt is None or grid_valid is None:
            if _grid_maker is None:
                raise ValueError("`grid`, `grid_sqrt` and `grid_valid` are required")
            self._grid_maker = _grid_maker  # re-indexed on first use (see ``fit``)
        else:
            self._set_grids(grid, grid_sqrt, grid_valid)
        self.probe_name = probe_name
        self.meta = dict(meta or {})
        # (m, m) float64 d_B matrix the embedding was fitted on (set by ``fit``; not saved)
        self.fit_distances: Tensor | None = None
        # per-run progress/step curves for ahead/behind
        run = model_run.detach().to("cpu").numpy()
        step = model_step.detach().to("cpu").numpy()
        prog = model_progress.detach().to("cpu").numpy()
        self._run_curves = [(step[run == r], prog[run == r]) for r in range(len(self.run_names))]
        self._run_models = [np.flatnonzero(run == r) for r in range(len(self.run_names))]

    # ------------------------------------------------------------------ progress grids

    def _set_grids(self, grid: Tensor, grid_sqrt: Tensor, grid_valid: Tensor) -> None:
        self._grids = (grid, grid_sqrt, grid_valid)
        self._grid_maker = None
        # small per-run arrays read on every update, kept on the host
        self._grid_np = grid.detach().to("cpu").numpy()
        self._grid_valid_np = grid_valid.detach().to("cpu").numpy()

    def _grid_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._grids is None:
            assert self._grid_maker is not None
            self._set_grids(*self._grid_maker())
        assert self._grids is not None
        return self._grids

    def __getstate__(self) -> dict[str, Any]:
        # pickling (multiprocessing, deepcopy) takes the grids, not the closure that makes them
        self._grid_tensors()
        return {k: v for k, v in self.__dict__.items() if k != "_grid_maker"} | {
            "_grid_maker": None
        }

    @property
    def grid(self) -> Tensor:
        """(R, S) float64 progress grid of each run (see the class docstring)."""
        return self._grid_tensors()[0]

    @property
    def grid_sqrt(self) -> Tensor:
        """(R, S, N, C) sqrt-probabilities of each run re-indexed on its progress grid."""
        return self._grid_tensors()[1]

    @property
    def grid_valid(self) -> Tensor:
        """(R, S) bool: grid points the run covers."""
        return self._grid_tensors()[2]

    # ------------------------------------------------------------------ basic properties

    @property
    def num_samples(self) -> int:
        """N, the number of probe samples."""
        return int(self.labels.shape[0])

    @property
    def num_points(self) -> int:
        """m, the number of embedded points (models and landmarks)."""
        return int(self.point_kind.shape[0])

    @property
    def num_models(self) -> int:
        """M, the number of reference models."""
        return int(self.model_run.shape[0])

    @property
    def num_runs(self) -> int:
        """R, the number of reference runs."""
        return len(self.run_names)

    @property
    def n_components(self) -> int:
        """k, the number of kept InPCA components."""
        return int(self.eigenvalues.shape[0])

    @property
    def has_landmarks(self) -> bool:
        """Whether ignorance, truth and the geodesic are embedded points (not just projected)."""
        return bool((self.point_kind == TRUTH).any())

    @property
    def time_like(self) -> Tensor:
        """(k,) bool: axes with negative eigenvalues (Minkowski time-like, eq. 2.2.6)."""
        return self.eigenvalues < 0

    @property
    def device(self) -> torch.device:
        """Device holding the stored tensors."""
        return self.sqrt_probs.device

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the sqrt-probabilities."""
        return self.sqrt_probs.dtype

    def explained_stress(self, k: int) -> float:
        """Explained stress (eq. 2.2.8) of the top ``k`` components."""
        return float(F.explained_stress(self.eigenvalues, k, self.total_stress))

    def _tensors(self) -> dict[str, Tensor]:
        return {n: getattr(self, n) for n in _TENSOR_FIELDS}

    def _replace(self, tensors: dict[str, Tensor]) -> ReferenceEmbedding:
        return ReferenceEmbedding(
            **tensors,
            num_classes=self.num_classes,
            total_stress=self.total_stress,
            run_names=self.run_names,
            probe_name=self.probe_name,
            meta=self.meta,
        )

    def to(self, device: torch.device | str) -> ReferenceEmbedding:
        """A copy whose tensors live on ``device`` (self if already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        return self._replace({k: v.to(device) for k, v in self._tensors().items()})

    def __repr__(self) -> str:
        return (
            f"ReferenceEmbedding(probe={self.probe_name!r}, runs={self.num_runs}, "
            f"models={self.num_models}, points={self.num_points}, N={self.num_samples}, "
            f"C={self.num_classes}, k={self.n_components}, "
            f"eigenvalues={[round(float(v), 4) for v in self.eigenvalues[:4]]})"
        )

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        runs: Any,
        *,
        labels: ArrayLike | None = None,
        n_components: int = 10,
        landmarks: bool = True,
        n_geodesic: int = 16,
        run_names: Sequence[str] | None = None,
        max_models: int | None = None,
        steps: Sequence[ArrayLike] | None = None,
        n_grid: int = 101,
        dtype: torch.dtype = torch.float32,
        probe_name: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> ReferenceEmbedding:
        """Fit an InPCA embedding (eq. 2.2.6) of the models of one or more runs.

        Args:
            runs: a ``TrajectoryStore``, a (T, N, C) array of log-probabilities (or
                probabilities), or a sequence of either. Invalid store snapshots are skipped.
            labels: (N,) int labels; required for arrays, checked against stores.
            n_components: k, components kept (at most m).
            landmarks: embed ignorance, ``n_geodesic`` interior points of the ignorance->truth
                geodesic (eq. 2.2.3) and truth as points of the embedding.
            n_geodesic: number of interior geodesic points (also used for the drawn geodesic).
            run_names: one name per run (default: the store's ``run_name`` or ``run<i>``).
            max_models: keep at most this many models, evenly subsampled within each run.
            steps: one (T,) array of optimizer steps per array run (default ``arange(T)``).
            n_grid: S, points of the progress grid for the re-indexed trajectories.
            dtype: storage dtype of the sqrt-probabilities (float32 halves memory; use
                float64 for exact round trips).
            probe_name: probe name (default: the stores' ``probe_name``).
            meta: free-form JSON-able metadata saved with the reference.

        Returns:
            The fitted reference embedding (on the device of the inputs).

        Raises:
            ValueError: inconsistent shapes, labels or names, or a model whose distance to
                truth is infinite (probabilities with a zero on a true label).
        """
        run_list, labels_t, num_classes, store_probe = cls._collect_runs(runs, labels, steps)
        if run_names is not None:
            if len(run_names) != len(run_list):
                raise ValueError(
                    f"`run_names` must have one name per run ({len(run_list)}), "
                    f"got {len(run_names)}"
                )
            for r, name in zip(run_list, run_names):
                r.name = str(name)
        names = [r.name for r in run_list]
        if len(set(names)) != len(names):
            raise ValueError(f"`run_names` must be unique, got {names}")
        if n_components < 1:
            raise ValueError(f"`n_components` must be >= 1, got {n_components}")
        if n_geodesic < 0:
            raise ValueError(f"`n_geodesic` must be >= 0, got {n_geodesic}")
        if n_grid < 2:
            raise ValueError(f"`n_grid` must be >= 2, got {n_grid}")
        if max_models is not None:
            run_list = cls._cap_models(run_list, max_models)
        return cls._fit_runs(
            run_list,
            labels_t,
            num_classes,
            n_components=n_components,
            landmarks=landmarks,
            n_geodesic=n_geodesic,
            n_grid=n_grid,
            dtype=dtype,
            probe_name=probe_name if probe_name is not None else store_probe,
            meta=meta,
        )

    @staticmethod
    def _collect_runs(
        runs: Any, labels: ArrayLike | None, steps: Sequence[ArrayLike] | None
    ) -> tuple[list[_Run], Tensor, int, str]:
        single = _is_store(runs) or (isinstance(runs, (Tensor, np.ndarray)) and runs.ndim == 3)
        items = [runs] if single else list(runs)
        if not items:
            raise ValueError("`runs` must contain at least one run, got none")
        if steps is not None and len(steps) != len(items):
            raise ValueError(
                f"`steps` must have one array per run ({len(items)}), got {len(steps)}"
            )
        run_list: list[_Run] = []
        ref_labels = None if labels is None else _as_tensor(labels, "labels").long()
        num_classes: int | None = None
        probe = ""
        for i, item in enumerate(items):
            if _is_store(item):
                run, store_labels, c, probe = _store_run(item)
                store_labels_t = torch.from_numpy(store_labels.astype(np.int64))
                if ref_labels is None:
                    ref_labels = store_labels_t
                else:
                    diff = _label_diff(ref_labels.to("cpu").numpy(), store_labels)
                    if diff is not None:
                        raise ValueError(
                            f"`runs[{i}]` ({run.name}) was recorded on another probe: {diff}"
                        )
                if steps is not None:
                    run.steps = np.asarray(steps[i], dtype=np.int64)
            else:
                lp = as_log_probs(item, f"runs[{i}]")
                if lp.ndim != 3:
                    raise ValueError(
                        f"`runs[{i}]` must have shape (T, N, C), got {tuple(lp.shape)}"
                    )
                st = (
                    np.arange(lp.shape[0], dtype=np.int64)
                    if steps is None
                    else np.asarray(_as_tensor(steps[i], "steps").to("cpu"), dtype=np.int64)
                )
                run = _Run(lp, st, f"run{i}")
                c = lp.shape[-1]
            if run.log_probs.shape[0] != len(run.steps):
                raise ValueError(
                    f"`steps[{i}]` must have shape ({run.log_probs.shape[0]},), "
                    f"got ({len(run.steps)},)"
                )
            if run.log_probs.shape[0] == 0:
                raise ValueError(f"`runs[{i}]` ({run.name}) has no valid snapshot")
            if num_classes is None:
                num_classes = c
            elif c != num_classes:
                raise ValueError(f"`runs[{i}]` has C={c} classes, expected C={num_classes}")
            run_list.append(run)
        if ref_labels is None:
            raise ValueError("`labels` is required when `runs` are arrays, got None")
        assert num_classes is not None
        n = ref_labels.shape[0]
        for i, run in enumerate(run_list):
            if tuple(run.log_probs.shape[1:]) != (n, num_classes):
                raise ValueError(
                    f"`runs[{i}]` must have shape (T, N, C) = (T, {n}, {num_classes}), "
                    f"got {tuple(run.log_probs.shape)}"
                )
        if ref_labels.ndim != 1 or (
            n and (ref_labels.min() < 0 or ref_labels.max() >= num_classes)
        ):
            raise ValueError(
                f"`labels` must be (N,) ints in [0, {num_classes}), got {tuple(ref_labels.shape)}"
            )
        return run_list, ref_labels, int(num_classes), probe

    @staticmethod
    def _cap_models(run_list: list[_Run], max_models: int) -> list[_Run]:
        total = sum(r.log_probs.shape[0] for r in run_list)
        if max_models < 2 * len(run_list):
            raise ValueError(
                f"`max_models` must be >= 2 per run ({2 * len(run_list)}), got {max_models}"
            )
        if total <= max_models:
            return run_list
        out = []
        for r in run_list:
            t = r.log_probs.shape[0]
            keep = max(2, int(max_models * t / total))
            idx = _subsample_indices(t, keep)
            out.append(_Run(r.log_probs[torch.from_numpy(idx)], r.steps[idx], r.name))
        return out

    @classmethod
    def _fit_runs(
        cls,
        run_list: list[_Run],
        labels: Tensor,
        num_classes: int,
        *,
        n_components: int,
        landmarks: bool,
        n_geodesic: int,
        n_grid: int,
        dtype: torch.dtype,
        probe_name: str,
        meta: dict[str, Any] | None,
    ) -> ReferenceEmbedding:
        device = run_list[0].log_probs.device
        f64 = torch.float64
        labels = labels.to(device)
        lp_models = torch.cat([r.log_probs.to(device=device, dtype=f64) for r in run_list])
        model_run = torch.cat(
            [
                torch.full((r.log_probs.shape[0],), i, dtype=torch.int64)
                for i, r in enumerate(run_list)
            ]
        ).to(device)
        model_step = torch.from_numpy(np.concatenate([r.steps for r in run_list])).to(device)
        n_models = lp_models.shape[0]

        projection = F.geodesic_projection_from_log_probs(lp_models, labels)
        model_progress = projection.progress.to(f64).reshape(n_models)
        model_gdist = projection.distance.to(f64).reshape(n_models)
        model_error = (lp_models.argmax(-1) != labels).to(f64).mean(-1)

        alphas = torch.linspace(0.0, 1.0, n_geodesic + 2, dtype=f64)
        lp_geo = geodesic_log_probs(labels, num_classes, alphas[1:-1]).to(device)
        lp_ign = torch.full_like(lp_models[:1], -math.log(num_classes))

        if landmarks:
            lp_points = torch.cat([lp_models, lp_ign, lp_geo])
            kinds = [MODEL] * n_models + [IGNORANCE] + [GEODESIC] * n_geodesic + [TRUTH]
        else:
            lp_points = lp_models
            kinds = [MODEL] * n_models
        d_points = F.bhattacharyya_from_log_probs(lp_points).to(f64)
        if landmarks:
            d_truth = F.distance_to_truth_from_log_probs(lp_points, labels).to(f64).reshape(-1)
            m = d_points.shape[0] + 1
            D = torch.zeros((m, m), dtype=f64, device=device)
            D[:-1, :-1] = d_points
            D[:-1, -1] = d_truth
            D[-1, :-1] = d_truth
        else:
            D = d_points
        D = 0.5 * (D + D.T)
        D.fill_diagonal_(0.0)
        if not bool(torch.isfinite(D).all()):
            bad = int((~torch.isfinite(D)).any(1).to(torch.int64).argmax())
            raise ValueError(
                f"`runs`: the Bhattacharyya distance of point {bad} is not finite; pass "
                "log-probabilities (log_softmax of finite logits), not probabilities with zeros"
            )
        m = D.shape[0]
        res = nonzero_components(F.inpca(D, n_components=min(n_components, m)))
        eigvals = res.eigenvalues.to(f64)
        eigvecs = res.eigenvectors.to(f64)
        coords = res.coords.to(f64)

        if landmarks:
            geo_coords = coords[n_models:]  # ignorance, interior, truth in order
        else:
            d_land = torch.cat(
                [
                    F.distance_to_ignorance_from_log_probs(lp_models).to(f64).reshape(1, -1),
                    F.bhattacharyya_from_log_probs(lp_geo, lp_models)
                    .to(f64)
                    .reshape(n_geodesic, -1),
                    F.distance_to_truth_from_log_probs(lp_models, labels).to(f64).reshape(1, -1),
                ]
            )
            geo_coords = F.project_from_stats(
                d_land, res.row_means, res.grand_mean, eigvals, eigvecs
            ).to(f64)
        # orientation: truth - ignorance >= 0 on every axis
        flip = torch.where(geo_coords[-1] - geo_coords[0] < 0, -1.0, 1.0).to(f64)
        eigvecs, coords, geo_coords = eigvecs * flip, coords * flip, geo_coords * flip

        # The progress grids serve projections of later runs (nearest_run, model_at_progress,
        # save), not the map itself: they are re-indexed on first use, from the runs' own
        # log-probabilities, so a map that is only drawn never pays for them.
        per_run_lp = [r.log_probs for r in run_list]
        per_run_progress = [model_progress[model_run == r] for r in range(len(run_list))]

        def make_grids() -> tuple[Tensor, Tensor, Tensor]:
            return _progress_grids(per_run_lp, per_run_progress, n_grid, dtype, device)

        ref = cls(
            labels=labels.to(torch.int64),
            num_classes=num_classes,
            sqrt_probs=sqrt_probs(lp_points, dtype),
            point_kind=torch.tensor(kinds, dtype=torch.int64, device=device),
            row_means=res.row_means.to(f64),
            grand_mean=res.grand_mean.to(f64).reshape(()),
            eigenvalues=eigvals,
            eigenvectors=eigvecs,
            coords=coords,
            total_stress=float(res.total_stress),
            model_run=model_run,
            model_step=model_step.to(torch.int64),
            model_progress=model_progress,
            model_error=model_error,
            model_geodesic_distance=model_gdist,
            run_names=[r.name for r in run_list],
            ignorance_coords=geo_coords[0].clone(),
            truth_coords=geo_coords[-1].clone(),
            geodesic_coords=geo_coords.clone(),
            geodesic_alphas=alphas.to(device),
            grid=None,
            grid_sqrt=None,
            grid_valid=None,
            probe_name=probe_name,
            meta=meta,
            _grid_maker=make_grids,
        )
        ref.fit_distances = D  # reused by analysis.explained_stress_table (no second d_B)
        return ref

    @classmethod
    def from_store(cls, store_or_path: Any, **fit_kwargs: Any) -> ReferenceEmbedding:
        """Fit a reference on one stored run: a ``TrajectoryStore`` or its directory.

        The directory is ``<root>/<run>/<probe>`` (opened with ``TrajectoryStore(path)``).

        ``fit_kwargs`` go to :meth:`fit`.
        """
        if isinstance(store_or_path, (str, os.PathLike)):
            from lightning_manifold.store import TrajectoryStore

            store_or_path = TrajectoryStore(store_or_path)
        return cls.fit(store_or_path, **fit_kwargs)

    @classmethod
    def from_run(
        cls, root: PathLike, run_name: str, probe_name: str = "train", **fit_kwargs: Any
    ) -> ReferenceEmbedding:
        """Fit a reference on the run that just finished (``<root>/<run_name>/<probe_name>``).

        This is how run 1 becomes the baseline of runs 2..n::

            ReferenceEmbedding.from_run(cb.dirpath, cb.run_name).save("baseline.npz")
        """
        return cls.from_store(Path(root) / run_name / probe_name, **fit_kwargs)

    # ------------------------------------------------------------------ compatibility

    def check_compatible(self, labels: ArrayLike, num_classes: int | None = None) -> None:
        """Refuse a probe other than the one the reference was built on.

        Args:
            labels: (N,) labels of the probe.
            num_classes: C of the probe (not checked when None).

        Raises:
            ValueError: saying what differs (N expected vs got, C, number of differing labels).
        """
        got = _as_tensor(labels, "labels").detach().to("cpu").numpy().astype(np.int64).reshape(-1)
        expected = self.labels.detach().to("cpu").numpy()
        problems = []
        if num_classes is not None and int(num_classes) != self.num_classes:
            problems.append(f"C: expected {self.num_classes} classes, got {int(num_classes)}")
        diff = _label_diff(expected, got)
        if diff is not None:
            problems.append(diff)
        if problems:
            where = f" (probe {self.probe_name!r})" if self.probe_name else ""
            raise ValueError(
                f"the reference embedding{where} was built on a different probe: "
                + "; ".join(problems)
            )

    # ------------------------------------------------------------------ projection

    def distances(self, x: ArrayLike) -> Tensor:
        """d_B (eq. 2.2.2) of new models to every embedded point.

        Args:
            x: (N, C) or (q, N, C) log-probabilities or probabilities.

        Returns:
            (m,) or (q, m) float64 distances, columns in the order of ``point_kind``.
        """
        lp = self._check_input(x)
        labels = self.labels if self.has_landmarks else None
        d = distances_to_points(lp.reshape(-1, *lp.shape[-2:]), self.sqrt_probs, labels, self.dtype)
        return d[0] if lp.ndim == 2 else d

    def project_distances(self, d_new: ArrayLike) -> Tensor:
        """Coordinates (eq. 2.2.9) of new models from their distances to the embedded points.

        Args:
            d_new: (m,) or (q, m) d_B to the embedded points (as returned by :meth:`distances`).

        Returns:
            (k,) or (q, k) float64 coordinates.
        """
        d = _as_tensor(d_new, "d_new").to(device=self.device, dtype=torch.float64)
        if d.shape[-1] != self.num_points or d.ndim not in (1, 2):
            raise ValueError(
                f"`d_new` must have shape (m,) or (q, m) with m = {self.num_points}, "
                f"got {tuple(d.shape)}"
            )
        x = F.project_from_stats(
            d.reshape(-1, self.num_points),
            self.row_means,
            self.grand_mean,
            self.eigenvalues,
            self.eigenvectors,
        ).to(torch.float64)
        return x[0] if d.ndim == 1 else x

    def project(self, x: ArrayLike) -> Tensor:
        """Coordinates of new models on this map (eq. 2.2.9).

        Args:
            x: (N, C) or (q, N, C) log-probabilities (preferred) or probabilities.

        Returns:
            (k,) for one model, (q, k) for many (float64). Projecting a reference model
            returns its own row of :attr:`coords`.
        """
        return self.project_distances(self.distances(x))

    def _check_input(self, x: ArrayLike) -> Tensor:
        lp = as_log_probs(x, "log_probs")
        if tuple(lp.shape[-2:]) != (self.num_samples, self.num_classes):
            raise ValueError(
                f"`log_probs` must have shape (..., N, C) = (..., {self.num_samples}, "
                f"{self.num_classes}), got {tuple(lp.shape)}"
            )
        check_log_probabilities(lp, "log_probs")  # normalised, no NaN / +inf
        return lp.to(self.device)

    # ------------------------------------------------------------------ trajectories

    def _grid_position(self, run: int, s: float) -> tuple[int, float] | None:
        """Grid interval ``i`` and fraction ``alpha`` of progress ``s`` on run ``run``'s grid.

        None if the run does not cover ``s`` (below its first snapshot's progress, above the
        highest progress it reached, or next to an invalid grid point).
        """
        self._grid_tensors()  # the grids of a fresh fit are re-indexed on first use
        grid = self._grid_np[run]
        S = grid.shape[0]
        lo, hi = float(grid[0]), float(grid[-1])
        if not lo - 1e-12 <= s <= hi + 1e-12:
            return None
        pos = 0.0 if hi <= lo else (min(max(s, lo), hi) - lo) / (hi - lo) * (S - 1)
        i = min(math.floor(pos), S - 2)
        alpha = pos - i
        ends = [j for j, w in ((i, 1.0 - alpha), (i + 1, alpha)) if w > 1e-12]
        if not all(self._grid_valid_np[run, j] for j in ends):
            return None
        return i, alpha

    def model_at_progress(self, run: int, s: float) -> Tensor | None:
        """Reference run ``run``'s model at progress ``s`` as (N, C) sqrt-probabilities.

        Geodesic interpolation (eq. 2.2.3) between the two grid models around ``s`` on the
        run's own progress grid; None if the run does not cover ``s``.
        """
        at = self._grid_position(run, s)
        if at is None:
            return None
        i, alpha = at
        if alpha <= 1e-12:
            return self.grid_sqrt[run, i]
        if alpha >= 1.0 - 1e-12:
            return self.grid_sqrt[run, i + 1]
        p = F.geodesic_point(
            _probs_from_sqrt(self.grid_sqrt[run, i]),
            _probs_from_sqrt(self.grid_sqrt[run, i + 1]),
            alpha,
        )
        return torch.sqrt(p).to(self.dtype).clamp_min(torch.finfo(self.dtype).tiny)

    def nearest_run(
        self, x: ArrayLike, s: float, distances: Tensor | None = None
    ) -> tuple[int, float] | None:
        """The reference run nearest to a model at equal progress, and d_B to it.

        This is the integrand of the trajectory distance (eq. 2.2.5) at ``s``. The run is
        chosen by the model's d_B to each run's two snapshots around ``s`` (linearly
        interpolated in progress; taken from ``distances`` when given, else computed to the
        run's grid models around ``s``); the distance returned is the exact d_B to the chosen
        run's geodesically interpolated model (:meth:`model_at_progress`).

        Args:
            x: (N, C) log-probabilities (or probabilities) of one model.
            s: its progress (eq. 2.2.4).
            distances: optional (m,) :meth:`distances` of ``x`` (saves one d_B computation).

        Returns:
            ``(run index, distance)``, or None if no run covers progress ``s``.
        """
        lp = self._check_input(x)
        if lp.ndim != 2:
            raise ValueError(f"`x` must be one model (N, C), got {tuple(lp.shape)}")
        covered = [(r, at) for r in range(self.num_runs) if (at := self._grid_position(r, s))]
        if not covered:
            return None
        root = sqrt_probs(lp, self.dtype).unsqueeze(0)
        if distances is not None:
            d_models = distances.reshape(-1).detach().to("cpu", torch.float64).numpy()
            approx = [self._interpolated(d_models, r, s) for r, _ in covered]
        else:
            runs = torch.tensor([r for r, _ in covered], device=self.device)
            lo = torch.tensor([i for _, (i, _) in covered], device=self.device)
            alpha = torch.tensor([a for _, (_, a) in covered], dtype=torch.float64)
            ends = torch.cat([self.grid_sqrt[runs, lo], self.grid_sqrt[runs, lo + 1]])
            d = F.bhattacharyya_from_sqrt(root, ends).reshape(-1).to("cpu", torch.float64)
            approx = ((1 - alpha) * d[: len(covered)] + alpha * d[len(covered) :]).tolist()
        run = covered[int(np.argmin(approx))][0]
        model = self.model_at_progress(run, s)
        assert model is not None
        dist = F.bhattacharyya_from_sqrt(root, model.unsqueeze(0)).reshape(())
        return run, float(dist)

    def _interpolated(self, d_models: np.ndarray, run: int, s: float) -> float:
        """d to run ``run`` at progress ``s``, linear between its snapshots around ``s``."""
        index = self._run_models[run]
        reached = np.maximum.accumulate(self._run_curves[run][1])
        k = int(np.searchsorted(reached, s, side="left"))
        if k == 0 or k >= len(index):
            return float(d_models[index[min(k, len(index) - 1)]])
        lo, hi = reached[k - 1], reached[k]
        a = 0.0 if hi <= lo else (s - lo) / (hi - lo)
        return float((1 - a) * d_models[index[k - 1]] + a * d_models[index[k]])

    def step_at_progress(self, run: int, s: float) -> float:
        """Step at which reference run ``run`` first reached progress ``s`` (NaN if never)."""
        steps, prog = self._run_curves[run]
        return step_at_progress(steps, prog, s)

    # ------------------------------------------------------------------ frame

    def to_frame(self, n_components: int = 3, title: str = "") -> ManifoldFrame:
        """A :class:`ManifoldFrame` of the reference alone (no live run)."""
        k = min(n_components, self.n_components)
        cpu = lambda t: t.detach().to("cpu").numpy()  # noqa: E731
        models = cpu(self.point_kind == MODEL)
        return ManifoldFrame(
            probe=self.probe_name,
            step=int(self.model_step.max()) if self.num_models else 0,
            live_coords=np.zeros((0, k)),
            live_steps=np.zeros((0,), dtype=np.int64),
            live_progress=np.zeros((0,)),
            live_error=np.zeros((0,)),
            eigenvalues=cpu(self.eigenvalues),
            total_stress=self.total_stress,
            ignorance=cpu(self.ignorance_coords[:k]),
            truth=cpu(self.truth_coords[:k]),
            geodesic=cpu(self.geodesic_coords[:, :k]),
            live_geodesic_distance=np.zeros((0,)),
            live_reference_distance=np.zeros((0,)),
            ref_coords=cpu(self.coords[:, :k])[models],
            ref_run=cpu(self.model_run),
            ref_run_names=list(self.run_names),
            ref_progress=cpu(self.model_progress),
            ref_steps=cpu(self.model_step),
            title=title or f"reference {self.probe_name}".strip(),
            ref_geodesic_distance=cpu(self.model_geodesic_distance),
        )

    # ------------------------------------------------------------------ persistence

    def save(self, path: PathLike) -> Path:
        """Write one self-describing ``.npz`` (arrays + JSON metadata, no pickle) atomically.

        Returns:
            The path written (exactly ``path``; no suffix is added).
        """
        path = Path(path)
        arrays = {k: v.detach().to("cpu").numpy() for k, v in self._tensors().items()}
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "num_models": self.num_models,
            "num_points": self.num_points,
            "n_components": self.n_components,
            "landmarks": self.has_landmarks,
            "run_names": self.run_names,
            "probe_name": self.probe_name,
            "total_stress": self.total_stress,
            "dtype": str(self.dtype).replace("torch.", ""),
            "point_order": "models, then [ignorance, geodesic interior, truth] if landmarks",
            "meta": self.meta,
        }
        arrays["__meta__"] = np.array(json.dumps(meta))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(
        cls,
        path: PathLike,
        *,
        labels: ArrayLike | None = None,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
    ) -> ReferenceEmbedding:
        """Read a reference written by :meth:`save`; refuse it if it was built on another probe.

        Args:
            path: the ``.npz`` file.
            labels: (N,) labels of the probe it will be used with (checked when given).
            num_classes: C of that probe (checked when given).
            device: where to put the tensors (default CPU).

        Every array's header is checked against the sizes the file's metadata declares
        before anything is allocated, and nothing larger than the file is read.

        Raises:
            FileNotFoundError: no such file.
            ValueError: naming the file: not a reference file (empty, truncated, not an npz,
                compressed, missing or inconsistent arrays, bad metadata), a newer format
                version, or a different probe.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"`path`: no reference embedding at {path}")
        with SafeNpz(path, what="a lightning-manifold reference file") as z:
            meta = _reference_meta(z)
            _check_reference_headers(z, meta)
            arrays = {k: torch.from_numpy(z.read(k)) for k in _TENSOR_FIELDS}
        ref = cls(
            **arrays,
            num_classes=int(meta["num_classes"]),
            total_stress=float(meta["total_stress"]),
            run_names=list(meta["run_names"]),
            probe_name=str(meta.get("probe_name", "")),
            meta=dict(meta.get("meta", {})),
        )
        if labels is not None or num_classes is not None:
            ref.check_compatible(ref.labels if labels is None else labels, num_classes)
        return ref if device is None else ref.to(device)


# --------------------------------------------------------------------------- reading a file


def _reference_meta(z: SafeNpz) -> dict[str, Any]:
    """The JSON metadata of a reference file, with the fields :meth:`load` relies on checked."""

    def bad(what: str) -> ValueError:
        return ValueError(f"`path`: '{z.path}' is not a lightning-manifold reference file: {what}")

    header = z.check("__meta__", shape=(), kinds="U")
    if header.nbytes > 1 << 24:
        raise bad(f"its metadata is {header.nbytes} bytes, more than 16 MiB")
    try:
        meta = json.loads(str(z.read("__meta__")[()]))
    except ValueError as err:
        raise bad(f"its metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise bad(f"format {found!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"`format_version` must be an int >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"`path`: {z.path} has format_version {version}, this library reads 1..{FORMAT_VERSION}"
        )
    for key in ("num_samples", "num_classes", "num_models", "num_points", "n_components"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"metadata `{key}` must be an int >= 1, got {value!r}")
    names = meta.get("run_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad(f"metadata `run_names` must be a non-empty list of strings, got {names!r}")
    if not isinstance(meta.get("landmarks"), bool):
        raise bad(f"metadata `landmarks` must be true or false, got {meta.get('landmarks')!r}")
    if meta.get("dtype") not in ("float32", "float64"):
        raise bad(f"metadata `dtype` must be float32 or float64, got {meta.get('dtype')!r}")
    stress = meta.get("total_stress")
    if isinstance(stress, bool) or not isinstance(stress, (int, float)):
        raise bad(f"metadata `total_stress` must be a number, got {stress!r}")
    if not isinstance(meta.get("meta", {}), dict):
        raise bad("metadata `meta` must be an object")
    return meta


def _check_reference_headers(z: SafeNpz, meta: dict[str, Any]) -> None:
    """Every array's shape and kind against the metadata's N, C, m, M, k and R (no allocation).

    The geodesic length G and the progress-grid length S are not in the metadata; they are
    taken from ``geodesic_alphas`` and ``grid`` and every other array must agree with them.
    """
    n, c, m, k = meta["num_samples"], meta["num_classes"], meta["num_points"], meta["n_components"]
    models, runs, dtype = meta["num_models"], len(meta["run_names"]), meta["dtype"]
    g = z.check("geodesic_alphas", shape=(None,), kinds="f").shape[0]
    s = z.check("grid", shape=(runs, None), kinds="f").shape[1]
    expected: dict[str, tuple[tuple[int | None, ...], str]] = {
        "labels": ((n,), "iu"),
        "sqrt_probs": ((m - 1 if meta["landmarks"] else models, n, c), "f"),
        "point_kind": ((m,), "iu"),
        "row_means": ((m,), "f"),
        "grand_mean": ((), "f"),
        "eigenvalues": ((k,), "f"),
        "eigenvectors": ((m, k), "f"),
        "coords": ((m, k), "f"),
        "model_run": ((models,), "iu"),
        "model_step": ((models,), "iu"),
        "model_progress": ((models,), "f"),
        "model_error": ((models,), "f"),
        "model_geodesic_distance": ((models,), "f"),
        "ignorance_coords": ((k,), "f"),
        "truth_coords": ((k,), "f"),
        "geodesic_coords": ((g, k), "f"),
        "grid_sqrt": ((runs, s, n, c), "f"),
        "grid_valid": ((runs, s), "b"),
    }
    for key, (shape, kinds) in expected.items():
        z.check(key, shape=shape, kinds=kinds)
    for key in ("sqrt_probs", "grid_sqrt"):
        z.check(key, dtype=dtype)

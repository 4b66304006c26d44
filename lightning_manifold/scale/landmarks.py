"""Landmark InPCA: embed very many models from a few landmarks (thesis eq. 2.2.9, §2.5.3.3).

InPCA (eq. 2.2.6) is fitted on L landmark models only; every model is then placed by the
projection of eq. 2.2.9 from its distances to the landmarks (as in landmark MDS, de Silva and
Tenenbaum 2004). The cost is m * L distances instead of m^2 / 2. Landmarks are chosen by
greedy farthest-point sampling in d_B (spread over the manifold) or uniformly in progress
(eq. 2.2.4, spread along training). The quality is measured on a random held-out sample of
models: the explained pairwise distance (eq. 2.4.2) between their exact d_B and the Minkowski
distances of their projected coordinates, next to the same figure for an exact InPCA of the
sample alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_manifold.scale._npyio import create_npy, npy_layout
from lightning_manifold.scale._progress import progress_bar
from lightning_manifold.scale.classes import (
    ClassProjectionEffect,
    class_projection_effect,
    class_projection_matrix,
)
from lightning_manifold.scale.distances import (
    DEFAULT_MEMORY_BUDGET,
    _atomic_json,
    as_source,
    pairwise_bhattacharyya_blocked,
)
from lightning_manifold.scale.eigen import inpca_memmap
from lightning_manifold.scale.sources import ModelSource

if TYPE_CHECKING:
    from lightning.fabric import Fabric

    from lightning_manifold.functional import InPCAResult

__all__ = [
    "LandmarkEmbedding",
    "explained_pairwise_distance_blocked",
    "landmark_inpca",
    "select_landmarks",
]

Method = Literal["farthest", "progress"]
_DENSE_FIT_LIMIT = 4000  # landmarks fitted with a dense eigendecomposition up to this many


@dataclass
class LandmarkEmbedding:
    """Coordinates of every model from an InPCA fitted on landmarks.

    Attributes:
        coords: (m, k) float64 coordinates of all models (landmarks get their fitted ones).
        landmarks: (L,) positions of the landmark models, in selection order.
        cell_sizes: (L,) number of models whose nearest landmark (in d_B) each landmark is;
            the landmark weights when ``weighting="voronoi"``.
        result: the InPCA of the landmarks (eq. 2.2.6); use it with
            :func:`lightning_manifold.functional.project_from_stats` to place new models.
        holdout: (h,) positions of the held-out models used to measure the quality.
        explained_pairwise_distance: eq. 2.4.2 on the held-out models (exact d_B against the
            Minkowski distances of their projected coordinates).
        exact_explained_pairwise_distance: eq. 2.4.2 of an exact k-dimensional InPCA of the
            held-out models alone (the reference figure), or None when not computed.
        method: how landmarks were chosen.
        landmark_distances: (m, L) ``.npy`` file of d_B to the landmarks (None when the working
            directory was temporary).
        class_projection_effect: effect of the class projection on d_B, if one was used.
        class_projection: the (C, k) class projection matrix used, or None; new models must be
            read through the same matrix before they are projected.
        seconds: wall time per step.

    To place new models later: compute their d_B to the landmark models (e.g.
    ``pairwise_bhattacharyya_blocked(new, path, other=source.subset(emb.landmarks))``) and call
    ``F.project_from_stats(D_new, r.row_means, r.grand_mean, r.eigenvalues, r.eigenvectors,
    weights=r.weights)`` with ``r = emb.result`` (eq. 2.2.9).
    """

    coords: Tensor
    landmarks: np.ndarray
    cell_sizes: np.ndarray
    result: InPCAResult
    holdout: np.ndarray
    explained_pairwise_distance: float
    exact_explained_pairwise_distance: float | None
    method: str
    landmark_distances: Path | None = None
    class_projection_effect: ClassProjectionEffect | None = None
    class_projection: Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def signs(self) -> Tensor:
        """(k,) +1 for space-like, -1 for time-like axes (signs of the eigenvalues)."""
        s = torch.sign(self.result.eigenvalues)
        return torch.where(s == 0, torch.ones_like(s), s)


# ---------------------------------------------------------------------------- selection
def _load_pool(
    source: ModelSource, index: np.ndarray, *, block: int, device: Any, progress: bool, desc: str
) -> Tensor:
    """Models at ``index`` as (P, N, C) sqrt-probabilities, a view of an (N, P, C) tensor.

    The sample-major layout is the kernel's: distances against the pool then need no copy of
    the pool per call.
    """
    N, C = source.num_samples, source.num_classes
    pool = torch.empty((N, len(index), C), dtype=torch.float64, device=device)
    bar = progress_bar(progress, total=len(index), desc=desc, unit="model")
    try:
        for s in range(0, len(index), block):
            part = source.sqrt_probs(index[s : s + block], device=device)
            pool[:, s : s + len(part)] = part.transpose(0, 1)
            bar.update(len(part))
    finally:
        bar.close()
    return pool.transpose(0, 1)


def _farthest_point(
    source: ModelSource,
    n_landmarks: int,
    *,
    seed: int,
    candidates: int | None,
    memory_budget: int,
    device: Any,
    progress: bool,
) -> np.ndarray:
    """Greedy max-min (farthest-point) sampling in d_B over a candidate pool.

    Start from the candidate farthest from a random one; then repeatedly add the candidate
    whose distance to its nearest landmark is largest. The pool (all models, or a random
    subset of ``candidates`` models that fits half the budget) is held in memory; each step is
    one (1 x P) distance pass.
    """
    from lightning_manifold import functional as F

    m = source.num_models
    per_model = source.bytes_per_model
    fit = (memory_budget // 2) // per_model
    if fit < n_landmarks:
        raise ValueError(
            f"`memory_budget`={memory_budget} must hold the farthest-point candidates: at least "
            f"n_landmarks * N * C * 8 * 2 = {2 * n_landmarks * per_model} bytes"
        )
    pool_size = max(20 * n_landmarks, 5000) if candidates is None else int(candidates)
    if pool_size < n_landmarks:
        raise ValueError(f"`candidates` must be >= n_landmarks = {n_landmarks}, got {candidates}")
    pool_size = min(m, pool_size, fit)
    rng = np.random.default_rng(seed)
    pool = np.sort(rng.choice(m, size=pool_size, replace=False)) if pool_size < m else np.arange(m)
    block = max(1, (memory_budget // 8) // per_model)
    S = _load_pool(
        source, pool, block=block, device=device, progress=progress, desc="landmark candidates"
    )

    def dist(i: int) -> np.ndarray:
        return F.bhattacharyya_from_sqrt(S, S[i : i + 1])[:, 0].detach().to("cpu").numpy()

    first = int(np.argmax(dist(int(rng.integers(pool_size)))))
    chosen = [first]
    nearest = dist(first)
    nearest[first] = -np.inf
    bar = progress_bar(progress, total=n_landmarks, desc="farthest-point landmarks", unit="lm")
    try:
        bar.update(1)
        for _ in range(n_landmarks - 1):
            nxt = int(np.argmax(nearest))
            chosen.append(nxt)
            np.minimum(nearest, dist(nxt), out=nearest)
            nearest[nxt] = -np.inf
            bar.update(1)
    finally:
        bar.close()
    return pool[np.asarray(chosen, dtype=np.int64)]


def _model_progress(
    source: ModelSource, *, memory_budget: int, device: Any, progress: bool
) -> np.ndarray:
    """Progress (eq. 2.2.4) of every model, block by block, (m,)."""
    from lightning_manifold import functional as F

    if source.labels is None:
        raise ValueError(
            "`method`='progress' needs the probe labels: build the source with labels= (or from "
            "trajectory stores), or use method='farthest'"
        )
    m = source.num_models
    block = max(1, (memory_budget // 4) // source.bytes_per_model)
    labels = torch.as_tensor(source.labels)
    out = np.empty(m)
    bar = progress_bar(progress, total=m, desc="progress of models", unit="model")
    try:
        for s in range(0, m, block):
            idx = np.arange(s, min(m, s + block))
            lp = source.log_probs(idx, device=device)
            out[idx] = F.progress_from_log_probs(lp, labels.to(lp.device)).detach().to("cpu")
            bar.update(len(idx))
    finally:
        bar.close()
    return out


def _uniform_in_progress(progress_values: np.ndarray, n_landmarks: int) -> np.ndarray:
    """Models nearest to ``n_landmarks`` evenly spaced progress values (each used once)."""
    order = np.argsort(progress_values, kind="stable")
    sp = progress_values[order]
    used = np.zeros(sp.size, dtype=bool)
    chosen = []
    for target in np.linspace(sp[0], sp[-1], n_landmarks):
        pos = int(np.searchsorted(sp, target))
        lo, hi = pos - 1, pos
        while lo >= 0 and used[lo]:
            lo -= 1
        while hi < sp.size and used[hi]:
            hi += 1
        right_closer = hi < sp.size and (lo < 0 or sp[hi] - target <= target - sp[lo])
        pick = hi if right_closer else lo
        used[pick] = True
        chosen.append(order[pick])
    return np.asarray(chosen, dtype=np.int64)


def select_landmarks(
    source: ModelSource | np.ndarray | Tensor,
    n_landmarks: int,
    *,
    method: Method = "farthest",
    seed: int = 0,
    candidates: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Choose landmark models.

    ``"farthest"``: greedy farthest-point (max-min) sampling in d_B (eq. 2.2.2) over a pool of
    candidates (all models, or ``candidates`` random ones, default ``max(20 L, 5000)``, capped
    so the pool fits half of ``memory_budget``): landmarks spread over the whole manifold.
    ``"progress"``: the models nearest to L evenly spaced values of progress (eq. 2.2.4)
    between the smallest and largest progress (needs labels): landmarks spread along training.

    Args:
        source: m models.
        n_landmarks: L, 1 <= L <= m. With L = m every model is a landmark.
        method: ``"farthest"`` or ``"progress"``.
        seed: seed of the candidate pool and of the starting model.
        candidates: pool size for ``"farthest"``.
        memory_budget: bytes for the candidate pool / progress blocks.
        device: where distances are computed.
        progress: show progress bars.

    Returns:
        (L,) int64 model positions, in selection order (farthest) or of increasing progress.
    """
    src = as_source(source)
    m = src.num_models
    if isinstance(n_landmarks, bool) or not isinstance(n_landmarks, int | np.integer):
        raise TypeError(f"`n_landmarks` must be an int, got {type(n_landmarks).__name__}")
    if not 1 <= n_landmarks <= m:
        raise ValueError(f"`n_landmarks` must be in [1, m] = [1, {m}], got {n_landmarks}")
    if method not in ("farthest", "progress"):
        raise ValueError(f"`method` must be 'farthest' or 'progress', got {method!r}")
    if n_landmarks == m:
        return np.arange(m, dtype=np.int64)
    if method == "farthest":
        return _farthest_point(
            src,
            int(n_landmarks),
            seed=seed,
            candidates=candidates,
            memory_budget=memory_budget,
            device=device,
            progress=progress,
        )
    prog = _model_progress(src, memory_budget=memory_budget, device=device, progress=progress)
    return _uniform_in_progress(prog, int(n_landmarks))


def _voronoi_cells(layout: Any, memory_budget: int, progress: bool, rank: int) -> np.ndarray:
    """(L,) how many models have each landmark as their nearest one, from the (m, L) file."""
    m, L = layout.shape
    counts = np.zeros(L, dtype=np.int64)
    block = max(1, memory_budget // (4 * 8 * L))
    bar = progress_bar(progress, total=m, desc="landmark cells", unit="model", rank=rank)
    try:
        for s in range(0, m, block):
            rows = layout.read_rows(s, min(m, s + block))
            counts += np.bincount(rows.argmin(1), minlength=L)
            bar.update(len(rows))
    finally:
        bar.close()
    return counts


# ---------------------------------------------------------------------------- quality
def explained_pairwise_distance_blocked(
    D: np.ndarray | Tensor,
    coords: Tensor | np.ndarray,
    signs: Tensor | np.ndarray,
    *,
    block_rows: int = 1024,
) -> float:
    """Explained pairwise distance (eq. 2.4.2) without forming the full Minkowski matrix.

    ``1 - Σ_ij |D_ij - Σ_k sign_k (X_ik - X_jk)^2| / Σ_ij D_ij``, accumulated over row blocks
    with :func:`lightning_manifold.functional.minkowski_sq_distance`.

    Args:
        D: (h, h) exact distances (array or memmap).
        coords: (h, k) coordinates.
        signs: (k,) +-1 metric signature.
        block_rows: rows per block.

    Returns:
        The explained pairwise distance (1 is perfect).
    """
    from lightning_manifold import functional as F

    X = torch.as_tensor(np.asarray(coords) if isinstance(coords, np.ndarray) else coords)
    X = X.to(torch.float64)
    sg = torch.as_tensor(signs).to(dtype=torch.float64, device=X.device)
    num = den = 0.0
    h = X.shape[0]
    for s in range(0, h, block_rows):
        blk = D[s : s + block_rows]
        Db = (
            torch.from_numpy(np.array(blk, dtype=np.float64))
            if not isinstance(blk, Tensor)
            else blk.to(torch.float64)
        )
        Db = Db.to(X.device)
        Mk = F.minkowski_sq_distance(X[s : s + block_rows], X, signs=sg)
        num += float((Db - Mk).abs().sum())
        den += float(Db.sum())
    return 1.0 - num / den if den > 0 else float("nan")


# ---------------------------------------------------------------------------- pipeline
def landmark_inpca(
    source: ModelSource | np.ndarray | Tensor,
    n_landmarks: int,
    *,
    method: Method = "farthest",
    n_components: int = 3,
    weighting: Literal["voronoi", "uniform"] = "voronoi",
    holdout: int = 1000,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    seed: int = 0,
    workdir: str | os.PathLike[str] | None = None,
    class_projection: int | Tensor | np.ndarray | None = None,
    candidates: int | None = None,
    compare_exact: bool = True,
    fabric: Fabric | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    resume: bool = True,
) -> LandmarkEmbedding:
    """Landmark InPCA of m models: fit on L landmarks, project all with eq. 2.2.9.

    Steps (each with a progress bar; the distance passes are blocked, resumable and spread
    over Fabric ranks, see :func:`pairwise_bhattacharyya_blocked`):

    1. choose L landmarks (:func:`select_landmarks`);
    2. d_B from every model to every landmark, an (m, L) matrix on disk;
    3. InPCA (eq. 2.2.6) of the (L, L) landmark block (dense up to 4000 landmarks, else
       :func:`inpca_memmap`), by default weighted (§2.5.3.2) by the number of models nearest
       to each landmark, so that the fit sees the density of all models and not only the
       landmarks' spread (farthest-point landmarks over-represent the periphery);
    4. coordinates of all models with :func:`lightning_manifold.functional.project_from_stats`
       (eq. 2.2.9, with the same weights) in row blocks; landmarks keep their fitted
       coordinates;
    5. quality: exact d_B among ``holdout`` random non-landmark models (all models if there
       are too few) and the explained pairwise distance (eq. 2.4.2) of their coordinates; with
       ``compare_exact`` also that of an exact InPCA of the held-out models alone.

    Args:
        source: m models (a :class:`ModelSource`, or an (m, N, C) log-probability array).
        n_landmarks: L >= 2; thesis §2.5.3.3 finds that a small subset already gives a
            faithful picture.
        method: landmark selection, ``"farthest"`` or ``"progress"``.
        n_components: k, embedding dimensions (k < L).
        weighting: ``"voronoi"`` (default): weight each landmark by the size of its cell
            (models whose nearest landmark it is), i.e. weighted InPCA equivalent to repeating
            the landmark that many times; ``"uniform"``: plain InPCA of the landmarks.
        holdout: size of the held-out sample (0 to skip the quality measurement).
        memory_budget: bytes for each blocked pass.
        seed: seed of every random choice (landmarks, held-out sample, class projection).
        workdir: directory for the (m, L) and held-out distance files and the landmark list
            (reused when resuming); default a temporary directory removed at the end (it must
            be given, on a shared file system, when Fabric has several ranks).
        class_projection: None, k or a (C, k) matrix (thesis §3.5.2), see
            :func:`pairwise_bhattacharyya_blocked`; its effect is measured and returned.
        candidates: farthest-point candidate pool size (see :func:`select_landmarks`).
        compare_exact: also compute an exact InPCA of the held-out models for comparison.
        fabric: a launched Fabric to spread the distance passes over its ranks.
        device: where distances are computed without Fabric.
        progress: show progress bars with ETA.
        resume: reuse finished work in ``workdir``.

    Returns:
        :class:`LandmarkEmbedding`.
    """
    from lightning_manifold import functional as F

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    base = as_source(source)
    m = base.num_models
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise TypeError(f"`n_components` must be an int, got {type(n_components).__name__}")
    if not 2 <= n_landmarks <= m:
        raise ValueError(f"`n_landmarks` must be in [2, m] = [2, {m}], got {n_landmarks}")
    if not 1 <= n_components < n_landmarks:
        # centring leaves at most L - 1 non-zero eigenvalues; eq. 2.2.9 divides by them
        raise ValueError(
            f"`n_components` must be in [1, n_landmarks - 1] = [1, {n_landmarks - 1}], got "
            f"{n_components}"
        )
    if weighting not in ("voronoi", "uniform"):
        raise ValueError(f"`weighting` must be 'voronoi' or 'uniform', got {weighting!r}")
    if holdout < 0 or (0 < holdout < 2):
        raise ValueError(f"`holdout` must be 0 or >= 2 models, got {holdout}")
    world = 1 if fabric is None else int(fabric.world_size)
    rank = 0 if fabric is None else int(fabric.global_rank)
    if fabric is not None:
        device = fabric.device
    if workdir is None and world > 1:
        raise ValueError(
            "`workdir` must be given (on a file system shared by all ranks) when "
            f"Fabric has {world} ranks"
        )
    temporary = workdir is None
    work = (
        Path(tempfile.mkdtemp(prefix="lightning-manifold-landmarks-"))
        if temporary
        else Path(workdir)
    )
    work.mkdir(parents=True, exist_ok=True)
    effect = None
    M = None
    src = base
    if class_projection is not None:
        M = class_projection_matrix(base.num_classes, class_projection, seed=seed)
        src = base.with_class_projection(M)
        effect = class_projection_effect(
            base, M, seed=seed, memory_budget=memory_budget, device=device
        )
    try:
        # 1. landmarks
        key = {
            "method": method,
            "n_landmarks": int(n_landmarks),
            "seed": int(seed),
            "candidates": candidates,
            "source": src.fingerprint(),
        }
        lm_file = work / "landmarks.json"
        landmarks = None
        if resume and lm_file.is_file():
            stored = json.loads(lm_file.read_text())
            if stored.get("key") == json.loads(json.dumps(key)):
                landmarks = np.asarray(stored["landmarks"], dtype=np.int64)
        if landmarks is None:
            landmarks = select_landmarks(
                base if method == "progress" else src,
                int(n_landmarks),
                method=method,
                seed=seed,
                candidates=candidates,
                memory_budget=memory_budget,
                device=device,
                progress=progress,
            )
            if rank == 0:
                _atomic_json(lm_file, {"key": key, "landmarks": landmarks.tolist()})
        times["select"] = time.perf_counter() - t0

        # 2. distances to the landmarks
        t = time.perf_counter()
        dist = pairwise_bhattacharyya_blocked(
            src,
            work / "landmark_distances.npy",
            other=src.subset(landmarks),
            memory_budget=memory_budget,
            fabric=fabric,
            device=device,
            progress=progress,
            resume=resume,
        )
        layout = npy_layout(dist.path)
        times["landmark_distances"] = time.perf_counter() - t

        # 3. fit on the landmarks (weighted by the models each one stands for)
        t = time.perf_counter()
        cells = _voronoi_cells(layout, memory_budget, progress, rank)
        lm_weights = torch.from_numpy(cells.astype(np.float64)) if weighting == "voronoi" else None
        D_LL = layout.read_index(landmarks)
        D_LL = 0.5 * (D_LL + D_LL.T)
        np.fill_diagonal(D_LL, 0.0)
        L = len(landmarks)
        if L <= _DENSE_FIT_LIMIT:
            fit = F.inpca(torch.from_numpy(D_LL), int(n_components), weights=lm_weights)
        else:
            ll_path = work / f"landmark_block.{rank}.npy"
            create_npy(ll_path, D_LL.shape, np.dtype(np.float64))
            npy_layout(ll_path).write_block(0, 0, D_LL)
            del D_LL
            fit = inpca_memmap(
                ll_path,
                int(n_components),
                weights=lm_weights,
                memory_budget=memory_budget,
                seed=seed,
                progress=progress,
            )
        times["fit"] = time.perf_counter() - t

        # 4. project every model (eq. 2.2.9)
        t = time.perf_counter()
        k = int(n_components)
        coords = torch.empty((m, k), dtype=torch.float64)
        block = max(1, memory_budget // (4 * 8 * (L + k)))
        stats = [
            x.to(torch.float64)
            for x in (fit.row_means, fit.grand_mean, fit.eigenvalues, fit.eigenvectors)
        ]
        fit_w = None if fit.weights is None else fit.weights.to(torch.float64)
        bar = progress_bar(
            progress, total=m, desc="projecting models (eq. 2.2.9)", unit="model", rank=rank
        )
        try:
            for s in range(0, m, block):
                rows = torch.from_numpy(layout.read_rows(s, min(m, s + block)))
                coords[s : s + len(rows)] = F.project_from_stats(rows, *stats, weights=fit_w).to(
                    device="cpu", dtype=torch.float64
                )
                bar.update(len(rows))
        finally:
            bar.close()
        coords[torch.from_numpy(landmarks)] = fit.coords.to(device="cpu", dtype=torch.float64)
        times["project"] = time.perf_counter() - t

        # 5. quality on held-out models
        t = time.perf_counter()
        held = np.zeros(0, dtype=np.int64)
        epd = float("nan")
        epd_exact: float | None = None
        if holdout:
            rng = np.random.default_rng(seed + 1)
            others = np.setdiff1d(np.arange(m), landmarks)
            pool = others if others.size >= holdout else np.arange(m)
            held = np.sort(rng.choice(pool, size=min(holdout, pool.size), replace=False))
            hd = pairwise_bhattacharyya_blocked(
                src.subset(held),
                work / "holdout_distances.npy",
                memory_budget=memory_budget,
                fabric=fabric,
                device=device,
                progress=progress,
                resume=resume,
            )
            D_hh = hd.matrix
            signs = torch.sign(fit.eigenvalues.to(torch.float64))
            signs[signs == 0] = 1
            rows_per = max(1, memory_budget // (4 * 8 * len(held)))
            epd = explained_pairwise_distance_blocked(
                D_hh, coords[torch.from_numpy(held)], signs, block_rows=rows_per
            )
            if compare_exact and len(held) > k:
                ex = inpca_memmap(
                    hd.path, k, memory_budget=memory_budget, seed=seed, progress=progress
                )
                ex_signs = torch.sign(ex.eigenvalues)
                ex_signs[ex_signs == 0] = 1
                epd_exact = explained_pairwise_distance_blocked(
                    D_hh, ex.coords, ex_signs, block_rows=rows_per
                )
            del D_hh
        times["holdout"] = time.perf_counter() - t
        times["total"] = time.perf_counter() - t0
        return LandmarkEmbedding(
            coords=coords,
            landmarks=landmarks,
            cell_sizes=cells,
            result=fit,
            holdout=held,
            explained_pairwise_distance=epd,
            exact_explained_pairwise_distance=epd_exact,
            method=method,
            landmark_distances=None if temporary else dist.path,
            class_projection_effect=effect,
            class_projection=M,
            seconds=times,
        )
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)

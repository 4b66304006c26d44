"""A small, realistic synthetic ManifoldFrame for plot and sink tests.

Independent of ``online.py`` / ``functional``: trajectories of softmax probabilities move from
ignorance (uniform) toward truth (one-hot) with run-specific noise; progress (eq. 2.2.4) is found
by a grid search along the ignorance->truth geodesic (eq. 2.2.3) and the InPCA coordinates
(eq. 2.2.6) by a plain numpy eigendecomposition of W = -L D L / 2 of Bhattacharyya distances
(eq. 2.2.2) of all models together.
"""

from __future__ import annotations

import numpy as np

from lightning_manifold.frame import ManifoldFrame


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _trajectory(
    rng: np.random.Generator, labels: np.ndarray, n_classes: int, steps: np.ndarray, speed: float
) -> np.ndarray:
    """(T, N, C) probabilities of one run: uniform at step 0, close to one-hot at the end."""
    n = labels.shape[0]
    onehot = np.eye(n_classes)[labels]
    bias = rng.normal(size=(n, n_classes))  # the run's own way of being wrong
    learn_time = rng.uniform(0.1, 0.9, size=(n, 1))  # when each sample gets learned
    tau = np.minimum(1.0, speed * np.log1p(steps) / np.log1p(steps.max()))
    out = []
    for t in tau:
        gain = 1.0 / (1.0 + np.exp(-(t - learn_time) / 0.08))
        logits = 7.0 * t * gain * onehot + 2.0 * t * (1.0 - 0.5 * t) * bias
        logits = logits + 0.1 * t * rng.normal(size=logits.shape)
        out.append(_softmax(logits))
    return np.stack(out)


def _bhattacharyya(sqrt_p: np.ndarray) -> np.ndarray:
    """(M, M) d_B of eq. 2.2.2 from (M, N, C) square-root probabilities."""
    overlap = np.einsum("inc,jnc->ijn", sqrt_p, sqrt_p)
    d = -np.log(np.clip(overlap, 1e-300, None)).mean(axis=-1)
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def _inpca(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (M, M) and eigenvalues (M,) sorted by |lambda| (eq. 2.2.6)."""
    m = d.shape[0]
    centre = np.eye(m) - 1.0 / m
    w = -centre @ d @ centre / 2.0
    lam, vec = np.linalg.eigh(w)
    order = np.argsort(-np.abs(lam))
    lam, vec = lam[order], vec[:, order]
    signs = np.sign(vec[np.argmax(np.abs(vec), axis=0), np.arange(m)])
    vec = vec * np.where(signs == 0, 1.0, signs)
    return vec * np.sqrt(np.abs(lam)), lam


def _geodesic_sqrt(labels: np.ndarray, n_classes: int, alphas: np.ndarray) -> np.ndarray:
    """(A, N, C) square-root probabilities along ignorance -> truth (eq. 2.2.3)."""
    theta = np.arccos(1.0 / np.sqrt(n_classes))
    onehot = np.eye(n_classes)[labels]
    a = np.sin((1.0 - alphas) * theta) / np.sin(theta)
    b = np.sin(alphas * theta) / np.sin(theta)
    return a[:, None, None] / np.sqrt(n_classes) + b[:, None, None] * onehot[None]


def _progress(
    sqrt_p: np.ndarray, geo_sqrt: np.ndarray, alphas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Progress (eq. 2.2.4) by grid search and d_G to the geodesic (eq. 2.5.4), each (M,)."""
    cos = np.clip(np.einsum("mnc,anc->man", sqrt_p, geo_sqrt), -1.0, 1.0)
    dist = np.arccos(cos).mean(axis=-1)  # (M, A)
    best = dist.argmin(axis=1)
    return alphas[best], dist[np.arange(dist.shape[0]), best]


def make_frame(
    *,
    n_ref_runs: int = 3,
    snapshots_per_run: int = 14,
    n_live: int = 12,
    k: int = 5,
    n_samples: int = 48,
    n_classes: int = 4,
    with_reference: bool = True,
    seed: int = 0,
    title: str = "synthetic run",
) -> ManifoldFrame:
    """Build a ManifoldFrame of ``n_live`` live snapshots and ``n_ref_runs`` reference runs.

    Args:
        n_ref_runs: number of reference runs (ignored without a reference).
        snapshots_per_run: snapshots per reference run.
        n_live: live snapshots (steps log-spaced from 0).
        k: embedding dimensions kept in the coordinates.
        n_samples: probe samples N.
        n_classes: classes C.
        with_reference: ``False`` gives empty reference arrays and NaN reference distances.
        seed: random seed.
        title: frame title.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n_samples)
    max_step = 2000
    ref_steps_one = np.unique(np.r_[0, np.geomspace(1, max_step, snapshots_per_run - 1).round()])
    live_steps = np.unique(np.r_[0, np.geomspace(1, max_step // 2, n_live - 1).round()]).astype(
        np.int64
    )
    runs = [
        _trajectory(rng, labels, n_classes, ref_steps_one, speed)
        for speed in np.linspace(0.9, 1.4, n_ref_runs)
    ]
    live = _trajectory(rng, labels, n_classes, live_steps.astype(float), 1.1)
    if not with_reference:
        runs = []
    ref = np.concatenate(runs) if runs else np.zeros((0, n_samples, n_classes))
    alphas_geo = np.linspace(0.0, 1.0, 21)
    geo_sqrt = _geodesic_sqrt(labels, n_classes, alphas_geo)
    sqrt_all = np.concatenate([np.sqrt(ref), np.sqrt(live), geo_sqrt])
    coords, lam = _inpca(_bhattacharyya(sqrt_all))
    m, t = ref.shape[0], live.shape[0]

    alphas = np.linspace(0.0, 1.0, 401)
    grid = _geodesic_sqrt(labels, n_classes, alphas)
    ref_prog, ref_geo = _progress(np.sqrt(ref), grid, alphas)
    live_prog, live_geo = _progress(np.sqrt(live), grid, alphas)

    ref_dist = np.full(t, np.nan)
    if runs:
        d_lr = _bhattacharyya(np.concatenate([np.sqrt(live), np.sqrt(ref)]))[:t, t:]
        per_run = []
        for r in range(len(runs)):
            cols = np.arange(r * len(ref_steps_one), (r + 1) * len(ref_steps_one))
            nearest = cols[np.abs(ref_prog[cols][None, :] - live_prog[:, None]).argmin(axis=1)]
            per_run.append(d_lr[np.arange(t), nearest])
        ref_dist = np.min(per_run, axis=0)

    error = np.array([(p.argmax(-1) != labels).mean() for p in live])
    return ManifoldFrame(
        probe="train",
        step=int(live_steps[-1]),
        live_coords=coords[m : m + t, :k],
        live_steps=live_steps,
        live_progress=live_prog,
        live_error=error,
        eigenvalues=lam[: m + t + len(alphas_geo) - 1],
        total_stress=float(np.sum(lam**2)),
        ignorance=coords[m + t, :k],
        truth=coords[-1, :k],
        geodesic=coords[m + t :, :k],
        live_geodesic_distance=live_geo,
        live_reference_distance=ref_dist,
        ref_coords=coords[:m, :k] if m else np.zeros((0, k)),
        ref_run=np.repeat(np.arange(len(runs)), len(ref_steps_one)).astype(np.int64),
        ref_run_names=[f"baseline-{r}" for r in range(len(runs))],
        ref_progress=ref_prog,
        ref_steps=np.tile(ref_steps_one, len(runs)).astype(np.int64),
        title=title,
        ref_geodesic_distance=ref_geo,
    )

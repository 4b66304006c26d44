"""Plain reference implementations of the prediction-space geometry (thesis ch. 2).

Written independently of ``lightning_manifold.functional``: numpy (and scipy) only, explicit
per-sample loops and the formulas as printed in the thesis, no shared code with the library.
Everything works in float64 on whatever values it is given (float32 inputs are upcast, so a
float32 library result is compared with the exact answer for the same float32 numbers).

Shapes: m, k models; N samples; C classes. ``P`` is (m, N, C) or (N, C) probabilities.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import eigh as dense_eigh
from scipy.optimize import minimize, minimize_scalar
from scipy.special import lambertw


def as_np(x) -> np.ndarray:
    """float64 numpy copy of a tensor or array."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").numpy()
    return np.array(x, dtype=np.float64)


# ----------------------------------------------------------------------------- models and data


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def random_logits(rng: np.random.Generator, m: int, N: int, C: int, scale: float = 1.0):
    """(m, N, C) Gaussian logits: models scattered around ignorance."""
    return scale * rng.standard_normal((m, N, C))


def trained_logits(rng: np.random.Generator, labels: np.ndarray, C: int, scales, noise=1.0):
    """(len(scales), N, C) logits ``noise * g + scale * one_hot(label)``: a training run."""
    scales = np.asarray(scales, dtype=np.float64)
    N = labels.shape[0]
    onehot = np.eye(C)[labels]
    return noise * rng.standard_normal((scales.shape[0], N, C)) + scales[:, None, None] * onehot


def confident_logits(
    rng: np.random.Generator, labels: np.ndarray, C: int, m: int, scale: float, error: float
):
    """(m, N, C) near-one-hot logits: each sample gets ``scale`` on its label, except a fraction
    ``error`` of samples (per model) where a random wrong class gets it."""
    N = labels.shape[0]
    out = rng.standard_normal((m, N, C))
    for i in range(m):
        target = labels.copy()
        wrong = rng.random(N) < error
        target[wrong] = (labels[wrong] + rng.integers(1, C, wrong.sum())) % C
        out[i, np.arange(N), target] += scale
    return out


# ----------------------------------------------------------------------------- distances


def bhattacharyya(P, Q=None) -> np.ndarray:
    """eq. 2.2.2, per-sample loop: -(1/N) Σ_n log Σ_c sqrt(p q). (m, k); Q None: P vs P."""
    P = as_np(P)
    Q = P if Q is None else as_np(Q)
    m, N, _ = P.shape
    k = Q.shape[0]
    out = np.zeros((m, k))
    for i in range(m):
        for j in range(k):
            total = 0.0
            for n in range(N):
                bc = float(np.sum(np.sqrt(P[i, n] * Q[j, n])))
                total += math.log(bc) if bc > 0 else -math.inf
            out[i, j] = -total / N
    return out


def bhattacharyya_dense(P, Q=None) -> np.ndarray:
    """eq. 2.2.2 with numpy broadcasting instead of loops (for sizes where loops are slow)."""
    P = as_np(P)
    Q = P if Q is None else as_np(Q)
    bc = np.einsum("inc,jnc->ijn", np.sqrt(P), np.sqrt(Q))
    with np.errstate(divide="ignore"):
        return -np.log(bc).mean(-1)


def geodesic_distance_dense(P, Q) -> np.ndarray:
    """eq. 2.5.4 with numpy broadcasting instead of loops."""
    bc = np.einsum("inc,jnc->ijn", np.sqrt(as_np(P)), np.sqrt(as_np(Q)))
    return np.arccos(np.minimum(bc, 1.0)).mean(-1)


def bhattacharyya_log(L, M=None) -> np.ndarray:
    """eq. 2.2.2 from log-probabilities, exact: per sample -logsumexp_c ((l + m) / 2)."""
    L = as_np(L)
    M = L if M is None else as_np(M)
    m, N, _ = L.shape
    k = M.shape[0]
    out = np.zeros((m, k))
    for i in range(m):
        for j in range(k):
            total = 0.0
            for n in range(N):
                h = 0.5 * (L[i, n] + M[j, n])
                top = h.max()
                total += top + math.log(float(np.sum(np.exp(h - top))))
            out[i, j] = -total / N
    return out


def geodesic_distance(P, Q=None) -> np.ndarray:
    """eq. 2.5.4, per-sample loop: (1/N) Σ_n arccos Σ_c sqrt(p q)."""
    P = as_np(P)
    Q = P if Q is None else as_np(Q)
    m, N, _ = P.shape
    k = Q.shape[0]
    out = np.zeros((m, k))
    for i in range(m):
        for j in range(k):
            total = 0.0
            for n in range(N):
                bc = min(1.0, float(np.sum(np.sqrt(P[i, n] * Q[j, n]))))
                total += math.acos(bc)
            out[i, j] = total / N
    if Q is P:  # d_G(P, P) = 0 exactly; Σ_c p rounds to 1 - 1e-16 and arccos turns it to 1e-8
        np.fill_diagonal(out, 0.0)
    return out


def symmetric_kl(P, Q=None) -> np.ndarray:
    """eq. 2.5.3, per-sample loop: (1/N) Σ_n Σ_c (p - q) log(p / q); 0 log 0 terms are 0,
    a class with zero probability on exactly one side makes it infinite."""
    P = as_np(P)
    Q = P if Q is None else as_np(Q)
    m, N, _ = P.shape
    k = Q.shape[0]
    out = np.zeros((m, k))
    for i in range(m):
        for j in range(k):
            total = 0.0
            for n in range(N):
                p, q = P[i, n], Q[j, n]
                both = (p == 0) & (q == 0)
                if np.any((p == 0) != (q == 0)):
                    total = math.inf
                    continue
                p, q = p[~both], q[~both]
                total += float(np.sum((p - q) * (np.log(p) - np.log(q))))
            out[i, j] = total / N
    return out


def symmetric_kl_log(L, M=None) -> np.ndarray:
    """eq. 2.5.3 from log-probabilities: Σ (e^l - e^m)(l - m); infinite only for -inf logs."""
    L = as_np(L)
    M = L if M is None else as_np(M)
    m, N, _ = L.shape
    k = M.shape[0]
    out = np.zeros((m, k))
    for i in range(m):
        for j in range(k):
            total = 0.0
            for n in range(N):
                a, b = L[i, n], M[j, n]
                zero_a, zero_b = a == -math.inf, b == -math.inf
                if np.any(zero_a != zero_b):
                    total = math.inf
                    continue
                a, b = a[~zero_a], b[~zero_a]
                total += float(np.sum((np.exp(a) - np.exp(b)) * (a - b)))
            out[i, j] = total / N
    return out


def distance_to_truth_log(L, labels) -> np.ndarray:
    """d_B(P, P*) = -(1/(2N)) Σ_n log p[n, y_n]: (m,)."""
    L = as_np(L)
    m, N, _ = L.shape
    out = np.zeros(m)
    for i in range(m):
        out[i] = -sum(L[i, n, labels[n]] for n in range(N)) / (2 * N)
    return out


# ----------------------------------------------------------------------------- geodesics


def geodesic_point(p: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    """eq. 2.2.3 for one (N, C) pair, sample by sample:
    sqrt(p^α) = sin((1-α)θ)/sin θ sqrt(p) + sin(αθ)/sin θ sqrt(q), θ = arccos Σ sqrt(p q)."""
    p, q = as_np(p), as_np(q)
    out = np.empty_like(p)
    for n in range(p.shape[0]):
        theta = math.acos(min(1.0, float(np.sum(np.sqrt(p[n] * q[n])))))
        if theta == 0.0:
            root = np.sqrt(p[n])
        else:
            root = (
                math.sin((1 - alpha) * theta) * np.sqrt(p[n])
                + math.sin(alpha * theta) * np.sqrt(q[n])
            ) / math.sin(theta)
        out[n] = root**2 / np.sum(root**2)
    return out


def ignorance_truth_points(labels: np.ndarray, C: int, alphas) -> np.ndarray:
    """(A, N, C) points of eq. 2.2.3 between ignorance (1/C) and truth (one-hot labels),
    vectorised over samples: every sample has θ = arccos(1/sqrt C)."""
    return _geodesic_points(np.eye(C)[np.asarray(labels)], alphas)


def _geodesic_points(onehot: np.ndarray, alphas) -> np.ndarray:
    alphas = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    C = onehot.shape[-1]
    theta = math.acos(1 / math.sqrt(C))
    w0 = np.sin((1 - alphas) * theta) / math.sin(theta)
    w1 = np.sin(alphas * theta) / math.sin(theta)
    root = w0[:, None, None] / math.sqrt(C) + w1[:, None, None] * onehot
    return root**2 / np.sum(root**2, -1, keepdims=True)


def _objective(sqrt_p: np.ndarray, onehot: np.ndarray, alphas, weights=None) -> np.ndarray:
    """d_G(P, P^α_{0,*}) (eq. 2.5.4 against the full geodesic point of eq. 2.2.3) for each α."""
    alphas = np.atleast_1d(alphas)
    out = np.empty(alphas.shape[0])
    for i0 in range(0, alphas.shape[0], 128):
        G = _geodesic_points(onehot, alphas[i0 : i0 + 128])  # (a, N, C)
        bc = np.minimum(1.0, np.sum(sqrt_p[None] * np.sqrt(G), -1))  # (a, N)
        per = np.arccos(bc)
        out[i0 : i0 + 128] = per.mean(-1) if weights is None else per @ weights / weights.sum()
    return out


def progress(P, labels, weights=None, grid: int = 401) -> tuple[np.ndarray, np.ndarray]:
    """Progress (eq. 2.2.4) and distance to the geodesic, by brute force.

    For each model: bounded Brent minimisation (xatol 1e-12) of d_G(P, P^α_{0,*}) over
    α in [0, 1], candidates α = 0 and α = 1 added (the bounded method never evaluates the
    ends), and a dense grid whose minimum must not be below the chosen value: a wrong local
    minimum fails loudly here rather than silently in a test.

    Returns (m,) progress and (m,) distance.
    """
    P = as_np(P)
    if P.ndim == 2:
        P = P[None]
    labels = np.asarray(labels)
    onehot = np.eye(P.shape[-1])[labels]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    alphas = np.linspace(0.0, 1.0, grid)
    prog, dist = np.empty(P.shape[0]), np.empty(P.shape[0])
    for i in range(P.shape[0]):
        sp = np.sqrt(P[i])

        def f(a, sp=sp):
            return float(_objective(sp, onehot, [a], w)[0])

        res = minimize_scalar(f, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-12})
        best_f, best_a = min([(f(0.0), 0.0), (f(1.0), 1.0), (float(res.fun), float(res.x))])
        on_grid = _objective(sp, onehot, alphas, w)
        if on_grid.min() < best_f - 1e-13:
            raise AssertionError(
                f"reference progress: grid minimum {on_grid.min()!r} at "
                f"{alphas[on_grid.argmin()]} beats Brent {best_f!r} at {best_a}"
            )
        prog[i], dist[i] = best_a, best_f
    return prog, dist


def progress_by_slope_bisection(P, labels, xtol: float = 1e-13) -> np.ndarray:
    """Progress (eq. 2.2.4) by bisection on the sign of d/dα d_G(P, P^α_{0,*}), to ``xtol``.

    Per sample, with unit vectors s = sqrt(p) (renormalised) and g(α) = (sin((1-α)θ) e0 +
    sin(αθ) e*) / sin θ (eq. 2.2.3): d/dα arccos<s, g> = -<s, g'> / |s - <s, g> g|. The sine
    is the length of the perpendicular part, so it keeps its precision where <s, g> is within
    1e-16 of 1 (1 - <s, g>² does not); a sample exactly on its cusp contributes 0 (0 is in
    its subgradient). The objective is convex, so the sign of the slope decides, and the
    result does not depend on how flat the minimum is. Returns (m,).
    """
    P = as_np(P)
    if P.ndim == 2:
        P = P[None]
    labels = np.asarray(labels)
    m, N, C = P.shape
    theta = math.acos(1 / math.sqrt(C))
    e0 = np.full((N, C), 1 / math.sqrt(C))
    e1 = np.eye(C)[labels]
    out = np.empty(m)
    for i in range(m):
        s = np.sqrt(P[i])
        s = s / np.linalg.norm(s, axis=1, keepdims=True)

        def slope(a: float, s=s) -> float:
            g = (math.sin((1 - a) * theta) * e0 + math.sin(a * theta) * e1) / math.sin(theta)
            dg = theta * (-math.cos((1 - a) * theta) * e0 + math.cos(a * theta) * e1)
            c = np.sum(s * g, 1)
            sine = np.linalg.norm(s - c[:, None] * g, axis=1)
            dc = np.sum(s * dg, 1) / math.sin(theta)
            safe = np.where(sine > 0, sine, 1.0)
            return float(np.mean(np.where(sine > 0, -dc / safe, 0.0)))

        if slope(0.0) >= 0:
            out[i] = 0.0
            continue
        if slope(1.0) <= 0:
            out[i] = 1.0
            continue
        lo, hi = 0.0, 1.0
        while hi - lo > xtol:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        out[i] = 0.5 * (lo + hi)
    return out


def progress_objective(P, labels, alphas, weights=None) -> np.ndarray:
    """d_G(P, P^α_{0,*}) for one (N, C) model at each α in ``alphas``."""
    P = as_np(P)
    onehot = np.eye(P.shape[-1])[np.asarray(labels)]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return _objective(np.sqrt(P), onehot, alphas, w)


# ----------------------------------------------------------------------------- InPCA


def centred(D: np.ndarray) -> np.ndarray:
    """W = -L D L / 2 with L = I - 1/m (eq. 2.2.6), by explicit matrix products."""
    m = D.shape[0]
    L = np.eye(m) - np.ones((m, m)) / m
    return -L @ D @ L / 2


def eigh_by_magnitude(W: np.ndarray):
    """Eigenpairs of symmetric W sorted by |λ| descending (signs kept), dense LAPACK."""
    lam, U = dense_eigh(W)
    order = np.argsort(-np.abs(lam), kind="stable")
    return lam[order], U[:, order]


def largest_entry_positive(U: np.ndarray) -> np.ndarray:
    """Flip each column so that its entry of largest magnitude is positive."""
    U = U.copy()
    for k in range(U.shape[1]):
        i = int(np.argmax(np.abs(U[:, k])))
        if U[i, k] < 0:
            U[:, k] = -U[:, k]
    return U


def inpca(D: np.ndarray, k: int | None = None):
    """InPCA (eq. 2.2.6): (coords U sqrt|Λ|, eigenvalues, eigenvectors), first k axes.

    For a small k only the k lowest and k highest eigenpairs are computed (dense LAPACK
    ``syevr`` on index ranges): the k largest |λ| are among them.
    """
    W = centred(as_np(D))
    m = W.shape[0]
    if k is not None and 2 * k < m:
        lo = dense_eigh(W, subset_by_index=[0, k - 1])
        hi = dense_eigh(W, subset_by_index=[m - k, m - 1])
        lam, U = np.r_[lo[0], hi[0]], np.c_[lo[1], hi[1]]
        order = np.argsort(-np.abs(lam), kind="stable")
        lam, U = lam[order], U[:, order]
    else:
        lam, U = eigh_by_magnitude(W)
    k = lam.shape[0] if k is None else k
    lam, U = lam[:k], largest_entry_positive(U[:, :k])
    return U * np.sqrt(np.abs(lam)), lam, U


def classical_mds(D: np.ndarray, k: int):
    """Classical MDS: double centring, eigh, the k largest (positive) eigenvalues."""
    D = as_np(D)
    m = D.shape[0]
    J = np.eye(m) - 1.0 / m
    B = -0.5 * J @ D @ J
    lam, U = np.linalg.eigh(B)
    order = np.argsort(lam)[::-1][:k]
    return U[:, order] * np.sqrt(lam[order]), lam[order]


def minkowski_sq(X: np.ndarray, Y: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Σ_k sign_k (X_ik - Y_jk)² (eq. 2.2.7), by loops."""
    out = np.zeros((X.shape[0], Y.shape[0]))
    for i in range(X.shape[0]):
        for j in range(Y.shape[0]):
            out[i, j] = sum(signs[k] * (X[i, k] - Y[j, k]) ** 2 for k in range(X.shape[1]))
    return out


def explained_stress(lam: np.ndarray, d: int) -> float:
    """eq. 2.2.8: 1 - sqrt(Σ_{k>d} λ_k² / Σ_k λ_k²)."""
    return 1.0 - math.sqrt(float(np.sum(lam[d:] ** 2)) / float(np.sum(lam**2)))


def explained_pairwise_distance(D: np.ndarray, X: np.ndarray, signs: np.ndarray) -> float:
    """eq. 2.4.2: 1 - Σ_ij |D_ij - ||X_i - X_j||²| / Σ_ij D_ij (Minkowski norm), by loops."""
    m = D.shape[0]
    num, den = 0.0, 0.0
    for i in range(m):
        for j in range(m):
            sq = sum(signs[k] * (X[i, k] - X[j, k]) ** 2 for k in range(X.shape[1]))
            num += abs(D[i, j] - sq)
            den += D[i, j]
    return 1.0 - num / den


def project(D_new: np.ndarray, D_ref: np.ndarray, lam: np.ndarray, U: np.ndarray) -> np.ndarray:
    """eq. 2.2.9 with the sign of λ, loops over new models w, reference models u and axes k:
    W_wu = -d_wu/2 + (1/2m) Σ_u' (d_wu' + d_uu' - (1/m) Σ_v' d_u'v'),
    X_wk = Σ_u W_wu U_uk / (sign(λ_k) sqrt|λ_k|)."""
    D_new, D_ref = as_np(D_new), as_np(D_ref)
    q, m = D_new.shape
    grand = D_ref.sum() / m**2
    X = np.zeros((q, U.shape[1]))
    for w in range(q):
        Wrow = np.zeros(m)
        for u in range(m):
            acc = 0.0
            for u2 in range(m):
                acc += D_new[w, u2] + D_ref[u, u2]
            Wrow[u] = -D_new[w, u] / 2 + (acc / m - grand) / 2
        for k in range(U.shape[1]):
            X[w, k] = (Wrow @ U[:, k]) / (math.copysign(1.0, lam[k]) * math.sqrt(abs(lam[k])))
    return X


def kabsch(A: np.ndarray, B: np.ndarray):
    """Best orthogonal R (reflections allowed) for ||(A - mean A) R + mean B - B||; RMSD."""
    A0, B0 = A - A.mean(0), B - B.mean(0)
    U, _, Vt = np.linalg.svd(A0.T @ B0)
    R = U @ Vt
    moved = A0 @ R + B.mean(0)
    return moved, R, math.sqrt(float(np.mean(np.sum((moved - B) ** 2, -1))))


# ----------------------------------------------------------------------------- trajectories


def reindex_by_progress(P, prog, grid):
    """Re-index a (T, N, C) trajectory at progress values ``grid`` (text before eq. 2.2.5).

    For each s, the first consecutive pair (k, k+1) whose progress interval contains s;
    α = (s - s_k) / (s_{k+1} - s_k) (0 if the pair has equal progress) and the geodesic point
    of eq. 2.2.3 between the two snapshots. Returns (S, N, C) (NaN where uncovered), (S,) bool.
    """
    P, prog = as_np(P), as_np(prog)
    grid = as_np(grid)
    out = np.full((grid.shape[0], *P.shape[1:]), np.nan)
    valid = np.zeros(grid.shape[0], dtype=bool)
    for i, s in enumerate(grid):
        for k in range(P.shape[0] - 1):
            lo, hi = min(prog[k], prog[k + 1]), max(prog[k], prog[k + 1])
            if lo <= s <= hi:
                span = prog[k + 1] - prog[k]
                alpha = 0.0 if span == 0 else (s - prog[k]) / span
                out[i] = geodesic_point(P[k], P[k + 1], alpha)
                valid[i] = True
                break
    return out, valid


def trajectory_distance(P_u, s_u, P_v, s_v, n_points: int = 100) -> float:
    """eq. 2.2.5 on the common progress range [lo, hi]: trapezoid of d_B at equal progress,
    divided by hi - lo."""
    s_u, s_v = as_np(s_u), as_np(s_v)
    lo, hi = max(s_u.min(), s_v.min()), min(s_u.max(), s_v.max())
    grid = np.linspace(lo, hi, n_points)
    A, _ = reindex_by_progress(P_u, s_u, grid)
    B, _ = reindex_by_progress(P_v, s_v, grid)
    d = np.array([bhattacharyya(A[i][None], B[i][None])[0, 0] for i in range(n_points)])
    return float(np.trapezoid(d, grid) / (hi - lo))


def tube_width(P_runs) -> np.ndarray:
    """(R, S): d_B of each run's model to the arithmetic mean of the runs at each progress."""
    X = as_np(P_runs)
    R, S = X.shape[:2]
    out = np.zeros((R, S))
    for s in range(S):
        mean = X[:, s].mean(0)
        for r in range(R):
            out[r, s] = bhattacharyya(X[r, s][None], mean[None])[0, 0]
    return out


# ----------------------------------------------------------------------------- centroids


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / x.sum(-1, keepdims=True)


def centroid(P, kind: str) -> np.ndarray:
    """Table 2.3 centroids of (m, N, C) models, sample by sample."""
    P = as_np(P)
    _m, N, C = P.shape
    out = np.zeros((N, C))
    for n in range(N):
        p = P[:, n]  # (m, C)
        if kind == "arithmetic":
            out[n] = p.mean(0)
        elif kind == "sqrt_arithmetic":
            out[n] = _normalise(np.sqrt(p).mean(0) ** 2)
        elif kind == "geometric":
            out[n] = _normalise(np.exp(np.log(p).mean(0)))
        elif kind == "harmonic":
            out[n] = _normalise(1.0 / (1.0 / p).mean(0))
        elif kind == "jeffreys":
            am, gm = p.mean(0), np.exp(np.log(p).mean(0))
            out[n] = _normalise(am / lambertw(math.e * am / gm).real)
        elif kind == "bhattacharyya":
            out[n] = _bhattacharyya_centroid_one(p)
        else:
            raise ValueError(kind)
    return out


def _bhattacharyya_centroid_one(p: np.ndarray) -> np.ndarray:
    """argmin_q Σ_i -log Σ_c sqrt(p_ic q_c) over the simplex, by BFGS on q = softmax(z).

    Classes no model gives any probability get q = 0 (mass there only lowers every
    coefficient); the others are optimised.
    """
    live = p.sum(0) > 0
    sp = np.sqrt(p[:, live])

    def f(z):
        q = softmax(z)
        r = np.sqrt(q)
        bc = sp @ r
        val = -np.sum(np.log(bc))
        g_r = -(sp / bc[:, None]).sum(0)  # d val / d sqrt(q)
        # d sqrt(q_c) / d z_j = 0.5 sqrt(q_c) (δ_cj - q_j)
        grad = 0.5 * (g_r * r - q * np.sum(g_r * r))
        return val, grad

    z0 = np.log(p[:, live].mean(0))
    res = minimize(f, z0, jac=True, method="BFGS", options={"gtol": 1e-13, "maxiter": 10_000})
    out = np.zeros(p.shape[1])
    out[live] = softmax(res.x)
    return out


def bhattacharyya_centroid_objective(P, Q) -> float:
    """Σ_i d_B(P_i, Q) for (m, N, C) models and one (N, C) model."""
    return float(bhattacharyya(P, as_np(Q)[None]).sum())

"""The 4-point frame (thesis §2.4, eq. 2.4.1) and the batched prediction geometry.

Every function is checked against a plain numpy implementation written here (loops over
samples and models, ``numpy.linalg.eigh``, a grid-and-bounded-scalar search for progress).
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from lightning_manifold import functional as F

C = 4
EPS64 = float(torch.finfo(torch.float64).eps)


def models(m: int = 6, n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, N, C) float64 log-probabilities moving towards the labels, and (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    signal = 3.0 * torch.nn.functional.one_hot(y, C).double()
    noise = torch.randn(m, n, C, generator=g, dtype=torch.float64)
    scale = torch.linspace(0.0, 2.0, m, dtype=torch.float64)[:, None, None]
    return torch.log_softmax(scale * (signal + noise), -1), y


# --------------------------------------------------------------------------- plain versions


def plain_d(lp: np.ndarray, lq: np.ndarray) -> float:
    """d_B (eq. 2.2.2), sample by sample."""
    return float(np.mean([-math.log(np.sum(np.exp(0.5 * (a + b)))) for a, b in zip(lp, lq)]))


def plain_d_truth(lp: np.ndarray, y: np.ndarray) -> float:
    return float(-0.5 * np.mean([lp[n, y[n]] for n in range(len(y))]))


def plain_inpca(D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates (m, k), eigenvalues (k,) sorted by |lambda|, eigenvectors (m, k)."""
    m = D.shape[0]
    L = np.eye(m) - 1.0 / m
    W = -0.5 * L @ D @ L
    lam, U = np.linalg.eigh(W)
    order = np.argsort(-np.abs(lam))[:k]
    lam, U = lam[order], U[:, order]
    return U * np.sqrt(np.abs(lam)), lam, U


def plain_project(d: np.ndarray, D: np.ndarray, lam: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Eq. 2.2.9 (with the sign of lambda) for one new model's (m,) distances."""
    w = -0.5 * (d - d.mean() - D.mean(1) + D.mean())
    return (w @ U) / (np.sign(lam) * np.sqrt(np.abs(lam)))


def plain_progress(lp: np.ndarray, y: np.ndarray) -> float:
    """argmin over alpha of the mean arccos objective (eq. 2.2.4), grid then bounded search."""
    theta = math.acos(1 / math.sqrt(C))

    def d_g(alpha: float) -> float:
        total = 0.0
        for n, label in enumerate(y):
            s = np.full(C, math.sin((1 - alpha) * theta) / math.sin(theta) / math.sqrt(C))
            s[label] += math.sin(alpha * theta) / math.sin(theta)
            total += math.acos(min(1.0, float(np.sum(np.exp(0.5 * lp[n]) * s))))
        return total / len(y)

    grid = np.linspace(0, 1, 201)
    j = int(np.argmin([d_g(a) for a in grid]))
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, 200)]
    res = minimize_scalar(d_g, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    return float(res.x)


# --------------------------------------------------------------------------- eq. 2.4.1


def test_progress_weighted_average_matches_the_plain_sum():
    lp, _ = models()
    P = lp.exp()
    progress = torch.tensor([0.0, 0.1, 0.22, 0.31, 0.5, 0.9], dtype=torch.float64)
    levels = [0.2, 0.8]
    got = F.progress_weighted_average(P, progress, torch.tensor(levels, dtype=torch.float64))
    for b, s in enumerate(levels):
        w = [math.exp(-((float(p) - s) ** 2) / (2 * 0.05**2)) for p in progress]
        expected = sum(wi * P[i].numpy() for i, wi in enumerate(w)) / sum(w)
        np.testing.assert_allclose(got[b].numpy(), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, atol=1e-12)  # still probabilities
    weights = F.progress_weights(progress, np.array(levels), sigma=0.1)
    assert weights.shape == (6, 2)
    assert float(weights[2, 0]) == pytest.approx(math.exp(-(0.02**2) / (2 * 0.01)), rel=1e-12)
    with pytest.raises(ValueError, match="`sigma`"):
        F.progress_weights(progress, torch.tensor(levels), sigma=0.0)
    with pytest.raises(ValueError, match="`progress`"):
        F.progress_weighted_average(P, progress[:3], torch.tensor(levels))


def test_four_point_basis_and_placement_match_plain_inpca():
    lp, y = models()
    basis = lp[[2, 4]]  # any two models stand for P_s1, P_s2
    res = F.four_point_basis(basis, y)
    lp_np, y_np = lp.numpy(), y.numpy()
    ign = np.full_like(lp_np[0], -math.log(C))
    points = [ign, lp_np[2], lp_np[4], None]  # None: truth

    def dist(p, q):
        if p is None and q is None:
            return 0.0
        if p is None or q is None:
            return plain_d_truth(q if p is None else p, y_np)
        return plain_d(p, q)

    D = np.array([[dist(p, q) for q in points] for p in points])
    np.testing.assert_allclose(res.distances.numpy(), D, atol=1e-12)
    X, lam, U = plain_inpca(D, 3)
    e = res.embedding
    np.testing.assert_allclose(e.eigenvalues.numpy(), lam, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(np.abs(e.eigenvalues.numpy())) <= 0)  # sorted by |lambda|
    flip = np.sign(X[3] - X[0])  # orientation: ignorance -> truth non-negative on every axis
    np.testing.assert_allclose(e.coords.numpy(), X * flip, atol=1e-9)
    assert np.all(e.coords.numpy()[3] - e.coords.numpy()[0] >= 0)
    # every other model: 4 distances, then eq. 2.2.9
    d = F.four_point_distances(lp, basis, y)
    expected_d = np.array([[dist(m, q) for q in points] for m in lp_np])
    np.testing.assert_allclose(d.numpy(), expected_d, atol=1e-12)
    placed = F.project_from_stats(d, e.row_means, e.grand_mean, e.eigenvalues, e.eigenvectors)
    expected = np.array([plain_project(row, D, lam, U) * flip for row in expected_d])
    np.testing.assert_allclose(placed.numpy(), expected, atol=1e-8)


def test_four_point_basis_drops_null_axes_and_checks_arguments():
    lp, y = models()
    same = torch.stack([lp[3], lp[3]])  # P_s1 = P_s2: three distinct points span two axes
    res = F.four_point_basis(same, y)
    assert res.embedding.eigenvalues.numel() == 2
    with pytest.raises(ValueError, match="`n_components`"):
        F.four_point_basis(lp[[2, 4]], y, n_components=4)
    with pytest.raises(ValueError, match="`basis_log_probs`"):
        F.four_point_distances(lp, lp[:3], y)


# --------------------------------------------------------------------------- prediction geometry


@pytest.fixture(params=["numpy", "torch"])
def geometry_path(request, monkeypatch):
    """Both codes of ``prediction_geometry``: numpy for a model on the CPU, torch for larger
    problems and accelerators."""
    prediction_module = importlib.import_module("lightning_manifold.functional.prediction")
    if request.param == "torch":
        monkeypatch.setattr(prediction_module, "_HOST_ELEMENTS", 0)
    return request.param


def test_prediction_geometry_matches_plain_implementations(geometry_path):
    lp, y = models(m=5, n=30, seed=3)
    y = y.clone()
    y[y == 2] = 1  # class 2 absent: its per-class progress is NaN
    classes = F.class_weights(y, C)
    assert classes.present == (0, 1, 3)
    for model in lp[1:]:
        g = F.prediction_geometry(model, y, classes=classes)
        a, y_np = model.numpy(), y.numpy()
        assert float(g.progress) == pytest.approx(plain_progress(a, y_np), abs=1e-6)
        assert float(g.distance_to_ignorance) == pytest.approx(
            plain_d(a, np.full_like(a, -math.log(C))), abs=1e-12
        )
        assert float(g.distance_to_truth) == pytest.approx(plain_d_truth(a, y_np), abs=1e-12)
        assert float(g.cross_entropy) == pytest.approx(2 * plain_d_truth(a, y_np), abs=1e-12)
        assert float(g.error) == pytest.approx(float(np.mean(a.argmax(1) != y_np)))
        # d_G at the progress: the independent implementation of functional.progress
        ref = F.geodesic_projection_from_log_probs(model, y)
        assert float(g.distance_to_geodesic) == pytest.approx(float(ref.distance), abs=1e-9)
        per_class = g.per_class_progress.numpy()
        assert math.isnan(per_class[2])
        for c in (0, 1, 3):
            sel = y_np == c
            assert per_class[c] == pytest.approx(plain_progress(a[sel], y_np[sel]), abs=1e-6)
    plain = F.prediction_geometry(lp[2], y)
    assert plain.per_class_progress.numel() == 0
    assert plain.progress.dtype == torch.float64
    assert plain.progress.ndim == 0
    with pytest.raises(ValueError, match="`log_probs`"):
        F.prediction_geometry(lp, y)
    # float32 log-probabilities: the same values as their float64 upcast
    g32 = F.prediction_geometry(lp[3].float(), y, classes=classes)
    g64 = F.prediction_geometry(lp[3].float().double(), y, classes=classes)
    for a, b in zip(g32, g64):
        torch.testing.assert_close(a, b, rtol=0, atol=4 * F.PROGRESS_TOLERANCE, equal_nan=True)
    # the row sums are checked even when the caller skips validation
    for bad, what in ((lp[3] + 0.1, "normalised"), (lp[3].clone().fill_(math.nan), "NaN")):
        with pytest.raises(ValueError, match=what):
            F.prediction_geometry(bad, y, check=False)


def test_moved_helpers_are_still_importable_from_embedding():
    from lightning_manifold import embedding

    for name in ("as_log_probs", "sqrt_probs", "distances_to_points", "geodesic_log_probs"):
        assert getattr(embedding, name) is getattr(F, name)
    assert embedding.step_at_progress is F.step_at_progress

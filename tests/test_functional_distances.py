"""Distances, geodesics, ignorance and truth (thesis eqs. 2.2.2, 2.2.3, 2.5.3, 2.5.4).

Every value is compared with the plain per-sample implementation in ``_reference.py``, computed
in float64 on exactly the numbers given to the library (a float32 input is upcast, so the
reference is the exact answer for those float32 numbers).

Tolerances:
- float64: relative 1e-9 with an absolute floor of 1e-14 (rounding of coefficients near 1).
- float32: relative 1e-5 with an absolute floor of 1e-6: every per-sample coefficient is formed
  in float32 (unit roundoff 6e-8, times C terms) before its logarithm is averaged.
- d_G: arccos is ill-conditioned near 1 (an error e in the coefficient becomes sqrt(2e)), so
  float32 gets an absolute 1e-3 and float64 an absolute 1e-9.
"""

from __future__ import annotations

import math

import _reference as R
import numpy as np
import pytest
import torch

from lightning_manifold import functional as F

DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-14}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}
N, C = 48, 6
KINDS = ["random", "trained", "confident", "extreme50", "extreme200"]


def make_logits(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(m, N, C) float64 logits of one family and (N,) labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    if kind == "random":
        lg = R.random_logits(rng, 7, N, C, 1.5)
    elif kind == "trained":  # a run: noise + growing scale * one_hot(label)
        lg = R.trained_logits(rng, y, C, np.linspace(0.0, 10.0, 7))
    elif kind == "confident":  # near one-hot, a third of the samples confidently wrong
        lg = R.confident_logits(rng, y, C, 7, 20.0, 0.3)
    elif kind.startswith("extreme"):
        lg = R.confident_logits(rng, y, C, 6, float(kind[len("extreme") :]), 0.3)
    else:
        raise ValueError(kind)
    return lg, y


def models(kind: str, dtype: torch.dtype, seed: int = 0):
    """(log-probabilities, probabilities, labels) as ``dtype`` tensors from ``make_logits``."""
    lg, y = make_logits(kind, seed)
    L = torch.log_softmax(torch.from_numpy(lg).to(dtype), -1)
    return L, L.exp(), torch.from_numpy(y)


def assert_close(actual, expected, **tol) -> None:
    np.testing.assert_allclose(R.as_np(actual), np.asarray(expected, dtype=np.float64), **tol)


# ----------------------------------------------------------------------------- Bhattacharyya


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_bhattacharyya_pairwise_matches_reference(kind, dtype):
    _, P, _ = models(kind, dtype)
    D = F.bhattacharyya(P)
    assert isinstance(D, torch.Tensor)
    assert D.shape == (P.shape[0], P.shape[0])
    assert_close(D, R.bhattacharyya(P), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_bhattacharyya_cross_matches_reference(kind, dtype):
    _, P, _ = models(kind, dtype, seed=1)
    _, Q, _ = models("random" if kind != "random" else "trained", dtype, seed=1)
    D = F.bhattacharyya(P, Q[:4])
    assert D.shape == (P.shape[0], 4)
    assert_close(D, R.bhattacharyya(P, Q[:4]), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "trained", "confident", "extreme50"])
def test_bhattacharyya_from_log_probs_matches_exact_reference(kind, dtype):
    L, _, _ = models(kind, dtype)
    expected = R.bhattacharyya_log(L)  # per-sample log-sum-exp: no underflow at all
    assert_close(F.bhattacharyya_from_log_probs(L), expected, **TOL[dtype])
    assert_close(F.bhattacharyya_from_log_probs(L, L[:3]), expected[:, :3], **TOL[dtype])


def test_bhattacharyya_from_log_probs_extreme_float64():
    L, _, _ = models("extreme200", torch.float64)
    assert_close(F.bhattacharyya_from_log_probs(L), R.bhattacharyya_log(L), **TOL[torch.float64])


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 250.0), (torch.float64, 1e4)])
def test_bhattacharyya_from_log_probs_finite_for_extreme_finite_logits(dtype, scale):
    rng = np.random.default_rng(3)
    y = rng.integers(0, C, N)
    lg = R.confident_logits(rng, y, C, 4, scale, 0.5)
    L = torch.log_softmax(torch.from_numpy(lg).to(dtype), -1)
    expected = R.bhattacharyya_log(L)
    assert np.isfinite(expected).all()
    D = F.bhattacharyya_from_log_probs(L)
    assert bool(torch.isfinite(D).all())
    assert_close(D, expected, **TOL[dtype])


def test_bhattacharyya_large_m_and_n_blocks_match_reference():
    # More models than one block (200) and samples than one chunk (32), with underflowing
    # products of confident disagreeing samples inside each chunk.
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 70)
    lg = np.concatenate(
        [R.confident_logits(rng, y, 3, 110, 12.0, 0.4), R.random_logits(rng, 100, 70, 3, 1.0)]
    )
    P = torch.from_numpy(R.softmax(lg))
    expected = R.bhattacharyya_dense(P)
    np.fill_diagonal(expected, 0.0)
    assert_close(F.bhattacharyya(P), expected, rtol=1e-9, atol=1e-14)
    assert_close(F.bhattacharyya(P[:7], P), expected[:7], rtol=1e-9, atol=1e-14)
    assert_close(F.bhattacharyya(P, P[:7]), expected[:, :7], rtol=1e-9, atol=1e-14)
    dg = R.as_np(F.geodesic_distance(P[:7], P))
    expected = R.geodesic_distance_dense(P[:7], P)
    self_pairs = np.eye(7, P.shape[0], dtype=bool)  # arccos of a rounded 1: ~1e-8 each side
    assert_close(dg[~self_pairs], expected[~self_pairs], rtol=0, atol=1e-9)
    assert np.abs(dg[self_pairs]).max() <= 5e-8


def test_bhattacharyya_zero_overlap_is_infinite_and_partial_overlap_finite():
    eye = torch.eye(3, dtype=torch.float64)
    P = torch.stack([eye, eye[[1, 2, 0]], 0.5 * eye + 0.5 * eye[[1, 2, 0]]])  # (3, 3, 3)
    D = F.bhattacharyya(P)
    expected = R.bhattacharyya(P)
    assert math.isinf(expected[0, 1])
    assert_close(D, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bhattacharyya_single_model_shapes(dtype):
    _, P, _ = models("random", dtype)
    full = R.bhattacharyya(P)
    d = F.bhattacharyya(P[0], P[1])
    assert d.shape == ()
    assert_close(d, full[0, 1], **TOL[dtype])
    row = F.bhattacharyya(P[0], P)
    assert row.shape == (P.shape[0],)
    assert_close(row, full[0], **TOL[dtype])
    col = F.bhattacharyya(P, P[2])
    assert col.shape == (P.shape[0],)
    assert_close(col, full[:, 2], **TOL[dtype])
    assert F.bhattacharyya(P[0]).shape == ()
    assert float(F.bhattacharyya(P[0])) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_bhattacharyya_from_sqrt_equals_bhattacharyya(dtype):
    _, P, _ = models("trained", dtype)
    S = P.sqrt()
    assert_close(F.bhattacharyya_from_sqrt(S), R.bhattacharyya(P), **TOL[dtype])
    assert_close(F.bhattacharyya_from_sqrt(S, S[:2]), R.bhattacharyya(P, P[:2]), **TOL[dtype])


def _bhattacharyya_log(P):
    return F.bhattacharyya_from_log_probs(P.log())


PAIRWISE = {
    "bhattacharyya": F.bhattacharyya,
    "geodesic": F.geodesic_distance,
    "skl": F.symmetric_kl,
    "bhattacharyya_log": _bhattacharyya_log,
    "bhattacharyya_sqrt": lambda P: F.bhattacharyya_from_sqrt(P.sqrt()),
    "skl_log": lambda P: F.symmetric_kl_from_log_probs(P.log()),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", list(PAIRWISE.values()), ids=list(PAIRWISE))
def test_pairwise_matrices_symmetric_zero_diagonal_non_negative(fn, dtype):
    _, P, _ = models("trained", dtype, seed=4)
    P = torch.cat([P, P[:2]])  # duplicated models: off-diagonal zeros too
    D = fn(P)
    m = P.shape[0]
    assert D.shape == (m, m)
    assert D.is_floating_point()
    assert torch.equal(D, D.T)  # one triangle is computed and mirrored, on any BLAS
    assert bool((D.diagonal() == 0).all())
    assert bool((D >= 0).all())
    off = D[~torch.eye(m, dtype=torch.bool)]
    assert float(off.max()) > 0
    # duplicates are at distance (nearly) 0 from their originals
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    if fn is F.geodesic_distance:
        tol = 1e-3 if dtype == torch.float32 else 1e-7
    assert float(D[m - 2, 0]) <= tol
    assert float(D[m - 1, 1]) <= tol


# ----------------------------------------------------------------------------- d_G and sKL


@pytest.mark.parametrize("fn", list(PAIRWISE.values()), ids=list(PAIRWISE))
def test_pairwise_matrices_are_exactly_symmetric_across_blocks(fn):
    # 9 models: one diagonal block; 230: diagonal and off-diagonal blocks of the kernel.
    for dtype in DTYPES:
        for m, seed in [(9, 0), (230, 1)]:
            g = torch.Generator().manual_seed(seed)
            P = torch.softmax(3 * torch.randn(m, 40, 6, generator=g, dtype=torch.float64), -1)
            D = fn(P.to(dtype))
            assert torch.equal(D, D.T), float((D - D.T).abs().max())
            assert bool((D.diagonal() == 0).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "trained", "confident", "extreme50"])
def test_geodesic_distance_matches_reference(kind, dtype):
    _, P, _ = models(kind, dtype)
    atol = 1e-9 if dtype == torch.float64 else 1e-3
    dg = F.geodesic_distance(P)
    assert_close(dg, R.geodesic_distance(P), rtol=0, atol=atol)
    _, Q, _ = models("random", dtype, seed=5)
    assert_close(F.geodesic_distance(P, Q[:3]), R.geodesic_distance(P, Q[:3]), rtol=0, atol=atol)
    assert float(dg.max()) <= math.pi / 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "trained", "confident", "extreme50"])
def test_symmetric_kl_matches_reference(kind, dtype):
    L, P, _ = models(kind, dtype)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    assert_close(F.symmetric_kl(P), R.symmetric_kl(P), **tol)
    assert_close(F.symmetric_kl(P, P[:3]), R.symmetric_kl(P, P[:3]), **tol)
    assert_close(F.symmetric_kl_from_log_probs(L), R.symmetric_kl_log(L), **tol)
    assert_close(F.symmetric_kl_from_log_probs(L[:2], L), R.symmetric_kl_log(L[:2], L), **tol)


def test_symmetric_kl_infinite_exactly_when_one_side_has_a_zero():
    rng = np.random.default_rng(5)
    base = rng.dirichlet(np.ones(4), size=(5, 6))  # (5 models, 6 samples, 4 classes), positive
    P = base.copy()
    for i, (n, c) in {0: (2, 1), 1: (2, 1), 2: (4, 3)}.items():  # zeros: 0,1 shared; 2 own
        P[i, n] = P[i, n] * (np.arange(4) != c)
        P[i, n] /= P[i, n].sum()
    P = torch.from_numpy(P)
    D = F.symmetric_kl(P)
    expected = R.symmetric_kl(P)
    inf = np.isinf(expected)
    assert inf.any()
    assert (~inf).any()
    assert not inf[0, 1]  # the same zero on both sides: finite
    assert inf[0, 3]
    assert inf[2, 0]
    assert np.array_equal(torch.isinf(D).numpy(), inf)
    assert_close(D, expected, rtol=1e-9, atol=1e-12)
    L = P.log()  # -inf for the zeros
    assert np.array_equal(torch.isinf(F.symmetric_kl_from_log_probs(L)).numpy(), inf)
    assert_close(F.symmetric_kl_from_log_probs(L), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 200.0), (torch.float64, 1e4)])
def test_symmetric_kl_from_log_probs_finite_for_finite_log_probs(dtype, scale):
    rng = np.random.default_rng(6)
    y = rng.integers(0, C, N)
    L = torch.log_softmax(torch.from_numpy(R.confident_logits(rng, y, C, 3, scale, 0.3)), -1)
    L = L.to(dtype)
    expected = R.symmetric_kl_log(L)
    assert np.isfinite(expected).all()
    D = F.symmetric_kl_from_log_probs(L)
    assert bool(torch.isfinite(D).all())
    assert_close(D, expected, rtol=1e-5 if dtype == torch.float32 else 1e-9, atol=1e-6)


# ----------------------------------------------------------------------------- truth, ignorance


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.0, 1.0, 10.0, 200.0, 1e4])
def test_distance_to_truth_from_log_probs_is_half_cross_entropy(scale, dtype):
    rng = np.random.default_rng(8)
    y = rng.integers(0, C, N)
    logits = torch.from_numpy(R.confident_logits(rng, y, C, 5, scale, 0.4)).to(dtype)
    L = torch.log_softmax(logits, -1)
    d = F.distance_to_truth_from_log_probs(L, y)
    assert d.shape == (5,)
    assert d.dtype == dtype
    assert bool(torch.isfinite(d).all())
    ce = torch.stack([torch.nn.functional.cross_entropy(lg, torch.from_numpy(y)) for lg in logits])
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(d, 0.5 * ce.double(), rtol=rtol, atol=0)
    assert_close(d, R.distance_to_truth_log(L, y), rtol=rtol, atol=0)
    single = F.distance_to_truth_from_log_probs(L[1], y)
    assert single.shape == ()
    assert float(single) == pytest.approx(float(d[1]), rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "trained", "confident"])
def test_distance_to_truth_matches_pairwise_distance_to_one_hot(kind, dtype):
    _, P, y = models(kind, dtype)
    T = F.truth(y, C, dtype=dtype)
    expected = R.bhattacharyya(P, T[None])[:, 0]
    assert_close(F.distance_to_truth(P, y), expected, **TOL[dtype])
    assert_close(F.bhattacharyya(P, T), expected, **TOL[dtype])


def test_distance_to_truth_from_probabilities_is_infinite_on_a_zero_label_probability():
    P = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    assert math.isinf(float(F.distance_to_truth(P, torch.tensor([1, 0]))))
    assert math.isfinite(float(F.distance_to_truth(P, torch.tensor([0, 0]))))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "trained", "confident", "extreme50"])
def test_distance_to_ignorance_matches_pairwise_against_uniform_model(kind, dtype):
    L, P, _ = models(kind, dtype)
    P0 = F.ignorance(N, C, dtype=dtype)
    pairwise = F.bhattacharyya(P, P0)
    assert pairwise.shape == (P.shape[0],)
    expected = R.bhattacharyya(P, P0[None])[:, 0]
    assert_close(pairwise, expected, **TOL[dtype])
    assert_close(F.distance_to_ignorance(P), expected, **TOL[dtype])
    assert_close(
        F.distance_to_ignorance_from_log_probs(L),
        R.bhattacharyya_log(L, P0[None].log())[:, 0],
        **TOL[dtype],
    )
    assert F.distance_to_ignorance(P[0]).shape == ()


@pytest.mark.parametrize("dtype", DTYPES)
def test_distance_to_ignorance_from_log_probs_finite_for_extreme_logits(dtype):
    rng = np.random.default_rng(9)
    y = rng.integers(0, C, N)
    L = torch.log_softmax(
        torch.from_numpy(R.confident_logits(rng, y, C, 3, 1e4, 0.3)).to(dtype), -1
    )
    d = F.distance_to_ignorance_from_log_probs(L)
    assert bool(torch.isfinite(d).all())
    P0 = np.log(np.full((1, N, C), 1.0 / C))
    assert_close(d, R.bhattacharyya_log(L, P0)[:, 0], **TOL[dtype])


def test_ignorance_and_truth_models():
    P0 = F.ignorance(5, 4)
    assert P0.shape == (5, 4)
    assert P0.dtype == torch.float64
    assert bool((P0 == 0.25).all())
    assert F.ignorance(2, 3, dtype=torch.float32).dtype == torch.float32
    y = torch.tensor([2, 0, 1, 2])
    T = F.truth(y, 3)
    assert T.shape == (4, 3)
    assert np.array_equal(T.numpy(), np.eye(3)[y.numpy()])
    assert np.array_equal(F.truth(y.numpy(), 3).numpy(), T.numpy())
    # uniform vs one-hot: every coefficient is sqrt(1/C)
    assert float(F.bhattacharyya(F.ignorance(4, 3), T)) == pytest.approx(0.5 * math.log(3))


# ----------------------------------------------------------------------------- geodesic points


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.0, 1e-6, 0.3, 0.5, 1 - 1e-6, 1.0])
def test_geodesic_point_matches_reference(alpha, dtype):
    _, P, _ = models("trained", dtype, seed=2)
    p, q = P[1], P[5]
    out = F.geodesic_point(p, q, alpha)
    assert out.shape == p.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(out, R.geodesic_point(p, q, alpha), rtol=0, atol=tol)
    assert_close(out.sum(-1), np.ones(N), rtol=0, atol=tol)


def test_geodesic_point_vector_alpha_endpoints_and_constant_speed():
    _, P, _ = models("confident", torch.float64, seed=3)
    p, q = P[0], P[4]
    alphas = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    pts = F.geodesic_point(p, q, alphas)
    assert pts.shape == (5, N, C)
    for i, a in enumerate(alphas.tolist()):
        assert_close(pts[i], R.geodesic_point(p, q, a), rtol=0, atol=1e-12)
    assert_close(pts[0], p, rtol=0, atol=1e-12)
    assert_close(pts[-1], q, rtol=0, atol=1e-12)
    # each sample moves along its great circle at constant speed: d_G(p, p^α) = α d_G(p, q)
    # (checked away from α=0 where arccos near 1 loses digits)
    total = R.geodesic_distance(p[None], q[None])[0, 0]
    along = R.geodesic_distance(p[None], pts[1:])[0]
    assert_close(along, alphas[1:].numpy() * total, rtol=0, atol=1e-7)
    assert F.geodesic_point(p, q, torch.tensor(0.5)).shape == (N, C)


def test_geodesic_point_between_identical_and_between_orthogonal_models():
    _, P, _ = models("random", torch.float64)
    # θ = 0: the geodesic is a single point
    assert_close(F.geodesic_point(P[0], P[0], 0.3), P[0], rtol=0, atol=1e-15)
    # θ = π/2 (one-hot on different classes): sqrt(p^α) = cos(απ/2) e_0 + sin(απ/2) e_1
    e0 = torch.zeros(3, 4, dtype=torch.float64)
    e0[:, 0] = 1
    e1 = torch.zeros(3, 4, dtype=torch.float64)
    e1[:, 1] = 1
    for a in [0.0, 0.25, 0.5, 0.8, 1.0]:
        out = F.geodesic_point(e0, e1, a)
        expected = math.cos(a * math.pi / 2) ** 2 * e0 + math.sin(a * math.pi / 2) ** 2 * e1
        assert_close(out, expected, rtol=0, atol=1e-15)
        assert_close(out, R.geodesic_point(e0, e1, a), rtol=0, atol=1e-15)


@pytest.mark.parametrize("num_classes", [2, 10])
def test_ignorance_truth_geodesic_matches_reference(num_classes):
    y = np.random.default_rng(10).integers(0, num_classes, 30)
    alphas = np.array([0.0, 1e-6, 0.2, 0.5, 0.8, 1 - 1e-6, 1.0])
    G = F.ignorance_truth_geodesic(y, num_classes, alphas)
    assert G.shape == (alphas.size, 30, num_classes)
    assert_close(G, R.ignorance_truth_points(y, num_classes, alphas), rtol=0, atol=1e-13)
    assert_close(G[0], F.ignorance(30, num_classes), rtol=0, atol=1e-15)
    assert np.array_equal(G[-1].numpy(), np.eye(num_classes)[y])
    general = F.geodesic_point(F.ignorance(30, num_classes), F.truth(y, num_classes), alphas)
    assert_close(G, general, rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- inputs


def test_numpy_inputs_give_tensors():
    _, P, y = models("random", torch.float64)
    Pn, yn = P.numpy(), y.numpy()
    for out in [
        F.bhattacharyya(Pn),
        F.bhattacharyya(Pn, Pn[:2]),
        F.bhattacharyya_from_log_probs(np.log(Pn)),
        F.geodesic_distance(Pn),
        F.symmetric_kl(Pn),
        F.distance_to_ignorance(Pn),
        F.distance_to_truth(Pn, yn),
        F.distance_to_truth_from_log_probs(np.log(Pn), yn),
        F.geodesic_point(Pn[0], Pn[1], 0.5),
    ]:
        assert isinstance(out, torch.Tensor)
        assert out.is_floating_point()
        assert out.device == P.device
    assert_close(F.bhattacharyya(Pn), R.bhattacharyya(P), **TOL[torch.float64])
    # read-only arrays (e.g. memory-mapped snapshots) are accepted
    ro = Pn.copy()
    ro.setflags(write=False)
    assert_close(F.bhattacharyya(ro), R.bhattacharyya(P), **TOL[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES)
def test_outputs_keep_float_dtype_and_device(dtype):
    L, P, y = models("random", dtype)
    for out in [
        F.bhattacharyya(P),
        F.bhattacharyya_from_log_probs(L),
        F.geodesic_distance(P),
        F.symmetric_kl(P),
        F.distance_to_ignorance(P),
        F.distance_to_truth_from_log_probs(L, y),
    ]:
        assert out.dtype == dtype
        assert out.device == P.device


def _bad_probability_cases():
    P = torch.softmax(torch.randn(3, 5, 4, dtype=torch.float64), -1)
    neg = P.clone()
    neg[0, 0, 0] = -0.1
    neg[0, 0, 1] += 0.1
    unnorm = P.clone()
    unnorm[1, 2] *= 1.01
    nan = P.clone()
    nan[2, 1, 3] = math.nan
    inf = P.clone()
    inf[2, 1, 3] = math.inf
    return {
        "1-D": P[0, 0],
        "4-D": P[None],
        "negative": neg,
        "not summing to 1": unnorm,
        "NaN": nan,
        "inf": inf,
        "empty models": P[:0],
        "empty samples": P[:, :0],
        "empty classes": P[:, :, :0],
    }


@pytest.mark.parametrize("case", list(_bad_probability_cases()))
@pytest.mark.parametrize(
    "fn",
    [
        F.bhattacharyya,
        F.geodesic_distance,
        F.symmetric_kl,
        F.distance_to_ignorance,
        lambda P: F.distance_to_truth(P, torch.zeros(5, dtype=torch.long)),
    ],
    ids=["bhattacharyya", "geodesic", "skl", "to_ignorance", "to_truth"],
)
def test_bad_probabilities_raise_naming_P(fn, case):
    with pytest.raises(ValueError, match="`P`"):
        fn(_bad_probability_cases()[case])


@pytest.mark.parametrize("case", ["1-D", "negative", "not summing to 1", "NaN", "empty samples"])
def test_bad_second_argument_raises_naming_Q(case):
    P = torch.softmax(torch.randn(2, 5, 4, dtype=torch.float64), -1)
    bad = _bad_probability_cases()[case]
    with pytest.raises(ValueError, match="`Q`"):
        F.bhattacharyya(P, bad)
    with pytest.raises(ValueError, match="`Q`"):
        F.symmetric_kl(P, bad)


@pytest.mark.parametrize(
    "fn", [F.bhattacharyya, F.geodesic_distance, F.symmetric_kl], ids=["dB", "dG", "skl"]
)
@pytest.mark.parametrize("shape", [(2, 6, 4), (2, 5, 3)], ids=["N mismatch", "C mismatch"])
def test_sample_or_class_mismatch_raises_naming_Q(fn, shape):
    P = torch.softmax(torch.randn(3, 5, 4, dtype=torch.float64), -1)
    Q = torch.softmax(torch.randn(*shape, dtype=torch.float64), -1)
    with pytest.raises(ValueError, match="`Q`") as info:
        fn(P, Q)
    assert str(tuple(shape[1:])) in str(info.value)


def _bad_log_cases():
    L = torch.log_softmax(torch.randn(3, 5, 4, dtype=torch.float64), -1)
    nan, pinf, unnorm = L.clone(), L.clone(), L.clone()
    nan[1, 2, 0] = math.nan
    pinf[1, 2, 0] = math.inf
    unnorm[0] += 0.1
    return {"NaN": nan, "+inf": pinf, "unnormalised": unnorm, "1-D": L[0, 0], "empty": L[:0]}


@pytest.mark.parametrize("case", list(_bad_log_cases()))
@pytest.mark.parametrize(
    "fn",
    [
        F.bhattacharyya_from_log_probs,
        F.symmetric_kl_from_log_probs,
        F.distance_to_ignorance_from_log_probs,
        lambda L: F.distance_to_truth_from_log_probs(L, torch.zeros(5, dtype=torch.long)),
    ],
    ids=["dB", "skl", "to_ignorance", "to_truth"],
)
def test_bad_log_probabilities_raise_naming_log_P(fn, case):
    with pytest.raises(ValueError, match="`log_P`"):
        fn(_bad_log_cases()[case])


def test_bad_second_log_argument_raises_naming_log_Q():
    L = torch.log_softmax(torch.randn(3, 5, 4, dtype=torch.float64), -1)
    for bad in [_bad_log_cases()["NaN"], L[:, :4], L[..., :3]]:
        with pytest.raises(ValueError, match="`log_Q`"):
            F.bhattacharyya_from_log_probs(L, bad)


@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([0, 1, 2, 3]),  # wrong length (N = 5)
        torch.tensor([0, 1, 2, 3, 4]),  # out of range (C = 4)
        torch.tensor([0, 1, -1, 3, 0]),  # negative
        torch.tensor([0.0, 1.0, 2.0, 3.0, 0.0]),  # not integers
        torch.zeros((5, 1), dtype=torch.long),  # not 1-D
    ],
    ids=["length", "too large", "negative", "float", "2-D"],
)
def test_bad_labels_raise_naming_labels(labels):
    L = torch.log_softmax(torch.randn(3, 5, 4, dtype=torch.float64), -1)
    with pytest.raises(ValueError, match="`labels`"):
        F.distance_to_truth_from_log_probs(L, labels)
    with pytest.raises(ValueError, match="`labels`"):
        F.distance_to_truth(L.exp(), labels)


def test_float32_rows_off_by_more_than_the_tolerance_are_refused():
    P = torch.softmax(torch.randn(2, 5, 4), -1)
    F.bhattacharyya(P * (1 + 1e-5))  # float32 rounding slack is accepted
    with pytest.raises(ValueError, match="`P`"):
        F.bhattacharyya(P * 1.01)


def test_integer_probabilities_and_bad_types_are_refused():
    with pytest.raises(ValueError, match="`P`"):
        F.bhattacharyya(torch.ones(2, 3, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="`P`"):
        F.bhattacharyya([[0.5, 0.5]])


def test_geodesic_point_and_constructors_reject_bad_input():
    P = torch.softmax(torch.randn(2, 5, 4, dtype=torch.float64), -1)
    with pytest.raises(ValueError, match="`P`"):
        F.geodesic_point(P, P[0], 0.5)  # a batch instead of one model
    with pytest.raises(ValueError, match="`Q`"):
        F.geodesic_point(P[0], P[1, :4], 0.5)
    with pytest.raises(ValueError, match="`alpha`"):
        F.geodesic_point(P[0], P[1], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="`num_classes`"):
        F.ignorance(3, 1)
    with pytest.raises(ValueError, match="`labels`"):
        F.truth(torch.tensor([0, 3]), 3)


def test_many_models_in_threads_match_one_thread_and_the_reference() -> None:
    """Above a few blocks, all pairs are computed by one Python thread per intra-op thread
    (each block on one intra-op thread): the same numbers, bit for bit, as one thread, and the
    thread count is restored."""
    rng = np.random.default_rng(3)
    lg = R.random_logits(rng, 460, 20, 3, 2.0)  # 460 models: 10 blocks of 112 rows or fewer
    lp = torch.from_numpy(lg - np.log(np.exp(lg).sum(-1, keepdims=True)))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = F.bhattacharyya_from_log_probs(lp)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        single = F.bhattacharyya_from_log_probs(lp)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(threaded, single)
    P = np.exp(lp.numpy())
    for i, j in [(0, 1), (5, 459), (230, 231), (111, 112), (459, 0)]:
        expected = -np.mean(np.log(np.sqrt(P[i] * P[j]).sum(-1)))
        assert float(threaded[i, j]) == pytest.approx(expected, rel=1e-9, abs=1e-14)

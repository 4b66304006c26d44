"""Progress: projection onto the ignorance->truth geodesic (thesis eq. 2.2.4).

The reference (``_reference.progress``) minimises d_G(P, P^α_{0,*}) (eq. 2.5.4) against the full
geodesic point of eq. 2.2.3 with a bounded Brent search (xatol 1e-12), also tries α = 0 and
α = 1, and checks a dense grid so a wrong local minimum cannot pass unnoticed.

The reference is fed the input rows renormalised in float64: a float32 softmax row sums to 1 only
within ~1e-7, and the library treats every sample as its point on the sphere (its gradient
divides by the sample's own norm). With that, float32 and float64 agree with the reference to a
few 1e-8; the required bound is |Δ progress| <= 1e-6.
"""

from __future__ import annotations

import importlib
import math

import _reference as R
import numpy as np
import pytest
import torch

from lightning_manifold import functional as F

DTYPES = [torch.float64, torch.float32]
N, C = 60, 10
PROGRESS_TOL = 1e-6
SOLVER_TOL = F.PROGRESS_TOLERANCE  # how closely the solver finds its minimiser
# d_G(P, P^s) at the returned s: float32 output rounding and float32 logs of the inputs;
# in float64 the arccos of coefficients within 1e-11 of 1 (confident correct samples).
DIST_TOL = {torch.float64: 1e-9, torch.float32: 2e-7}
# arccos of a coefficient that should be exactly 1 but is rounded: sqrt(2 * 2.2e-16) = 2e-8
ARCCOS_FLOOR = 5e-8


def make_logits(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    if kind == "random":
        return R.random_logits(rng, 6, N, C, 1.0), y
    if kind == "random_wide":
        return R.random_logits(rng, 6, N, C, 4.0), y
    if kind == "trained":  # a training run: noise + growing scale * one_hot(label)
        return R.trained_logits(rng, y, C, np.linspace(0.0, 12.0, 8)), y
    if kind == "confident":
        return R.confident_logits(rng, y, C, 5, 25.0, 0.15), y
    if kind == "confident_wrong":
        return R.confident_logits(rng, y, C, 5, 25.0, 0.8), y
    if kind == "extreme":
        return R.confident_logits(rng, y, C, 4, 200.0, 0.2), y
    raise ValueError(kind)


KINDS = ["random", "random_wide", "trained", "confident", "confident_wrong", "extreme"]


def normalised(P) -> np.ndarray:
    P = R.as_np(P)
    return P / P.sum(-1, keepdims=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_progress_matches_bounded_minimisation_reference(kind, dtype):
    lg, y = make_logits(kind)
    L = torch.log_softmax(torch.from_numpy(lg).to(dtype), -1)
    P = L.exp()

    for res, given in [
        (F.geodesic_projection(P, y), R.as_np(P)),
        (F.geodesic_projection_from_log_probs(L, y), np.exp(R.as_np(L))),
    ]:
        assert res.progress.shape == res.distance.shape == (lg.shape[0],)
        assert res.progress.dtype == res.distance.dtype == dtype
        s = R.as_np(res.progress)
        ref_p, ref_d = R.progress(normalised(given), y)
        np.testing.assert_allclose(s, ref_p, rtol=0, atol=PROGRESS_TOL)
        assert ((s >= 0) & (s <= 1)).all()
        # `distance` is d_G from the model (as given) to the geodesic point at its progress ...
        at_s = [R.progress_objective(given[i], y, [s[i]])[0] for i in range(s.size)]
        np.testing.assert_allclose(R.as_np(res.distance), at_s, rtol=0, atol=DIST_TOL[dtype])
        # ... and, in float64, the minimum the reference found (in float32 arccos near 1 turns
        # the 1e-7 row-sum slack into ~1e-5 of d_G, so only the line above applies)
        if dtype == torch.float64:
            np.testing.assert_allclose(R.as_np(res.distance), ref_d, rtol=0, atol=1e-9)
    assert torch.equal(F.progress(P, y), F.geodesic_projection(P, y).progress)
    assert torch.equal(
        F.progress_from_log_probs(L, y), F.geodesic_projection_from_log_probs(L, y).progress
    )


def test_reference_families_cover_the_whole_range():
    # The families above must exercise interior minima and both ends, or the comparison is weak.
    seen = []
    for kind in KINDS:
        lg, y = make_logits(kind)
        seen.append(
            R.as_np(F.progress_from_log_probs(torch.log_softmax(torch.from_numpy(lg), -1), y))
        )
    seen = np.concatenate(seen)
    assert (seen == 0).any()
    assert (seen == 1).any()
    assert ((seen > 0.05) & (seen < 0.95)).sum() >= 5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [2, 3, 4, 10, 100])
def test_progress_of_ignorance_is_0_and_of_truth_is_1(num_classes, dtype):
    y = np.random.default_rng(num_classes).integers(0, num_classes, 40)
    P0 = F.ignorance(40, num_classes, dtype=dtype)
    Ps = F.truth(y, num_classes, dtype=dtype)
    assert abs(float(F.progress(P0, y))) <= 1e-9
    assert abs(float(F.progress(Ps, y)) - 1) <= 1e-9
    assert abs(float(F.progress_from_log_probs(P0.log(), y))) <= 1e-9
    assert abs(float(F.progress_from_log_probs(Ps.log(), y)) - 1) <= 1e-9
    # both lie on the geodesic (up to arccos near 1 of the rounding of 1/C in ``dtype``)
    on = 1e-7 if dtype == torch.float64 else 1e-3
    assert float(F.geodesic_projection(P0, y).distance) <= on
    assert float(F.geodesic_projection(Ps, y).distance) <= on


def test_progress_of_ignorance_and_truth_is_exact(solver):
    got = {}
    for num_classes in [2, 3, 4, 5, 10, 100]:
        y = torch.arange(num_classes)
        got[num_classes] = (
            float(F.progress(F.ignorance(num_classes, num_classes), y)),
            float(F.progress(F.truth(y, num_classes), y)),
        )
    assert all(v == (0.0, 1.0) for v in got.values()), got


ALPHAS = [0.0, 1e-6, 1e-3, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1 - 1e-6, 1.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_progress_of_points_on_the_geodesic_equals_alpha(num_classes, dtype):
    y = np.random.default_rng(11).integers(0, num_classes, 50)
    alphas = np.array(ALPHAS)
    G = F.ignorance_truth_geodesic(y, num_classes, alphas, dtype=dtype)
    res = F.geodesic_projection(G, y)
    np.testing.assert_allclose(R.as_np(res.progress), alphas, rtol=0, atol=PROGRESS_TOL)
    # on the geodesic: zero distance, up to arccos near 1 (sqrt of the rounding of the points)
    assert float(res.distance.max()) <= (1e-7 if dtype == torch.float64 else 1e-3)
    resl = F.geodesic_projection_from_log_probs(G.log(), y)
    np.testing.assert_allclose(R.as_np(resl.progress), alphas, rtol=0, atol=PROGRESS_TOL)
    # a single model at a time gives the same
    for i in [1, 5, 9]:
        single = F.progress(G[i], y)
        assert single.shape == ()
        assert abs(float(single) - alphas[i]) <= PROGRESS_TOL


def test_progress_of_a_model_off_the_geodesic_is_that_of_its_projection():
    # Mixing a geodesic point with noise moves it off the geodesic; the reference decides.
    rng = np.random.default_rng(12)
    y = rng.integers(0, C, N)
    G = R.ignorance_truth_points(y, C, [0.2, 0.6, 0.95])
    noise = rng.dirichlet(np.ones(C), size=(3, N))
    P = 0.9 * G + 0.1 * noise
    ref_p, ref_d = R.progress(P, y)
    res = F.geodesic_projection(torch.from_numpy(P), y)
    np.testing.assert_allclose(R.as_np(res.progress), ref_p, rtol=0, atol=PROGRESS_TOL)
    np.testing.assert_allclose(R.as_np(res.distance), ref_d, rtol=0, atol=1e-9)
    assert (ref_d > 1e-3).all()


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_one_hot_predictions_with_errors(num_classes):
    # Remark 2.2.1: exactly confident models (probabilities 0 and 1) whose fraction eps of
    # samples are wrong. The objective is convex; each correct sample is a cusp at α = 1, so
    # plain Newton stalls here. Error fractions straddle the point where progress leaves 1.
    Nn = 47  # error fractions k/47 never sit exactly on the turning point (flat minimum)
    y = np.random.default_rng(13).integers(0, num_classes, Nn)
    models = []
    for k in range(0, Nn + 1, 3):
        target = y.copy()
        target[:k] = (y[:k] + 1) % num_classes
        models.append(np.eye(num_classes)[target])
    P = np.stack(models)
    ref_p, ref_d = R.progress(P, y)
    assert (ref_p == 1).any()
    assert (ref_p < 1).any()
    res = F.geodesic_projection(torch.from_numpy(P), y)
    np.testing.assert_allclose(R.as_np(res.progress), ref_p, rtol=0, atol=PROGRESS_TOL)
    np.testing.assert_allclose(R.as_np(res.distance), ref_d, rtol=0, atol=ARCCOS_FLOOR)


@pytest.mark.parametrize("dtype", DTYPES)
def test_progress_from_log_probs_finite_for_huge_logits(dtype):
    rng = np.random.default_rng(14)
    y = rng.integers(0, C, N)
    lg = np.concatenate(
        [R.confident_logits(rng, y, C, 3, 1e4, 0.3), R.confident_logits(rng, y, C, 2, 1e4, 0.9)]
    )
    L = torch.log_softmax(torch.from_numpy(lg).to(dtype), -1)
    res = F.geodesic_projection_from_log_probs(L, y)
    assert bool(torch.isfinite(res.progress).all())
    assert bool(torch.isfinite(res.distance).all())
    ref_p, ref_d = R.progress(normalised(np.exp(R.as_np(L))), y)
    np.testing.assert_allclose(R.as_np(res.progress), ref_p, rtol=0, atol=PROGRESS_TOL)
    np.testing.assert_allclose(R.as_np(res.distance), ref_d, rtol=0, atol=DIST_TOL[dtype])


@pytest.fixture(params=["newton", "small-numpy", "small-torch"])
def solver(request, monkeypatch):
    """Every solver of ``_solve``: Newton with its bookkeeping (large problems) and the few
    fixed Newton steps + bracket search of small ones, chosen by problem size, on numpy arrays
    (the CPU) or on tensors (what an accelerator runs)."""
    progress_module = importlib.import_module("lightning_manifold.functional.progress")
    small = 0 if request.param == "newton" else 1 << 40
    monkeypatch.setattr(progress_module, "_SMALL_ELEMENTS", small)
    monkeypatch.setattr(progress_module, "_SMALL_ON_HOST", request.param == "small-numpy")
    return request.param


@pytest.mark.parametrize("kind", ["random", "random_wide", "trained", "confident_wrong"])
def test_progress_is_solved_to_its_tolerance(kind, solver):
    # The solver's float32 start and chord steps must still land within PROGRESS_TOLERANCE of
    # the minimiser (the Brent reference itself is only good to ~1e-8: it compares values).
    lg, y = make_logits(kind, seed=21)
    L = torch.log_softmax(torch.from_numpy(lg), -1)
    expected = R.progress_by_slope_bisection(np.exp(R.as_np(L)), y)
    for got in (F.progress_from_log_probs(L, y), F.progress(L.exp(), y)):
        np.testing.assert_allclose(R.as_np(got), expected, rtol=0, atol=2 * SOLVER_TOL)


def flat_minimum_logits(seed: int, m: int = 6, n: int = 601, c: int = 10):
    """(m, n, c) logits of confident, well-trained-like models with flat, kinked minima.

    Each sample gets a margin on its label (most of them large: many samples near the truth
    end) over wrong classes that are equal (models 0, 2, 4: samples exactly on the
    ignorance/truth plane, where the objective is a sum of cusps) or equal up to 1e-3; 1-2%
    of samples are confidently wrong. n is odd: the minimiser is unique even with only cusps.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    out = np.empty((m, n, c))
    for i in range(m):
        target = y.copy()
        wrong = rng.random(n) < 0.01 * (1 + i % 2)
        target[wrong] = (y[wrong] + rng.integers(1, c, wrong.sum())) % c
        margin = (4.0 + 2 * i) + 0.5 * rng.standard_normal(n)
        out[i] = (0.0, 1e-3)[i % 2] * rng.standard_normal((n, c))
        out[i, np.arange(n), target] += margin
    return out, y


def test_progress_is_solved_to_its_tolerance_on_flat_minima(solver):
    # Confident models: many samples on (or within 1e-3 of) their cusps near the truth end.
    # Newton's predicted error is no bound there; the certificate on the slope signs is.
    lg, y = flat_minimum_logits(seed=3)
    L = torch.log_softmax(torch.from_numpy(lg), -1)
    expected = R.progress_by_slope_bisection(np.exp(R.as_np(L)), y)
    assert expected.min() > 0.5  # interior minima near the truth
    assert expected.max() < 1
    # PROGRESS_TOLERANCE, with 1% for the rounding of the reference's own slopes
    tol = 1.01 * SOLVER_TOL
    for got in (F.progress_from_log_probs(L, y), F.progress(L.exp(), y)):
        np.testing.assert_allclose(R.as_np(got), expected, rtol=0, atol=tol)
    # the same models in a batch with others, and alone
    single = F.progress_from_log_probs(L[3], y)
    assert abs(float(single) - expected[3]) <= tol


def test_many_models_in_blocks_match_one_by_one_and_reference():
    rng = np.random.default_rng(15)
    Nn = 16
    y = rng.integers(0, C, Nn)
    lg = np.concatenate(
        [
            R.trained_logits(rng, y, C, np.linspace(0, 10, 150)),
            R.confident_logits(rng, y, C, 60, 20.0, 0.5),
            R.random_logits(rng, 90, Nn, C, 2.0),
        ]
    )
    L = torch.log_softmax(torch.from_numpy(lg), -1)
    batch = R.as_np(F.progress_from_log_probs(L, y))
    one_by_one = np.array([float(F.progress_from_log_probs(L[i], y)) for i in range(0, 300, 7)])
    # Alone or in a batch a model may take a different (equally valid) path through the
    # solver's float32 and chord steps, so the two agree to the solver's tolerance, 1e-9.
    np.testing.assert_allclose(batch[::7], one_by_one, rtol=0, atol=SOLVER_TOL)
    ref_p, _ = R.progress(np.exp(R.as_np(L[::23])), y)
    np.testing.assert_allclose(batch[::23], ref_p, rtol=0, atol=PROGRESS_TOL)


# ----------------------------------------------------------------------------- weights


def test_sample_weights_match_reference_and_repetition():
    rng = np.random.default_rng(16)
    Nn = 30
    y = rng.integers(0, C, Nn)
    P = R.softmax(R.trained_logits(rng, y, C, [0.5, 3.0, 6.0, 9.0], noise=2.0))
    w = rng.integers(0, 4, Nn).astype(np.float64)
    w[0] = 2.0
    res = F.geodesic_projection(torch.from_numpy(P), y, weights=w)
    ref_p, ref_d = R.progress(P, y, weights=w)
    np.testing.assert_allclose(R.as_np(res.progress), ref_p, rtol=0, atol=PROGRESS_TOL)
    np.testing.assert_allclose(R.as_np(res.distance), ref_d, rtol=0, atol=1e-9)
    # integer weights = samples repeated that many times (0 = dropped)
    idx = np.repeat(np.arange(Nn), w.astype(int))
    rep = F.geodesic_projection(torch.from_numpy(P[:, idx]), y[idx])
    np.testing.assert_allclose(R.as_np(res.progress), R.as_np(rep.progress), rtol=0, atol=1e-9)
    np.testing.assert_allclose(R.as_np(res.distance), R.as_np(rep.distance), rtol=0, atol=1e-12)
    # uniform weights = no weights
    plain = F.geodesic_projection(torch.from_numpy(P), y)
    uni = F.geodesic_projection_from_log_probs(np.log(P), y, weights=np.full(Nn, 3.0))
    # (two solves of the same objective, each within SOLVER_TOL of a minimiser)
    atol = 2 * SOLVER_TOL
    np.testing.assert_allclose(R.as_np(uni.progress), R.as_np(plain.progress), rtol=0, atol=atol)
    # and the weights matter
    assert float((res.progress - plain.progress).abs().max()) > 1e-4


def test_integer_sample_weights_are_accepted():
    P = torch.softmax(torch.randn(2, 6, 3, dtype=torch.float64), -1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w = np.array([1, 2, 0, 3, 1, 1])
    got = F.geodesic_projection(P, y, weights=w).progress
    expected = F.geodesic_projection(P, y, weights=w.astype(np.float64)).progress
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "weights",
    [
        np.ones(5),  # wrong length (N = 6)
        np.ones((6, 1)),
        np.array([1.0, -1.0, 1.0, 1.0, 1.0, 1.0]),
        np.zeros(6),
        np.array([1.0, math.nan, 1.0, 1.0, 1.0, 1.0]),
        np.array([1.0, math.inf, 1.0, 1.0, 1.0, 1.0]),
    ],
    ids=["length", "2-D", "negative", "all zero", "NaN", "inf"],
)
def test_bad_weights_raise_naming_weights(weights):
    P = torch.softmax(torch.randn(2, 6, 3, dtype=torch.float64), -1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="`weights`"):
        F.geodesic_projection(P, y, weights=weights)
    with pytest.raises(ValueError, match="`weights`"):
        F.geodesic_projection_from_log_probs(P.log(), y, weights=weights)


# ----------------------------------------------------------------------------- per class


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_class_progress_is_progress_on_each_class_subset(dtype, solver):
    rng = np.random.default_rng(17)
    Nn, Cc = 40, 5
    y = rng.integers(0, Cc - 1, Nn)  # class Cc-1 never occurs
    lg = R.trained_logits(rng, y, Cc, [0.0, 2.0, 5.0, 9.0], noise=1.5)
    L = torch.log_softmax(torch.from_numpy(lg).to(dtype), -1)
    out = F.per_class_progress_from_log_probs(L, y)
    assert out.shape == (4, Cc)
    assert out.dtype == dtype
    assert bool(torch.isnan(out[:, Cc - 1]).all())
    P = normalised(np.exp(R.as_np(L)))
    for c in range(Cc - 1):
        sel = y == c
        ref_p, _ = R.progress(P[:, sel], y[sel])
        np.testing.assert_allclose(R.as_np(out[:, c]), ref_p, rtol=0, atol=PROGRESS_TOL)
    single = F.per_class_progress_from_log_probs(L[2], y)
    assert single.shape == (Cc,)
    # alone or in a batch: each within SOLVER_TOL of a minimiser
    np.testing.assert_allclose(
        R.as_np(single), R.as_np(out[2]), rtol=0, atol=2 * SOLVER_TOL, equal_nan=True
    )


# ----------------------------------------------------------------------------- inputs


def test_numpy_inputs_and_output_types():
    lg, y = make_logits("trained")
    L = R.log_softmax(lg)
    for out in [
        F.progress(np.exp(L), y),
        F.progress_from_log_probs(L, y),
        F.geodesic_projection(np.exp(L), y).distance,
        F.per_class_progress_from_log_probs(L, y),
    ]:
        assert isinstance(out, torch.Tensor)
        assert out.is_floating_point()
        assert out.device == torch.device("cpu")
    assert F.progress(torch.from_numpy(np.exp(L)).float(), y).dtype == torch.float32
    single = F.geodesic_projection(np.exp(L[0]), torch.from_numpy(y))
    assert single.progress.shape == ()
    assert single.distance.shape == ()


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 1, 2, 0, 1]),  # wrong length
        np.array([0, 1, 2, 0, 1, 3]),  # out of range (C = 3)
        np.array([0, 1, 2, 0, 1, -1]),
        np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]),
    ],
    ids=["length", "too large", "negative", "float"],
)
@pytest.mark.parametrize(
    "fn",
    [
        F.progress,
        lambda P, y: F.progress_from_log_probs(P.log(), y),
        lambda P, y: F.per_class_progress_from_log_probs(P.log(), y),
    ],
    ids=["progress", "progress_log", "per_class"],
)
def test_bad_labels_raise_naming_labels(fn, labels):
    P = torch.softmax(torch.randn(2, 6, 3, dtype=torch.float64), -1)
    with pytest.raises(ValueError, match="`labels`"):
        fn(P, labels)


def test_bad_probabilities_raise_naming_the_argument():
    P = torch.softmax(torch.randn(2, 6, 3, dtype=torch.float64), -1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    bad = P.clone()
    bad[0, 0, 0] = math.nan
    unnorm = P * 1.1
    neg = P.clone()
    neg[1, 1] = torch.tensor([1.5, -0.25, -0.25])
    for Q in [bad, unnorm, neg, P[0, 0], P[None], P[:, :0]]:
        with pytest.raises(ValueError, match="`P`"):
            F.progress(Q, y)
    L = P.log()
    nan, pinf = L.clone(), L.clone()
    nan[1, 3, 2] = math.nan
    pinf[1, 3, 2] = math.inf
    for M in [nan, pinf, L + 0.2, L[0, 0], L[:0]]:
        with pytest.raises(ValueError, match="`log_P`"):
            F.progress_from_log_probs(M, y)
        with pytest.raises(ValueError, match="`log_P`"):
            F.per_class_progress_from_log_probs(M, y)

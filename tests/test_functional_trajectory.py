"""Trajectories re-indexed by progress, trajectory distance and tube width (thesis eq. 2.2.5, the
text before it, §2.5.4.1), against the loops in ``_reference.py``."""

from __future__ import annotations

import math

import _reference as R
import numpy as np
import pytest
import torch

from lightning_manifold import functional as F
from lightning_manifold.functional import trajectory as TR

N, C = 24, 5


def run(seed: int, T: int = 8, top: float = 10.0, noise: float = 1.0):
    """(T, N, C) float64 probabilities of one training run, and the labels."""
    rng = np.random.default_rng(seed)
    y = np.random.default_rng(0).integers(0, C, N)  # one probe set for every run
    return R.softmax(R.trained_logits(rng, y, C, np.linspace(0.0, top, T), noise=noise)), y


# ----------------------------------------------------------------------------- re-indexing


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reindex_by_progress_matches_reference(dtype):
    P, _ = run(1)
    # not monotone (0.3 -> 0.25), a flat pair (0.7, 0.7), and grid values outside the range
    prog = np.array([0.0, 0.1, 0.3, 0.25, 0.5, 0.7, 0.7, 0.9])
    grid = np.r_[-0.05, np.linspace(0.0, 0.9, 19), 0.27, 0.7, 0.95]
    Pt = torch.from_numpy(P).to(dtype)
    out, valid = F.reindex_by_progress(Pt, prog, grid)
    ref, ref_valid = R.reindex_by_progress(Pt, prog, grid)
    assert out.shape == (grid.size, N, C)
    assert out.dtype == dtype
    assert valid.dtype == torch.bool
    assert np.array_equal(valid.numpy(), ref_valid)
    assert not ref_valid[0]
    assert not ref_valid[-1]
    assert ref_valid[1:-1].all()
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(R.as_np(out), ref, rtol=0, atol=tol, equal_nan=True)
    assert bool(torch.isnan(out[~valid]).all())
    # a grid value equal to a snapshot's progress returns that snapshot
    at = {0.0: 0, 0.5: 4, 0.9: 7}
    for s, k in at.items():
        i = int(np.argmin(np.abs(grid - s)))
        assert grid[i] == s
        np.testing.assert_allclose(R.as_np(out[i]), R.as_np(Pt[k]), rtol=0, atol=tol)


def test_reindex_single_snapshot():
    P, _ = run(2, T=1)
    out, valid = F.reindex_by_progress(P, np.array([0.4]), np.array([0.3, 0.4, 0.5]))
    assert valid.tolist() == [False, True, False]
    np.testing.assert_allclose(R.as_np(out[1]), P[0], rtol=0, atol=0)
    assert bool(torch.isnan(out[0]).all())


def test_reindexed_geodesic_trajectory_stays_on_the_geodesic():
    # Snapshots on the ignorance->truth geodesic, with their exact progress: geodesic
    # interpolation between consecutive snapshots gives the geodesic point of the grid value.
    y = np.random.default_rng(3).integers(0, C, N)
    alphas = np.array([0.0, 0.15, 0.4, 0.45, 0.8, 1.0])
    P = R.ignorance_truth_points(y, C, alphas)
    grid = np.linspace(0.0, 1.0, 13)
    out, valid = F.reindex_by_progress(P, alphas, grid)
    assert bool(valid.all())
    np.testing.assert_allclose(R.as_np(out), R.ignorance_truth_points(y, C, grid), atol=1e-12)


# ----------------------------------------------------------------------------- distance


def plain_trajectory_distance(P_u, s_u, P_v, s_v, n_points: int = 100) -> float:
    """eq. 2.2.5 on the shared range [lo, hi]: trapezoid of d_B at equal progress on the nodes
    lo, the values of linspace(0, 1, n_points) strictly inside, hi; divided by hi - lo."""
    s_u, s_v = R.as_np(s_u), R.as_np(s_v)
    lo, hi = max(s_u.min(), s_v.min()), min(s_u.max(), s_v.max())
    fixed = np.linspace(0.0, 1.0, n_points)
    nodes = np.r_[lo, fixed[(fixed > lo) & (fixed < hi)], hi]
    A, _ = R.reindex_by_progress(P_u, s_u, nodes)
    B, _ = R.reindex_by_progress(P_v, s_v, nodes)
    d = np.array([R.bhattacharyya(A[i][None], B[i][None])[0, 0] for i in range(nodes.size)])
    return float(np.trapezoid(d, nodes) / (hi - lo))


def test_trajectory_distance_matches_reference():
    Pu, y = run(4, T=7, top=8.0)
    Pv, _ = run(5, T=9, top=12.0, noise=1.5)
    su = R.as_np(F.progress(Pu, y))
    sv = R.as_np(F.progress(Pv, y))
    assert su.min() != sv.min()
    assert su.max() != sv.max()
    d = F.trajectory_distance(Pu, su, Pv, sv, n_points=21)
    assert d.shape == ()
    assert float(d) == pytest.approx(plain_trajectory_distance(Pu, su, Pv, sv, 21), rel=1e-9)
    assert float(d) > 0
    rev = F.trajectory_distance(Pv, sv, Pu, su, n_points=21)
    assert float(rev) == pytest.approx(float(d), rel=1e-12)
    # float32 input
    d32 = F.trajectory_distance(
        torch.from_numpy(Pu).float(), su, torch.from_numpy(Pv).float(), sv, n_points=21
    )
    assert float(d32) == pytest.approx(float(d), rel=1e-4)


def test_trajectory_distance_of_a_run_with_itself_and_with_a_faster_copy_is_zero():
    # Thesis text before eq. 2.2.5: a copy that progresses twice as fast is the same trajectory.
    y = np.random.default_rng(6).integers(0, C, N)
    alphas = np.linspace(0.0, 1.0, 11)
    slow = R.ignorance_truth_points(y, C, alphas)
    fast = slow[::2]
    s_slow = F.progress(slow, y)
    s_fast = F.progress(fast, y)
    assert float(F.trajectory_distance(slow, s_slow, slow, s_slow)) <= 1e-12
    assert float(F.trajectory_distance(slow, s_slow, fast, s_fast)) <= 1e-9
    # while comparing step by step would not be zero
    assert R.bhattacharyya(slow[:6], fast).diagonal()[1:].min() > 1e-3


def test_trajectory_distances_matrix_is_every_pair_and_does_not_depend_on_other_runs():
    runs = [run(seed, T=5 + seed % 3, top=6.0 + seed) for seed in range(20, 24)]
    y = runs[0][1]
    Ps = [P for P, _ in runs]
    ss = [R.as_np(F.progress(P, y)) for P in Ps]
    D = TR.trajectory_distances(Ps, ss, n_points=15)
    assert D.shape == (4, 4)
    assert D.dtype == torch.float64
    assert bool((D == D.T).all())
    assert bool((D.diagonal() == 0).all())
    for i in range(4):
        for j in range(i + 1, 4):
            plain = plain_trajectory_distance(Ps[i], ss[i], Ps[j], ss[j], 15)
            assert float(D[i, j]) == pytest.approx(plain, rel=1e-9)
    # a pair's distance is the same inside a bigger batch
    sub = TR.trajectory_distances(Ps[1:3], ss[1:3], n_points=15)
    assert float(sub[0, 1]) == pytest.approx(float(D[1, 2]), rel=1e-12)
    with pytest.raises(ValueError, match="runs 0 and 1 share no progress range"):
        TR.trajectory_distances(
            Ps[:2], [np.linspace(0, 0.2, len(Ps[0])), np.linspace(0.3, 0.5, len(Ps[1]))]
        )
    with pytest.raises(ValueError, match="progress_runs"):
        TR.trajectory_distances(Ps[:2], ss[:1])


def test_first_crossing_rule_for_non_monotone_progress():
    # progress 0.1 -> 0.5 -> 0.3 -> 0.7: s = 0.4 is crossed first on segment 0 (going up),
    # again on segment 1 (down) and 2 (up); the first crossing is used, which above the start
    # is also the model where the running maximum first reaches s.
    P, _ = run(30, T=4)
    prog = np.array([0.1, 0.5, 0.3, 0.7])
    out, valid = F.reindex_by_progress(P, prog, np.array([0.4, 0.6]))
    assert bool(valid.all())
    first = R.geodesic_point(P[0], P[1], (0.4 - 0.1) / 0.4)
    np.testing.assert_allclose(R.as_np(out[0]), first, atol=1e-12)
    np.testing.assert_allclose(R.as_np(out[1]), R.geodesic_point(P[2], P[3], 0.75), atol=1e-12)
    running_max = np.maximum.accumulate(prog)
    assert np.argmax(running_max >= 0.4) == 1  # first reached between snapshots 0 and 1


def test_riemann_length_is_the_sum_of_consecutive_geodesic_distances():
    P, _ = run(31, T=6)
    plain = sum(
        np.mean(np.arccos(np.clip(np.sqrt(P[k] * P[k + 1]).sum(-1), 0, 1))) for k in range(5)
    )
    assert float(F.riemann_length(P)) == pytest.approx(plain, rel=1e-12)
    y = np.random.default_rng(6).integers(0, C, N)
    geo = R.ignorance_truth_points(y, C, np.linspace(0.0, 1.0, 7))
    # along the geodesic the length is additive: the same as from end to end
    end_to_end = np.mean(np.arccos(np.clip(np.sqrt(geo[0] * geo[-1]).sum(-1), 0, 1)))
    assert float(F.riemann_length(geo)) == pytest.approx(end_to_end, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"progress_v": np.array([0.7, 0.8, 0.9])}, "progress range"),
        ({"n_points": 1}, "`n_points`"),
        ({"n_points": 2.5}, "`n_points`"),
        ({"P_v": "2d"}, "`P_v`"),
        ({"P_v": "other N"}, "`P_v`"),
        ({"progress_u": np.array([0.1, 0.2])}, "`progress_u`"),
        ({"progress_u": np.array([0.0, math.nan, 0.5])}, "`progress_u`"),
    ],
    ids=["no overlap", "n_points 1", "n_points float", "2-D run", "N mismatch", "length", "NaN"],
)
def test_trajectory_distance_bad_input(kwargs, match):
    P, _ = run(7, T=3)
    args = {
        "P_u": P,
        "progress_u": np.array([0.0, 0.3, 0.6]),
        "P_v": P,
        "progress_v": np.array([0.1, 0.4, 0.7]),
    }
    if kwargs.get("P_v") == "2d":
        kwargs = {"P_v": P[0]}
    elif kwargs.get("P_v") == "other N":
        kwargs = {"P_v": P[:, :-1]}
    args.update(kwargs)
    n_points = args.pop("n_points", 10)
    with pytest.raises(ValueError, match=match):
        F.trajectory_distance(**args, n_points=n_points)


def test_reindex_bad_input():
    P, _ = run(8, T=3)
    with pytest.raises(ValueError, match="`progress`"):
        F.reindex_by_progress(P, np.array([0.0, 0.5]), np.array([0.2]))
    with pytest.raises(ValueError, match="`P`"):
        F.reindex_by_progress(P[0], np.array([0.0]), np.array([0.2]))
    with pytest.raises(ValueError, match="`P`"):
        F.reindex_by_progress(P * 2, np.array([0.0, 0.2, 0.5]), np.array([0.2]))


# ----------------------------------------------------------------------------- tube width


def test_tube_width_matches_reference():
    runs = np.stack([run(seed, T=6)[0] for seed in range(10, 14)])  # (R=4, S=6, N, C)
    w = F.tube_width(runs)
    assert w.shape == (4, 6)
    np.testing.assert_allclose(R.as_np(w), R.tube_width(runs), rtol=1e-9, atol=1e-14)
    assert float(w.min()) > 0
    w32 = F.tube_width(torch.from_numpy(runs).float())
    np.testing.assert_allclose(R.as_np(w32), R.tube_width(runs), rtol=1e-4, atol=1e-6)


def test_tube_width_of_identical_runs_is_zero_and_nan_propagates():
    one = run(15, T=5)[0]
    same = np.stack([one, one, one])
    assert float(F.tube_width(same).abs().max()) <= 1e-14
    runs = np.stack([run(seed, T=5)[0] for seed in range(16, 19)])
    runs[1, 2] = np.nan  # run 1 did not reach progress value 2
    w = F.tube_width(runs).numpy()
    assert np.isnan(w[:, 2]).all()
    assert np.isfinite(np.delete(w, 2, axis=1)).all()


def test_tube_width_bad_input():
    with pytest.raises(ValueError, match="`P_runs`"):
        F.tube_width(np.ones((2, 3, 4)) / 4)
    with pytest.raises(ValueError, match="`P_runs`"):
        F.tube_width(np.ones((0, 3, 4, 2)))

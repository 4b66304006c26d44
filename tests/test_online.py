"""OnlineManifold: per-snapshot geometry against a reference, and the aligned self-embedding.

Reference values come from plain numpy/scipy implementations written here.
"""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import full_batch_trajectory, write_store
from conftest import teacher_data as _teacher
from scipy.optimize import minimize_scalar

from lightning_manifold.embedding import ReferenceEmbedding
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.online import OnlineManifold, OnlineResult
from lightning_manifold.snapshot import Snapshot

online_module = importlib.import_module("lightning_manifold.online")

C = 5
D_IN = 20


# --------------------------------------------------------------------------- data


def teacher_data(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs labelled by a random one-hidden-layer teacher (thesis §2.5.5)."""
    return _teacher(n, D_IN, C, seed)


def train_run(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60, n_capture: int = 20
) -> tuple[torch.Tensor, np.ndarray]:
    """Full-batch SGD (lr 0.5); (T, N, C) float64 log-probabilities at log-spaced steps."""
    return full_batch_trajectory(model, x, y, steps=steps, n_capture=n_capture)


def mlp(seed: int) -> torch.nn.Module:
    """Student A: one hidden layer of 64 ReLUs."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 64), torch.nn.ReLU(), torch.nn.Linear(64, C))


def linear(seed: int) -> torch.nn.Module:
    """Student B: a linear model (a very different architecture)."""
    torch.manual_seed(seed)
    return torch.nn.Linear(D_IN, C)


@pytest.fixture(scope="module")
def data() -> dict:
    x, y = teacher_data()
    return {
        "y": y,
        "a0": train_run(mlp(0), x, y),
        "a1": train_run(mlp(1), x, y),
        "b0": train_run(linear(0), x, y),
    }


@pytest.fixture(scope="module")
def reference(data) -> ReferenceEmbedding:
    lp, steps = data["a0"]
    return ReferenceEmbedding.fit(
        lp, labels=data["y"], steps=[steps], run_names=["a0"], dtype=torch.float64
    )


def snap(lp: torch.Tensor, step: int, y: torch.Tensor, valid: bool = True) -> Snapshot:
    return Snapshot(
        probe="train", step=step, epoch=0, log_probs=lp, labels=y, wall_time=0.0, valid=valid
    )


def play(online: OnlineManifold, run: tuple[torch.Tensor, np.ndarray], y) -> list[OnlineResult]:
    results = [online.update(snap(lp, int(s), y)) for lp, s in zip(*run)]
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- plain reference


def plain_bhattacharyya(lp: np.ndarray, lq: np.ndarray) -> float:
    return float(np.mean([-math.log(np.sum(np.exp(0.5 * (a + b)))) for a, b in zip(lp, lq)]))


def plain_geodesic_log(y: np.ndarray, alpha: float) -> np.ndarray:
    """log of the ignorance->truth geodesic point at ``alpha`` (eq. 2.2.3), sample by sample."""
    theta = math.acos(1 / math.sqrt(C))
    out = np.empty((len(y), C))
    for n, label in enumerate(y):
        s = np.full(C, math.sin((1 - alpha) * theta) / math.sin(theta) / math.sqrt(C))
        s[label] += math.sin(alpha * theta) / math.sin(theta)
        out[n] = 2 * np.log(s)
    return out


def plain_progress(lp: np.ndarray, y: np.ndarray) -> float:
    """argmin over alpha of the plain d_G objective (eq. 2.2.4), bounded scalar minimisation."""
    theta = math.acos(1 / math.sqrt(C))

    def d_g(alpha: float) -> float:
        total = 0.0
        for n, label in enumerate(y):
            s = np.full(C, math.sin((1 - alpha) * theta) / math.sin(theta) / math.sqrt(C))
            s[label] += math.sin(alpha * theta) / math.sin(theta)
            bc = float(np.sum(np.sqrt(np.exp(lp[n])) * s))
            total += math.acos(min(1.0, bc))
        return total / len(y)

    grid = np.linspace(0, 1, 101)
    j = int(np.argmin([d_g(a) for a in grid]))
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, 100)]
    res = minimize_scalar(d_g, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    return float(res.x)


# --------------------------------------------------------------------------- with a reference


def test_run_in_its_own_reference_lands_on_its_own_coordinates(data, reference):
    online = OnlineManifold(data["y"], C, reference=reference, n_components=4)
    results = play(online, data["a0"], data["y"])
    coords = np.stack([r.coords for r in results])
    np.testing.assert_allclose(coords, reference.coords[: len(results), :4].numpy(), atol=1e-8)
    assert max(r.reference_distance for r in results) < 1e-3
    assert all(r.reference_run == "a0" for r in results)
    speeds = [r.relative_speed for r in results if r.step > 0]
    np.testing.assert_allclose(speeds, 1.0, atol=1e-6)
    np.testing.assert_array_equal(results[0].time_like, reference.eigenvalues[:4].numpy() < 0)


def test_seed_is_close_and_architecture_is_far(data, reference):
    """Configurations differ more by architecture than by seed (thesis §2.3, §2.5.5)."""
    mean_distance = {}
    for name in ("a1", "b0"):
        online = OnlineManifold(data["y"], C, reference=reference)
        results = play(online, data[name], data["y"])
        values = [r.reference_distance for r in results if math.isfinite(r.reference_distance)]
        assert len(values) >= len(results) // 2
        mean_distance[name] = float(np.mean(values))
    assert 1.5 * mean_distance["a1"] < mean_distance["b0"], mean_distance


def test_nearest_run_among_several(data):
    """The nearest run at equal progress is the one at the smallest d_B, and for a linear
    student it is the linear reference run (linear students hardly depend on the seed)."""
    y = data["y"]
    x, _ = teacher_data()
    ref = ReferenceEmbedding.fit(
        [data["a0"][0], data["b0"][0]],
        labels=y,
        steps=[data["a0"][1], data["b0"][1]],
        run_names=["mlp", "linear"],
        dtype=torch.float64,
    )
    b1 = train_run(linear(1), x, y)
    nearest = []
    for run in (data["a1"], b1):
        results = play(OnlineManifold(y, C, reference=ref), run, y)
        nearest = [r.reference_run for r in results if r.reference_run is not None]
        for r in results:
            lp = run[0][list(run[1]).index(r.step)].numpy()
            exact = {}
            for i, name in enumerate(ref.run_names):
                model = ref.model_at_progress(i, r.progress)
                if model is not None:
                    exact[name] = plain_bhattacharyya(lp, 2 * np.log(model.numpy()))
            if not exact:
                assert r.reference_run is None
                continue
            assert r.reference_distance == pytest.approx(min(exact.values()), rel=0.05)
            assert r.reference_distance == pytest.approx(exact[r.reference_run], rel=1e-9)
            # without the distance row, the choice uses the grid models around s
            run_index, distance = ref.nearest_run(lp, r.progress)
            assert distance == pytest.approx(exact[ref.run_names[run_index]], rel=1e-9)
            assert distance == pytest.approx(min(exact.values()), rel=0.05)
    assert nearest[-8:] == ["linear"] * 8  # the linear student, once it has moved


def synthetic_trajectory(y: torch.Tensor, T: int = 41) -> tuple[torch.Tensor, np.ndarray]:
    """log_softmax(t * Z): models moving from ignorance towards the truth as t grows."""
    g = torch.Generator().manual_seed(3)
    z = 2.0 * torch.nn.functional.one_hot(y, C).double() + torch.randn(
        len(y), C, generator=g, dtype=torch.float64
    )
    ts = torch.linspace(0.0, 2.5, T, dtype=torch.float64)
    return torch.log_softmax(ts[:, None, None] * z, -1), 10 * np.arange(T)


def test_ahead_behind_on_a_twice_as_fast_run(data):
    y = data["y"]
    lp, steps = synthetic_trajectory(y)
    ref = ReferenceEmbedding.fit(
        lp, labels=y, steps=[steps], run_names=["base"], dtype=torch.float64
    )
    assert bool((ref.model_progress.diff() > 0).all()), "the test needs a monotone reference"
    # the same models, reached in half the steps: reference snapshot 2j at step 10 j
    fast = (lp[::2], steps[::2] // 2)
    online = OnlineManifold(y, C, reference=ref)
    results = play(online, fast, y)
    speeds = np.array([r.relative_speed for r in results[1:]])
    np.testing.assert_allclose(speeds, 0.5, atol=1e-6)
    np.testing.assert_allclose([r.reference_step for r in results], steps[::2], atol=1e-4)
    assert max(r.reference_distance for r in results) < 1e-8
    assert math.isnan(results[0].relative_speed)  # step 0
    # and a run three times slower
    slow = OnlineManifold(y, C, reference=ref)
    results = play(slow, (lp, 3 * steps), y)
    np.testing.assert_allclose([r.relative_speed for r in results[1:]], 3.0, atol=1e-6)


def test_progress_distances_and_residual_match_plain_implementation(data, reference):
    y = data["y"]
    lp = data["a1"][0][9]
    online = OnlineManifold(y, C, reference=reference, n_components=3)
    r = online.update(snap(lp, 9, y))
    assert r is not None
    lp_np, y_np = lp.numpy(), y.numpy()
    assert r.distance_to_ignorance == pytest.approx(
        plain_bhattacharyya(lp_np, np.full_like(lp_np, -math.log(C))), abs=1e-10
    )
    assert r.distance_to_truth == pytest.approx(
        -0.5 * np.mean(lp_np[np.arange(len(y_np)), y_np]), abs=1e-12
    )
    assert r.progress == pytest.approx(plain_progress(lp_np, y_np), abs=1e-6)
    assert r.error == pytest.approx(float(np.mean(lp_np.argmax(1) != y_np)))
    # residual: eq. 2.4.2 restricted to this point's row, over every embedded point
    points = [p.numpy() for p in data["a0"][0]] + [np.full_like(lp_np, -math.log(C))]
    points += [plain_geodesic_log(y_np, a) for a in np.linspace(0, 1, 18)[1:-1]]
    d = [plain_bhattacharyya(lp_np, p) for p in points]
    d.append(-0.5 * float(np.mean(lp_np[np.arange(len(y_np)), y_np])))
    d = np.array(d)
    X = reference.coords[:, :3].numpy()
    signs = np.sign(reference.eigenvalues[:3].numpy())
    d2 = np.array([np.sum(signs * (r.coords - X[u]) ** 2) for u in range(len(X))])
    assert r.residual == pytest.approx(np.sum(np.abs(d - d2)) / np.sum(d), rel=1e-6)


def test_per_class_progress_matches_independent_minimisation(data):
    y = data["y"]
    lp = data["a1"][0][12]
    r = OnlineManifold(y, C).update(snap(lp, 12, y))
    assert r is not None
    for c in range(C):
        sel = (y == c).numpy()
        expected = plain_progress(lp.numpy()[sel], np.full(sel.sum(), c))
        assert r.per_class_progress[c] == pytest.approx(expected, abs=1e-6), c


def test_per_class_progress_is_nan_for_an_absent_class(data):
    y = data["y"].clone()
    y[y == 4] = 3
    lp = data["a1"][0][5]
    r = OnlineManifold(y, C).update(snap(lp, 5, y))
    assert r is not None
    assert math.isnan(r.per_class_progress[4])
    assert "progress_class_4" not in r.scalars()
    assert "progress_class_3" in r.scalars()


def test_scalar_keys(data, reference):
    y = data["y"]
    lp = data["a1"][0][6]
    with_ref = OnlineManifold(y, C, reference=reference, n_components=3).update(snap(lp, 6, y))
    assert with_ref is not None
    base = {"progress", "distance_to_ignorance", "distance_to_truth", "distance_to_geodesic"}
    base |= {"pc1", "pc2", "pc3", "residual", "off_manifold"} | {
        f"progress_class_{c}" for c in range(C)
    }
    ref_keys = {"reference_distance", "reference_step", "relative_speed"}
    assert set(with_ref.scalars()) == base | ref_keys
    assert all(isinstance(v, float) and math.isfinite(v) for v in with_ref.scalars().values())
    online = OnlineManifold(y, C, n_components=2)
    first = online.update(snap(data["a1"][0][0], 0, y))
    second = online.update(snap(lp, 6, y))
    assert first is not None
    assert second is not None
    two = base - {"pc3"}
    assert set(first.scalars()) == two  # no alignment on the first frame
    refitted = online._self is not None and online._self.refits > 0
    assert set(second.scalars()) == two | ({"alignment_rmsd"} if refitted else set())


def test_off_manifold_flag_warns_once(data, reference):
    y = data["y"]
    online = OnlineManifold(y, C, reference=reference, residual_threshold=0.0)
    with pytest.warns(UserWarning, match="off the manifold") as record:
        results = play(online, data["b0"], y)
    assert sum("off the manifold" in str(w.message) for w in record) == 1
    assert all(r.off_manifold for r in results if r.residual > 0)
    assert results[-1].scalars()["off_manifold"] == 1.0
    threshold = float(np.nanmedian([r.reference_distance for r in results]))
    far = OnlineManifold(y, C, reference=reference, distance_threshold=threshold)
    with pytest.warns(UserWarning, match="reference_distance"):
        results = play(far, data["b0"], y)
    flagged = [r.off_manifold for r in results]
    expected = [bool(r.reference_distance > threshold) for r in results]
    assert flagged == expected
    assert any(flagged)
    assert not all(flagged)
    calm = OnlineManifold(
        y, C, reference=reference, residual_threshold=10.0, distance_threshold=10.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not any(r.off_manifold for r in play(calm, data["a1"], y))


def test_invalid_snapshots_are_skipped(data, reference):
    y = data["y"]
    lp = data["a1"][0][3]
    online = OnlineManifold(y, C, reference=reference)
    assert online.update(snap(lp, 3, y, valid=False)) is None
    bad = lp.clone()
    bad[0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        skipped = [online.update(snap(bad, 4, y)), online.update(snap(bad, 5, y))]
    assert skipped == [None, None]
    assert [str(w.message).count("NaN") for w in record] == [1]
    assert len(online) == 0
    assert online.update(snap(lp, 6, y)) is not None
    assert len(online) == 1


def test_mismatched_reference_is_refused(data, reference, tmp_path: Path):
    path = reference.save(tmp_path / "ref.npz")
    y = data["y"].clone()
    with pytest.raises(ValueError, match=r"N: expected 240 samples, got 200"):
        OnlineManifold(y[:200], C, reference=path)
    with pytest.raises(ValueError, match=r"C: expected 5 classes, got 7"):
        OnlineManifold(y, 7, reference=str(path))
    y[:2] = (y[:2] + 1) % C
    with pytest.raises(ValueError, match=r"2 of 240 labels differ"):
        OnlineManifold(y, C, reference=reference)
    with pytest.raises(TypeError, match="reference"):
        OnlineManifold(data["y"], C, reference=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_components"):
        OnlineManifold(data["y"], C, reference=reference, n_components=11)


def test_wrong_snapshot_shape_is_an_error(data, reference):
    online = OnlineManifold(data["y"], C, reference=reference)
    with pytest.raises(
        ValueError, match=r"`snapshot.log_probs` must have shape \(N, C\) = \(240, 5\)"
    ):
        online.update(snap(data["a1"][0][3][:, :4], 3, data["y"]))


def test_frame_with_reference(data, reference):
    online = OnlineManifold(data["y"], C, reference=reference, probe="train")
    results = play(online, data["a1"], data["y"])
    frame = online.frame()
    assert isinstance(frame, ManifoldFrame)
    t, m = len(results), reference.num_models
    assert frame.live_coords.shape == (t, 3)
    assert frame.ref_coords.shape == (m, 3)
    np.testing.assert_array_equal(frame.live_steps, data["a1"][1])
    np.testing.assert_allclose(frame.live_progress, [r.progress for r in results])
    np.testing.assert_allclose(
        frame.live_reference_distance, [r.reference_distance for r in results]
    )
    np.testing.assert_allclose(frame.ref_coords, reference.coords[:m, :3])
    np.testing.assert_allclose(frame.ignorance, reference.ignorance_coords[:3])
    assert frame.geodesic.shape == (18, 3)
    assert frame.ref_run_names == ["a0"]
    assert frame.ref_progress.shape == (m,)
    assert frame.step == results[-1].step
    assert frame.eigenvalues.shape == (reference.n_components,)


# --------------------------------------------------------------------------- self-embedding


def plain_distance(p: np.ndarray | None, q: np.ndarray | None, y: np.ndarray) -> float:
    if p is None and q is None:
        return 0.0
    if p is None or q is None:
        other = q if p is None else p
        return -0.5 * float(np.mean(other[np.arange(len(y)), y]))
    return plain_bhattacharyya(p, q)


def plain_four_point_coords(
    basis: list[np.ndarray], models: list[np.ndarray], y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plain 4-point frame (eq. 2.4.1): InPCA of [P0, P_s1, P_s2, P*], models by eq. 2.2.9.

    Returns the models' (T, 3) coordinates (axes oriented ignorance -> truth) and the (3,)
    eigenvalues sorted by |lambda|.
    """
    points: list[np.ndarray | None] = [np.full_like(basis[0], -math.log(C)), *basis, None]
    D = np.array([[plain_distance(p, q, y) for q in points] for p in points])
    L = np.eye(4) - 0.25
    lam, U = np.linalg.eigh(-0.5 * L @ D @ L)
    order = np.argsort(-np.abs(lam))[:3]
    lam, U = lam[order], U[:, order]
    X = U * np.sqrt(np.abs(lam))
    span = X[3] - X[0]
    span = np.where(np.abs(span) <= 1e-9 * np.abs(X).max(), X[1] - X[0], span)
    flip = np.where(span < 0, -1.0, 1.0)
    out = []
    for m in models:
        d = np.array([plain_distance(m, q, y) for q in points])
        w = -0.5 * (d - d.mean() - D.mean(1) + D.mean())
        out.append((w @ U) / (np.sign(lam) * np.sqrt(np.abs(lam))) * flip)
    return np.array(out), lam


@pytest.fixture(params=["numpy", "torch"])
def placement(request, monkeypatch):
    """Both codes of the live frame's placement: numpy on the CPU, torch on accelerators."""
    monkeypatch.setattr(online_module, "_PLACE_ON_HOST", request.param == "numpy")
    return request.param


def test_live_frame_before_any_level_uses_geodesic_stand_ins(data, placement):
    """Far below s1 - 2 sigma the basis points are the geodesic points at s1 and s2."""
    y = data["y"]
    lp = data["a0"][0][0]  # the initial model, near ignorance
    online = OnlineManifold(y, C, n_geodesic=4, basis_progress=(0.3, 0.7))
    r = online.update(snap(lp, 0, y))
    assert r is not None
    assert r.progress < 0.3 - 2 * 0.05
    y_np = y.numpy()
    basis = [plain_geodesic_log(y_np, 0.3), plain_geodesic_log(y_np, 0.7)]
    expected, lam = plain_four_point_coords(basis, [lp.numpy()], y_np)
    np.testing.assert_allclose(r.coords, expected[0], atol=1e-7)
    frame = online.frame()
    np.testing.assert_allclose(frame.eigenvalues, lam, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(frame.time_like[:3], r.time_like)
    assert frame.geodesic.shape == (6, 3)


def test_live_frame_adopts_the_runs_own_progress_weighted_models(data, placement):
    """After the run has passed s + 3 sigma, P_s is eq. 2.4.1 over the snapshots seen until then,
    and every later snapshot is placed in the plain 4-point frame of those P_s."""
    y = data["y"]
    lp, steps = data["a0"]
    levels = (0.2, 0.4)
    online = OnlineManifold(y, C, basis_progress=levels)
    results = play(online, (lp, steps), y)
    progress = np.array([r.progress for r in results])
    assert np.maximum.accumulate(progress)[-1] > 0.4 + 3 * 0.05, "the run must pass both levels"
    y_np = y.numpy()
    basis = []
    for s in levels:
        fixed = int(np.argmax(np.maximum.accumulate(progress) >= s + 3 * 0.05))
        w = np.exp(-((progress[: fixed + 1] - s) ** 2) / (2 * 0.05**2))
        mean = np.tensordot(w, np.exp(lp[: fixed + 1].numpy()), axes=1) / w.sum()
        basis.append(np.log(mean / mean.sum(-1, keepdims=True)))
    last = int(max(np.argmax(np.maximum.accumulate(progress) >= s + 0.15) for s in levels))
    expected, lam = plain_four_point_coords(basis, [a.numpy() for a in lp[last:]], y_np)
    got = np.array([r.coords for r in results[last:]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    frame = online.frame()
    np.testing.assert_allclose(frame.eigenvalues, lam, rtol=1e-6, atol=1e-10)
    assert online._self is not None
    assert online._self._sums is None  # both fixed: no running sums kept
    assert 1 <= online._self.refits <= 12


def test_live_frame_refits_are_few_and_move_the_trajectory_rigidly(data, placement):
    y = data["y"]
    online = OnlineManifold(y, C, n_components=3)
    before = None
    for lp, s in zip(*data["a0"]):
        r = online.update(snap(lp, int(s), y))
        assert r is not None
        frame = online.frame()
        # every frame: eigenvalues sorted by |lambda|, axis labels from the same eigenvalues
        assert np.all(np.diff(np.abs(frame.eigenvalues)) <= 0)
        np.testing.assert_array_equal(frame.time_like[:3], r.time_like)
        np.testing.assert_allclose(r.coords, frame.live_coords[-1])
        if before is not None and math.isfinite(r.alignment_rmsd):
            # a refit moves the earlier points by one rotation and translation (Kabsch)
            old, new = before, frame.live_coords[: len(before)]
            d_old = np.linalg.norm(old[:, None] - old[None], axis=-1)
            d_new = np.linalg.norm(new[:, None] - new[None], axis=-1)
            np.testing.assert_allclose(d_new, d_old, atol=1e-9)
            assert r.alignment_rmsd >= 0
        before = frame.live_coords.copy()
    assert online._self is not None
    assert online._self.refits <= 12
    frame = online.frame()
    assert frame.live_coords.shape == (len(data["a0"][1]), 3)
    assert frame.ref_coords.shape == (0, 3)
    assert frame.geodesic.shape == (18, 3)
    np.testing.assert_allclose(frame.ignorance, frame.geodesic[0])
    np.testing.assert_allclose(frame.truth, frame.geodesic[-1])


def test_first_self_frame_is_oriented_from_ignorance_to_truth(data):
    y = data["y"]
    online = OnlineManifold(y, C, n_components=3)
    online.update(snap(data["a0"][0][5], 5, y))
    frame = online.frame()
    # an axis orthogonal to ignorance -> truth (geodesic stand-ins) has a difference of ~0
    assert np.all(frame.truth - frame.ignorance >= -1e-12)


def test_live_state_does_not_grow_with_the_number_of_snapshots(data):
    """Bounded memory: the tensors held are O(N * C) whatever T; per snapshot only k
    coordinates and 5 scalars are kept (checked structurally, not by timing)."""
    y = data["y"]
    lp, steps = data["a0"]
    online = OnlineManifold(y, C)
    n, k = y.shape[0], 3

    def tensor_numel() -> int:
        emb = online._self
        assert emb is not None
        fit = emb.fit
        held = [fit.basis_log_probs, fit.basis_sqrt, fit.coords, fit.geodesic, emb._stand_ins]
        held += [] if emb._sums is None else [emb._sums]
        held += [v for v in vars(fit.embedding).values() if isinstance(v, torch.Tensor)]
        return sum(t.numel() for t in held)

    sizes, rows = [], []
    for rep in range(4):  # the same trajectory again and again: T grows to 4x
        for a, s in zip(lp, steps):
            assert online.update(snap(a, int(s) + 1000 * rep, y)) is not None
        sizes.append(tensor_numel())
        rows.append(online._self.coords.array.shape)  # type: ignore[union-attr]
    assert max(sizes) <= 8 * n * C + 256  # sums, basis, its roots, stand-ins: O(N * C)
    assert sizes[-1] <= sizes[0]  # nothing tensor-sized is added per snapshot
    assert rows == [(len(lp) * (rep + 1), k) for rep in range(4)]
    T = 4 * len(lp)
    assert online.state_nbytes <= 8 * n * C * 8 + 2 * T * (k + 5) * 8 + 64 * (k + 5) * 8


def test_results_keep_the_latest_and_count_them_all(data, monkeypatch):
    monkeypatch.setattr(online_module, "RESULTS_KEPT", 3)
    y = data["y"]
    lp, steps = data["a0"]
    online = OnlineManifold(y, C)
    placed = [online.update(snap(a, int(s), y)) for a, s in zip(lp[:5], steps[:5])]
    assert len(online) == 5
    assert [r.step for r in online.results] == [r.step for r in placed[-3:]]  # type: ignore[union-attr]
    assert online.frame().live_coords.shape[0] == 5  # the picture keeps every snapshot


def test_frame_before_any_snapshot(data, reference):
    with pytest.raises(RuntimeError, match="no valid snapshot"):
        OnlineManifold(data["y"], C).frame()
    frame = OnlineManifold(data["y"], C, reference=reference).frame()
    assert frame.live_coords.shape == (0, 3)
    assert frame.ref_coords.shape[0] == reference.num_models


def test_constructor_argument_errors(data):
    y = data["y"]
    with pytest.raises(ValueError, match="`labels` must be"):
        OnlineManifold(y.double(), C)
    with pytest.raises(ValueError, match="`labels` must be"):
        OnlineManifold(y, 3)
    with pytest.raises(ValueError, match="`refit_every`"):
        OnlineManifold(y, C, refit_every=0)
    with pytest.raises(ValueError, match="`residual_threshold`"):
        OnlineManifold(y, C, residual_threshold=-1.0)
    with pytest.raises(ValueError, match="`n_components` must be <= 3 without a reference"):
        OnlineManifold(y, C, n_components=4)
    with pytest.raises(ValueError, match="`basis_progress`"):
        OnlineManifold(y, C, basis_progress=(0.7, 0.3))
    with pytest.raises(ValueError, match="`basis_width`"):
        OnlineManifold(y, C, basis_width=0.0)


def test_capture_metrics_are_reused(data):
    y = data["y"]
    lp = data["a1"][0][7]
    fresh = OnlineManifold(y, C).update(snap(lp, 7, y))
    assert fresh is not None
    known = {k: getattr(fresh, k) + 1e-3 for k in ("progress", "distance_to_geodesic")}
    known |= {k: getattr(fresh, k) for k in ("distance_to_ignorance", "distance_to_truth", "error")}
    given = Snapshot("train", 7, 0, lp, y, 0.0, metrics=known)
    r = OnlineManifold(y, C).update(given)
    assert r is not None
    assert r.progress == known["progress"]
    assert r.distance_to_geodesic == known["distance_to_geodesic"]
    partial = Snapshot("train", 7, 0, lp, y, 0.0, metrics={"progress": 0.123})
    r = OnlineManifold(y, C).update(partial)
    assert r is not None
    assert r.progress == pytest.approx(fresh.progress)  # incomplete: recomputed


def test_replay_from_a_store_equals_live_updates(data, reference, tmp_path: Path):
    y = data["y"]
    lp, steps = data["a1"]
    store = write_store(tmp_path, "a1", y, C, lp, steps)
    replayed = OnlineManifold(y, C, reference=reference, probe="train")
    assert replayed.replay(store) == len(lp)
    live = OnlineManifold(y, C, reference=reference, probe="train")
    play(live, data["a1"], y)
    for a, b in zip(replayed.results, live.results):
        assert a.step == b.step
        np.testing.assert_allclose(a.coords, b.coords, atol=1e-12)
        assert a.reference_distance == pytest.approx(b.reference_distance, abs=1e-12, nan_ok=True)


def test_self_embedding_of_a_frozen_model(data):
    """Identical snapshots (lr = 0): degenerate distances must not break the refits."""
    y = data["y"]
    lp = data["a1"][0][0]
    online = OnlineManifold(y, C)
    results = [online.update(snap(lp, s, y)) for s in range(6)]
    assert all(r is not None for r in results)
    frame = online.frame()
    assert np.isfinite(frame.live_coords).all()
    np.testing.assert_allclose(frame.live_coords, frame.live_coords[:1].repeat(6, 0), atol=1e-6)


def test_every_frame_lists_eigenvalues_by_magnitude(data, reference, tmp_path: Path):
    """Spectrum panels: live, reference and offline (store replayed) frames sorted by |lambda|."""
    from lightning_manifold.cli import run_frame

    y = data["y"]
    lp, steps = data["a1"]
    live = OnlineManifold(y, C)
    play(live, (lp, steps), y)
    with_ref = OnlineManifold(y, C, reference=reference)
    play(with_ref, (lp, steps), y)
    store = write_store(tmp_path, "a1", y, C, lp, steps)
    frames = [live.frame(), reference.to_frame(3), with_ref.frame(), run_frame(store)]
    for frame in frames:
        magnitude = np.abs(np.asarray(frame.eigenvalues))
        assert magnitude.size >= 1
        assert np.all(np.diff(magnitude) <= 0), magnitude

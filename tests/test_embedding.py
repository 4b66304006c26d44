"""ReferenceEmbedding: fit, projection (eq. 2.2.9), save/load, probe compatibility.

Reference values come from plain numpy implementations written here (loops over samples).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import full_batch_trajectory, write_store
from conftest import teacher_data as _teacher

from lightning_manifold import functional as F
from lightning_manifold.embedding import (
    _TENSOR_FIELDS,
    FORMAT_VERSION,
    ReferenceEmbedding,
    step_at_progress,
)

C = 5


# --------------------------------------------------------------------------- data


def teacher_data(n: int = 240, d: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs labelled by a random one-hidden-layer teacher (thesis §2.5.5)."""
    return _teacher(n, d, C, seed)


def train_run(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 40, lr: float = 0.5
) -> tuple[torch.Tensor, np.ndarray]:
    """Full-batch SGD; (T, N, C) float64 log-probabilities at log-spaced steps, and the steps."""
    return full_batch_trajectory(model, x, y, steps=steps, n_capture=14, lr=lr)


def mlp(seed: int, d: int = 20) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, C))


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    x, y = teacher_data()
    return {"y": y, "a0": train_run(mlp(0), x, y), "a1": train_run(mlp(1), x, y)}  # type: ignore[dict-item]


# --------------------------------------------------------------------------- plain reference


def plain_bhattacharyya(lp: np.ndarray, lq: np.ndarray) -> float:
    """d_B (eq. 2.2.2) with a loop over samples, from log-probabilities."""
    total = 0.0
    for n in range(lp.shape[0]):
        total += -math.log(float(np.sum(np.exp(0.5 * (lp[n] + lq[n])))))
    return total / lp.shape[0]


def plain_geodesic_point_log(y: np.ndarray, alpha: float) -> np.ndarray:
    """log of the point at ``alpha`` on the ignorance->truth great circle (eq. 2.2.3)."""
    theta = math.acos(1 / math.sqrt(C))
    out = np.empty((len(y), C))
    for n, label in enumerate(y):
        s = np.full(C, math.sin((1 - alpha) * theta) / math.sin(theta) / math.sqrt(C))
        s[label] += math.sin(alpha * theta) / math.sin(theta)
        out[n] = 2 * np.log(s)
    return out


def plain_point_set(models: np.ndarray, y: np.ndarray, n_geodesic: int) -> list[np.ndarray | None]:
    """The embedded points in the documented order; None stands for truth (zeros)."""
    points: list[np.ndarray | None] = list(models)
    points.append(np.full((len(y), C), -math.log(C)))
    for a in np.linspace(0, 1, n_geodesic + 2)[1:-1]:
        points.append(plain_geodesic_point_log(y, float(a)))
    points.append(None)
    return points


def plain_distance_matrix(points: list[np.ndarray | None], y: np.ndarray) -> np.ndarray:
    m = len(points)
    D = np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            p, q = points[i], points[j]
            if p is None or q is None:
                other = q if p is None else p
                assert other is not None
                d = -0.5 * float(np.mean(other[np.arange(len(y)), y]))  # half cross-entropy
            else:
                d = plain_bhattacharyya(p, q)
            D[i, j] = D[j, i] = d
    return D


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("landmarks", [True, False])
def test_projection_of_reference_models_is_exact(runs, landmarks):
    lp0, s0 = runs["a0"]
    lp1, s1 = runs["a1"]
    ref = ReferenceEmbedding.fit(
        [lp0, lp1], labels=runs["y"], steps=[s0, s1], landmarks=landmarks, dtype=torch.float64
    )
    models = torch.cat([lp0, lp1])
    np.testing.assert_allclose(ref.project(models), ref.coords[: len(models)], atol=1e-8, rtol=0)
    # one model -> (k,)
    np.testing.assert_allclose(ref.project(lp1[3]), ref.coords[len(lp0) + 3], atol=1e-8, rtol=0)
    if landmarks:
        y = runs["y"]
        ignorance = torch.full((len(y), C), -math.log(C), dtype=torch.float64)
        truth = torch.log(torch.nn.functional.one_hot(y, C).double())
        np.testing.assert_allclose(ref.project(ignorance), ref.ignorance_coords, atol=1e-8)
        np.testing.assert_allclose(ref.project(truth), ref.truth_coords, atol=1e-8)
        np.testing.assert_allclose(ref.coords[-1], ref.truth_coords)


def test_fit_is_isometric_to_plain_distance_matrix(runs):
    """With every component kept, Minkowski distances of the coordinates reproduce D (eq. 2.2.7)."""
    lp0, _ = runs["a0"]
    y = runs["y"].numpy()
    ref = ReferenceEmbedding.fit(
        lp0, labels=y, n_components=1000, n_geodesic=3, dtype=torch.float64
    )
    D = plain_distance_matrix(plain_point_set(lp0.numpy(), y, 3), y)
    X = ref.coords.numpy()
    signs = np.sign(ref.eigenvalues.numpy())
    m = X.shape[0]
    assert m == len(lp0) + 5
    recon = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            recon[i, j] = np.sum(signs * (X[i] - X[j]) ** 2)
    np.testing.assert_allclose(recon, D, atol=1e-9)
    np.testing.assert_allclose(ref.row_means.numpy(), D.mean(1), atol=1e-12)
    # eigenvalues sorted by magnitude, signs kept
    lam = ref.eigenvalues.numpy()
    assert np.all(np.diff(np.abs(lam)) <= 1e-12)
    assert (lam < 0).any(), "a Bhattacharyya embedding of a trajectory has time-like axes"


def test_axes_are_oriented_from_ignorance_to_truth(runs):
    ref = ReferenceEmbedding.fit(runs["a0"][0], labels=runs["y"], n_components=6)
    assert bool(((ref.truth_coords - ref.ignorance_coords) >= 0).all())
    np.testing.assert_allclose(ref.geodesic_coords[0], ref.ignorance_coords)
    np.testing.assert_allclose(ref.geodesic_coords[-1], ref.truth_coords)


def test_model_metadata(runs):
    lp0, s0 = runs["a0"]
    lp1, s1 = runs["a1"]
    y = runs["y"]
    ref = ReferenceEmbedding.fit(
        [lp0, lp1], labels=y, steps=[s0, s1], run_names=["seed0", "seed1"], n_geodesic=4
    )
    assert ref.run_names == ["seed0", "seed1"]
    np.testing.assert_array_equal(ref.model_run, [0] * len(lp0) + [1] * len(lp1))
    np.testing.assert_array_equal(ref.model_step, np.concatenate([s0, s1]))
    err = (torch.cat([lp0, lp1]).argmax(-1) != y).double().mean(-1)
    np.testing.assert_allclose(ref.model_error, err)
    assert ref.num_points == len(lp0) + len(lp1) + 6
    assert float(ref.model_progress[0]) < 0.2 < float(ref.model_progress[len(lp0) - 1])


def test_probabilities_and_log_probabilities_project_alike(runs):
    lp0, _ = runs["a0"]
    ref = ReferenceEmbedding.fit(lp0, labels=runs["y"], dtype=torch.float64)
    np.testing.assert_allclose(ref.project(lp0.exp()), ref.project(lp0), atol=1e-10)
    np.testing.assert_allclose(ref.project(lp0.exp().numpy()), ref.project(lp0), atol=1e-10)


def test_max_models_subsamples_each_run_evenly(runs):
    lp0, s0 = runs["a0"]
    lp1, s1 = runs["a1"]
    ref = ReferenceEmbedding.fit([lp0, lp1], labels=runs["y"], steps=[s0, s1], max_models=10)
    assert ref.num_models <= 10
    for r, s in enumerate((s0, s1)):
        kept = ref.model_step[ref.model_run == r].numpy()
        assert kept[0] == s[0]
        assert kept[-1] == s[-1]
    with pytest.raises(ValueError, match="max_models"):
        ReferenceEmbedding.fit([lp0, lp1], labels=runs["y"], max_models=3)


def test_save_load_round_trip(runs, tmp_path: Path):
    lp0, s0 = runs["a0"]
    lp1, s1 = runs["a1"]
    ref = ReferenceEmbedding.fit(
        [lp0, lp1], labels=runs["y"], steps=[s0, s1], probe_name="train", meta={"lr": 0.5}
    )
    path = ref.save(tmp_path / "ref.npz")
    assert path == tmp_path / "ref.npz"
    assert path.is_file()
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no object arrays
        assert all(z[k].dtype != object for k in z.files)
    back = ReferenceEmbedding.load(path, labels=runs["y"], num_classes=C)
    for name in _TENSOR_FIELDS:
        a, b = getattr(ref, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert back.run_names == ref.run_names
    assert back.probe_name == "train"
    assert back.meta == {"lr": 0.5}
    assert back.total_stress == ref.total_stress
    assert back.num_classes == C
    # Same values, but loaded arrays may differ in layout, and BLAS kernels round by layout.
    got, want = back.project(lp1), ref.project(lp1)
    tol = 64 * torch.finfo(want.dtype).eps
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("N", r"N: expected 240 samples, got 239"),
        ("C", r"C: expected 5 classes, got 6"),
        ("labels", r"labels: 3 of 240 labels differ \(first at index 7"),
    ],
)
def test_mismatched_probe_is_refused(runs, tmp_path: Path, change: str, message: str):
    ref = ReferenceEmbedding.fit(runs["a0"][0], labels=runs["y"])
    path = ref.save(tmp_path / "ref.npz")
    y = runs["y"].clone()
    num_classes = C
    if change == "N":
        y = y[:-1]
    elif change == "C":
        num_classes = C + 1
    else:
        y[[7, 50, 90]] = (y[[7, 50, 90]] + 1) % C
    with pytest.raises(ValueError, match=message):
        ReferenceEmbedding.load(path, labels=y, num_classes=num_classes)
    with pytest.raises(ValueError, match=message):
        ref.check_compatible(y, num_classes)


def test_load_refuses_foreign_and_future_files(runs, tmp_path: Path):
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a lightning-manifold reference"):
        ReferenceEmbedding.load(other)
    ref = ReferenceEmbedding.fit(runs["a0"][0], labels=runs["y"])
    path = ref.save(tmp_path / "ref.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = str(arrays["__meta__"]).replace(
        f'"format_version": {FORMAT_VERSION}', f'"format_version": {FORMAT_VERSION + 1}'
    )
    arrays["__meta__"] = np.array(meta)
    future = tmp_path / "future.npz"
    np.savez(future, **arrays)
    with pytest.raises(ValueError, match="format_version"):
        ReferenceEmbedding.load(future)
    with pytest.raises(FileNotFoundError, match="path"):
        ReferenceEmbedding.load(tmp_path / "missing.npz")


def test_from_store_and_from_run(runs, tmp_path: Path):
    lp0, s0 = runs["a0"]
    y = runs["y"]
    store = write_store(tmp_path, "seed0", y, C, lp0, s0)
    store.append(np.full((len(y), C), np.nan), step=1000, epoch=0, wall_time=0.0, valid=False)
    a = ReferenceEmbedding.from_run(tmp_path, "seed0", "train", dtype=torch.float64)
    b = ReferenceEmbedding.fit(lp0, labels=y, steps=[s0], run_names=["seed0"], dtype=torch.float64)
    assert a.run_names == ["seed0"]
    assert a.probe_name == "train"
    np.testing.assert_array_equal(a.model_step, s0)  # the invalid record is skipped
    torch.testing.assert_close(a.coords, b.coords)
    c = ReferenceEmbedding.from_store(tmp_path / "seed0" / "train", dtype=torch.float64)
    torch.testing.assert_close(c.coords, b.coords)


def test_fit_argument_errors(runs):
    lp0, s0 = runs["a0"]
    with pytest.raises(ValueError, match="`labels` is required"):
        ReferenceEmbedding.fit(lp0)
    with pytest.raises(
        ValueError, match=r"`runs\[0\]` must have shape \(T, N, C\) = \(T, 239, 5\)"
    ):
        ReferenceEmbedding.fit(lp0, labels=runs["y"][:-1])
    with pytest.raises(ValueError, match="`steps"):
        ReferenceEmbedding.fit(lp0, labels=runs["y"], steps=[s0[:-1]])
    with pytest.raises(ValueError, match="`run_names` must have one name per run"):
        ReferenceEmbedding.fit(lp0, labels=runs["y"], run_names=["a", "b"])


def test_step_at_progress_first_crossing():
    steps = np.array([0, 10, 20, 30, 40])
    prog = np.array([0.0, 0.2, 0.5, 0.4, 0.9])
    assert step_at_progress(steps, prog, 0.2) == 10
    assert step_at_progress(steps, prog, 0.35) == pytest.approx(15)
    # the dip at step 30 does not un-reach 0.5; 0.7 is reached between 30 and 40
    assert step_at_progress(steps, prog, 0.7) == pytest.approx(30 + 10 * (0.2 / 0.4))
    assert math.isnan(step_at_progress(steps, prog, 0.95))
    assert step_at_progress(steps, prog, 0.0) == 0
    # The final level, solved alone instead of in the reference's batch, may come out up to the
    # solver's tolerance higher: still reached, at the step that reached it.
    assert step_at_progress(steps, prog, 0.9 + 0.5 * F.PROGRESS_TOLERANCE) == 40
    assert math.isnan(step_at_progress(steps, prog, 0.9 + 2 * F.PROGRESS_TOLERANCE))


def test_projection_input_errors(runs):
    lp0, _ = runs["a0"]
    ref = ReferenceEmbedding.fit(lp0, labels=runs["y"])
    with pytest.raises(
        ValueError, match=r"`log_probs` must have shape \(\.\.\., N, C\) = \(\.\.\., 240, 5\)"
    ):
        ref.project(lp0[0][:, :3])
    with pytest.raises(ValueError, match="normalised"):
        ref.project(lp0[0] - 1.0)
    with pytest.raises(ValueError, match="NaN"):
        ref.project(torch.full_like(lp0[0], float("nan")))

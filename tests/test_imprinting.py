"""Imprinting (thesis eq. 3.2.1, §3.5.4-3.5.6): the functional core against plain loops, the
chapter's analyses (seen/novel progress, mean trajectory, tube radius, normalised distance,
Riemann length), ImprintedProbe in the callback (store, online metrics, CLI, no side effects)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _reference import as_np, bhattacharyya, geodesic_distance, progress, reindex_by_progress
from conftest import MemoryLogger, TinyClassifier, fast_trainer_kwargs, make_blobs, make_loader
from torch import Tensor

from lightning_manifold import ImprintedProbe, ManifoldCallback, ProbeSet, ReferenceEmbedding
from lightning_manifold import functional as F
from lightning_manifold.cli import main as cli_main
from lightning_manifold.schedule import Schedule
from lightning_manifold.store import TrajectoryStore

DTYPES = [torch.float32, torch.float64]


def _tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-5


def _plain_imprint(phi: np.ndarray, labels: np.ndarray, C: int) -> np.ndarray:
    """eq. 3.2.1 by loops: (N, C) log-probabilities of the imprinted classifier, float64."""
    phi = np.asarray(phi, dtype=np.float64)
    N, d = phi.shape
    W = np.zeros((C, d))
    for c in range(C):
        h = np.zeros(d)
        for n in range(N):
            if labels[n] == c:
                h += phi[n]
        norm = math.sqrt(float(h @ h))
        W[c] = h / norm if norm > 0 else 0.0
    out = np.empty((N, C))
    for n in range(N):
        logits = [float(W[c] @ phi[n]) for c in range(C)]
        top = max(logits)
        lse = top + math.log(sum(math.exp(v - top) for v in logits))
        out[n] = [v - lse for v in logits]
    return out


# ----------------------------------------------------------------------------- functional core


@pytest.mark.parametrize("dtype", DTYPES)
def test_imprint_matches_plain_eq_3_2_1(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    N, d, C = 40, 6, 4
    phi = (torch.randn(N, d, generator=g) * 3).to(dtype)
    y = torch.arange(N) % C
    expected = _plain_imprint(phi.double().numpy(), y.numpy(), C)
    got = F.imprint(phi, y, C)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), expected, atol=_tol(dtype) * 10, rtol=0)
    # the split used under DDP gives the same, also from sums added over two shards
    sums = F.class_feature_sums(phi[:17], y[:17], C) + F.class_feature_sums(phi[17:], y[17:], C)
    split = F.imprinted_log_probs(phi, F.imprinted_weights(sums))
    np.testing.assert_allclose(split.double().numpy(), expected, atol=_tol(dtype) * 10, rtol=0)
    # numpy in, torch out
    assert isinstance(F.imprint(phi.numpy(), y.numpy(), C), Tensor)


def test_imprint_is_invariant_to_orthogonal_transforms() -> None:
    g = torch.Generator().manual_seed(1)
    N, d, C = 60, 8, 5
    phi = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = torch.arange(N) % C
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    assert torch.allclose(U @ U.T, torch.eye(d, dtype=torch.float64), atol=1e-12)
    base, rotated = F.imprint(phi, y, C), F.imprint(phi @ U.T, y, C)  # φ -> Uφ
    torch.testing.assert_close(rotated, base, atol=1e-12, rtol=0)
    assert float(F.bhattacharyya_from_log_probs(base, rotated)) < 1e-12  # §3.5.5: d_B = 0
    # a non-orthogonal map changes the model: the test can fail
    A = torch.diag(torch.linspace(0.2, 3.0, d, dtype=torch.float64))
    assert (F.imprint(phi @ A, y, C) - base).abs().max() > 1e-3


def test_imprint_edge_cases_are_named() -> None:
    phi = torch.randn(9, 3)
    y = torch.tensor([0, 0, 1, 1, 3, 3, 0, 1, 3])
    with pytest.raises(ValueError, match=r"every class in \[0, 4\).*class\(es\) \[2\]"):
        F.imprint(phi, y, 4)
    with pytest.raises(ValueError, match=r"`features` must be a non-empty \(N, d\)"):
        F.imprint(torch.randn(9), y, 4)
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\)"):
        F.imprint(phi, y, 3)
    with pytest.raises(ValueError, match=r"`weights` must have shape \(C, d\) with d = 3"):
        F.imprinted_log_probs(phi, torch.randn(4, 5))
    with pytest.raises(ValueError, match="`num_classes` must be a positive integer"):
        F.class_feature_sums(phi, y, 0)
    # an identically zero representation maps to ignorance, not NaN (zero classifier rows)
    zero = F.imprint(torch.zeros(9, 3, dtype=torch.float64), y % 2, 2)
    torch.testing.assert_close(zero, torch.full((9, 2), -math.log(2), dtype=torch.float64))
    # one class with a zero sum: its logit is 0 everywhere, the other rows are unit vectors
    phi2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    W = F.imprinted_weights(F.class_feature_sums(phi2, torch.tensor([0, 0, 1]), 2))
    torch.testing.assert_close(W, torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    # a diverged model: NaN features give NaN rows (the callback stores them as invalid)
    bad = phi.clone()
    bad[0, 0] = math.nan
    assert torch.isnan(F.imprint(bad, y % 2, 2)).any()


# ----------------------------------------------------------------------------- analyses


def test_seen_novel_progress_matches_per_class_reference() -> None:
    rng = np.random.default_rng(2)
    N, C, m = 48, 4, 2
    labels = np.arange(N) % C
    logits = rng.normal(size=(m, N, C))
    logits[0, np.arange(N), labels] += np.where(labels < 2, 3.0, 0.5)  # good on classes 0, 1
    log_p = torch.log_softmax(torch.tensor(logits), -1)
    out = F.seen_novel_progress(log_p, torch.tensor(labels), [0, 1])
    P = np.exp(log_p.numpy())
    expected = np.empty((m, C))
    for c in range(C):
        rows = labels == c
        expected[:, c] = progress(P[:, rows], labels[rows])[0]  # progress on class c's samples
    np.testing.assert_allclose(out.per_class.numpy(), expected, atol=1e-6)
    assert out.seen.tolist() == [True, True, False, False]
    np.testing.assert_allclose(out.seen_mean.numpy(), expected[:, :2].mean(1), atol=1e-6)
    np.testing.assert_allclose(out.novel_mean.numpy(), expected[:, 2:].mean(1), atol=1e-6)
    assert float(out.seen_mean[0]) > float(out.novel_mean[0])
    with pytest.raises(ValueError, match=r"`seen_classes` must lie in \[0, 4\)"):
        F.seen_novel_progress(log_p, torch.tensor(labels), [4])


def _runs(seed: int, R: int, S: int, N: int, C: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(R, S, N, C))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mean_trajectory_tube_radius_and_normalised_distance_match_loops() -> None:
    A, B = _runs(3, 3, 5, 7, 4), _runs(4, 2, 5, 7, 4)
    mean_a = F.mean_trajectory(torch.tensor(A))
    np.testing.assert_allclose(mean_a.numpy(), A.sum(0) / 3, atol=1e-15)
    radius = np.empty((2, 5))
    for i, X in enumerate((A, B)):
        for s in range(5):
            mu = X[:, s].mean(0)
            radius[i, s] = max(bhattacharyya(X[k, s][None], mu[None])[0, 0] for k in range(len(X)))
    np.testing.assert_allclose(F.tube_radius(A).numpy(), radius[0], atol=1e-12)
    between = np.array(
        [bhattacharyya(A[:, s].mean(0)[None], B[:, s].mean(0)[None])[0, 0] for s in range(5)]
    )
    expected = 2 * between / (radius[0] + radius[1])
    np.testing.assert_allclose(F.normalized_tube_distance(A, B).numpy(), expected, rtol=1e-10)
    # the same runs twice: distance 0, the tubes intersect
    assert float(F.normalized_tube_distance(A, A).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="`P_runs_2` must hold at least 2 runs"):
        F.normalized_tube_distance(A, B[:1])
    with pytest.raises(ValueError, match=r"`P_runs` must be a non-empty \(R, S, N, C\)"):
        F.tube_radius(A[0])


def test_reindex_runs_stacks_the_reference_reindexing() -> None:
    rng = np.random.default_rng(5)
    trajs = [_runs(6 + r, 1, T, 5, 3)[0] for r, T in enumerate((4, 6))]
    progs = [np.sort(rng.uniform(0, 1, size=t.shape[0])) for t in trajs]
    grid = np.linspace(0.0, 1.0, 9)
    P_runs, valid = F.reindex_runs(trajs, progs, grid)
    assert P_runs.shape == (2, 9, 5, 3)
    for r in range(2):
        ref, ref_valid = reindex_by_progress(trajs[r], progs[r], grid)
        np.testing.assert_array_equal(valid[r].numpy(), ref_valid)
        np.testing.assert_allclose(P_runs[r].numpy()[ref_valid], ref[ref_valid], atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_riemann_length_is_the_sum_of_geodesic_steps(dtype: torch.dtype) -> None:
    P = _runs(7, 1, 6, 9, 4)[0]
    expected = sum(geodesic_distance(P[t][None], P[t + 1][None])[0, 0] for t in range(5))
    got = F.riemann_length(torch.tensor(P, dtype=dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(float(got), expected, rtol=_tol(dtype) * 10)
    from_logs = F.riemann_length_from_log_probs(torch.tensor(np.log(P), dtype=dtype))
    np.testing.assert_allclose(float(from_logs), expected, rtol=_tol(dtype) * 10)
    # a path that goes there and back is twice as long; a single model has length 0
    back = np.concatenate([P, P[::-1][1:]])
    np.testing.assert_allclose(float(F.riemann_length(back)), 2 * expected, rtol=1e-10)
    assert float(F.riemann_length(P[:1])) == 0.0
    # tiny steps keep their digits (chord formula): two models 1e-9 apart in probability
    q = np.full((1, 2), 0.5)
    r = q + np.array([[1e-9, -1e-9]])
    step = float(F.riemann_length(np.stack([q, r])))
    # sqrt(p) = (cos φ, sin φ) with cos 2φ = p_1 - p_2: the angle moved is asin(2e-9) / 2
    np.testing.assert_allclose(step, math.asin(2e-9) / 2, rtol=1e-6)


# ----------------------------------------------------------------------------- ImprintedProbe


def test_imprinted_probe_argument_errors() -> None:
    x, y = make_blobs(30, 8, 3, seed=1)
    with pytest.raises(TypeError, match="`features` must be a submodule name"):
        ImprintedProbe(x, y, features=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"class\(es\) \[3\]"):
        ImprintedProbe(x, y, features="body", num_classes=4)
    with pytest.raises(ValueError, match=r"`seen_classes` must lie in \[0, 3\), got \[7\]"):
        ImprintedProbe(x, y, features="body", seen_classes=[0, 7])
    with pytest.raises(ValueError, match="`seen_classes` must be integer"):
        ImprintedProbe(x, y, features="body", seen_classes=[0.5])
    with pytest.raises(ValueError, match="`forward` is used only with a layer name"):
        ImprintedProbe(x, y, features=lambda m, b: b, forward=lambda m, b: m(b))
    model = TinyClassifier()
    with pytest.raises(ValueError, match=r"must name a submodule of TinyClassifier, got 'nope'"):
        ImprintedProbe(x, y, features="nope").predict(model)
    conv_like = ImprintedProbe(x, y, features=lambda m, b: m.body(b)[:, None, :])
    with pytest.raises(ValueError, match=r"features must be a floating \(B, d\)"):
        conv_like.predict(model)
    twice = ImprintedProbe(x, y, features="head", forward=lambda m, b: m(b) + m(b))
    with pytest.raises(ValueError, match="ran 2 times in one forward pass"):
        twice.predict(model)
    assert model.body._forward_hooks == {}
    assert model.head._forward_hooks == {}


def test_layer_and_callable_features_agree_and_shards_cover_the_probe() -> None:
    x, y = make_blobs(33, 8, 3, seed=2)
    model = TinyClassifier(hidden=12).eval()
    by_layer = ImprintedProbe(x, y, features="body", batch_size=8, seen_classes=range(2))
    by_fn = ImprintedProbe(x, y, features=lambda m, b: m.body(b), batch_size=5)
    phi = model.body(x).detach()
    # batches of 8 vs one batch: BLAS may round differently, hence a float32 tolerance
    np.testing.assert_allclose(by_layer.predict(model).numpy(), phi.numpy(), atol=1e-5, rtol=0)
    expected = _plain_imprint(phi.double().numpy(), y.numpy(), 3)
    for probe in (by_layer, by_fn):
        got = probe.imprint(model, dtype=torch.float64)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)  # float32 model
    # two shards' features, concatenated and trimmed, give the same imprinted model
    parts = [by_layer.shard(r, 2) for r in range(2)]
    gathered = torch.stack([p.predict(model, dtype=torch.float64) for p in parts])
    np.testing.assert_allclose(
        by_layer.finalize(by_layer.unshard(gathered)).numpy(), expected, atol=1e-5
    )
    meta = by_layer.meta["imprinting"]
    assert meta["features"] == "body"
    assert (meta["seen_classes"], meta["novel_classes"]) == ([0, 1], [2])


def _fit(model: pl.LightningModule, callbacks: list[Any], **trainer_kw: Any) -> pl.Trainer:
    x, y = make_blobs(128, 8, 3, seed=0)
    trainer = pl.Trainer(**fast_trainer_kwargs(**trainer_kw), callbacks=callbacks)
    trainer.fit(model, make_loader(x, y, batch_size=32))
    return trainer


def test_head_and_imprinted_capture_round_trip_store_online_and_cli(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = make_blobs(4096 + 45, 8, 3, seed=0)
    x, y = x[-45:], y[-45:]
    probe = ProbeSet.from_tensors(x, y, name="train", batch_size=16)
    imprinted = ImprintedProbe.from_probe(probe, "body", seen_classes=[0, 1])
    assert imprinted.name == "train-imprinted"
    logger = MemoryLogger()
    cb = ManifoldCallback(
        [probe, imprinted],
        schedule=Schedule(log_spaced=None, every_n_steps=2),
        dirpath=tmp_path,
        run_name="run",
        dtype=torch.float64,
    )
    model = TinyClassifier()
    _fit(model, [cb], max_steps=4, logger=logger)

    store = TrajectoryStore(tmp_path / "run" / "train-imprinted")
    head = TrajectoryStore(tmp_path / "run" / "train")
    np.testing.assert_array_equal(store.steps, [0, 2, 4])
    info = store.meta["imprinting"]
    assert info == {
        "equation": "3.2.1",
        "features": "body",
        "num_classes": 3,
        "seen_classes": [0, 1],
        "novel_classes": [2],
    }
    assert "imprinting" not in head.meta
    model.eval()
    with torch.no_grad():
        phi = model.body(x).double().numpy()
        logits = model(x).double()
    # the float32 model runs in batches of 16 in the callback, in one batch here
    np.testing.assert_allclose(store.log_probs()[-1], _plain_imprint(phi, y.numpy(), 3), atol=1e-5)
    np.testing.assert_allclose(head.log_probs()[-1], torch.log_softmax(logits, -1), atol=1e-5)
    # the same model seen two ways is two different points (the head is not imprinted)
    assert np.abs(store.log_probs()[-1] - head.log_probs()[-1]).max() > 1e-3
    # metrics and online scalars of the imprinted probe, like any probe
    expected_progress = progress(np.exp(store.log_probs()[-1]), y.numpy())[0][0]
    assert store.metrics("progress")[-1] == pytest.approx(expected_progress, abs=1e-6)
    keys = {k for _, rec in logger.records for k in rec}
    assert {"manifold/train-imprinted/progress", "manifold/train/progress"} <= keys
    assert "manifold/train-imprinted/progress_class_2" in keys  # online per-class progress
    # downstream: a reference embedding and the CLI read the imprinted store unchanged
    ref = ReferenceEmbedding.from_store(store)
    assert ref.num_models == 3
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["inspect", str(tmp_path / "run"), "--json"])
    assert code == 0
    printed = json.loads(out.getvalue())
    by_probe = {entry["probe"]: entry for entry in printed}
    assert set(by_probe) == {"train", "train-imprinted"}
    assert by_probe["train-imprinted"]["meta"]["imprinting"]["seen_classes"] == [0, 1]
    assert by_probe["train-imprinted"]["snapshots"] == 3


def _seeded_run(with_callback: bool, tmp_path: Path) -> tuple[TinyClassifier, ManifoldCallback]:
    pl.seed_everything(7, verbose=False)
    model = TinyClassifier(batchnorm=True, dropout=0.3, momentum=0.9)
    x, y = make_blobs(4096 + 30, 8, 3, seed=0)
    probe = ImprintedProbe(x[-30:], y[-30:], features="body", name="imp", batch_size=8)
    cb = ManifoldCallback(
        probe,
        schedule=Schedule(log_spaced=None, every_n_steps=1),
        dirpath=tmp_path / "m",
        log_scalars=False,
        online=False,  # the online map costs time, not side effects: capture is what matters
    )
    _fit(model, [cb] if with_callback else [], max_steps=6)
    return model, cb


def test_imprinted_capture_leaves_training_bit_identical(tmp_path: Path) -> None:
    plain, _ = _seeded_run(False, tmp_path)
    probed, cb = _seeded_run(True, tmp_path)
    assert len(TrajectoryStore(cb.store_paths["imp"])) == 7  # steps 0..6
    for (name, a), (_, b) in zip(plain.named_parameters(), probed.named_parameters()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(plain.named_buffers(), probed.named_buffers()):
        assert torch.equal(a, b), name
    # the forward hook on the named layer is gone: the module is as it was
    for module in probed.modules():
        assert not module._forward_hooks, module
    assert as_np(probed.body[0].weight).shape == (16, 8)


# ----------------------------------------------------------------------------- the example


def test_example_runs_and_prints_the_chapter_findings(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "imprinting.py"
    spec = importlib.util.spec_from_file_location("imprinting_example", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up while it loads
    spec.loader.exec_module(example)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert example.main(["--fast", "--out", str(tmp_path)]) == 0
    printed = out.getvalue()
    assert "Chapter 3 findings, as measured here:" in printed
    for png in ("map.png", "chapter3.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    runs = tmp_path / "runs"
    seen = {"all": list(range(10)), "first-half": [0, 1, 2, 3, 4], "contrastive": []}
    for method, classes in seen.items():
        store = TrajectoryStore(runs / f"{method}-seed0" / "union")
        assert store.meta["imprinting"]["seen_classes"] == classes
        assert store.num_classes == 10
        assert int(store.valid.sum()) == len(store) >= 3
    assert (runs / "all-seed0" / "head" / "manifest.json").exists()
    # the printed contrastive progress is the stores' final progress, averaged over seeds
    match = re.search(r"contrastive encoder \(no labels\) reaches progress ([0-9.]+)", printed)
    assert match is not None
    final = [TrajectoryStore(runs / f"contrastive-seed{s}" / "union") for s in range(2)]
    expected = np.mean([s.metrics("progress")[s.valid][-1] for s in final])
    assert float(match.group(1)) == pytest.approx(expected, abs=6e-4)
    assert re.search(r"training on classes 0-4 reaches progress [0-9.]+ on them", printed)
    assert "tubes intersect" in printed or "share no progress range" in printed
    assert "Riemann length" in printed

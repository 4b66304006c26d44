"""Tests of ManifoldCallback: capture schedule, scalars, no side effects, faults, resume, errors."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import (
    MemoryLogger,
    TinyClassifier,
    fast_trainer_kwargs,
    make_blobs,
    make_loader,
    probe_blobs,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor, nn

from lightning_manifold.callback import METRIC_NAMES, ManifoldCallback
from lightning_manifold.probe import ProbeSet
from lightning_manifold.schedule import Schedule, log_spaced_steps
from lightning_manifold.store import TrajectoryStore

# ---------------------------------------------------------------------------- helpers


def _probe(n: int = 48, *, name: str = "train", seed: int = 1, **kw: Any) -> ProbeSet:
    # Held-out samples of the training task (same cluster centres as the training data);
    # `seed` picks which samples.
    x, y = probe_blobs(n, 8, 3, offset=seed)
    return ProbeSet.from_tensors(x, y, name=name, **kw)


def _fit(
    model: pl.LightningModule,
    callbacks: list[Callback],
    *,
    n: int = 256,
    batch_size: int = 32,
    ckpt_path: str | None = None,
    **trainer_kw: Any,
) -> pl.Trainer:
    x, y = make_blobs(n, 8, 3, seed=0)
    trainer = pl.Trainer(**fast_trainer_kwargs(**trainer_kw), callbacks=callbacks)
    trainer.fit(model, make_loader(x, y, batch_size=batch_size), ckpt_path=ckpt_path)
    return trainer


def _manifold_warnings(record: list[warnings.WarningMessage], pattern: str) -> list[str]:
    texts = [str(w.message) for w in record if "ManifoldCallback" in str(w.message)]
    return [t for t in texts if re.search(pattern, t)]


def _np_log_bc(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """(N,) log Bhattacharyya coefficients of two (N, C) log-probability matrices, by loops."""
    out = np.empty(log_p.shape[0])
    for n in range(log_p.shape[0]):
        out[n] = math.log(sum(math.exp(0.5 * (a + b)) for a, b in zip(log_p[n], log_q[n])))
    return out


def _np_reference_metrics(log_p: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Plain numpy versions of the per-snapshot scalars (progress by a fine grid search)."""
    log_p = log_p.astype(np.float64)
    N, C = log_p.shape
    p = np.exp(log_p)
    picked = log_p[np.arange(N), labels]
    d_ign = -np.mean(_np_log_bc(log_p, np.full((N, C), -math.log(C))))
    # d_G to the point at alpha on the ignorance->truth great circle (eq. 2.2.3), per sample:
    # cos = (sin((1-a)θ) Σ_c sqrt(p)/sqrt(C) + sin(aθ) sqrt(p_y)) / sin θ, θ = arccos(1/sqrt(C))
    theta = math.acos(1 / math.sqrt(C))
    a_n = np.sqrt(p).sum(1) / math.sqrt(C)  # (N,)
    b_n = np.sqrt(p[np.arange(N), labels])  # (N,)
    alphas = np.linspace(0.0, 1.0, 20001)[:, None]  # (A, 1)
    cos = (np.sin((1 - alphas) * theta) * a_n + np.sin(alphas * theta) * b_n) / math.sin(theta)
    d_geo = np.arccos(np.clip(cos, -1.0, 1.0)).mean(1)  # (A,)
    alphas = alphas[:, 0]
    best = int(np.argmin(d_geo))
    return {
        "progress": float(alphas[best]),
        "distance_to_ignorance": float(d_ign),
        "distance_to_truth": float(-0.5 * picked.mean()),
        "distance_to_geodesic": float(d_geo[best]),
        "error": float(np.mean(log_p.argmax(1) != labels)),
        "cross_entropy": float(-picked.mean()),
    }


class _Recorder(Callback):
    """Records module modes, gradients and RNG-dependent state at every batch start."""

    def __init__(self) -> None:
        self.modes: list[list[bool]] = []
        self.grads: list[list[Tensor | None]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self.modes.append([m.training for m in pl_module.modules()])
        self.grads.append(
            [None if p.grad is None else p.grad.detach().clone() for p in pl_module.parameters()]
        )


def _draw_randomness(module: nn.Module, args: Any) -> None:
    """A user forward pre-hook that consumes every global RNG on each forward."""
    torch.rand(1)
    np.random.rand()  # noqa: NPY002 - the global numpy stream is the point of the test
    random.random()


# ---------------------------------------------------------------------------- scalars


def test_scalars_logged_with_keys_steps_and_values(tmp_path: Path) -> None:
    logger = MemoryLogger()
    probe = _probe()
    schedule = Schedule(log_spaced=None, every_n_steps=5)
    # online=False: exactly the capture scalars (the online ones are tested in test_callback_online)
    cb = ManifoldCallback(probe, schedule=schedule, dirpath=tmp_path, run_name="r", online=False)
    _fit(TinyClassifier(), [cb], max_steps=23, logger=logger)

    records = logger.metrics_with_prefix("manifold/")
    steps = [s for s, _ in records]
    assert steps == [0, 5, 10, 15, 20, 23]
    keys = [f"manifold/train/{k}" for k in METRIC_NAMES]
    assert set(records[0][1]) == set(keys) - {"manifold/train/speed"}
    for _, metrics in records[1:]:
        assert set(metrics) == set(keys)

    store = TrajectoryStore(tmp_path / "r" / "train")
    np.testing.assert_array_equal(store.steps, steps)
    labels = store.labels
    log_probs = store.log_probs()[:]
    previous: np.ndarray | None = None
    for t, (step, metrics) in enumerate(records):
        stored = store.records[t]["metrics"]
        assert {f"manifold/train/{k}": v for k, v in stored.items()} == metrics
        ref = _np_reference_metrics(log_probs[t], labels)
        for name in ("distance_to_ignorance", "distance_to_truth", "error", "cross_entropy"):
            assert metrics[f"manifold/train/{name}"] == pytest.approx(ref[name], abs=1e-5)
        assert metrics["manifold/train/progress"] == pytest.approx(ref["progress"], abs=2e-4)
        assert metrics["manifold/train/distance_to_geodesic"] == pytest.approx(
            ref["distance_to_geodesic"], abs=1e-4
        )
        if previous is not None:
            d_b = -np.mean(_np_log_bc(previous.astype(np.float64), log_probs[t].astype(np.float64)))
            expected = d_b / (step - steps[t - 1])
            assert metrics["manifold/train/speed"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
        previous = log_probs[t]
    # the model learns: progress grows, the error falls
    assert records[-1][1]["manifold/train/progress"] > records[0][1]["manifold/train/progress"]


def test_tensorboard_logger_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=6))
    _fit(TinyClassifier(), [cb], max_steps=20, logger=logger)
    logger.experiment.flush()

    # default location: <trainer.log_dir>/manifold/<logger version>/<probe>
    store_dir = Path(logger.log_dir) / "manifold" / "version_0" / "train"
    assert cb.store_paths == {"train": str(store_dir)}
    store = TrajectoryStore(store_dir)
    np.testing.assert_array_equal(store.steps, log_spaced_steps(6, 20))

    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {f"manifold/train/{k}" for k in METRIC_NAMES} <= tags
    events = acc.Scalars("manifold/train/progress")
    assert [e.step for e in events] == store.steps.tolist()
    np.testing.assert_allclose(
        [e.value for e in events], store.metrics("progress"), rtol=1e-6, atol=1e-7
    )
    assert [e.step for e in acc.Scalars("manifold/train/speed")] == store.steps[1:].tolist()


def test_multiple_probes_each_get_store_and_keys(tmp_path: Path) -> None:
    logger = MemoryLogger()
    train, val = _probe(40, name="train", seed=1), _probe(30, name="val", seed=2)
    cb = ManifoldCallback([train, val], schedule=Schedule(log_spaced=None, every_n_steps=4))
    _fit(TinyClassifier(), [cb], max_steps=8, logger=logger, default_root_dir=tmp_path)

    stores = {name: TrajectoryStore(path) for name, path in cb.store_paths.items()}
    assert set(stores) == {"train", "val"}
    assert Path(cb.store_paths["train"]).parent == Path(cb.store_paths["val"]).parent
    assert stores["train"].num_samples == 40
    assert stores["val"].num_samples == 30
    for name, store in stores.items():
        np.testing.assert_array_equal(store.steps, [0, 4, 8])
        np.testing.assert_array_equal(store.labels, (train if name == "train" else val).labels)
        logged = logger.metrics_with_prefix(f"manifold/{name}/")
        assert [s for s, _ in logged] == [0, 4, 8]
        assert logged[-1][1][f"manifold/{name}/progress"] == pytest.approx(
            store.metrics("progress")[-1]
        )


def test_default_paths_without_logger(tmp_path: Path) -> None:
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=None, every_n_steps=2))
    with pytest.warns(RuntimeWarning, match="no logger"):
        _fit(TinyClassifier(), [cb], max_steps=4, default_root_dir=tmp_path)
    path = Path(cb.store_paths["train"])
    assert path.parent.parent == tmp_path / "manifold"
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", path.parent.name)
    assert cb.run_name == path.parent.name
    np.testing.assert_array_equal(TrajectoryStore(path).steps, [0, 2, 4])


def test_csv_logger_version_names_the_run(tmp_path: Path) -> None:
    logger = CSVLogger(save_dir=tmp_path, name="csv")
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=None, every_n_steps=3))
    _fit(TinyClassifier(), [cb], max_steps=6, logger=logger)
    expected = Path(logger.log_dir) / "manifold" / "version_0" / "train"
    assert cb.store_paths["train"] == str(expected)
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "manifold/train/progress" in header
    col = header.index("manifold/train/progress")
    step_col = header.index("step")
    logged_steps = [int(r.split(",")[step_col]) for r in rows[1:] if r.split(",")[col]]
    assert logged_steps == [0, 3, 6]


# ---------------------------------------------------------------------------- schedule


def test_schedule_respected_log_spaced_epochs_start_end(tmp_path: Path) -> None:
    schedule = Schedule(log_spaced=8, every_n_epochs=2, at_fit_start=True, at_fit_end=True)
    cb = ManifoldCallback(_probe(), schedule=schedule, dirpath=tmp_path, run_name="r")
    # 256 samples / 32 = 8 batches per epoch: epoch e ends at step 8 (e + 1)
    trainer = _fit(TinyClassifier(), [cb], max_steps=37)
    assert trainer.global_step == 37
    assert cb.schedule.max_steps == 37  # bound from trainer.estimated_stepping_batches
    expected = sorted(set(log_spaced_steps(8, 37)) | {16, 32} | {0, 37})
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "r" / "train").steps, expected)


def test_schedule_without_fit_start_and_end(tmp_path: Path) -> None:
    schedule = Schedule(log_spaced=None, every_n_steps=4, at_fit_start=False, at_fit_end=False)
    cb = ManifoldCallback(_probe(), schedule=schedule, dirpath=tmp_path, run_name="r")
    _fit(TinyClassifier(), [cb], max_steps=10)
    # step 0 still comes from the step trigger (0 % 4 == 0); no capture at the final step 10
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "r" / "train").steps, [0, 4, 8])


def test_gradient_accumulation_captures_each_step_once(tmp_path: Path) -> None:
    logger = MemoryLogger()
    schedule = Schedule(log_spaced=None, every_n_steps=1)
    cb = ManifoldCallback(_probe(), schedule=schedule, dirpath=tmp_path, run_name="r")
    calls: list[int] = []
    original = cb._capture

    def counting_capture(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list:
        calls.append(trainer.global_step)
        return original(trainer, pl_module)

    cb._capture = counting_capture  # type: ignore[method-assign]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = _fit(
            TinyClassifier(), [cb], max_steps=6, accumulate_grad_batches=3, logger=logger
        )
    assert trainer.global_step == 6
    assert calls == list(range(7))
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "r" / "train").steps, range(7))
    assert [s for s, _ in logger.metrics_with_prefix("manifold/")] == list(range(7))
    assert _manifold_warnings(record, ".") == []


# ---------------------------------------------------------------------------- no side effects


def _seeded_run(with_callback: bool, tmp_path: Path) -> tuple[TinyClassifier, pl.Trainer, Any]:
    pl.seed_everything(1234, verbose=False)
    model = TinyClassifier(batchnorm=True, dropout=0.3, momentum=0.9)
    model.register_forward_pre_hook(_draw_randomness)
    model.body[2].eval()  # a submodule deliberately kept in eval mode (ReLU: no numerical effect)
    recorder = _Recorder()
    callbacks: list[Callback] = []
    if with_callback:
        schedule = Schedule(log_spaced=None, every_n_steps=1, every_n_epochs=1)
        probes = [_probe(40, name="train"), _probe(24, name="val", seed=3)]
        callbacks.append(ManifoldCallback(probes, schedule=schedule, dirpath=tmp_path / "m"))
    callbacks.append(recorder)
    trainer = _fit(model, callbacks, n=128, max_epochs=2, logger=MemoryLogger())
    return model, trainer, recorder


def test_capture_does_not_change_training(tmp_path: Path) -> None:
    plain, plain_trainer, plain_rec = _seeded_run(False, tmp_path)
    probed, probed_trainer, probed_rec = _seeded_run(True, tmp_path)

    assert probed_trainer.global_step == plain_trainer.global_step == 8
    captured = TrajectoryStore(tmp_path / "m" / "memory" / "train")
    assert len(captured) == 9  # every step 0..8 was captured
    for (name, a), (_, b) in zip(plain.named_parameters(), probed.named_parameters()):
        assert torch.equal(a, b), name
    buffers = dict(probed.named_buffers())
    assert {"body.1.running_mean", "body.1.running_var", "body.1.num_batches_tracked"} <= set(
        buffers
    )
    for name, a in plain.named_buffers():
        assert torch.equal(a, buffers[name]), name
    # optimizer state (momentum buffers) identical
    state_a = plain_trainer.optimizers[0].state_dict()["state"]
    state_b = probed_trainer.optimizers[0].state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert torch.equal(state_a[k]["momentum_buffer"], state_b[k]["momentum_buffer"])
    # modes restored exactly (mixed modes included), gradients untouched
    assert probed_rec.modes == plain_rec.modes
    assert probed.body[2].training is False
    assert probed.body[1].training is True
    assert len(probed_rec.grads) == len(plain_rec.grads)
    for grads_a, grads_b in zip(plain_rec.grads, probed_rec.grads):
        for ga, gb in zip(grads_a, grads_b):
            assert (ga is None and gb is None) or torch.equal(ga, gb)


def test_mixed_precision_capture(tmp_path: Path) -> None:
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=None, every_n_steps=2))
    _fit(TinyClassifier(), [cb], max_steps=4, precision="bf16-mixed", default_root_dir=tmp_path)
    store = TrajectoryStore(cb.store_paths["train"])
    assert store.dtype == np.float32
    assert store.valid.all()
    lp = store.log_probs()[:]
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------- faults


class _Diverge(Callback):
    """Sets the output layer to NaN once ``global_step`` reaches ``at_step``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.head.weight.fill_(float("nan"))


def test_diverged_model_is_stored_invalid_and_training_continues(tmp_path: Path) -> None:
    logger = MemoryLogger()
    schedule = Schedule(log_spaced=None, every_n_steps=1)
    cb = ManifoldCallback(_probe(), schedule=schedule, dirpath=tmp_path, run_name="r")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = _fit(TinyClassifier(), [cb, _Diverge(4)], max_steps=8, logger=logger)
    assert trainer.global_step == 8
    assert len(_manifold_warnings(record, "NaN or inf")) == 1
    assert _manifold_warnings(record, "failed") == []

    store = TrajectoryStore(tmp_path / "r" / "train")
    np.testing.assert_array_equal(store.steps, range(9))
    np.testing.assert_array_equal(store.valid, [s < 4 for s in range(9)])
    assert store.log_probs(valid_only=True).shape == (4, 48, 3)
    assert np.isnan(store.log_probs(valid_only=False)[8]).all()
    assert np.isfinite(store.log_probs(valid_only=True)[:]).all()
    logged = dict(logger.metrics_with_prefix("manifold/"))
    for step in range(4, 9):
        assert logged[step] == {"manifold/train/valid": 0.0}
        assert store.records[step]["metrics"] == {}
    assert "manifold/train/progress" in logged[3]


def _fail_from_step_3(module: pl.LightningModule, x: Tensor) -> Tensor:
    if module.trainer.global_step >= 3:
        raise RuntimeError("probe forward exploded")
    return module(x)


def test_unexpected_error_in_capture_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    probe = _probe(forward=_fail_from_step_3)
    schedule = Schedule(log_spaced=None, every_n_steps=1)
    cb = ManifoldCallback(probe, schedule=schedule, dirpath=tmp_path, run_name="r")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = _fit(TinyClassifier(), [cb], max_steps=7)
    assert trainer.global_step == 7
    failures = _manifold_warnings(record, "probe forward exploded")
    assert len(failures) == 1
    assert "step 3" in failures[0]
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "r" / "train").steps, [0, 1, 2])


class _DeleteStoreAt(Callback):
    """Removes the store directory of ``cb`` once ``global_step`` reaches ``at_step``."""

    def __init__(self, cb: ManifoldCallback, at_step: int) -> None:
        self.cb, self.at_step = cb, at_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            self.cb._flush_writes()
            shutil.rmtree(self.cb.store_paths["train"])


def test_store_write_failure_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    schedule = Schedule(log_spaced=None, every_n_steps=1)
    cb = ManifoldCallback(_probe(), schedule=schedule, dirpath=tmp_path, run_name="r")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = _fit(TinyClassifier(), [cb, _DeleteStoreAt(cb, 3)], max_steps=6)
    assert trainer.global_step == 6
    assert len(_manifold_warnings(record, "writing a snapshot to the store failed")) == 1
    assert not (tmp_path / "r" / "train").exists()


def test_warning_for_initial_model_far_from_ignorance(tmp_path: Path) -> None:
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=None, every_n_steps=5))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(TinyClassifier(init_scale=40.0), [cb], max_steps=5, default_root_dir=tmp_path)
    far = _manifold_warnings(record, "far from ignorance")
    assert len(far) == 1
    assert "'train'" in far[0]
    assert "BatchNorm" in far[0]
    assert "forward passes" in far[0]
    d0 = TrajectoryStore(cb.store_paths["train"]).metrics("distance_to_ignorance")[0]
    assert f"{d0:.3g}" in far[0]
    assert d0 > 0.5 * 0.5 * math.log(3)


def test_no_warning_for_initial_model_near_ignorance(tmp_path: Path) -> None:
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=None, every_n_steps=5))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(TinyClassifier(init_scale=0.01), [cb], max_steps=5, default_root_dir=tmp_path)
    assert _manifold_warnings(record, "far from ignorance") == []
    d0 = TrajectoryStore(cb.store_paths["train"]).metrics("distance_to_ignorance")[0]
    assert d0 < 0.05 * math.log(3)


# ---------------------------------------------------------------------------- resume


class _Crash(Exception):
    pass


class _CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise _Crash(f"simulated crash at step {self.step}")


@pytest.mark.parametrize("interruption", ["crash", "max_steps"])
def test_resume_from_checkpoint_continues_the_store(tmp_path: Path, interruption: str) -> None:
    full, ckpt_every = 30, 13

    def schedule() -> Schedule:
        # with a smaller max_steps the horizon must be given, or the log-spacing would differ
        return Schedule(log_spaced=12, max_steps=full if interruption == "max_steps" else None)

    pl.seed_everything(0, verbose=False)
    ref = ManifoldCallback(_probe(), schedule=schedule(), dirpath=tmp_path / "ref", run_name="r")
    _fit(TinyClassifier(), [ref], max_steps=full)
    expected = TrajectoryStore(tmp_path / "ref" / "r" / "train").steps

    pl.seed_everything(0, verbose=False)
    first = ManifoldCallback(_probe(), schedule=schedule(), dirpath=tmp_path / "m", run_name="r")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=ckpt_every, save_top_k=-1)
    common = {"enable_checkpointing": True, "logger": False}
    if interruption == "crash":
        with pytest.raises(_Crash):
            _fit(TinyClassifier(), [first, ckpt, _CrashAt(20)], max_steps=full, **common)
    else:
        _fit(TinyClassifier(), [first, ckpt], max_steps=16, **common)
    store = TrajectoryStore(tmp_path / "m" / "r" / "train")
    assert store.steps.max() > ckpt_every  # snapshots after the checkpoint exist, to be dropped
    (ckpt_file,) = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    first_wall_times = dict(zip(store.steps.tolist(), store.wall_times.tolist()))

    resumed = ManifoldCallback(_probe(), schedule=schedule(), run_name="r")
    _fit(
        TinyClassifier(),
        [resumed],
        max_steps=full,
        ckpt_path=str(ckpt_file),
        default_root_dir=tmp_path / "other",
        **common,
    )
    assert resumed.store_paths == {"train": str(tmp_path / "m" / "r" / "train")}
    store = TrajectoryStore(tmp_path / "m" / "r" / "train")
    np.testing.assert_array_equal(store.steps, expected)
    # records captured before the checkpoint was saved were kept, not rewritten
    for step, wall in zip(store.steps.tolist(), store.wall_times.tolist()):
        if step < ckpt_every:
            assert wall == first_wall_times[step]
    assert np.isfinite(store.metrics("speed")[1:]).all()  # speed continues across the resume


def test_state_dict_and_state_key(tmp_path: Path) -> None:
    train, val = _probe(name="train"), _probe(name="val", seed=2)
    a = ManifoldCallback(train, schedule=Schedule(log_spaced=None, every_n_steps=2))
    b = ManifoldCallback([val], schedule=Schedule(log_spaced=None, every_n_steps=3))
    assert a.state_key != b.state_key
    assert "train" in a.state_key
    assert "val" in b.state_key
    _fit(TinyClassifier(), [a, b], max_steps=6, default_root_dir=tmp_path, logger=MemoryLogger())
    np.testing.assert_array_equal(TrajectoryStore(a.store_paths["train"]).steps, [0, 2, 4, 6])
    np.testing.assert_array_equal(TrajectoryStore(b.store_paths["val"]).steps, [0, 3, 6])

    state = a.state_dict()
    json.dumps(state)  # plain, serialisable
    assert state["last_step"] == 6
    assert state["run_name"] == "memory"
    assert state["store_paths"] == a.store_paths
    c = ManifoldCallback(train)
    c.load_state_dict({})  # missing keys are tolerated
    c.load_state_dict({"last_step": 4})


# ---------------------------------------------------------------------------- errors


def test_constructor_errors() -> None:
    probe = _probe()
    with pytest.raises(ValueError, match="at least one ProbeSet"):
        ManifoldCallback([])
    with pytest.raises(ValueError, match=r"distinct names.*'train'"):
        ManifoldCallback([probe, _probe(name="train", seed=5)])
    with pytest.raises(TypeError, match="`probes` must be a ProbeSet"):
        ManifoldCallback("train")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`probes\[1\]` must be a ProbeSet, got int"):
        ManifoldCallback([probe, 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="`schedule` must be a Schedule"):
        ManifoldCallback(probe, schedule={"every_n_steps": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`dtype`.*int64"):
        ManifoldCallback(probe, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"`run_name`.*'a/b'"):
        ManifoldCallback(probe, run_name="a/b")
    with pytest.raises(ValueError, match="`ignorance_warning`"):
        ManifoldCallback(probe, ignorance_warning=-1.0)
    with pytest.raises(ValueError, match="empty"):
        ProbeSet.from_tensors(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no trigger"):
        Schedule(log_spaced=None, at_fit_start=False, at_fit_end=False)


def test_class_count_mismatch_raises_at_start(tmp_path: Path) -> None:
    x, y = make_blobs(30, 8, 3, seed=3)
    probe = ProbeSet.from_tensors(x, y, name="val", num_classes=5)
    cb = ManifoldCallback(probe, dirpath=tmp_path)
    with pytest.raises(ValueError, match=r"'val'.*C = 3.*num_classes` = 5"):
        _fit(TinyClassifier(C=3), [cb], max_steps=3)


def test_class_count_mismatch_raises_without_fit_start_capture(tmp_path: Path) -> None:
    x, y = make_blobs(30, 8, 4, seed=3)  # labels 0..3 but the model has 3 outputs
    probe = ProbeSet.from_tensors(x, y, name="train")
    schedule = Schedule(log_spaced=None, every_n_steps=10, at_fit_start=False)
    cb = ManifoldCallback(probe, schedule=schedule, dirpath=tmp_path)
    with pytest.raises(ValueError, match=r"'train'.*C = 3.*num_classes` = 4"):
        _fit(TinyClassifier(C=3), [cb], max_steps=3)


def test_probe_that_cannot_run_raises_at_start(tmp_path: Path) -> None:
    probe = ProbeSet.from_tensors(torch.randn(20, 8), torch.arange(20) % 3, name="train")
    cb = ManifoldCallback(probe, dirpath=tmp_path)
    with pytest.raises(ValueError, match=r"'train'.*logits"):
        _fit(_ThreeDimOutput(), [cb], max_steps=3)


class _ThreeDimOutput(TinyClassifier):
    """Returns (B, 1, C) outputs to the probe: not (B, C) logits."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out if self.training else out[:, None, :]


def test_unwritable_dirpath_raises_at_setup(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory should be")
    cb = ManifoldCallback(_probe(), dirpath=blocker / "manifold")
    with pytest.raises(ValueError, match="`dirpath` must be a writable directory"):
        _fit(TinyClassifier(), [cb], max_steps=2)


def test_fresh_run_into_existing_store_raises(tmp_path: Path) -> None:
    kwargs = {"schedule": Schedule(log_spaced=None, every_n_steps=2), "dirpath": tmp_path}
    _fit(TinyClassifier(), [ManifoldCallback(_probe(), run_name="same", **kwargs)], max_steps=2)
    with pytest.raises(ValueError, match=r"`run_name` must name a new run.*'same'"):
        _fit(TinyClassifier(), [ManifoldCallback(_probe(), run_name="same", **kwargs)], max_steps=2)


def test_log_spaced_schedule_needs_bounded_training(tmp_path: Path) -> None:
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=10), dirpath=tmp_path)
    with pytest.raises(ValueError, match="max_steps"):
        _fit(TinyClassifier(), [cb], max_epochs=-1)

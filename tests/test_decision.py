"""Acting on the manifold: monitorable metrics and ManifoldEarlyStopping, with real Trainers.

A good run is trained once per module and becomes the reference; slow (tiny learning rate),
diverging (huge learning rate) and good runs are then judged against it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import MemoryLogger, TinyClassifier, fast_trainer_kwargs, make_loader, teacher_data
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from test_examples import _load, _readme_block, _run_example

from lightning_manifold import (
    ManifoldCallback,
    ManifoldEarlyStopping,
    ProbeSet,
    ReferenceEmbedding,
    Schedule,
    TrajectoryStore,
)
from lightning_manifold.decision import DECISION_FILE, REASONS

D, C, N = 20, 4, 256
BATCH = 32
STEPS_PER_EPOCH = N // BATCH
GOOD_LR = 0.5
LR_OVERSHOOT = 5.0


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    return teacher_data(n=N, d=D, C=C, seed=0)


def _probe() -> ProbeSet:
    x, y = _data()
    return ProbeSet.from_tensors(x[:128], y[:128], name="train", num_classes=C)


def _fit(
    tmp: Path,
    *,
    lr: float,
    seed: int = 0,
    callbacks: list[Any] = (),  # type: ignore[assignment]
    schedule: Schedule | None = None,
    reference: Any = None,
    max_epochs: int = 8,
    logger: Any = False,
    trainer_kwargs: dict[str, Any] | None = None,
    **manifold_kwargs: Any,
) -> tuple[pl.Trainer, ManifoldCallback]:
    """Train a tiny MLP on teacher data with a ManifoldCallback (and ``callbacks``)."""
    torch.manual_seed(seed)
    model = TinyClassifier(D, C, hidden=32, lr=lr)
    manifold = ManifoldCallback(
        _probe(),
        schedule=schedule or Schedule(log_spaced=None, every_n_steps=4),
        dirpath=tmp,
        run_name=f"lr{lr:g}-seed{seed}",
        reference=reference,
        plots=False,
        durable=False,
        **manifold_kwargs,
    )
    trainer = pl.Trainer(
        **fast_trainer_kwargs(
            max_epochs=max_epochs,
            callbacks=[manifold, *callbacks],
            logger=logger,
            **(trainer_kwargs or {}),
        )
    )
    x, y = _data()
    trainer.fit(model, make_loader(x, y, batch_size=BATCH))
    return trainer, manifold


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> ReferenceEmbedding:
    """Two good runs (seeds 0, 1) embedded as the reference."""
    root = tmp_path_factory.mktemp("reference")
    stores = []
    for seed in (0, 1):
        _, manifold = _fit(root, lr=GOOD_LR, seed=seed)
        stores.append(TrajectoryStore(manifold.store_paths["train"]))
    return ReferenceEmbedding.fit(stores, n_components=3)


# ------------------------------------------------------------------ monitorable metrics


def _epoch_end_values(store: TrajectoryStore, name: str) -> list[tuple[int, torch.Tensor]]:
    """(step, value as the float32 tensor callback_metrics holds) of the epoch-end captures."""
    values = store.metrics(name)
    return [
        (int(s), torch.tensor(float(v)))
        for s, v in zip(store.steps, values)
        if s > 0 and s % STEPS_PER_EPOCH == 0
    ]


def test_callback_metrics_hold_every_capture(tmp_path: Path) -> None:
    seen: list[tuple[int, float, float]] = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            m = trainer.callback_metrics
            if "manifold/train/progress" in m:
                seen.append(
                    (
                        trainer.global_step,
                        float(m["manifold/train/progress"]),
                        float(m["manifold/train/valid"]),
                    )
                )

    logger = MemoryLogger()
    trainer, manifold = _fit(tmp_path, lr=GOOD_LR, callbacks=[Spy()], max_epochs=2, logger=logger)
    store = TrajectoryStore(manifold.store_paths["train"])
    progress = dict(zip(store.steps.tolist(), store.metrics("progress").tolist()))
    assert seen, "the manifold's scalars never reached callback_metrics"
    for step, value, valid in seen:
        last = max(s for s in progress if s < step)  # captured at batch start, before the update
        assert value == pytest.approx(progress[last], abs=1e-6)
        assert valid == 1.0
    metrics = trainer.callback_metrics["manifold/train/progress"]
    assert isinstance(metrics, torch.Tensor)
    assert metrics.is_floating_point()
    # not logged twice: one record per capture with the manifold's keys
    records = logger.metrics_with_prefix("manifold/train/progress")
    assert [s for s, _ in records] == store.steps.tolist()
    assert "manifold/train/valid" not in {k for _, r in records for k in r}


def test_early_stopping_monitors_progress(tmp_path: Path) -> None:
    patience, min_delta = 2, 0.02
    stopper = EarlyStopping(
        monitor="manifold/train/progress", mode="max", patience=patience, min_delta=min_delta
    )
    schedule = Schedule(log_spaced=None, every_n_epochs=1)
    trainer, manifold = _fit(
        tmp_path, lr=0.05, callbacks=[stopper], schedule=schedule, max_epochs=40
    )
    store = TrajectoryStore(manifold.store_paths["train"])
    # EarlyStopping's rule, replayed on the recorded values with the same float32 tensors
    best, wait, expected = torch.tensor(-math.inf), 0, None
    for step, value in _epoch_end_values(store, "progress"):
        if torch.gt(value - min_delta, best):
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                expected = step
                break
    assert expected is not None, "progress never stalled: the test would prove nothing"
    assert expected < 40 * STEPS_PER_EPOCH
    assert trainer.global_step == expected
    assert stopper.stopped_epoch == expected // STEPS_PER_EPOCH - 1


def test_model_checkpoint_monitors_distance_to_truth(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="manifold/train/distance_to_truth",
        mode="min",
        save_top_k=1,
        filename="{step}",
    )
    schedule = Schedule(log_spaced=None, every_n_epochs=1)
    # a learning rate high enough to overshoot: distance to truth goes up and down
    _, manifold = _fit(
        tmp_path,
        lr=LR_OVERSHOOT,
        callbacks=[checkpoint],
        schedule=schedule,
        max_epochs=8,
        trainer_kwargs={"enable_checkpointing": True},
    )
    store = TrajectoryStore(manifold.store_paths["train"])
    values = _epoch_end_values(store, "distance_to_truth")
    best_step, best = values[0]
    for step, value in values[1:]:
        if torch.lt(value, best):  # ModelCheckpoint keeps the first of equal values
            best_step, best = step, value
    assert Path(checkpoint.best_model_path).name == f"step={best_step}.ckpt"
    assert float(checkpoint.best_model_score) == pytest.approx(float(best))


# ------------------------------------------------------------------ ManifoldEarlyStopping


def _stopper_fit(
    tmp: Path, reference: ReferenceEmbedding, *, lr: float, seed: int = 2, **stop_kwargs: Any
) -> tuple[pl.Trainer, ManifoldCallback, ManifoldEarlyStopping, MemoryLogger]:
    stop_kwargs.setdefault("max_relative_speed", 3.0)
    stopper = ManifoldEarlyStopping(**stop_kwargs)
    logger = MemoryLogger()
    trainer, manifold = _fit(
        tmp, lr=lr, seed=seed, callbacks=[stopper], reference=reference, logger=logger
    )
    return trainer, manifold, stopper, logger


def _logged(logger: MemoryLogger, name: str) -> dict[int, float]:
    """{step: value} of ``manifold/train/<name>`` as logged."""
    key = f"manifold/train/{name}"
    return {int(s): r[key] for s, r in logger.metrics_with_prefix(key) if key in r}


def _check_reported(
    manifold: ManifoldCallback, stopper: ManifoldEarlyStopping, logger: MemoryLogger
) -> dict[str, Any]:
    """The decision is logged once at its step and saved next to the store; returns the file."""
    decision = stopper.decision
    assert decision is not None
    logged = logger.metrics_with_prefix("manifold/train/stop_reason")
    assert logged == [(decision.step, {"manifold/train/stop_reason": REASONS[decision.reason]})]
    saved = json.loads((Path(manifold.store_paths["train"]) / DECISION_FILE).read_text())
    assert saved["reason"] == decision.reason
    assert saved["step"] == decision.step
    assert saved["mode"] == decision.mode
    return saved


def test_stops_a_slow_run(tmp_path: Path, reference: ReferenceEmbedding) -> None:
    trainer, manifold, stopper, logger = _stopper_fit(tmp_path, reference, lr=GOOD_LR / 10)
    decision = stopper.decision
    assert decision is not None
    assert decision.reason == "slow"
    assert trainer.global_step < 8 * STEPS_PER_EPOCH  # stopped early
    assert trainer.global_step == decision.step + 1  # after the batch of the capture
    saved = _check_reported(manifold, stopper, logger)
    assert saved["figures"]["relative_speed"] > 3.0
    assert saved["figures"]["progress"] >= stopper.grace_progress
    # the figures are those the manifold logged at that step, for `patience` captures in a row
    speeds = _logged(logger, "relative_speed")
    assert saved["figures"]["relative_speed"] == pytest.approx(speeds[decision.step], rel=1e-6)
    recent = [s for s in speeds if s <= decision.step][-stopper.patience :]
    assert all(speeds[s] > 3.0 for s in recent)
    assert trainer.callback_metrics["manifold/train/stopped"] == 1.0


def test_stops_a_diverging_run(tmp_path: Path, reference: ReferenceEmbedding) -> None:
    trainer, manifold, stopper, logger = _stopper_fit(tmp_path, reference, lr=1000.0)
    decision = stopper.decision
    assert decision is not None
    assert decision.reason == "diverged"
    store = TrajectoryStore(manifold.store_paths["train"])
    valid = store.valid[store.steps <= decision.step]
    assert not valid[-stopper.patience :].any()
    assert valid[: -stopper.patience].all()  # stopped at the k-th invalid capture
    assert trainer.global_step == decision.step + 1
    _check_reported(manifold, stopper, logger)


def test_leaves_a_good_run_alone(tmp_path: Path, reference: ReferenceEmbedding) -> None:
    trainer, manifold, stopper, logger = _stopper_fit(
        tmp_path, reference, lr=GOOD_LR, plateau_patience=4, min_delta=0.0
    )
    assert stopper.decision is None
    assert trainer.global_step == 8 * STEPS_PER_EPOCH
    assert not (Path(manifold.store_paths["train"]) / DECISION_FILE).exists()
    assert logger.metrics_with_prefix("manifold/train/stop") == []
    # the rule had something to judge: relative speeds were measured after the grace period
    speeds, progress = _logged(logger, "relative_speed"), _logged(logger, "progress")
    judged = [v for s, v in speeds.items() if progress[s] >= stopper.grace_progress]
    assert len(judged) > 3
    assert max(judged) <= 3.0


def test_flag_mode_and_off_manifold(tmp_path: Path, reference: ReferenceEmbedding) -> None:
    stopper = ManifoldEarlyStopping(mode="flag", patience=3, stop_on_invalid=False)
    logger = MemoryLogger()
    trainer, _ = _fit(
        tmp_path,
        lr=GOOD_LR,
        callbacks=[stopper],
        reference=reference,
        distance_threshold=1e-9,
        logger=logger,
    )
    decision = stopper.decision
    assert decision is not None
    assert decision.reason == "off_manifold"
    assert trainer.global_step == 8 * STEPS_PER_EPOCH  # flagged, not stopped
    off = _logged(logger, "off_manifold")
    assert list(off.values())[:3] == [1.0, 1.0, 1.0]
    flagged_at = list(off)[2]  # the third capture in a row
    assert decision.step == flagged_at
    assert trainer.callback_metrics["manifold/train/stopped"] == 0.0
    assert trainer.callback_metrics["manifold/train/flagged"] == 1.0


def test_plateau(tmp_path: Path) -> None:
    stopper = ManifoldEarlyStopping(plateau_patience=3, min_delta=0.05)
    trainer, manifold = _fit(tmp_path, lr=0.01, callbacks=[stopper])
    decision = stopper.decision
    assert decision is not None
    assert decision.reason == "plateau"
    store = TrajectoryStore(manifold.store_paths["train"])
    progress = store.metrics("progress")
    best, wait, expected = -math.inf, 0, None
    for step, value in zip(store.steps.tolist(), progress.tolist()):
        if value > best + 0.05:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= 3:
                expected = step
                break
    assert decision.step == expected
    assert trainer.global_step == expected + 1


def test_needs_a_manifold_callback_and_valid_arguments() -> None:
    trainer = pl.Trainer(**fast_trainer_kwargs(max_steps=1, callbacks=[ManifoldEarlyStopping()]))
    x, y = _data()
    with pytest.raises(ValueError, match="ManifoldCallback"):
        trainer.fit(TinyClassifier(D, C), make_loader(x, y))
    with pytest.raises(ValueError, match="`mode`"):
        ManifoldEarlyStopping(mode="halt")
    with pytest.raises(ValueError, match="`max_relative_speed`"):
        ManifoldEarlyStopping(max_relative_speed=0.5)
    with pytest.raises(ValueError, match="`patience`"):
        ManifoldEarlyStopping(patience=0)


# ------------------------------------------------------------------ README and the HPO example


def test_readme_stop_snippet_stops_a_slow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = _readme_block("Stop bad runs early")
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    x, y = teacher_data(n=500, d=D, C=C, seed=0)
    dataset = torch.utils.data.TensorDataset(x, y)
    monkeypatch.chdir(tmp_path)
    # the baseline: a good run saves its reference, copied to where the snippet expects it
    torch.manual_seed(0)
    baseline = ManifoldCallback(
        ProbeSet.from_dataset(dataset, 500, name="train"),
        dirpath=tmp_path / "baseline",
        save_reference=True,
        plots=False,
        durable=False,
    )
    pl.Trainer(**fast_trainer_kwargs(max_epochs=4, callbacks=[baseline])).fit(
        TinyClassifier(D, C, hidden=32, lr=GOOD_LR), make_loader(x, y, batch_size=BATCH)
    )
    Path(baseline.reference_paths["train"]).rename(tmp_path / "baseline.npz")
    torch.manual_seed(1)
    namespace: dict[str, Any] = {
        "model": TinyClassifier(D, C, hidden=32, lr=GOOD_LR / 20),  # far too slow
        "train_dataset": dataset,
        "train_loader": make_loader(x, y, batch_size=BATCH),
    }
    # no figures: drawing them (tested with the sinks) would take most of this test's time
    monkeypatch.setattr(ManifoldCallback, "_start_sinks", lambda self, trainer: None)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "README.md", "exec"), namespace)
    decision = namespace["stopper"].decision
    assert decision is not None
    assert decision.reason == "slow"
    assert namespace["trainer"].global_step < 10 * (500 // BATCH + 1)
    assert namespace["forecast"].history, "the forecast made no estimate"


def test_hpo_example_prunes_the_bad_trials(tmp_path: Path) -> None:
    code, out = _run_example("hpo_optuna", ["--fast", "--out", str(tmp_path)])
    assert code == 0
    hpo = _load("hpo_optuna")
    rows = {
        line.split(")")[0] + ")": line for line in out.splitlines() if line.startswith("Trial(")
    }
    assert len(rows) == len(hpo.FAST_CONFIGS)
    for config in hpo.FAST_CONFIGS:
        bad = config.lr < 0.01 or config.lr > 100 or config.labels != "clean"
        assert ("pruned" in rows[str(config)]) == bad, rows[str(config)]
    saved = re.search(r"(\d+) run vs (\d+) to finish every trial", out)
    assert saved is not None
    assert int(saved.group(1)) < int(saved.group(2))
    assert "kept by the pruned study" in out

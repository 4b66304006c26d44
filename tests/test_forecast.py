"""Step forecasts: the functional core against a plain implementation, the accuracy on
held-out runs of the synthetic task, and ManifoldForecast with a real Trainer."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import MemoryLogger, TinyClassifier, fast_trainer_kwargs, make_loader, teacher_data

from lightning_manifold import (
    ManifoldCallback,
    ManifoldForecast,
    ProbeSet,
    ReferenceEmbedding,
    Schedule,
    TrajectoryStore,
)
from lightning_manifold import functional as F
from lightning_manifold.forecast import forecast_from_reference, reference_targets

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ functional core


def _plain_forecast(
    step: float, now: list[float], target: list[float]
) -> tuple[list[float], float, float, float]:
    """Per-run estimates t + (T - S) t / S, their median and range, written out plainly."""
    per_run = []
    for s, t in zip(now, target):
        if math.isnan(s) or math.isnan(t) or s <= 0:
            per_run.append(math.nan)
        else:
            per_run.append(step + (t - s) * (step / s))
    finite = sorted(v for v in per_run if not math.isnan(v))
    # torch's median of an even count is the lower middle value
    eta = finite[(len(finite) - 1) // 2] if finite else math.nan
    return per_run, eta, min(finite, default=math.nan), max(finite, default=math.nan)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forecast_steps_matches_plain(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        r = 1 + trial % 6
        now = torch.rand(r, generator=g, dtype=torch.float64) * 100
        target = now + torch.rand(r, generator=g, dtype=torch.float64) * 400
        if trial % 3 == 0:
            now[0] = math.nan  # a run that never reached the current progress
        if trial % 4 == 1:
            now[-1] = 0.0  # reached at step 0: no speed can be measured
        step = float(torch.randint(1, 300, (), generator=g))
        result = F.forecast_steps(step, now.to(dtype), target.to(dtype).numpy())
        per_run, eta, low, high = _plain_forecast(
            step, now.to(dtype).double().tolist(), target.to(dtype).double().tolist()
        )
        tol = 1e-12  # both sides compute in float64 from the same values
        np.testing.assert_allclose(result.per_run.numpy(), per_run, rtol=tol, equal_nan=True)
        for got, want in ((result.eta, eta), (result.low, low), (result.high, high)):
            if math.isnan(want):
                assert math.isnan(float(got))
            else:
                assert float(got) == pytest.approx(want, rel=tol)
        assert result.per_run.dtype == torch.float64


def test_forecast_steps_with_a_relative_speed() -> None:
    now, target = np.array([10.0, 20.0, 40.0]), np.array([100.0, 120.0, 200.0])
    result = F.forecast_steps(30, now, target, relative_speed=1.5, nearest=1)
    assert float(result.eta) == pytest.approx(30 + (120 - 20) * 1.5)
    explicit = F.eta_per_run(30, now, target, relative_speed=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(explicit.numpy(), [30 + 90.0, 30 + 200.0, 30 + 480.0])
    single = F.forecast_steps(10, np.array([5.0]), np.array([50.0]))
    assert float(single.low) == float(single.high) == float(single.eta) == 100.0


def test_forecast_steps_bad_input() -> None:
    with pytest.raises(ValueError, match="`step`"):
        F.forecast_steps(-1, np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="same shape"):
        F.forecast_steps(1, np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        F.forecast_steps(1, np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="together"):
        F.forecast_steps(1, np.ones(2), np.ones(2), relative_speed=1.0)
    with pytest.raises(ValueError, match="`nearest`"):
        F.forecast_steps(1, np.ones(2), np.ones(2), relative_speed=1.0, nearest=2)
    with pytest.raises(TypeError, match="`steps_now`"):
        F.forecast_steps(1, [1.0], np.ones(1))


# ------------------------------------------------------------------ accuracy


def _load_benchmark() -> ModuleType:
    if "forecast_benchmark" in sys.modules:
        return sys.modules["forecast_benchmark"]
    spec = importlib.util.spec_from_file_location(
        "forecast_benchmark", REPO / "benchmarks" / "forecast.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["forecast_benchmark"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def held_out_checks() -> list[Any]:
    """Forecasts of four held-out runs (two at other learning rates) at progress 0.3 and 0.6,
    against four reference seeds of the small synthetic task."""
    bench = _load_benchmark()
    return bench.evaluate(
        reference_seeds=(0, 1, 2, 3),
        held_out=((10, 1.0), (11, 0.7), (12, 1.0), (13, 0.8)),
        epochs=12,
    )


def test_forecast_accuracy_on_held_out_runs(held_out_checks: list[Any]) -> None:
    checks = held_out_checks
    assert {c.at_progress for c in checks} == {0.3, 0.6}
    assert len(checks) == 8
    for c in checks:
        assert c.low <= c.eta <= c.high
        assert c.step < c.truth  # forecast before the target was reached
    # The truth falls in the band in 5 of these 8 forecasts (the range of 4 exchangeable
    # reference runs holds a fifth run with probability 3/5); one miss of margin.
    in_band = sum(c.in_band for c in checks) / len(checks)
    assert in_band >= 0.5
    # median error: about 10% of the steps still to go; the worst about a third
    assert statistics.median(c.relative_error for c in checks) < 0.25
    assert max(c.relative_error for c in checks) < 0.5


# ------------------------------------------------------------------ the callback


def test_manifold_forecast_logs_eta(tmp_path: Path) -> None:
    x, y = teacher_data(n=256, d=20, C=4, seed=0)
    probe = ProbeSet.from_tensors(x[:128], y[:128], name="train", num_classes=4)
    loader = make_loader(x, y, batch_size=32)
    stores = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cb = ManifoldCallback(
            probe,
            schedule=Schedule(log_spaced=None, every_n_steps=4),
            dirpath=tmp_path,
            run_name=f"ref{seed}",
            plots=False,
            durable=False,
        )
        pl.Trainer(**fast_trainer_kwargs(max_epochs=6, callbacks=[cb])).fit(
            TinyClassifier(20, 4, hidden=32, lr=0.5), loader
        )
        stores.append(TrajectoryStore(cb.store_paths["train"]))
    reference = ReferenceEmbedding.fit(stores, n_components=3)

    torch.manual_seed(5)
    logger = MemoryLogger()
    forecast = ManifoldForecast(target_progress=0.7)
    manifold = ManifoldCallback(
        probe,
        schedule=Schedule(log_spaced=None, every_n_steps=4),
        dirpath=tmp_path,
        run_name="live",
        reference=reference,
        plots=False,
        durable=False,
    )
    trainer = pl.Trainer(
        **fast_trainer_kwargs(max_epochs=4, callbacks=[manifold, forecast], logger=logger)
    )
    trainer.fit(TinyClassifier(20, 4, hidden=32, lr=0.3), loader)

    targets, target = reference_targets(reference, target_progress=0.7)
    assert target == 0.7
    np.testing.assert_allclose(
        targets, [reference.step_at_progress(r, 0.7) for r in range(reference.num_runs)]
    )
    logged = {s: r for s, r in logger.metrics_with_prefix("manifold/train/eta_") if s is not None}
    progress = {
        s: r["manifold/train/progress"]
        for s, r in logger.metrics_with_prefix("manifold/train/progress")
    }
    assert len(logged) >= 3
    assert [h.step for h in forecast.history if math.isfinite(h.eta)] == sorted(logged)
    for step, record in logged.items():
        want = forecast_from_reference(reference, step, progress[step], targets)
        assert record["manifold/train/eta_step"] == pytest.approx(float(want.eta))
        assert record["manifold/train/eta_low"] <= record["manifold/train/eta_step"]
        assert record["manifold/train/eta_step"] <= record["manifold/train/eta_high"]
    last = max(logged)
    assert float(trainer.callback_metrics["manifold/train/eta_step"]) == pytest.approx(
        logged[last]["manifold/train/eta_step"], rel=1e-6
    )


def test_reference_targets_default_and_error() -> None:
    labels = torch.arange(30) % 3
    g = torch.Generator().manual_seed(0)
    runs, steps = [], []
    for r in range(3):  # runs moving from ignorance towards truth at different speeds
        logits = torch.randn(30, 3, generator=g)
        truth = torch.nn.functional.one_hot(labels, 3).double() * 4
        t = torch.linspace(0, 1, 12, dtype=torch.float64) ** (1 + r / 2)
        runs.append(torch.log_softmax(0.1 * logits + t[:, None, None] * truth, -1))
        steps.append(np.arange(12) * 10)
    reference = ReferenceEmbedding.fit(runs, labels=labels, steps=steps, n_components=2)
    targets, target = reference_targets(reference)
    finals = [float(F.progress_from_log_probs(run, labels).max()) for run in runs]
    assert target == pytest.approx(min(finals), abs=1e-6)
    assert np.isfinite(targets).all()
    errors, level = reference_targets(reference, target_error=0.0)
    assert level == 0.0
    for r, run in enumerate(runs):  # the first step with zero error, as a plain loop finds it
        error = (run.argmax(-1) != labels).double().mean(-1).numpy()
        first = next((steps[r][i] for i, e in enumerate(error) if e <= 0.0), math.nan)
        if math.isnan(first):
            assert math.isnan(errors[r])
        else:
            assert errors[r] == first

"""Accuracy of the step forecast on held-out runs of the synthetic task (thesis §2.5.5).

Reference runs (several seeds) are embedded; held-out runs (other seeds, and other learning
rates, so their relative speed differs from 1) are forecast when they first reach progress
0.3 and 0.6: ``eta`` (``lightning_manifold.forecast.forecast_from_reference``: the median of
the reference runs' estimates) against the step at which they actually reached the target
progress, and whether that step lies in the band ``[eta_low, eta_high]``.

Run: ``PYTHONPATH=. python benchmarks/forecast.py`` (about 15 s on one CPU core).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _synthetic import (
    MLPStudent,
    SyntheticTask,
    make_task,
    torch_threads,
    train_loader,
    warm_up_batchnorm,
)

from lightning_manifold import ReferenceEmbedding
from lightning_manifold import functional as F
from lightning_manifold.embedding import step_at_progress
from lightning_manifold.forecast import forecast_from_reference, reference_targets

#: progress levels at which the forecast is made
FORECAST_AT = (0.3, 0.6)


@dataclass(frozen=True)
class Trajectory:
    """(T, N, C) float64 log-probabilities on the probe at (T,) steps, and their (T,) progress."""

    log_probs: Tensor
    steps: np.ndarray
    progress: np.ndarray


def small_task(seed: int = 0) -> SyntheticTask:
    """A small version of the synthetic task: fast enough for tests."""
    return make_task(d=40, n_train=800, n_test=200, seed=seed)


def train_trajectory(
    task: SyntheticTask,
    *,
    seed: int,
    lr: float,
    epochs: int,
    n_probe: int = 200,
    batch_size: int = 80,
    width: int = 64,
    capture_every: int = 1,
) -> Trajectory:
    """Train a one-hidden-layer student with SGD in a plain loop, capturing every
    ``capture_every`` steps.

    The probe is the first ``n_probe`` training samples; the model is captured in eval mode.
    """
    torch.manual_seed(seed)
    model = MLPStudent(task.dim, task.num_classes, width=width, lr=lr, output_scale=0.1)
    warm_up_batchnorm(model, task.x_train)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x_probe, y_probe = task.x_train[:n_probe], task.y_train[:n_probe]
    out, steps = [], []

    def capture(step: int) -> None:
        model.eval()
        with torch.no_grad():
            out.append(torch.log_softmax(model(x_probe).double(), -1))
        model.train()
        steps.append(step)

    step = 0
    capture(step)
    for _ in range(epochs):
        for x, y in train_loader(task, batch_size, seed=seed + 1000 * step):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            step += 1
            if step % capture_every == 0:
                capture(step)
    log_probs = torch.stack(out)
    progress = F.progress_from_log_probs(log_probs, y_probe).numpy()
    return Trajectory(log_probs, np.asarray(steps, dtype=np.int64), progress)


@dataclass(frozen=True)
class ForecastCheck:
    """One forecast of a held-out run against what happened."""

    at_progress: float
    step: int
    eta: float
    low: float
    high: float
    truth: float

    @property
    def relative_error(self) -> float:
        """|eta - truth| / (truth - step): error relative to the steps still to go."""
        return abs(self.eta - self.truth) / max(self.truth - self.step, 1.0)

    @property
    def in_band(self) -> bool:
        return self.low <= self.truth <= self.high


def check_forecasts(
    reference: ReferenceEmbedding,
    run: Trajectory,
    labels: Tensor,
    *,
    target_progress: float | None = None,
    at: tuple[float, ...] = FORECAST_AT,
) -> list[ForecastCheck]:
    """Forecast ``run`` at its first capture past each level of ``at``, as the callback would."""
    targets, target = reference_targets(reference, target_progress=target_progress)
    truth = step_at_progress(run.steps, run.progress, target)
    checks = []
    for level in at:
        index = np.flatnonzero(run.progress >= level)
        if index.size == 0 or not math.isfinite(truth):
            continue
        i = int(index[0])
        step, s = int(run.steps[i]), float(run.progress[i])
        result = forecast_from_reference(reference, step, s, targets)
        checks.append(
            ForecastCheck(
                level, step, float(result.eta), float(result.low), float(result.high), truth
            )
        )
    return checks


def evaluate(
    *,
    reference_seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    held_out: tuple[tuple[int, float], ...] = (
        (10, 1.0),
        (11, 1.0),
        (12, 0.7),
        (13, 1.4),
        (14, 0.5),
        (15, 1.0),
        (16, 0.8),
        (17, 1.2),
    ),
    lr: float = 0.5,
    epochs: int = 20,
    target_progress: float | None = None,
    **train_kwargs: Any,
) -> list[ForecastCheck]:
    """Train the reference and held-out runs and check every forecast.

    ``held_out`` lists (seed, learning-rate factor) pairs; the factors make runs faster or
    slower than the reference, so the forecast has to rescale time. ``train_kwargs`` go to
    :func:`train_trajectory`.
    """
    task = small_task()
    labels = task.y_train[: train_kwargs.get("n_probe", 200)]
    refs = [
        train_trajectory(task, seed=s, lr=lr, epochs=epochs, **train_kwargs)
        for s in reference_seeds
    ]
    reference = ReferenceEmbedding.fit(
        [r.log_probs for r in refs],
        labels=labels,
        steps=[r.steps for r in refs],
        run_names=[f"seed{s}" for s in reference_seeds],
        n_components=3,
    )
    checks = []
    for seed, factor in held_out:  # a slower run trains longer, so that it reaches the target
        run_epochs = math.ceil(epochs * 1.5 / factor)
        run = train_trajectory(task, seed=seed, lr=lr * factor, epochs=run_epochs, **train_kwargs)
        checks += check_forecasts(reference, run, labels, target_progress=target_progress)
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    with torch_threads(args.threads):
        checks = evaluate()
    print(
        f"{'at':>5} {'step':>6} {'eta':>8} {'low':>8} {'high':>8} {'truth':>8} {'rel.err':>8} band"
    )
    for c in checks:
        print(
            f"{c.at_progress:5.1f} {c.step:6d} {c.eta:8.1f} {c.low:8.1f} {c.high:8.1f} "
            f"{c.truth:8.1f} {c.relative_error:8.3f} {'in' if c.in_band else 'OUT'}"
        )
    for level in FORECAST_AT:
        sub = [c for c in checks if c.at_progress == level]
        if sub:
            errors = [c.relative_error for c in sub]
            print(
                f"progress {level}: median relative error {np.median(errors):.3f}, "
                f"max {max(errors):.3f}, in band {sum(c.in_band for c in sub)}/{len(sub)}"
            )
    print(f"in band overall: {sum(c.in_band for c in checks)}/{len(checks)}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

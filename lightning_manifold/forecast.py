r"""
Manifold Forecast
=================

Forecast, after every capture, the optimizer step at which the run will reach a target
progress (or a target probe error), from its relative speed to the reference runs at equal
progress (:mod:`lightning_manifold.functional.forecast`).

"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_manifold._watch import ManifoldReader, publish, read_scalar
from lightning_manifold.embedding import ReferenceEmbedding, step_at_progress
from lightning_manifold.functional.forecast import StepForecast, forecast_steps

__all__ = ["ForecastRecord", "ManifoldForecast", "reference_targets"]


class ForecastRecord(NamedTuple):
    """One forecast: made at ``step`` (progress ``progress``), for the target step ``eta``."""

    step: int
    progress: float
    eta: float
    low: float
    high: float


def _curves(reference: ReferenceEmbedding) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per reference run: (T,) steps, progress and error of its embedded models."""
    run = reference.model_run.detach().to("cpu").numpy()
    step = reference.model_step.detach().to("cpu").numpy()
    progress = reference.model_progress.detach().to("cpu").numpy()
    error = reference.model_error.detach().to("cpu").numpy()
    return [
        (step[run == r], progress[run == r], error[run == r]) for r in range(reference.num_runs)
    ]


def reference_targets(
    reference: ReferenceEmbedding,
    *,
    target_progress: float | None = None,
    target_error: float | None = None,
) -> tuple[np.ndarray, float]:
    """(R,) step at which each reference run first reached the target, and the target level.

    The target is ``target_error`` (probe error at or below it) if given, else
    ``target_progress``, else the highest progress every reference run reached (the smallest
    of the runs' final progress). A run that never reached the target gives NaN.
    """
    curves = _curves(reference)
    if target_error is not None:
        steps = [step_at_progress(s, -e, -float(target_error)) for s, _, e in curves]
        return np.asarray(steps, dtype=np.float64), float(target_error)
    if target_progress is None:
        target_progress = min(float(np.max(p)) for _, p, _ in curves)
    runs = range(reference.num_runs)
    steps = [reference.step_at_progress(r, float(target_progress)) for r in runs]
    return np.asarray(steps, dtype=np.float64), float(target_progress)


def forecast_from_reference(
    reference: ReferenceEmbedding, step: int, progress: float, targets: np.ndarray
) -> StepForecast:
    """Forecast for a model at ``step`` and ``progress`` against ``reference``.

    ``targets`` are the (R,) steps of :func:`reference_targets`. Each reference run r gives
    ``step + (T_r - S_r) * step / S_r`` with S_r its step at ``progress`` (its own relative
    speed); ``eta`` is their median, the band their range.
    """
    now = [reference.step_at_progress(r, progress) for r in range(reference.num_runs)]
    return forecast_steps(step, np.asarray(now, dtype=np.float64), targets)


class ManifoldForecast(ManifoldReader):
    r"""Forecast the step at which the run reaches a target progress or probe error.

    After every capture of the :class:`~lightning_manifold.callback.ManifoldCallback` (which
    must have a ``reference`` for ``probe``), rank zero reads ``progress`` from
    ``trainer.callback_metrics`` and forecasts from the reference runs re-indexed by progress
    (eq. 2.2.5): reference run r, which reached this progress at step S_r and the target at
    T_r, gives ``step + (T_r - S_r) * v_r`` with the run's relative speed ``v_r = step / S_r``
    at equal progress. ``eta`` is the median of these estimates and the band
    ``[eta_low, eta_high]`` their range (a single reference run gives a band of zero width),
    see :func:`~lightning_manifold.functional.forecast.forecast_steps`.

    Accuracy (``benchmarks/forecast.py``, synthetic task, five reference seeds, held-out
    seeds with learning rates x0.5..x1.4): the median error is about 15-20% of the steps
    still to go at progress 0.3 and 0.6, and the true step falls in the band in about 60% of
    the forecasts, close to the 4/6 expected of the range of five exchangeable runs.

    Logged keys (through every logger and into ``trainer.callback_metrics``, when defined):
    ``manifold/<probe>/eta_step``, ``manifold/<probe>/eta_low``, ``manifold/<probe>/eta_high``.
    Every forecast is also kept in :attr:`history`.

    Args:
        probe: probe whose results are read (default: the manifold callback's first probe).
        target_progress: the progress to reach; default: the highest progress every reference
            run reached.
        target_error: a probe error to reach instead (at or below).
        log: log the forecast through the trainer's loggers.

    Raises:
        ValueError: bad arguments; at ``setup``, no ManifoldCallback or an unknown ``probe``.

    Example::

        >>> from lightning_manifold import ManifoldForecast
        >>> forecast = ManifoldForecast(target_progress=0.9)
        >>> # Trainer(callbacks=[ManifoldCallback(probe, reference="baseline.npz"), forecast])
    """

    owner = "ManifoldForecast"

    def __init__(
        self,
        probe: str | None = None,
        *,
        target_progress: float | None = None,
        target_error: float | None = None,
        log: bool = True,
    ) -> None:
        for name, value in (("target_progress", target_progress), ("target_error", target_error)):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 1
            ):
                raise ValueError(f"`{name}` must be a number in [0, 1] or None, got {value!r}")
        if target_progress is not None and target_error is not None:
            raise ValueError("give `target_progress` or `target_error`, not both")
        super().__init__(probe)
        self.target_progress = target_progress
        self.target_error = target_error
        self.log = bool(log)
        self.history: list[ForecastRecord] = []
        self._targets: tuple[Any, np.ndarray] | None = None  # (reference, (R,) target steps)
        self._warned = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            probe=self.probe_arg,
            target_progress=self.target_progress,
            target_error=self.target_error,
        )

    def _reset(self) -> None:
        self._targets = None
        self.history = []

    def _check(self, trainer: pl.Trainer) -> None:
        if self._manifold is None or not trainer.is_global_zero:
            return
        step = self._watch.new_capture(self._manifold)
        assert self.probe is not None
        if step is None or not self._watch.fresh(trainer.callback_metrics, self.probe):
            return
        online = self._manifold.manifolds.get(self.probe)
        reference = None if online is None else online.reference
        if reference is None:
            if not self._warned:
                self._warned = True
                rank_zero_warn(
                    f"ManifoldForecast: probe {self.probe!r} has no reference "
                    "(ManifoldCallback(reference=...)); no forecast is made."
                )
            return
        if self._targets is None or self._targets[0] is not reference:
            targets, _ = reference_targets(
                reference, target_progress=self.target_progress, target_error=self.target_error
            )
            self._targets = (reference, targets)
        prefix = f"manifold/{self.probe}/"
        progress = read_scalar(trainer.callback_metrics, prefix + "progress")
        if not math.isfinite(progress):
            return
        result = forecast_from_reference(reference, step, progress, self._targets[1])
        eta, low, high = (float(result.eta), float(result.low), float(result.high))
        self.history.append(ForecastRecord(step, progress, eta, low, high))
        scalars = {prefix + "eta_step": eta, prefix + "eta_low": low, prefix + "eta_high": high}
        publish(trainer, scalars, step, log=self.log)

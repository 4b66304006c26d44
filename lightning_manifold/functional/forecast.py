"""When will this run get there? Step forecasts from reference runs re-indexed by progress.

Reference runs are re-indexed by progress (text at eq. 2.2.5): run r reached the current
progress s at step ``S_r`` and the target at step ``T_r``. A live run at step t with relative
speed v (its steps per reference step at equal progress, ``t / S``) is forecast to reach the
target after ``(T_r - S_r)`` more reference steps, i.e. at

    eta_r = t + (T_r - S_r) * v.

With each run's own relative speed ``v_r = t / S_r`` this is ``t * T_r / S_r``: the run is
mapped onto reference run r by the time rescaling that matches them at progress s. Every
reference run gives one estimate; their spread is the band.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_manifold.functional._checks import as_tensor

__all__ = ["StepForecast", "eta_per_run", "forecast_steps"]


class StepForecast(NamedTuple):
    """A step forecast (0-dim float64 tensors; NaN when no reference run gives an estimate).

    Attributes:
        eta: the forecast step.
        low, high: the band: smallest and largest estimate (``eta`` included).
        per_run: (R,) the estimate of each reference run (NaN where undefined).
    """

    eta: Tensor
    low: Tensor
    high: Tensor
    per_run: Tensor


def _steps(x: Any, name: str) -> Tensor:
    """(R,) float64 steps from a tensor or array of ints or floats."""
    t = as_tensor(x, name, floating=False).to(torch.float64)
    if t.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (R,) steps, got shape {tuple(t.shape)}")
    return t


def _check_step(step: Any) -> float:
    if isinstance(step, bool):
        raise TypeError("`step` must be a number >= 0, got bool")
    value = float(step)
    if not value >= 0:
        raise ValueError(f"`step` must be a number >= 0, got {step!r}")
    return value


def eta_per_run(
    step: float, steps_now: Any, steps_target: Any, relative_speed: Any = None
) -> Tensor:
    """One forecast step per reference run: ``step + (T_r - S_r) * v_r``.

    Args:
        step: t, the live run's current optimizer step.
        steps_now: (R,) S_r, step at which each reference run reached the live run's progress.
        steps_target: (R,) T_r, step at which each reference run reached the target.
        relative_speed: a scalar or (R,) v_r; default ``t / S_r`` (each run's own relative
            speed at equal progress).

    Returns:
        (R,) float64 estimates; NaN where S_r or T_r is NaN, or S_r <= 0 with the default
        speed (no speed can be measured against a run that was already there at its start).
        A target already passed (T_r < S_r) gives an estimate before ``step``.

    Raises:
        ValueError: ``step`` < 0, or ``steps_now`` / ``steps_target`` not 1-D of one length.
    """
    t = _check_step(step)
    now = _steps(steps_now, "steps_now")
    target = _steps(steps_target, "steps_target").to(now.device)
    if now.shape != target.shape:
        raise ValueError(
            "`steps_now` and `steps_target` must have the same shape (R,), "
            f"got {tuple(now.shape)} and {tuple(target.shape)}"
        )
    if relative_speed is None:
        positive = now > 0
        speed = torch.where(positive, t / torch.where(positive, now, 1.0), torch.nan)
    else:
        if isinstance(relative_speed, (int, float)) and not isinstance(relative_speed, bool):
            speed = now.new_tensor(float(relative_speed))
        else:
            speed = as_tensor(relative_speed, "relative_speed").to(now.device, torch.float64)
        speed = speed.expand_as(now)
    return t + (target - now) * speed


def forecast_steps(
    step: float,
    steps_now: Any,
    steps_target: Any,
    *,
    relative_speed: float | None = None,
    nearest: int | None = None,
) -> StepForecast:
    """Forecast the step at which the live run reaches the target, with a band.

    ``eta`` is the estimate from reference run ``nearest`` (the run nearest at equal progress,
    eq. 2.2.5) with the live run's current ``relative_speed``; without them, the median of the
    per-run estimates. The band is ``[min, max]`` of the per-run estimates (each with its own
    relative speed, :func:`eta_per_run`) and ``eta``.

    Args:
        step: t, the live run's current optimizer step.
        steps_now: (R,) S_r (see :func:`eta_per_run`).
        steps_target: (R,) T_r.
        relative_speed: the live run's relative speed to run ``nearest``.
        nearest: index of the nearest reference run.

    Returns:
        A :class:`StepForecast`.

    Raises:
        ValueError: as :func:`eta_per_run`; ``nearest`` out of range; only one of
            ``relative_speed`` and ``nearest`` given.
    """
    per_run = eta_per_run(step, steps_now, steps_target)
    if (relative_speed is None) != (nearest is None):
        raise ValueError("`relative_speed` and `nearest` must be given together")
    nan = per_run.new_tensor(torch.nan)
    if nearest is not None:
        if not 0 <= nearest < per_run.numel():
            raise ValueError(f"`nearest` must be in [0, {per_run.numel()}), got {nearest}")
        now = _steps(steps_now, "steps_now")[nearest]
        target = _steps(steps_target, "steps_target")[nearest]
        eta = _check_step(step) + (target - now).to(per_run) * float(relative_speed)  # type: ignore[arg-type]
    else:
        finite = per_run[torch.isfinite(per_run)]
        eta = finite.median() if finite.numel() else nan
    candidates = torch.cat([per_run, eta.reshape(1)])
    candidates = candidates[torch.isfinite(candidates)]
    if candidates.numel() == 0:
        return StepForecast(nan, nan.clone(), nan.clone(), per_run)
    return StepForecast(eta.reshape(()), candidates.min(), candidates.max(), per_run)

"""The unit of data that flows from the probe to the store, the online module and the sinks."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class Snapshot:
    """One capture of one probe: the model's predictions at one optimizer step.

    Attributes:
        probe: name of the probe set (``"train"``, ``"val"``).
        step: optimizer updates so far (``trainer.global_step`` at capture time).
        epoch: ``trainer.current_epoch`` at capture time.
        log_probs: (N, C) log-probabilities of the model on the probe, float32 or float64.
        labels: (N,) int64 ground-truth labels of the probe.
        wall_time: seconds since the epoch (``time.time()``) at capture.
        valid: ``False`` when the model produced NaN/inf outputs (a diverged model).
        metrics: scalars computed at capture (progress, distances, error, ...).
    """

    probe: str
    step: int
    epoch: int
    log_probs: Tensor
    labels: Tensor
    wall_time: float
    valid: bool = True
    metrics: dict[str, float] = field(default_factory=dict)

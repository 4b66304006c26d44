"""Shared by the callbacks that act on the manifold's results (decision, forecast).

They read what :class:`~lightning_manifold.callback.ManifoldCallback` wrote into
``trainer.callback_metrics`` at its latest capture; they compute no geometry themselves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.loggers import Logger
from torch import Tensor
from typing_extensions import override

from lightning_manifold.callback import ManifoldCallback
from lightning_manifold.sinks.files import _atomic_write


def find_manifold(trainer: pl.Trainer, probe: str | None, owner: str) -> tuple[Any, str]:
    """The trainer's ManifoldCallback recording ``probe`` (default: its first probe).

    Raises:
        ValueError: no ManifoldCallback among ``trainer.callbacks``, or none records ``probe``.
    """
    manifolds = [cb for cb in trainer.callbacks if isinstance(cb, ManifoldCallback)]
    if not manifolds:
        raise ValueError(
            f"{owner} reads the results of a ManifoldCallback: add one to `Trainer(callbacks=...)`"
        )
    if probe is None:
        return manifolds[0], manifolds[0].probe_names[0]
    for cb in manifolds:
        if probe in cb.probe_names:
            return cb, probe
    names = [n for cb in manifolds for n in cb.probe_names]
    raise ValueError(f"{owner}: `probe` must be one of the recorded probes {names}, got {probe!r}")


class ManifoldReader(Callback):
    """Base of the callbacks that read the manifold's results after each capture.

    Finds the ManifoldCallback of ``probe`` at ``setup`` and calls :meth:`_check` at every
    training batch end and epoch end (captures happen at batch start and epoch end).
    """

    owner = "ManifoldReader"

    def __init__(self, probe: str | None) -> None:
        if probe is not None and not (isinstance(probe, str) and probe):
            raise ValueError(f"`probe` must be a non-empty str or None, got {probe!r}")
        self.probe_arg = probe
        self.probe: str | None = probe
        self._manifold: Any = None
        self._watch = CaptureWatcher()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._watch.reset()
        self._reset()
        self._manifold, self.probe = find_manifold(trainer, self.probe_arg, self.owner)

    def _reset(self) -> None:
        """Forget the state of a previous fit."""

    def _check(self, trainer: pl.Trainer) -> None:
        raise NotImplementedError

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)


class CaptureWatcher:
    """Tells, at any hook, whether the manifold captured since the last look.

    ``new_capture`` is decided from the schedule's gate (identical on every rank, so a
    collective may follow); ``fresh`` (rank zero) also checks that this capture's values reached
    ``callback_metrics`` (a failed capture writes none): each capture writes a new tensor object
    under ``manifold/<probe>/valid``.
    """

    def __init__(self) -> None:
        self.last_step: int | None = None
        self._seen: Tensor | None = None

    def reset(self) -> None:
        self.last_step, self._seen = None, None

    def new_capture(self, manifold: Any) -> int | None:
        """The step of a capture not looked at yet, else None (every rank agrees)."""
        step = manifold.last_captured_step
        if step is None or step == self.last_step:
            return None
        self.last_step = step
        return int(step)

    def fresh(self, metrics: dict[str, Any], probe: str) -> bool:
        """Rank zero: the probe's values in ``metrics`` come from a capture not read yet."""
        marker = metrics.get(f"manifold/{probe}/valid")
        if marker is None or marker is self._seen:
            return False
        self._seen = marker
        return True


def read_scalar(metrics: dict[str, Any], key: str) -> float:
    """``metrics[key]`` as a float; NaN when absent."""
    value = metrics.get(key)
    if value is None:
        return math.nan
    return float(value.item() if isinstance(value, Tensor) else value)


def publish(trainer: pl.Trainer, scalars: dict[str, float], step: int, *, log: bool = True) -> None:
    """Rank zero: put ``scalars`` into ``callback_metrics`` (NaN included) and, with ``log``,
    the finite ones into every logger."""
    for key, v in scalars.items():
        trainer.callback_metrics[key] = torch.tensor(float(v))
    finite = {k: float(v) for k, v in scalars.items() if math.isfinite(v)}
    if log and finite:
        loggers: list[Logger] = list(trainer.loggers)
        for logger in loggers:
            logger.log_metrics(finite, step=step)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temporary file, then rename)."""
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False, default=str)
    _atomic_write(path, text.encode())


def finite_or_none(value: float) -> float | None:
    """JSON-safe: ``None`` for NaN/inf."""
    return float(value) if math.isfinite(value) else None

r"""
Manifold Early Stopping
=======================

Stop (or flag) a run from where it stands on the manifold: off the reference manifold, crawling
behind the reference runs, stuck, or diverged. The geometry is computed by
:class:`~lightning_manifold.callback.ManifoldCallback`; this callback only reads its results
from ``trainer.callback_metrics`` after each capture.

"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_manifold._watch import (
    ManifoldReader,
    finite_or_none,
    publish,
    read_scalar,
    write_json,
)

__all__ = ["DECISION_FILE", "REASONS", "Decision", "ManifoldEarlyStopping"]

#: Reasons for a decision and the code logged as ``manifold/<probe>/stop_reason``.
REASONS: dict[str, int] = {"diverged": 1, "off_manifold": 2, "slow": 3, "plateau": 4}

#: File written next to the store (``<store>/decision.json``) when a decision is taken.
DECISION_FILE = "decision.json"

_MODES = ("stop", "flag")


@dataclass(frozen=True)
class Decision:
    """Why and when a run was stopped or flagged.

    Attributes:
        reason: one of :data:`REASONS`.
        step: optimizer step of the capture that triggered it.
        epoch: epoch at that moment.
        probe: the probe whose results were read.
        mode: ``"stop"`` (``trainer.should_stop`` was set) or ``"flag"``.
        figures: the values behind the decision (NaN written as None).
        message: the line printed once.
    """

    reason: str
    step: int
    epoch: int
    probe: str
    mode: str
    figures: dict[str, float | None] = field(default_factory=dict)
    message: str = ""


def _check_count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int or None, got {value!r}")
    return value


def _check_number(value: Any, name: str, *, low: float, allow_equal: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if value < low or (value == low and not allow_equal):
        sign = ">=" if allow_equal else ">"
        raise ValueError(f"`{name}` must be {sign} {low}, got {value!r}")
    return float(value)


class ManifoldEarlyStopping(ManifoldReader):
    r"""Stop or flag a run that the manifold says is going nowhere good.

    After every capture of the :class:`~lightning_manifold.callback.ManifoldCallback` (found
    among the trainer's callbacks) the scalars of ``probe`` are read from
    ``trainer.callback_metrics`` once; nothing is read between captures. A decision is taken
    at the first capture where one of these holds (checked in this order):

    - ``diverged``: the snapshot was invalid (NaN/inf outputs, ``valid`` = 0) for ``patience``
      consecutive captures;
    - ``off_manifold``: ``off_manifold`` = 1 (the manifold callback's ``residual_threshold`` /
      ``distance_threshold``) for ``patience`` consecutive captures;
    - ``slow``: ``relative_speed`` > ``max_relative_speed`` (this run needs more than that
      factor of the reference's steps to reach the same progress, eq. 2.2.5's re-indexing) for
      ``patience`` consecutive captures, counted once ``progress`` >= ``grace_progress``;
    - ``plateau``: ``progress`` has not improved by more than ``min_delta`` on its best value
      for ``plateau_patience`` consecutive valid captures.

    On a decision: with ``mode="stop"`` ``trainer.should_stop`` is set (training ends after the
    current batch); with ``mode="flag"`` training goes on. Either way the decision (reason, step,
    figures) is printed once with ``rank_zero_info``, logged through every logger and written to
    ``trainer.callback_metrics``, saved as ``decision.json`` in the probe's store directory, and
    kept in :attr:`decision`. Only the first decision is taken.

    Under DDP the manifold's values exist on rank zero: it decides, and the decision is
    broadcast after each capture (every rank captures at the same steps), so every rank stops
    at the same step.

    Logged keys (at the decision's step): ``manifold/<probe>/flagged`` (1),
    ``manifold/<probe>/stopped`` (1 in stop mode, 0 in flag mode),
    ``manifold/<probe>/stop_reason`` (code of :data:`REASONS`).

    Args:
        probe: probe whose results are read (default: the manifold callback's first probe).
        mode: ``"stop"`` or ``"flag"``.
        patience: k, consecutive captures for ``diverged``, ``off_manifold`` and ``slow``.
        max_relative_speed: r > 1 for ``slow`` (needs a reference); ``None`` disables it.
        grace_progress: progress below which ``slow`` is not counted (early relative speeds
            compare a handful of steps and are noisy).
        plateau_patience: p for ``plateau``; ``None`` disables it.
        min_delta: improvement of progress that counts for ``plateau``.
        stop_on_invalid: enable ``diverged``.
        stop_off_manifold: enable ``off_manifold``.

    Raises:
        ValueError: bad arguments; at ``setup``, no ManifoldCallback or an unknown ``probe``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_manifold import ManifoldCallback, ManifoldEarlyStopping, ProbeSet
        >>> import torch
        >>> probe = ProbeSet.from_tensors(torch.randn(64, 8), torch.arange(64) % 3, name="train")
        >>> stopper = ManifoldEarlyStopping(max_relative_speed=3.0, plateau_patience=5)
        >>> trainer = Trainer(max_steps=200, callbacks=[ManifoldCallback(probe), stopper])
    """

    owner = "ManifoldEarlyStopping"

    def __init__(
        self,
        probe: str | None = None,
        *,
        mode: str = "stop",
        patience: int = 2,
        max_relative_speed: float | None = None,
        grace_progress: float = 0.1,
        plateau_patience: int | None = None,
        min_delta: float = 0.0,
        stop_on_invalid: bool = True,
        stop_off_manifold: bool = True,
    ) -> None:
        super().__init__(probe)
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.patience = _check_count(patience, "patience") or 1
        self.max_relative_speed = (
            None
            if max_relative_speed is None
            else _check_number(max_relative_speed, "max_relative_speed", low=1.0, allow_equal=False)
        )
        self.grace_progress = _check_number(
            grace_progress, "grace_progress", low=0, allow_equal=True
        )
        if self.grace_progress > 1:
            raise ValueError(f"`grace_progress` must be in [0, 1], got {grace_progress!r}")
        self.plateau_patience = _check_count(plateau_patience, "plateau_patience")
        self.min_delta = _check_number(min_delta, "min_delta", low=0, allow_equal=True)
        self.stop_on_invalid = bool(stop_on_invalid)
        self.stop_off_manifold = bool(stop_off_manifold)
        self.decision: Decision | None = None
        self._counts = {"invalid": 0, "off_manifold": 0, "slow": 0, "plateau": 0}
        self._best_progress = -math.inf

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(probe=self.probe_arg, mode=self.mode)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self._counts),
            "best_progress": self._best_progress,
            "last_step": self._watch.last_step,
            "decision": None if self.decision is None else asdict(self.decision),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        counts = state_dict.get("counts") or {}
        self._counts.update({k: int(v) for k, v in counts.items() if k in self._counts})
        self._best_progress = float(state_dict.get("best_progress", -math.inf))
        self._watch.last_step = state_dict.get("last_step")
        decision = state_dict.get("decision")
        self.decision = Decision(**decision) if isinstance(decision, dict) else None

    def _reset(self) -> None:
        self._counts = dict.fromkeys(self._counts, 0)
        self._best_progress = -math.inf
        self.decision = None

    # ------------------------------------------------------------------ decision

    def _check(self, trainer: pl.Trainer) -> None:
        """After a new capture: rank zero reads and decides, every rank acts on the decision."""
        if self._manifold is None:
            return
        step = self._watch.new_capture(self._manifold)
        if step is None:
            return
        decision = None
        if trainer.is_global_zero and self.decision is None:
            assert self.probe is not None
            if self._watch.fresh(trainer.callback_metrics, self.probe):
                decision = self._decide(trainer, step)
        if trainer.world_size > 1:
            decision = trainer.strategy.broadcast(decision)
        if decision is None:
            return
        self.decision = decision
        if decision.mode == "stop":
            trainer.should_stop = True
        if trainer.is_global_zero:
            publish(trainer, self._scalars(decision), step)

    def _decide(self, trainer: pl.Trainer, step: int) -> Decision | None:
        """Rank zero: update the counters with the latest capture; the decision, if any."""
        prefix = f"manifold/{self.probe}/"
        metrics = trainer.callback_metrics
        value = {
            name: read_scalar(metrics, prefix + name)
            for name in ("valid", "progress", "off_manifold", "relative_speed", "reference_step")
        }
        figures: dict[str, float] = {}
        reason = None
        counts = self._counts
        if value["valid"] != 1.0:
            counts["invalid"] += 1
            if self.stop_on_invalid and counts["invalid"] >= self.patience:
                reason, figures = "diverged", {"invalid_captures": counts["invalid"]}
        else:
            counts["invalid"] = 0
            progress = value["progress"]
            counts["off_manifold"] = counts["off_manifold"] + 1 if value["off_manifold"] == 1 else 0
            speed = value["relative_speed"]
            slow = (
                self.max_relative_speed is not None
                and progress >= self.grace_progress
                and speed > self.max_relative_speed
            )
            counts["slow"] = counts["slow"] + 1 if slow else 0
            if progress > self._best_progress + self.min_delta:
                self._best_progress, counts["plateau"] = progress, 0
            else:
                counts["plateau"] += 1
            residual = read_scalar(metrics, prefix + "residual")
            distance = read_scalar(metrics, prefix + "reference_distance")
            if self.stop_off_manifold and counts["off_manifold"] >= self.patience:
                reason = "off_manifold"
                figures = {
                    "off_manifold_captures": counts["off_manifold"],
                    "residual": residual,
                    "reference_distance": distance,
                    "progress": progress,
                }
            elif slow and counts["slow"] >= self.patience:
                reason = "slow"
                figures = {
                    "relative_speed": speed,
                    "max_relative_speed": float(self.max_relative_speed or math.nan),
                    "progress": progress,
                    "reference_step": value["reference_step"],
                    "slow_captures": counts["slow"],
                }
            elif self.plateau_patience is not None and counts["plateau"] >= self.plateau_patience:
                reason = "plateau"
                figures = {
                    "progress": progress,
                    "best_progress": self._best_progress,
                    "min_delta": self.min_delta,
                    "captures_without_improvement": counts["plateau"],
                }
        if reason is None:
            return None
        return self._make_decision(trainer, reason, step, figures)

    def _make_decision(
        self, trainer: pl.Trainer, reason: str, step: int, figures: dict[str, float]
    ) -> Decision:
        """Rank zero: build, print and save the decision."""
        shown = ", ".join(f"{k}={v:.4g}" for k, v in figures.items())
        action = "stopping the run" if self.mode == "stop" else "flagging the run (it continues)"
        message = (
            f"ManifoldEarlyStopping: {action} at step {step} on probe {self.probe!r}: "
            f"{reason} ({shown})."
        )
        decision = Decision(
            reason=reason,
            step=step,
            epoch=int(trainer.current_epoch),
            probe=str(self.probe),
            mode=self.mode,
            figures={k: finite_or_none(float(v)) for k, v in figures.items()},
            message=message,
        )
        rank_zero_info(message)
        store = self._manifold.store_paths.get(self.probe)
        if store is not None:
            try:
                write_json(Path(store) / DECISION_FILE, asdict(decision))
            except OSError as err:  # never crash training over a report
                rank_zero_warn(f"ManifoldEarlyStopping: cannot write {DECISION_FILE}: {err}")
        return decision

    def _scalars(self, decision: Decision) -> dict[str, float]:
        prefix = f"manifold/{decision.probe}/"
        return {
            prefix + "flagged": 1.0,
            prefix + "stopped": float(decision.mode == "stop"),
            prefix + "stop_reason": float(REASONS[decision.reason]),
        }

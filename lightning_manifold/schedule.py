"""Schedule: at which optimizer steps and epoch ends the probe predictions are captured.

A step is the number of optimizer updates so far, ``trainer.global_step``: the model captured at
step s has seen s updates (step 0 is the initial model). The thesis records checkpoints densely
early in training, where the model moves fastest through prediction space, and sparsely later;
``log_spaced=n`` does that over the planned number of steps.

The schedule's *decisions* are pure functions of the step / epoch. It also carries a small
*gate*, :meth:`Schedule.take`, that remembers the last step captured so that one step is never
captured twice: with gradient accumulation the batch hooks fire once per micro-batch with the
same ``global_step``, and an epoch end or the fit end can fall on a step already captured.

Example::

    from lightning_manifold.schedule import Schedule

    schedule = Schedule(log_spaced=20, every_n_epochs=1)
    schedule.bind(max_steps=1000)          # the callback does this from the trainer
    schedule.planned_steps()[:8]           # [0, 1, 2, 3, 5, 7, 11, 16]: dense early
    step = 7
    if schedule.should_capture_step(step) and schedule.take(step):
        ...  # capture once
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ["Schedule", "log_spaced_steps"]

_STATE_VERSION = 1
_EVENTS = ("step", "epoch_end", "fit_start", "fit_end")


def _check_optional_int(value: Any, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be None or an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be None or >= {minimum}, got {value}")
    return int(value)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")
    return bool(value)


def _check_step(step: Any, name: str = "step") -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int >= 0, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"`{name}` must be >= 0, got {step}")
    return int(step)


def log_spaced_steps(num: int, max_steps: int) -> list[int]:
    """``min(num, max_steps + 1)`` distinct steps in ``[0, max_steps]``, log-spaced, dense early.

    The points ``s + 1`` are spaced geometrically from 1 to ``max_steps + 1``; where that spacing
    would be below one step, consecutive steps 0, 1, 2, ... are taken instead and the geometric
    ratio is recomputed for the remaining points. So every step is distinct, step 0 and
    ``max_steps`` are always included, and there are exactly ``min(num, max_steps + 1)`` steps.

    Args:
        num: requested number of steps (>= 2).
        max_steps: the last step (>= 1), the planned number of optimizer updates.

    Returns:
        Strictly increasing steps, first 0 and last ``max_steps``.

    Raises:
        ValueError: ``num`` < 2 or ``max_steps`` < 1.

    Example::

        >>> log_spaced_steps(8, 100)
        [0, 1, 3, 6, 13, 26, 52, 100]
    """
    num = _check_optional_int(num, "num", 2)
    max_steps = _check_optional_int(max_steps, "max_steps", 1)
    if num is None or max_steps is None:
        raise ValueError("`num` and `max_steps` are required")
    hi = max_steps + 1
    count = min(num, hi)
    values = [1.0]
    while len(values) < count:
        ratio = (hi / values[-1]) ** (1.0 / (count - len(values)))
        step_up = values[-1] * ratio
        values.append(step_up if step_up - values[-1] >= 1.0 else values[-1] + 1.0)
    steps = [math.floor(v + 0.5) - 1 for v in values]
    steps[-1] = max_steps  # guard against float round-off at the end
    return steps


class Schedule:
    """When to capture the probe predictions; the union of the enabled triggers.

    Step triggers are checked with :meth:`should_capture_step` at the start of a training
    batch (``step = trainer.global_step``); epoch triggers with
    :meth:`should_capture_epoch_end`; ``at_fit_start`` / ``at_fit_end`` are read directly.
    Guard every capture with :meth:`take` so that a step is captured at most once.

    Args:
        log_spaced: about this many steps, log-spaced over ``[0, max_steps]`` (dense early;
            exactly ``min(log_spaced, max_steps + 1)`` distinct steps, see
            :func:`log_spaced_steps`). ``None`` disables it. Needs ``max_steps``, given here or
            later through :meth:`bind`. Note that step ``max_steps`` is only reached after the
            last update, i.e. at the end of fit.
        every_n_steps: capture at steps 0, n, 2n, ...; ``None`` disables it.
        every_n_epochs: capture at the end of epochs n-1, 2n-1, ... (0-based, as Lightning's
            ``check_val_every_n_epoch``); ``None`` disables it.
        at_fit_start: capture when training starts.
        at_fit_end: capture when training ends.
        max_steps: planned number of optimizer updates. If ``None`` the callback binds it from
            ``trainer.estimated_stepping_batches``; a value given here is never overridden.

    Raises:
        ValueError: ``log_spaced`` < 2, ``every_n_steps`` < 1, ``every_n_epochs`` < 1,
            ``max_steps`` < 1, or no trigger enabled at all.
        TypeError: non-int counts or non-bool flags.

    Example::

        Schedule()                                  # 50 log-spaced steps + fit start/end
        Schedule(log_spaced=None, every_n_steps=100, at_fit_start=False)
        Schedule(log_spaced=30, every_n_epochs=1, max_steps=5000)
    """

    def __init__(
        self,
        *,
        log_spaced: int | None = 50,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        at_fit_start: bool = True,
        at_fit_end: bool = True,
        max_steps: int | None = None,
    ) -> None:
        self._log_spaced = _check_optional_int(log_spaced, "log_spaced", 2)
        self._every_n_steps = _check_optional_int(every_n_steps, "every_n_steps", 1)
        self._every_n_epochs = _check_optional_int(every_n_epochs, "every_n_epochs", 1)
        self._at_fit_start = _check_bool(at_fit_start, "at_fit_start")
        self._at_fit_end = _check_bool(at_fit_end, "at_fit_end")
        self._max_steps = _check_optional_int(max_steps, "max_steps", 1)
        self._max_steps_given = self._max_steps is not None
        if (
            self._log_spaced is None
            and self._every_n_steps is None
            and self._every_n_epochs is None
            and not self._at_fit_start
            and not self._at_fit_end
        ):
            raise ValueError(
                "Schedule has no trigger: set at least one of `log_spaced`, `every_n_steps`, "
                "`every_n_epochs`, `at_fit_start`=True or `at_fit_end`=True"
            )
        self._log_set: frozenset[int] | None = None
        self._last_taken: int | None = None

    # ---------------------------------------------------------------- configuration

    @property
    def log_spaced(self) -> int | None:
        """Requested number of log-spaced steps, or ``None``."""
        return self._log_spaced

    @property
    def every_n_steps(self) -> int | None:
        """Step period, or ``None``."""
        return self._every_n_steps

    @property
    def every_n_epochs(self) -> int | None:
        """Epoch period, or ``None``."""
        return self._every_n_epochs

    @property
    def at_fit_start(self) -> bool:
        """Capture when training starts."""
        return self._at_fit_start

    @property
    def at_fit_end(self) -> bool:
        """Capture when training ends."""
        return self._at_fit_end

    @property
    def max_steps(self) -> int | None:
        """Planned number of optimizer updates (``None`` until given or bound)."""
        return self._max_steps

    @property
    def is_bound(self) -> bool:
        """Whether the step triggers can be evaluated (``max_steps`` known or not needed)."""
        return self._log_spaced is None or self._max_steps is not None

    def bind(self, max_steps: float) -> Schedule:
        """Set ``max_steps`` from the trainer unless the user gave it to the constructor.

        Args:
            max_steps: planned optimizer updates, e.g. ``trainer.estimated_stepping_batches``
                (an int, or ``float("inf")`` for unbounded training).

        Returns:
            ``self``.

        Raises:
            ValueError: ``max_steps`` is not a finite integer >= 1 while ``log_spaced`` needs it
                (pass ``max_steps=`` or use ``every_n_steps`` for unbounded training).
        """
        if self._max_steps_given:
            return self
        finite = isinstance(max_steps, (int, float, np.integer, np.floating)) and math.isfinite(
            max_steps
        )
        if not finite or max_steps < 1 or int(max_steps) != max_steps:
            if self._log_spaced is None:
                return self  # nothing needs it
            raise ValueError(
                f"`max_steps` must be a finite integer >= 1 for Schedule(log_spaced="
                f"{self._log_spaced}), got {max_steps!r}; pass Schedule(max_steps=...) or use "
                "every_n_steps for training without a step limit"
            )
        if self._max_steps != int(max_steps):
            self._max_steps = int(max_steps)
            self._log_set = None
        return self

    # ---------------------------------------------------------------- decisions (pure)

    def _log_steps(self) -> frozenset[int]:
        if self._log_spaced is None:
            return frozenset()
        if self._max_steps is None:
            raise RuntimeError(
                f"Schedule(log_spaced={self._log_spaced}) needs the planned number of steps: "
                "pass max_steps= or call bind(max_steps) first"
            )
        if self._log_set is None:
            self._log_set = frozenset(log_spaced_steps(self._log_spaced, self._max_steps))
        return self._log_set

    def should_capture_step(self, step: int) -> bool:
        """Whether a step trigger fires at ``step`` (log-spaced or every n steps).

        Args:
            step: optimizer updates so far (``trainer.global_step``), >= 0.

        Raises:
            RuntimeError: ``log_spaced`` is set and ``max_steps`` is not bound yet.
        """
        step = _check_step(step)
        if self._every_n_steps is not None and step % self._every_n_steps == 0:
            return True
        return step in self._log_steps()

    def should_capture_epoch_end(self, epoch: int) -> bool:
        """Whether the epoch trigger fires at the end of (0-based) ``epoch``."""
        epoch = _check_step(epoch, "epoch")
        return self._every_n_epochs is not None and (epoch + 1) % self._every_n_epochs == 0

    def should_capture(self, step: int, *, event: str = "step", epoch: int | None = None) -> bool:
        """Dispatch on the event kind.

        Args:
            step: ``trainer.global_step`` (checked for every event).
            event: ``"step"``, ``"epoch_end"``, ``"fit_start"`` or ``"fit_end"``.
            epoch: ``trainer.current_epoch``, required for ``"epoch_end"``.

        Raises:
            ValueError: unknown ``event`` or missing ``epoch``.
        """
        step = _check_step(step)
        if event == "step":
            return self.should_capture_step(step)
        if event == "epoch_end":
            if epoch is None:
                raise ValueError("`epoch` is required for event='epoch_end', got None")
            return self.should_capture_epoch_end(epoch)
        if event == "fit_start":
            return self._at_fit_start
        if event == "fit_end":
            return self._at_fit_end
        raise ValueError(f"`event` must be one of {_EVENTS}, got {event!r}")

    def planned_steps(self) -> list[int]:
        """The sorted steps in ``[0, max_steps]`` at which a step trigger fires.

        Raises:
            RuntimeError: a step trigger is set and ``max_steps`` is not known yet.
        """
        if self._log_spaced is None and self._every_n_steps is None:
            return []
        if self._max_steps is None:
            raise RuntimeError(
                "planned_steps() needs the planned number of steps: pass max_steps= or call "
                "bind(max_steps) first"
            )
        steps = set(self._log_steps())
        if self._every_n_steps is not None:
            steps.update(range(0, self._max_steps + 1, self._every_n_steps))
        return sorted(steps)

    # ---------------------------------------------------------------- gate (stateful)

    @property
    def last_taken(self) -> int | None:
        """The last step :meth:`take` returned ``True`` for (``None`` before the first)."""
        return self._last_taken

    def take(self, step: int) -> bool:
        """Claim ``step`` for a capture: ``True`` the first time, ``False`` for a repeat.

        Returns ``False`` when ``step`` is not after the last taken step, so gradient
        accumulation (several micro-batches at one ``global_step``) and an epoch end or fit end
        falling on a step already captured do not capture twice, and a run continued with
        :meth:`resume_after` skips the steps already stored. The last taken step is part of
        :meth:`state_dict`, so a run resumed from a checkpoint keeps the gate.

        Args:
            step: ``trainer.global_step`` of the capture.

        Example::

            if schedule.should_capture_step(step) and schedule.take(step):
                capture(step)
        """
        step = _check_step(step)
        if self._last_taken is not None and step <= self._last_taken:
            return False
        self._last_taken = step
        return True

    def resume_after(self, step: int | None) -> None:
        """Close the gate up to ``step``: :meth:`take` refuses every step ``<= step``.

        For a run continued without a checkpoint whose store already holds the steps up to
        ``step``; ``None`` (nothing stored) opens the gate like :meth:`reset`.
        """
        self._last_taken = None if step is None else _check_step(step)

    def reset(self) -> None:
        """Forget the last taken step (for a fresh run reusing this schedule)."""
        self._last_taken = None

    # ---------------------------------------------------------------- serialisation

    def state_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict of the configuration, the bound ``max_steps`` and the gate."""
        return {
            "version": _STATE_VERSION,
            "log_spaced": self._log_spaced,
            "every_n_steps": self._every_n_steps,
            "every_n_epochs": self._every_n_epochs,
            "at_fit_start": self._at_fit_start,
            "at_fit_end": self._at_fit_end,
            "max_steps": self._max_steps,
            "max_steps_given": self._max_steps_given,
            "last_taken": self._last_taken,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`state_dict`; missing keys take their defaults.

        Raises:
            TypeError: ``state`` is not a dict.
            ValueError: the state comes from a newer, unknown format version, or is invalid.
        """
        if not isinstance(state, dict):
            raise TypeError(f"schedule `state` must be a dict, got {type(state).__name__}")
        version = state.get("version", _STATE_VERSION)
        if not isinstance(version, int) or version > _STATE_VERSION:
            raise ValueError(
                f"schedule state `version` must be <= {_STATE_VERSION}, got {version!r}; "
                "it was written by a newer lightning-manifold"
            )
        given = bool(state.get("max_steps_given", state.get("max_steps") is not None))
        schedule = cls(
            log_spaced=state.get("log_spaced", 50),
            every_n_steps=state.get("every_n_steps"),
            every_n_epochs=state.get("every_n_epochs"),
            at_fit_start=state.get("at_fit_start", True),
            at_fit_end=state.get("at_fit_end", True),
            max_steps=state.get("max_steps") if given else None,
        )
        bound = state.get("max_steps")
        if not given and bound is not None:
            schedule._max_steps = _check_optional_int(bound, "max_steps", 1)
        last = state.get("last_taken")
        schedule._last_taken = None if last is None else _check_step(last, "last_taken")
        return schedule

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this schedule in place from :meth:`state_dict` (see :meth:`from_state_dict`)."""
        self.__dict__.update(type(self).from_state_dict(state).__dict__)

    def to_json(self) -> str:
        """:meth:`state_dict` as a JSON string."""
        return json.dumps(self.state_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        """Inverse of :meth:`to_json`.

        Raises:
            TypeError: ``text`` is not a string, or its JSON value is not an object.
            ValueError: ``text`` is not valid JSON, or holds an invalid schedule state.
        """
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"`text` must be a JSON string, got {type(text).__name__}")
        try:
            state = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"`text` must be a schedule's JSON (from Schedule.to_json), got {text[:40]!r}: "
                f"{err}"
            ) from None
        return cls.from_state_dict(state)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self.state_dict() == other.state_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable (the gate)

    def __repr__(self) -> str:
        return (
            f"Schedule(log_spaced={self._log_spaced}, every_n_steps={self._every_n_steps}, "
            f"every_n_epochs={self._every_n_epochs}, at_fit_start={self._at_fit_start}, "
            f"at_fit_end={self._at_fit_end}, max_steps={self._max_steps})"
        )

"""Tests of lightning_manifold.schedule: log-spaced plans, triggers, the capture gate, state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lightning_manifold.schedule import Schedule, log_spaced_steps


@pytest.mark.parametrize("max_steps", [1, 2, 5, 37, 100, 999, 12_345, 1_000_000])
@pytest.mark.parametrize("num", [2, 3, 10, 50, 200])
def test_log_spaced_steps_are_distinct_and_span_the_run(num: int, max_steps: int) -> None:
    steps = log_spaced_steps(num, max_steps)
    assert steps[0] == 0
    assert steps[-1] == max_steps
    assert len(steps) == min(num, max_steps + 1)
    assert all(isinstance(s, int) for s in steps)
    assert np.all(np.diff(steps) > 0)


def test_log_spaced_steps_are_dense_early_and_geometric_late() -> None:
    steps = np.array(log_spaced_steps(50, 1_000_000))
    gaps = np.diff(steps)
    # dense early: the first steps are consecutive, half the points lie in the first 1 %
    assert steps[:5].tolist() == [0, 1, 2, 3, 4]
    assert np.median(steps) < 1_000_000 * 1e-2
    assert np.all(np.diff(gaps) >= -1)  # gaps grow (up to rounding)
    # where the spacing exceeds a step, s + 1 follows a geometric sequence ending at max + 1
    tail = steps[steps >= 100] + 1.0
    ratios = tail[1:] / tail[:-1]
    expected = (1_000_001 / tail[0]) ** (1 / (len(tail) - 1))
    np.testing.assert_allclose(ratios, expected, rtol=0.02)


def test_log_spaced_steps_cover_everything_for_short_runs() -> None:
    assert log_spaced_steps(50, 10) == list(range(11))
    assert log_spaced_steps(2, 1) == [0, 1]
    assert log_spaced_steps(2, 100) == [0, 100]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_spaced": 1}, r"`log_spaced` must be None or >= 2, got 1"),
        ({"every_n_steps": 0}, r"`every_n_steps` must be None or >= 1, got 0"),
        ({"every_n_epochs": 0}, r"`every_n_epochs` must be None or >= 1, got 0"),
        ({"max_steps": 0}, r"`max_steps` must be None or >= 1, got 0"),
        (
            {"log_spaced": None, "at_fit_start": False, "at_fit_end": False},
            r"Schedule has no trigger",
        ),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_spaced": True}, r"`log_spaced` must be None or an int"),
        ({"every_n_steps": 2.5}, r"`every_n_steps` must be None or an int"),
        ({"at_fit_start": "yes"}, r"`at_fit_start` must be a bool"),
        ({"at_fit_end": 1}, r"`at_fit_end` must be a bool"),
    ],
)
def test_argument_types(kwargs: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Schedule(**kwargs)


def test_log_spaced_needs_bind() -> None:
    schedule = Schedule()
    assert not schedule.is_bound
    with pytest.raises(RuntimeError, match=r"bind\(max_steps\)"):
        schedule.should_capture_step(0)
    with pytest.raises(RuntimeError, match=r"bind\(max_steps\)"):
        schedule.planned_steps()
    assert schedule.bind(200) is schedule
    assert schedule.is_bound
    assert schedule.max_steps == 200
    assert schedule.planned_steps() == log_spaced_steps(50, 200)


def test_union_of_step_triggers() -> None:
    schedule = Schedule(log_spaced=6, every_n_steps=30, max_steps=100)
    expected = set(log_spaced_steps(6, 100)) | {0, 30, 60, 90}
    assert schedule.planned_steps() == sorted(expected)
    for step in range(0, 131):
        in_plan = step in expected or step % 30 == 0  # every_n_steps goes on past max_steps
        assert schedule.should_capture_step(step) == in_plan, step
    assert not schedule.should_capture_epoch_end(0)


def test_every_n_steps_alone_needs_no_max_steps() -> None:
    schedule = Schedule(log_spaced=None, every_n_steps=25, at_fit_start=False, at_fit_end=False)
    assert schedule.is_bound
    assert [s for s in range(101) if schedule.should_capture_step(s)] == [0, 25, 50, 75, 100]
    with pytest.raises(RuntimeError, match="planned_steps"):
        schedule.planned_steps()
    schedule.bind(float("inf"))  # unbounded training is fine without log_spaced
    assert schedule.max_steps is None
    assert schedule.bind(60).planned_steps() == [0, 25, 50]


def test_epoch_and_fit_triggers() -> None:
    schedule = Schedule(log_spaced=None, every_n_epochs=3, at_fit_start=False)
    assert [e for e in range(10) if schedule.should_capture_epoch_end(e)] == [2, 5, 8]
    assert schedule.planned_steps() == []
    assert not schedule.should_capture_step(0)
    assert not schedule.should_capture(0, event="fit_start")
    assert schedule.should_capture(7, event="fit_end")
    assert schedule.should_capture(7, event="epoch_end", epoch=5)
    assert not schedule.should_capture(7, event="epoch_end", epoch=4)
    with pytest.raises(ValueError, match=r"`epoch` is required"):
        schedule.should_capture(7, event="epoch_end")
    with pytest.raises(ValueError, match=r"`event` must be one of"):
        schedule.should_capture(7, event="batch")
    with pytest.raises(ValueError, match=r"`step` must be >= 0, got -1"):
        schedule.should_capture_step(-1)
    with pytest.raises(ValueError, match=r"`epoch` must be >= 0, got -2"):
        schedule.should_capture_epoch_end(-2)


def test_bind_keeps_user_max_steps_and_rejects_bad_values() -> None:
    user = Schedule(log_spaced=5, max_steps=40)
    user.bind(10_000)
    assert user.max_steps == 40
    schedule = Schedule(log_spaced=5)
    schedule.bind(300.0)  # estimated_stepping_batches may be a float
    assert schedule.max_steps == 300
    assert schedule.planned_steps() == log_spaced_steps(5, 300)
    schedule.bind(50)  # re-binding recomputes the plan
    assert schedule.planned_steps() == log_spaced_steps(5, 50)
    for bad in (float("inf"), 0, 12.5, -3):
        with pytest.raises(ValueError, match=r"`max_steps` must be a finite integer >= 1"):
            Schedule(log_spaced=5).bind(bad)


def test_take_captures_each_step_once_under_gradient_accumulation() -> None:
    schedule = Schedule(log_spaced=None, every_n_steps=1)
    accumulate = 4
    captured = []
    for micro_batch in range(5 * accumulate):
        step = micro_batch // accumulate  # global_step only moves every 4 micro-batches
        if schedule.should_capture_step(step) and schedule.take(step):
            captured.append(step)
    assert captured == [0, 1, 2, 3, 4]
    assert schedule.last_taken == 4
    # an epoch end / fit end on the step just captured does not capture again
    assert not schedule.take(4)
    assert schedule.take(5)
    schedule.reset()
    assert schedule.last_taken is None
    assert schedule.take(5)


def test_resume_after_skips_the_steps_already_stored() -> None:
    """A run restarted from step 0 over a store holding steps 0..6 captures only 7, 8, ..."""
    schedule = Schedule(log_spaced=None, every_n_steps=1)
    schedule.resume_after(6)
    taken = [s for s in range(10) if schedule.should_capture_step(s) and schedule.take(s)]
    assert taken == [7, 8, 9]
    schedule.resume_after(None)
    assert schedule.last_taken is None
    assert schedule.take(0)


def test_state_dict_round_trip_through_json() -> None:
    schedule = Schedule(log_spaced=7, every_n_steps=40, every_n_epochs=2, at_fit_start=False)
    schedule.bind(500)
    schedule.take(0)
    schedule.take(13)
    state = json.loads(json.dumps(schedule.state_dict()))
    assert all(isinstance(v, (int, bool, type(None))) for v in state.values())
    restored = Schedule.from_state_dict(state)
    assert restored == schedule
    assert restored.planned_steps() == schedule.planned_steps()
    assert restored.last_taken == 13
    assert not restored.take(13)
    # the bound (not user-given) max_steps may still be re-bound; a user-given one is kept
    restored.bind(1000)
    assert restored.max_steps == 1000
    fixed = Schedule.from_json(Schedule(log_spaced=3, max_steps=30).to_json())
    fixed.bind(1000)
    assert fixed.max_steps == 30
    in_place = Schedule(log_spaced=None, every_n_steps=1)
    in_place.load_state_dict(schedule.state_dict())
    assert in_place == schedule
    assert in_place != Schedule(log_spaced=7, max_steps=500)


def test_from_state_dict_defaults_and_version() -> None:
    default = Schedule.from_state_dict({})
    assert default == Schedule()
    partial = Schedule.from_state_dict({"every_n_epochs": 1, "log_spaced": None})
    assert partial.every_n_epochs == 1
    assert partial.log_spaced is None
    with pytest.raises(ValueError, match=r"`version` must be <= 1, got 2"):
        Schedule.from_state_dict({"version": 2})
    with pytest.raises(ValueError, match=r"`log_spaced` must be None or >= 2"):
        Schedule.from_state_dict({"log_spaced": 1})


def test_planned_count_matches_request_for_long_runs() -> None:
    for num in (10, 50, 123):
        schedule = Schedule(log_spaced=num).bind(10**6)
        assert len(schedule.planned_steps()) == num
        hits = sum(schedule.should_capture_step(s) for s in range(0, 2000))
        assert hits == sum(1 for s in schedule.planned_steps() if s < 2000)
        assert math.isclose(len(schedule.planned_steps()), num)

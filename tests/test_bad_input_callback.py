"""Bad arguments and configurations of ManifoldCallback, Schedule and ProbeSet.

Each case must raise a clear error: the expected exception type, and a message that names the
argument (and, where it helps, what was given).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyClassifier, fast_trainer_kwargs, make_blobs, make_loader
from torch.utils.data import DataLoader, TensorDataset

from lightning_manifold import ManifoldCallback, ProbeSet, Schedule
from lightning_manifold.store import TrajectoryStore

X, Y = torch.randn(12, 8), torch.arange(12) % 3
PROBE = ProbeSet.from_tensors(X, Y, name="train")


def _loader(n: int = 12) -> DataLoader:
    return DataLoader(TensorDataset(X[:n], Y[:n]), batch_size=4)


# (id, call, exception type, regex the message must match: the argument's name, the value)
CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # ManifoldCallback
    ("if_exists-unknown", lambda: ManifoldCallback(PROBE, if_exists="append"), ValueError,
     r"`if_exists` must be one of \['error', 'overwrite', 'resume'\], got 'append'"),
    ("if_exists-none", lambda: ManifoldCallback(PROBE, if_exists=None), ValueError,
     r"`if_exists`.*got None"),
    ("probes-empty", lambda: ManifoldCallback([]), ValueError, r"`probes`.*empty"),
    ("probes-str", lambda: ManifoldCallback("train"), TypeError, r"`probes`.*got str"),
    ("probes-item", lambda: ManifoldCallback([PROBE, 3]), TypeError, r"`probes\[1\]`.*got int"),
    ("probes-duplicate", lambda: ManifoldCallback([PROBE, PROBE]), ValueError,
     r"`probes` must have distinct names.*'train'"),
    ("schedule-dict", lambda: ManifoldCallback(PROBE, schedule={"every_n_steps": 2}), TypeError,
     r"`schedule`.*got dict"),
    ("dirpath-int", lambda: ManifoldCallback(PROBE, dirpath=3), TypeError, r"`dirpath`.*got int"),
    ("run_name-slash", lambda: ManifoldCallback(PROBE, run_name="a/b"), ValueError,
     r"`run_name`.*'a/b'"),
    ("run_name-empty", lambda: ManifoldCallback(PROBE, run_name=""), ValueError,
     r"`run_name`.*''"),
    ("dtype-half", lambda: ManifoldCallback(PROBE, dtype=torch.float16), ValueError,
     r"`dtype`.*float16"),
    ("ignorance_warning-zero", lambda: ManifoldCallback(PROBE, ignorance_warning=0), ValueError,
     r"`ignorance_warning`.*got 0"),
    ("n_components-zero", lambda: ManifoldCallback(PROBE, n_components=0), ValueError,
     r"`n_components`.*got 0"),
    ("residual_threshold-negative", lambda: ManifoldCallback(PROBE, residual_threshold=-1.0),
     ValueError, r"`residual_threshold`.*-1.0"),
    ("render_budget-above-one", lambda: ManifoldCallback(PROBE, render_budget=2), ValueError,
     r"`render_budget`.*got 2"),
    ("meta-list", lambda: ManifoldCallback(PROBE, meta=[1]), TypeError, r"`meta`.*got list"),
    ("log_scalars-str", lambda: ManifoldCallback(PROBE, log_scalars="no"), TypeError,
     r"`log_scalars` must be a bool, got str"),
    ("durable-int", lambda: ManifoldCallback(PROBE, durable=0), TypeError,
     r"`durable` must be a bool, got int"),
    ("reference-unknown-probe", lambda: ManifoldCallback(PROBE, reference={"val": "r.npz"}),
     ValueError, r"`reference` keys must be probe names.*'val'"),
    ("reference-missing-file", lambda: ManifoldCallback(PROBE, reference="/no/such/ref.npz"),
     ValueError, r"`reference`.*existing file.*/no/such/ref.npz"),
    ("reference-int", lambda: ManifoldCallback(PROBE, reference=3), TypeError,
     r"`reference`.*got int"),
    # Schedule
    ("log_spaced-one", lambda: Schedule(log_spaced=1), ValueError, r"`log_spaced`.*got 1"),
    ("log_spaced-float", lambda: Schedule(log_spaced=2.5), TypeError, r"`log_spaced`.*float"),
    ("every_n_steps-zero", lambda: Schedule(every_n_steps=0), ValueError,
     r"`every_n_steps`.*got 0"),
    ("every_n_epochs-negative", lambda: Schedule(every_n_epochs=-1), ValueError,
     r"`every_n_epochs`.*got -1"),
    ("at_fit_start-str", lambda: Schedule(at_fit_start="yes"), TypeError,
     r"`at_fit_start` must be a bool, got str"),
    ("max_steps-zero", lambda: Schedule(max_steps=0), ValueError, r"`max_steps`.*got 0"),
    ("no-trigger", lambda: Schedule(log_spaced=None, at_fit_start=False, at_fit_end=False),
     ValueError, r"no trigger.*`log_spaced`"),
    ("bind-unbounded", lambda: Schedule(log_spaced=5).bind(float("inf")), ValueError,
     r"`max_steps` must be a finite integer.*inf"),
    ("event-unknown", lambda: Schedule().should_capture(0, event="batch"), ValueError,
     r"`event` must be one of.*'batch'"),
    ("take-negative", lambda: Schedule().take(-1), ValueError, r"`step` must be >= 0, got -1"),
    ("resume_after-str", lambda: Schedule().resume_after("3"), TypeError, r"`step`.*got str"),
    ("from_json-not-json", lambda: Schedule.from_json("not json"), ValueError,
     r"`text` must be a schedule's JSON.*'not json'"),
    ("from_json-bytes-garbage", lambda: Schedule.from_json(b"\x00\x01"), ValueError, r"`text`"),
    ("from_json-int", lambda: Schedule.from_json(5), TypeError, r"`text`.*got int"),
    ("from_json-list", lambda: Schedule.from_json("[1, 2]"), TypeError,
     r"schedule `state` must be a dict, got list"),
    ("from_json-newer-version", lambda: Schedule.from_json('{"version": 99}'), ValueError,
     r"`version`.*99"),
    ("state-last_taken", lambda: Schedule.from_state_dict({"last_taken": -2}), ValueError,
     r"`last_taken`.*-2"),
    # ProbeSet
    ("labels-float", lambda: ProbeSet(X, Y.float()), ValueError, r"`labels`.*integer.*float32"),
    ("labels-2d", lambda: ProbeSet(X, Y[:, None]), ValueError, r"`labels`.*\(12, 1\)"),
    ("labels-negative", lambda: ProbeSet(X, Y - 1), ValueError, r"`labels`.*-1"),
    ("labels-strings", lambda: ProbeSet(X, ["a"] * 12), TypeError, r"`labels`.*got list"),
    ("inputs-rows", lambda: ProbeSet(X[:5], Y), ValueError, r"`inputs`.*N = 12.*\(5, 8\)"),
    ("inputs-str", lambda: ProbeSet("abc", Y), TypeError, r"`inputs`.*got str"),
    ("inputs-empty", lambda: ProbeSet([], Y), ValueError, r"`inputs`.*empty"),
    ("num_classes-small", lambda: ProbeSet(X, Y, num_classes=2), ValueError,
     r"`num_classes` must be >= .* = 3, got 2"),
    ("num_classes-float", lambda: ProbeSet(X, Y, num_classes=3.5), TypeError,
     r"`num_classes`.*float"),
    ("batch_size-zero", lambda: ProbeSet(X, Y, batch_size=0), ValueError,
     r"`batch_size`.*got 0"),
    ("name-slash", lambda: ProbeSet(X, Y, name="a/b"), ValueError, r"`name`.*'a/b'"),
    ("forward-int", lambda: ProbeSet(X, Y, forward=3), TypeError, r"`forward`.*got int"),
    ("transform-str", lambda: ProbeSet(X, Y, transform="f"), TypeError, r"`transform`.*got str"),
    ("from_dataset-size", lambda: ProbeSet.from_dataset(TensorDataset(X, Y), 20), ValueError,
     r"`size` must be <= len\(dataset\) = 12, got 20"),
    ("from_dataset-iterator", lambda: ProbeSet.from_dataset(iter([]), 2), TypeError,
     r"`dataset`.*list_iterator"),
    ("from_dataloader-short", lambda: ProbeSet.from_dataloader(_loader(), 20), ValueError,
     r"`dataloader` yielded only 12 samples.*`size` = 20"),
    ("from_dataloader-pool", lambda: ProbeSet.from_dataloader(_loader(), 5, pool_size=2),
     ValueError, r"`pool_size` must be >= 5, got 2"),
    ("predict-dtype", lambda: PROBE.predict(torch.nn.Linear(8, 3), dtype=torch.float16),
     ValueError, r"`dtype`.*float16"),
    ("shard-rank", lambda: PROBE.shard(2, 2), ValueError, r"`rank` must be < `world_size`"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_argument_gets_a_clear_error(
    call: Callable[[], Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        call()


def test_battery_size() -> None:
    assert len(CASES) >= 15
    assert len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------- configurations


@pytest.mark.parametrize("at_fit_start", [True, False])
def test_probe_inputs_that_do_not_fit_the_model_raise_at_train_start(
    tmp_path: Path, at_fit_start: bool
) -> None:
    """5 features into ``Linear(8, ...)``: torch raises RuntimeError on the first forward; that
    is a configuration error, raised at train start, naming the probe, the error and the shape."""
    probe = ProbeSet.from_tensors(torch.randn(12, 5), torch.arange(12) % 3, name="val")
    schedule = Schedule(log_spaced=None, every_n_steps=1, at_fit_start=at_fit_start)
    cb = ManifoldCallback(probe, schedule=schedule, dirpath=tmp_path, run_name="r")
    x, y = make_blobs(32, 8, 3, seed=0)
    trainer = pl.Trainer(**fast_trainer_kwargs(max_steps=3), callbacks=[cb])
    with pytest.raises(ValueError, match=r"probe 'val' cannot be run through the model") as info:
        trainer.fit(TinyClassifier(d=8), make_loader(x, y, batch_size=8))
    message = str(info.value)
    assert "RuntimeError" in message  # the exception torch raised
    assert "(12, 5)" in message  # the probe's input shape, the likely cause
    assert "shape" in message
    assert trainer.global_step == 0  # training never started
    assert len(TrajectoryStore(tmp_path / "r" / "val")) == 0
    # later failures stay warnings: tests/test_callback.py::
    # test_unexpected_error_in_capture_warns_once_and_training_goes_on
